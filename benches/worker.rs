//! Worker throughput against PostgreSQL's own limits on this machine.
//!
//! Needs a Redis and a PostgreSQL: run it through `scripts/bench-worker`,
//! which starts private ones and passes `BENCH_REDIS_URL` / `BENCH_DATABASE_URL`.
//! For the same N rows (~300-byte payloads) it measures:
//!
//! 1. the worker path: N jobs in the stream, `BENCH_WORKERS` workers drain
//!    them (XREADGROUP → EXISTS → binary COPY → INSERT … ON CONFLICT → SET, XACK, XDEL);
//! 2. the raw limit: one plain `COPY … FROM STDIN (FORMAT csv)` of a file
//!    with the same rows into a table with the same constraints;
//! 3. the NestJS design's way: one `INSERT … ON CONFLICT DO NOTHING` per row,
//!    `BENCH_WORKERS` connections in parallel.

use std::io::Write;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use webhook_ingestor::job::WebhookJob;
use webhook_ingestor::store;
use webhook_ingestor::worker::{spawn_workers, WorkerSettings};

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn job(i: usize) -> WebhookJob {
    let payload = format!(
        r#"{{"provider":"stripe","eventId":"evt_bench_{i}","timestamp":"2026-11-22T21:35:25.123Z","data":{{"amount":{},"currency":"brl","customer_id":"cus_x1Y2z3W4","status":"succeeded","description":"Order 100234, three items, shipped by Correios to Sao Paulo"}}}}"#,
        i % 10_000
    );
    WebhookJob {
        provider: "stripe".into(),
        event_id: format!("evt_bench_{i}"),
        event_type: String::new(),
        verified_by: None,
        event_timestamp_us: 1_795_383_325_123_000,
        received_at_us: 1_795_383_325_123_000 + i as i64,
        payload: payload.into_bytes(),
        raw_body: None,
        unsigned_fields: String::new(),
        replay_of: None,
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if !std::env::args().any(|a| a == "--bench") {
        println!("worker bench: run it with scripts/bench-worker (it needs Redis and PostgreSQL)");
        return Ok(());
    }
    let redis_url = std::env::var("BENCH_REDIS_URL")?;
    let database_url = std::env::var("BENCH_DATABASE_URL")?;
    let n: usize = env("BENCH_ROWS", "100000").parse()?;
    let workers: usize = env("BENCH_WORKERS", "2").parse()?;
    let single_n: usize = env("BENCH_SINGLE_ROWS", "20000").parse::<usize>()?.min(n);
    let jobs: Vec<WebhookJob> = (0..n).map(job).collect();

    let mut pg = postgres::Client::connect(&database_url, postgres::NoTls)?;
    store::migrate(&mut pg)?;
    pg.batch_execute(
        "TRUNCATE webhook_events;
         DROP TABLE IF EXISTS bench_raw, bench_single;
         CREATE TABLE bench_raw (LIKE webhook_events INCLUDING ALL);
         CREATE TABLE bench_single (LIKE webhook_events INCLUDING ALL);",
    )?;
    let mut con = redis::Client::open(redis_url.as_str())?.get_connection()?;
    redis::cmd("FLUSHDB").query::<()>(&mut con)?;
    webhook_ingestor::queue::prepare_stream(&mut con, "webhooks")?;

    // Fill the stream.
    let t = Instant::now();
    for chunk in jobs.chunks(1000) {
        let mut pipe = redis::pipe();
        for j in chunk {
            let mut cmd = redis::cmd("XADD");
            cmd.arg("webhooks").arg("*");
            j.stream_fields(&mut cmd);
            pipe.add_command(cmd).ignore();
        }
        pipe.query::<()>(&mut con)?;
    }
    let fill = t.elapsed();

    // 1. The worker path.
    let shutdown = CancellationToken::new();
    let settings = WorkerSettings {
        queue: webhook_ingestor::queue::Queue::single(&redis_url, "webhooks")?,
        batch_max: env("WORKER_BATCH_MAX", "5000").parse()?,
        batch_max_bytes: env("WORKER_BATCH_MAX_BYTES", &(64 << 20).to_string()).parse()?,
        max_body_bytes: env("MAX_BODY_BYTES", &(1 << 20).to_string()).parse()?,
        pg_timeouts: store::Timeouts::default(),
        block: Duration::from_millis(100),
        linger: Duration::from_millis(20),
        dead_letter_redis_max_bytes: 64 << 20,
        retention: Default::default(),
        max_attempts: 5,
        reclaim_idle: Duration::from_secs(30),
        host: webhook_ingestor::worker::hostname(),
        shutdown_timeout: Duration::from_secs(5),
        migrate: false,
        metrics: webhook_ingestor::telemetry::metrics::Metrics::new(0),
    };
    let pool = store::pool(&database_url, workers as u32 + 1, store::Timeouts::default())?;
    let t = Instant::now();
    let pool_handle = spawn_workers(workers, settings, pool, shutdown.clone())?;
    loop {
        let rows: i64 = pg.query_one("SELECT count(*) FROM webhook_events", &[])?.get(0);
        if rows as usize >= n {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let worker_time = t.elapsed();
    shutdown.cancel();
    pool_handle.join();
    let left: u64 = redis::cmd("XLEN").arg("webhooks").query(&mut con)?;

    // 2. Plain COPY of the same rows from a file.
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("rows.csv");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path)?);
        for j in &jobs {
            let payload = String::from_utf8_lossy(&j.payload).replace('"', "\"\"");
            writeln!(
                f,
                "{},{},2026-11-22T21:35:25.123Z,2026-11-22T21:35:25.123Z,\"{payload}\"",
                j.provider, j.event_id
            )?;
        }
    }
    let file = std::fs::read(&path)?;
    let t = Instant::now();
    let mut w = pg.copy_in(
        "COPY bench_raw (provider, event_id, event_timestamp, received_at, payload) FROM STDIN (FORMAT csv)",
    )?;
    w.write_all(&file)?;
    w.finish()?;
    let raw_time = t.elapsed();

    // 3. One INSERT … ON CONFLICT per row, `workers` connections.
    let t = Instant::now();
    let per = single_n.div_ceil(workers);
    let threads: Vec<_> = (0..workers)
        .map(|w| {
            let url = database_url.clone();
            let rows: Vec<WebhookJob> = jobs[(w * per).min(single_n)..((w + 1) * per).min(single_n)].to_vec();
            std::thread::spawn(move || -> Result<(), postgres::Error> {
                let mut c = postgres::Client::connect(&url, postgres::NoTls)?;
                let stmt = c.prepare(
                    "INSERT INTO bench_single (provider, event_id, event_timestamp, received_at, payload)
                     VALUES ($1, $2, now(), now(), $3::text::jsonb) ON CONFLICT (provider, event_id) DO NOTHING",
                )?;
                for j in rows {
                    c.execute(&stmt, &[&j.provider, &j.event_id, &String::from_utf8_lossy(&j.payload).as_ref()])?;
                }
                Ok(())
            })
        })
        .collect();
    for t in threads {
        t.join().expect("insert thread")?;
    }
    let single_time = t.elapsed();

    let rate = |rows: usize, d: Duration| rows as f64 / d.as_secs_f64();
    let (worker_rate, raw_rate, single_rate) =
        (rate(n, worker_time), rate(n, raw_time), rate(single_n, single_time));
    println!("rows: {n} (single-row inserts: {single_n}), workers: {workers}");
    println!("{:<44} {:>12}", "path", "rows/s");
    println!("{:<44} {:>12.0}", "XADD fill (pipelines of 1000)", rate(n, fill));
    println!("{:<44} {:>12.0}", "worker path (stream -> rows, end to end)", worker_rate);
    println!("{:<44} {:>12.0}", "plain COPY from a CSV file (raw limit)", raw_rate);
    println!("{:<44} {:>12.0}", "single-row INSERT ... ON CONFLICT", single_rate);
    println!("worker / raw COPY:    {:.2}", worker_rate / raw_rate);
    println!("worker / single-row:  {:.2}", worker_rate / single_rate);
    println!("stream length after the drain: {left}");
    if left != 0 {
        return Err("the stream was not drained".into());
    }
    Ok(())
}

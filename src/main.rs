//! The `webhook-ingestor` binary: parse the command line and the
//! configuration, then hand over to the library.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use tracing::error;

use webhook_ingestor::app::{self, Role};
use webhook_ingestor::config::Config;
use webhook_ingestor::worker::{self, ReplayScope};
use webhook_ingestor::{queue, shutdown, store, telemetry};

/// With `--features mimalloc`, the allocator experiment of tuning.md §23.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(version, about = "Thread-per-core webhook gateway: 202 only after Redis has the job")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve (the default). Configured by the environment and `.env`; see the README.
    Serve {
        /// Which parts to run: the HTTP gateway, the workers, or both.
        #[arg(long, value_enum, default_value_t = RoleArg::All)]
        role: RoleArg,
    },
    /// Apply the `sql/` migrations not yet applied, then exit.
    Migrate,
    /// Move dead letters (webhook_dead_letters, and any still in the Redis
    /// fallback stream) back into their streams; each leaves the table once
    /// its event is stored. The same code as `POST /v1/dead-letters/replay`.
    Replay {
        /// Dead-letter ids (`webhook_dead_letters.id`) to replay (default:
        /// every one the filter matches that is not being replayed).
        #[arg(long = "id")]
        ids: Vec<i64>,
        /// Only this provider's.
        #[arg(long)]
        provider: Option<String>,
        /// Only those PostgreSQL refused with this SQLSTATE.
        #[arg(long)]
        sqlstate: Option<String>,
        /// Only those whose error contains this text (any case).
        #[arg(long)]
        error_contains: Option<String>,
        /// At most this many.
        #[arg(long)]
        max: Option<u64>,
        /// Only count what would be replayed.
        #[arg(long)]
        dry_run: bool,
    },
    /// Print queue length, pending entries, dead letters, rows stored and
    /// what PostgreSQL keeps (partitions, dedupe generations, sizes).
    Stats,
    /// Read and validate the configuration, print it (secrets redacted), exit.
    CheckConfig,
    /// Exit 0 if the gateway on 127.0.0.1:PORT answers `GET /health/live`
    /// with 200 within 2 s (the container HEALTHCHECK; needs no curl).
    Healthcheck,
}

#[derive(Clone, Copy, ValueEnum)]
enum RoleArg {
    All,
    Api,
    Worker,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("webhook-ingestor: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command.unwrap_or(Command::Serve { role: RoleArg::All }) {
        Command::CheckConfig => {
            println!("{config:#?}");
            let sources = config.ingest.sources.clone().unwrap_or_default();
            println!("routes: {}", sources.describe_routes());
            if !sources.unsigned_routes().is_empty() {
                println!(
                    "routes: warning: unsigned requests are accepted on {:?}",
                    sources.unsigned_routes()
                );
            }
            match webhook_ingestor::http::cores::for_this_process(&config.http.cores, config.http.pin_cores) {
                Ok(c) => {
                    println!("cores: {} runtimes; {}", c.cpus.len(), c.reason);
                    if let Some(w) = c.over_quota {
                        println!("cores: warning: {w}");
                    }
                }
                Err(e) => println!("cores: CORES: {e}"),
            }
            if let Some(url) = config.store.database_url.as_deref() {
                postgres_durability(url, config.store.session());
            }
            Ok(())
        }
        Command::Serve { role } => return serve(&config, role),
        Command::Migrate => migrate(&config),
        Command::Replay { ids, provider, sqlstate, error_contains, max, dry_run } => {
            let scope = if ids.is_empty() {
                let filter = store::dead_letters::Filter {
                    provider,
                    sqlstate,
                    text: error_contains,
                    ..Default::default()
                };
                ReplayScope::Filter { filter, max }
            } else {
                ReplayScope::Ids(ids)
            };
            replay(&config, &scope, dry_run)
        }
        Command::Stats => stats(&config),
        Command::Healthcheck => healthcheck(&config),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("webhook-ingestor: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `check-config`'s word on PostgreSQL: what a commit is worth there, as
/// the gateway's sessions see it (a line, never an error: the server may
/// simply be down while the configuration is checked).
fn postgres_durability(url: &str, mut session: store::Session) {
    session.timeouts.connect = Duration::from_secs(2);
    let read = store::connect_config(url, session)
        .and_then(|c| c.connect(postgres::NoTls).map_err(store::StoreError::from))
        .and_then(|mut client| store::durability(&mut client));
    match read {
        Ok((fsync, commit)) => {
            println!("postgres: fsync={fsync} synchronous_commit={commit}");
            if let Some(warning) = store::durability_warning(&fsync, &commit) {
                println!("postgres: warning: {warning}");
            }
        }
        Err(e) => println!("postgres: not reachable now ({e})"),
    }
}

fn serve(config: &Config, role: RoleArg) -> ExitCode {
    telemetry::init(&config.ops.log_level);
    let role = match role {
        RoleArg::All => Role::All,
        RoleArg::Api => Role::Api,
        RoleArg::Worker => Role::Worker,
    };
    let running = match app::start(config, role) {
        Ok(r) => r,
        Err(e) => {
            error!(error = %e, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = shutdown::cancel_on_signals(running.shutdown_token()) {
        error!(error = %e, "cannot install signal handlers");
        running.stop();
        return ExitCode::FAILURE;
    }
    running.wait();
    ExitCode::SUCCESS
}

type CliResult = Result<(), Box<dyn std::error::Error>>;

fn migrate(config: &Config) -> CliResult {
    let mut client = pg_client(config)?;
    let applied = store::migrate(&mut client)?;
    println!("migrations applied: {applied} (known: {})", store::MIGRATIONS.len());
    Ok(())
}

fn redis_con(config: &Config) -> Result<queue::Conn, redis::RedisError> {
    config.queue.queue().connect(Duration::from_secs(5), Duration::from_secs(5))
}

fn pg_client(config: &Config) -> Result<postgres::Client, Box<dyn std::error::Error>> {
    let url = config.store.database_url.as_deref().ok_or("DATABASE_URL is not set")?;
    Ok(postgres::Client::connect(url, postgres::NoTls)?)
}

fn replay(config: &Config, scope: &ReplayScope, dry_run: bool) -> CliResult {
    let queue = config.queue.queue();
    let mut con = redis_con(config)?;
    let mut client = pg_client(config)?;
    let done = worker::replay(&mut con, &mut client, &queue.streams(), scope, dry_run)?;
    if dry_run {
        println!("would replay {} dead letters into {} (dry run)", done.matched, config.queue.queue_name);
    } else {
        println!(
            "replayed {} dead letters into {} (matched {})",
            done.replayed, config.queue.queue_name, done.matched
        );
    }
    Ok(())
}

fn stats(config: &Config) -> CliResult {
    let queue = config.queue.queue();
    let mut con = redis_con(config)?;
    let mut client = match config.store.database_url {
        Some(_) => Some(pg_client(config)?),
        None => None,
    };
    let r = webhook_ingestor::report::read(&queue, Some(&mut con), client.as_mut())?;
    let q = r.queue.ok_or("redis did not answer")?;
    let line = |label: &str, value: &dyn std::fmt::Display| println!("{:<13} {value}", format!("{label}:"));
    line("stream", &r.stream);
    line("partitions", &r.partitions);
    line("queue_length", &q.length);
    line("pending", &q.pending);
    line("lag", &q.lag);
    line("oldest_unacked_seconds", &format!("{:.3}", q.oldest_unacked_seconds));
    line("dead_letters_in_redis", &q.dead_letters_in_redis);
    for (condition, description) in &r.held {
        println!("held {condition}: {description}");
    }
    for w in &r.workers {
        println!(
            "worker {} (partition {}): pending {}, idle {} ms",
            w.name, w.partition, w.pending, w.idle_ms
        );
    }
    if q.partitions.len() > 1 {
        println!("partition  length  pending  lag  dead_letters_in_redis");
        for (p, pg) in q.partitions.iter().enumerate() {
            match pg {
                Some(pg) => println!(
                    "{p:>9}  {:>6}  {:>7}  {:>3}  {:>21}",
                    pg.length, pg.pending, pg.lag, pg.dead_letters_in_redis
                ),
                None => println!("{p:>9}  (its master did not answer)"),
            }
        }
    }
    if let Some(s) = r.store {
        let numbers = [
            ("rows_stored", s.rows_stored),
            ("dead_letters", s.dead_letters),
            ("conflicts", s.conflicts),
            ("table_bytes", s.table_bytes),
            ("index_bytes", s.index_bytes),
            ("key_bytes", s.key_bytes),
            ("dedupe_generations", s.dedupe_generations),
        ];
        for (label, value) in numbers {
            line(label, &value);
        }
        line("event_partitions", &s.event_partitions.len());
        for name in &s.event_partitions {
            println!("  {name}");
        }
    }
    Ok(())
}

fn healthcheck(config: &Config) -> CliResult {
    use std::io::{Read, Write};
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], config.http.port));
    let timeout = Duration::from_secs(2);
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(b"GET /health/live HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head)?;
    if &head[9..12] == b"200" {
        Ok(())
    } else {
        Err(format!("{addr} answered {}", String::from_utf8_lossy(&head)).into())
    }
}

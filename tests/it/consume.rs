//! The consumer API (`API_ADDR`, issue 26), against real Redis and
//! PostgreSQL: reading every event exactly once while several workers
//! commit concurrently, named consumers with acks across a restart, long
//! polls, the tokens, the retention's 410 and the filters.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::fault::{servers, Gateway, Load};
use crate::harness::{event, free_port, wait_until, Client, Response, TestApp, DB};

pub const READ: &str = "reader-token-5f1e";
pub const ADMIN: &str = "admin-token-9c2b";

/// A client of the API with one token (or none).
pub struct Api {
    addr: SocketAddr,
    token: Option<String>,
}

impl Api {
    pub fn new(addr: SocketAddr, token: Option<&str>) -> Self {
        Self { addr, token: token.map(str::to_string) }
    }

    pub fn request(&self, method: &str, path: &str, body: Option<&str>) -> Response {
        let mut client = Client::connect(self.addr);
        client.set_read_timeout(Duration::from_secs(40));
        let auth = self.token.as_ref().map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        let body = body.unwrap_or("");
        let typed = if body.is_empty() { String::new() } else { "Content-Type: application/json\r\n".into() };
        client.send(
            format!(
                "{method} {path} HTTP/1.1\r\nHost: api\r\n{auth}{typed}Content-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
        client.read_response().expect("an answer")
    }

    pub fn get(&self, path: &str) -> Response {
        self.request("GET", path, None)
    }

    pub fn post(&self, path: &str, body: &str) -> Response {
        self.request("POST", path, Some(body))
    }

    /// `GET` that must answer 200; its JSON.
    pub fn ok(&self, path: &str) -> Value {
        let r = self.get(path);
        assert_eq!(r.status, 200, "{path}: {}", String::from_utf8_lossy(&r.body));
        r.json()
    }
}

/// The event ids of a page, and its `next` and `done`.
fn page_of(v: &Value) -> (Vec<String>, String, bool) {
    let ids =
        v["data"].as_array().unwrap().iter().map(|e| e["eventId"].as_str().unwrap().to_string()).collect();
    (ids, v["next"].as_str().unwrap().to_string(), v["done"].as_bool().unwrap())
}

fn stored_ids(pg: &mut postgres::Client) -> Vec<String> {
    pg.query("SELECT event_id FROM webhook_events", &[]).unwrap().iter().map(|r| r.get(0)).collect()
}

#[test]
fn a_consumer_reading_during_a_concurrent_load_gets_every_event_exactly_once() {
    let (redis, pg) = servers();
    let api_port = free_port();
    let api_addr = format!("127.0.0.1:{api_port}");
    let tokens = format!("read:{READ},admin:{ADMIN}");
    let env = [("API_TOKENS", tokens.as_str()), ("API_ADDR", api_addr.as_str())];
    let gateway = Gateway::spawn(free_port(), &redis, Some(&pg), "api", &env);
    // Two worker processes of two threads: four transactions commit at once.
    let workers: Vec<Gateway> = (0..2)
        .map(|_| Gateway::spawn(free_port(), &redis, Some(&pg), "worker", &[("WORKER_THREADS", "2")]))
        .collect();
    let api = Api::new(api_addr.parse().unwrap(), Some(READ));
    wait_until(Duration::from_secs(20), "the api to answer", || {
        std::net::TcpStream::connect(api.addr).is_ok() && api.get("/v1/events").status == 200
    });

    // The reader: pages of up to 1000 from its last `next`, all along.
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (stop, addr) = (stop.clone(), api.addr);
        std::thread::spawn(move || {
            let api = Api::new(addr, Some(READ));
            let mut seen: Vec<String> = Vec::new();
            let mut next = "start".to_string();
            loop {
                let stopping = stop.load(Ordering::Relaxed);
                let v = api.ok(&format!("/v1/events?after={next}&limit=1000&wait=0.2"));
                let (ids, n, done) = page_of(&v);
                seen.extend(ids);
                next = n;
                if stopping && done {
                    return seen;
                }
            }
        })
    };
    // A naive reader beside it, straight on the table: `id > $last`.
    let naive = {
        let (stop, url) = (stop.clone(), pg.url(DB));
        std::thread::spawn(move || {
            let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
            let (mut last, mut seen) = (0i64, HashSet::new());
            loop {
                let stopping = stop.load(Ordering::Relaxed);
                let rows = client
                    .query(
                        "SELECT id, event_id FROM webhook_events WHERE id > $1 ORDER BY id LIMIT 1000",
                        &[&last],
                    )
                    .unwrap();
                for r in &rows {
                    last = r.get(0);
                    seen.insert(r.get::<_, String>(1));
                }
                if stopping && rows.is_empty() {
                    return seen;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    let load = Load::start(gateway.addr(), 8, Duration::ZERO, "cons");
    wait_until(Duration::from_secs(180), "20,000 202s", || load.accepted() >= 20_000);
    let ledger = load.stop();
    let mut client = pg.client(DB);
    wait_until(Duration::from_secs(120), "the workers to store every 202", || {
        client.query_one("SELECT count(*) FROM webhook_events", &[]).unwrap().get::<_, i64>(0)
            >= ledger.accepted.len() as i64
    });
    // Every transaction that stored a row has ended: the reader can pass them all.
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let seen = reader.join().unwrap();
    let naive = naive.join().unwrap();

    let stored = stored_ids(&mut client);
    let unique: HashSet<&String> = seen.iter().collect();
    if unique.len() != seen.len() {
        let mut count: HashMap<&String, usize> = HashMap::new();
        for id in &seen {
            *count.entry(id).or_default() += 1;
        }
        for (id, n) in count.iter().filter(|(_, &n)| n > 1) {
            let rows = client
                .query(
                    "SELECT id, xid::text, received_at::text FROM webhook_events WHERE event_id = $1",
                    &[id],
                )
                .unwrap();
            let rows: Vec<(i64, String, String)> =
                rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
            eprintln!("{id} read {n} times; rows {rows:?}");
        }
    }
    assert_eq!(unique.len(), seen.len(), "no event twice");
    let stored_set: HashSet<&String> = stored.iter().collect();
    assert_eq!(unique, stored_set, "every stored event, none other");
    let accepted: HashSet<&String> = ledger.accepted.iter().collect();
    assert!(accepted.is_subset(&unique), "every 202'd event was read");
    assert!(seen.len() >= 20_000, "{}", seen.len());
    eprintln!(
        "read {} events exactly once during the load; a reader of `id > $last` missed {} of {}",
        seen.len(),
        stored.len() - naive.len(),
        stored.len()
    );
    drop(workers);
}

#[test]
fn a_named_consumer_that_acks_each_page_sees_every_event_across_a_restart() {
    let app = consuming_app();
    let api = Api::new(app.api_addr(), Some(READ));
    let ids: Vec<String> = (0..1200).map(|i| format!("named_{i}")).collect();
    crate::harness::post_together(&app, &ids.iter().map(|id| event("stripe", id)).collect::<Vec<_>>());
    wait_until(Duration::from_secs(60), "1200 rows", || app.rows() == 1200);

    let mut seen: Vec<String> = Vec::new();
    // The first run acks two pages, reads a third and dies before its ack.
    for page in 0..3 {
        let (ids, next, _) = page_of(&api.ok("/v1/consumers/billing/events?limit=250"));
        assert_eq!(ids.len(), 250);
        seen.extend(ids);
        if page < 2 {
            let r = api.post("/v1/consumers/billing/ack", &format!(r#"{{"cursor":"{next}"}}"#));
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        }
    }
    // Restarted: from its committed cursor, until done.
    loop {
        let (ids, next, done) = page_of(&api.ok("/v1/consumers/billing/events?limit=250"));
        seen.extend(ids);
        let r = api.post("/v1/consumers/billing/ack", &format!(r#"{{"cursor":"{next}"}}"#));
        assert_eq!(r.status, 200);
        if done {
            break;
        }
    }
    let counts = seen.iter().fold(HashMap::new(), |mut m, id| {
        *m.entry(id.clone()).or_insert(0) += 1;
        m
    });
    assert!(ids.iter().all(|id| counts.contains_key(id)), "every event seen");
    let twice = counts.values().filter(|&&n| n == 2).count();
    assert_eq!(twice, 250, "only the page read and not acked comes again");
    assert!(counts.values().all(|&n| n <= 2));

    // Listed with no lag; sought back to the oldest, it has all of them behind it.
    let list = api.ok("/v1/consumers");
    let me = &list["data"][0];
    assert_eq!(me["name"], "billing");
    assert_eq!(me["lagEvents"], 0, "{list}");
    let r = api.post("/v1/consumers/billing/seek", r#"{"to":"oldest"}"#);
    assert_eq!(r.status, 200);
    assert_eq!(api.ok("/v1/consumers")["data"][0]["lagEvents"], 1200);
    let r = api.post("/v1/consumers/billing/seek", r#"{"to":"latest"}"#);
    assert_eq!(r.status, 200);
    let (ids, _, done) = page_of(&api.ok("/v1/consumers/billing/events"));
    assert!(ids.is_empty() && done, "latest: nothing after it");
    // By time: everything received from a minute ago.
    let minute_ago = time::OffsetDateTime::now_utc() - time::Duration::minutes(1);
    let when = minute_ago.format(&time::format_description::well_known::Rfc3339).unwrap();
    assert_eq!(api.post("/v1/consumers/billing/seek", &format!(r#"{{"to":"{when}"}}"#)).status, 200);
    assert_eq!(api.ok("/v1/consumers")["data"][0]["lagEvents"], 1200);
    for bad in [r#"{"to":"yesterday"}"#, r#"{"cursor":"x"}"#] {
        assert_eq!(api.post("/v1/consumers/billing/seek", bad).status, 400, "{bad}");
    }
    assert_eq!(api.post("/v1/consumers/billing/ack", r#"{"cursor":"nope"}"#).status, 400);
}

#[test]
fn a_long_poll_wakes_on_the_next_commit_and_ends_done_when_nothing_comes() {
    let app = consuming_app();
    let api = Api::new(app.api_addr(), Some(READ));
    // Nothing at all: done, empty, after the wait.
    let started = Instant::now();
    let (ids, next, done) = page_of(&api.ok("/v1/events?wait=1"));
    assert!(ids.is_empty() && done && next == "start");
    assert!(started.elapsed() >= Duration::from_millis(900), "it waited: {:?}", started.elapsed());

    // An event posted a second into a 10 s wait ends it early.
    let addr = app.addr;
    let poster = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(1));
        let posted = Instant::now();
        assert_eq!(Client::connect(addr).post("stripe", &event("stripe", "evt_woken")).status, 202);
        posted
    });
    let (ids, next, _) = page_of(&api.ok(&format!("/v1/events?after={next}&wait=10")));
    let answered = Instant::now();
    let posted = poster.join().unwrap();
    assert_eq!(ids, vec!["evt_woken".to_string()]);
    let delay = answered.duration_since(posted);
    assert!(delay < Duration::from_secs(9), "woken by the commit, not by the end of the wait: {delay:?}");
    eprintln!("202 to the long poll's answer: {delay:?}");
    // From its `next`, nothing more.
    let (ids, _, done) = page_of(&api.ok(&format!("/v1/events?after={next}")));
    assert!(ids.is_empty() && done);
}

#[test]
fn the_api_needs_a_token_and_an_admin_route_an_admin_token() {
    let app = consuming_app();
    let addr = app.api_addr();
    let none = Api::new(addr, None).get("/v1/events");
    assert_eq!(none.status, 401);
    assert_eq!(none.header("www-authenticate"), Some("Bearer"));
    assert_eq!(none.json()["statusCode"], 401);
    let wrong = Api::new(addr, Some("reader-token-5f1")).get("/v1/events");
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.header("www-authenticate"), Some("Bearer"));

    let read = Api::new(addr, Some(READ));
    wait_until(Duration::from_secs(20), "the tables", || read.get("/v1/events").status == 200);
    for path in ["/v1/events", "/v1/consumers", "/v1/consumers/c1/events"] {
        assert_eq!(read.get(path).status, 200, "{path}");
    }
    assert_eq!(read.post("/v1/consumers/c1/seek", r#"{"to":"latest"}"#).status, 200);
    assert_eq!(read.get("/v1/events/stripe/evt_none").status, 404);
    let forbidden = read.request("DELETE", "/v1/consumers/c1", None);
    assert_eq!(forbidden.status, 403, "a read token on an admin route");
    let admin = Api::new(addr, Some(ADMIN));
    assert_eq!(admin.request("DELETE", "/v1/consumers/c1", None).status, 200);
    assert_eq!(admin.request("DELETE", "/v1/consumers/c1", None).status, 404);
    assert_eq!(admin.get("/v1/events").status, 200, "admin implies read");

    assert_eq!(read.get("/v1/nothing").status, 404);
    assert_eq!(read.post("/v1/events", "{}").status, 405);
    for bad in [
        "/v1/events?limit=0",
        "/v1/events?limit=1001",
        "/v1/events?wait=31",
        "/v1/events?after=zz",
        "/v1/events?x=1",
    ] {
        assert_eq!(read.get(bad).status, 400, "{bad}");
    }
    assert_eq!(read.post("/v1/consumers/bad name/ack", r#"{"cursor":"start"}"#).status, 400);
    let untyped = {
        let mut c = Client::connect(addr);
        c.send(
            format!("POST /v1/consumers/c1/ack HTTP/1.1\r\nAuthorization: Bearer {READ}\r\nContent-Length: 2\r\n\r\n{{}}")
                .as_bytes(),
        );
        c.read_response().unwrap()
    };
    assert_eq!(untyped.status, 415);

    // Reading makes no consumer; acks make them, up to a bound.
    assert_eq!(read.get("/v1/consumers/just-reading/events").status, 200);
    let listed = read.ok("/v1/consumers");
    assert!(listed["data"].as_array().unwrap().iter().all(|c| c["name"] != "just-reading"), "{listed}");
    app.pg()
        .batch_execute(
            "INSERT INTO webhook_consumers (name) SELECT 'filler-' || n FROM generate_series(1, 1000) n",
        )
        .unwrap();
    let over = read.post("/v1/consumers/one-too-many/ack", r#"{"cursor":"start"}"#);
    assert_eq!(over.status, 400, "{}", String::from_utf8_lossy(&over.body));
    assert_eq!(
        read.post("/v1/consumers/filler-7/ack", r#"{"cursor":"start"}"#).status,
        200,
        "existing ones move"
    );
}

#[test]
fn the_api_is_off_without_tokens_and_tokens_never_reach_the_log() {
    let app = TestApp::spawn_full(|_| {});
    assert!(app.app_api_addr().is_none(), "no API_TOKENS, no listener");

    let (redis, pg) = servers();
    let port = free_port();
    let api_addr = format!("127.0.0.1:{port}");
    let tokens = format!("read:{READ},admin:{ADMIN}");
    let gateway = Gateway::spawn(
        free_port(),
        &redis,
        Some(&pg),
        "all",
        &[("API_TOKENS", &tokens), ("API_ADDR", &api_addr), ("LOG_LEVEL", "debug")],
    );
    let admin = Api::new(api_addr.parse().unwrap(), Some(ADMIN));
    wait_until(Duration::from_secs(10), "the api", || std::net::TcpStream::connect(admin.addr).is_ok());
    assert_eq!(admin.request("DELETE", "/v1/consumers/ops", None).status, 404);
    assert_eq!(Api::new(admin.addr, Some("wrong")).get("/v1/events").status, 401);
    let log = std::fs::read_to_string(gateway.log_path()).unwrap();
    assert!(log.contains("admin call"), "admin calls are logged");
    assert!(log.contains("\"token\":2"), "by the token's position: {log}");
    for secret in [READ, ADMIN] {
        assert!(!log.contains(secret), "a token in the log");
    }
    // A bad entry is refused with its position, never its value.
    let e = webhook_ingestor::config::Config::from_lookup(|k| {
        (k == "API_TOKENS").then(|| "owner:sekrit-value".to_string())
    })
    .unwrap_err();
    assert_eq!(e.var, "API_TOKENS");
    assert!(!e.to_string().contains("sekrit"), "{e}");
}

#[test]
fn filters_page_across_pages_and_a_cursor_past_the_retention_is_gone() {
    let app = consuming_app();
    let api = Api::new(app.api_addr(), Some(READ));
    let mut client = Client::connect(app.addr);
    for i in 0..30 {
        let provider = if i % 3 == 0 { "github" } else { "stripe" };
        let body = serde_json::json!({
            "provider": provider, "eventId": format!("f_{i}"),
            "timestamp": "2026-11-22T21:35:25.123Z", "data": {"n": i}
        });
        assert_eq!(client.post(provider, &body.to_string()).status, 202);
    }
    wait_until(Duration::from_secs(30), "30 rows", || app.rows() == 30);
    // The envelope carries no type; a signed sender's would (tests/it/senders.rs).
    app.pg()
        .batch_execute(
            "UPDATE webhook_events SET event_type = CASE WHEN (substr(event_id, 3)::int) % 2 = 0
                 THEN 'charge.succeeded' ELSE 'charge.failed' END",
        )
        .unwrap();

    let read_all = |query: &str| -> Vec<String> {
        let (mut all, mut next) = (Vec::new(), "start".to_string());
        loop {
            let (ids, n, done) = page_of(&api.ok(&format!("/v1/events?after={next}&limit=2{query}")));
            assert!(ids.len() <= 2);
            all.extend(ids);
            next = n;
            if done {
                return all;
            }
        }
    };
    let github = read_all("&provider=github");
    assert_eq!(github.len(), 10, "{github:?}");
    let failed_stripe = read_all("&provider=stripe&type=charge.failed");
    let expected: Vec<String> =
        (0..30).filter(|i| i % 3 != 0 && i % 2 == 1).map(|i| format!("f_{i}")).collect();
    let mut sorted = failed_stripe.clone();
    sorted.sort();
    let mut want = expected.clone();
    want.sort();
    assert_eq!(sorted, want);

    // One event by its sender's id.
    let one = api.ok("/v1/events/github/f_3");
    assert_eq!(one["eventId"], "f_3");
    assert_eq!(one["payload"]["data"]["n"], 3);
    assert_eq!(one["timestamp"], "2026-11-22T21:35:25.123Z");

    // The partition holding every row goes, as the retention drops it.
    let (_, cursor, _) = page_of(&api.ok("/v1/events?limit=5"));
    let mut pg = app.pg();
    let part: String = pg
        .query_one("SELECT tableoid::regclass::text FROM webhook_events WHERE event_id = 'f_0'", &[])
        .unwrap()
        .get(0);
    pg.batch_execute(&format!("ALTER TABLE webhook_events DETACH PARTITION {part}; DROP TABLE {part}"))
        .unwrap();
    let gone = api.get(&format!("/v1/events?after={cursor}"));
    assert_eq!(gone.status, 410, "{}", String::from_utf8_lossy(&gone.body));
    let oldest = gone.json()["oldest"].as_str().unwrap().to_string();
    assert_eq!(api.get(&format!("/v1/events?after={oldest}")).status, 200, "the oldest cursor is valid");
}

/// Gateway and workers in-process, the API on a free port with a read and
/// an admin token.
fn consuming_app() -> TestApp {
    TestApp::spawn_full(|c| {
        c.api.addr = "127.0.0.1:0".parse().unwrap();
        c.api.tokens = webhook_ingestor::api::Tokens::parse([
            format!("read:{READ}").as_str(),
            &format!("admin:{ADMIN}"),
        ])
        .unwrap();
    })
}

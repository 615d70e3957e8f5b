//! Test harness: a private `redis-server` per test (random port, temp dir,
//! stopped by pid), the gateway started in-process on port 0, and a raw
//! HTTP/1.1 client that shows exactly what went over the wire.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use webhook_ingestor::app::{self, Role, RunningApp};
use webhook_ingestor::config::{Config, CoreSelection};

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A `redis-server` child process with AOF on, like production.
pub struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    appendfsync: &'static str,
    /// More `redis-server` arguments (cluster mode).
    extra: Vec<String>,
}

impl RedisServer {
    /// A placeholder that owns no process (used when moving a server out).
    fn detached() -> Self {
        Self {
            port: 0,
            dir: tempfile::tempdir().unwrap(),
            child: None,
            appendfsync: "everysec",
            extra: Vec::new(),
        }
    }

    /// A server on `port` with these further arguments and fsync policy.
    pub fn start_with(port: u16, appendfsync: &'static str, extra: &[&str]) -> Self {
        let mut server = Self::detached();
        server.port = port;
        server.appendfsync = appendfsync;
        server.extra = extra.iter().map(|a| a.to_string()).collect();
        server.launch();
        server
    }

    /// The pid of the running server.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn start() -> Self {
        let mut server = Self::detached();
        server.port = free_port();
        server.launch();
        server
    }

    pub fn launch(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                self.appendfsync,
                "--maxmemory-policy",
                "noeviction",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server not found on PATH: run scripts/test, which installs it");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(mut con) = redis::Client::open(self.url()).unwrap().get_connection() {
                if redis::cmd("PING").query::<String>(&mut con).is_ok() {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on port {} did not come up", self.port);
    }

    /// Switches the running server's AOF fsync policy, and the policy of
    /// later launches.
    pub fn set_appendfsync(&mut self, policy: &'static str) {
        redis::cmd("CONFIG").arg("SET").arg("appendfsync").arg(policy).exec(&mut self.con()).unwrap();
        self.appendfsync = policy;
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn con(&self) -> redis::Connection {
        redis::Client::open(self.url()).unwrap().get_connection().unwrap()
    }

    /// Stops the server (SIGKILL by pid, like a crash) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing answers.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws a paused server (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("redis is running").id().to_string();
        assert!(Command::new("kill").args([sig, &pid]).status().unwrap().success());
    }

    /// Starts it again on the same port and data directory (AOF replayed).
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A private PostgreSQL cluster: `initdb` in a temp dir, a random port,
/// run as the `postgres` user when we are root (PostgreSQL refuses root).
pub struct PostgresServer {
    pub port: u16,
    dir: tempfile::TempDir,
    bindir: std::path::PathBuf,
    child: Option<Child>,
}

/// `(uid, gid)` of the `postgres` user when running as root.
fn pg_identity() -> Option<(u32, u32)> {
    let uid = String::from_utf8(Command::new("id").arg("-u").output().ok()?.stdout).ok()?;
    if uid.trim() != "0" {
        return None;
    }
    let id = |flag: &str| -> u32 {
        let out = Command::new("id").args([flag, "postgres"]).output().expect("id");
        String::from_utf8(out.stdout)
            .unwrap()
            .trim()
            .parse()
            .expect("a `postgres` user exists (scripts/test creates it)")
    };
    Some((id("-u"), id("-g")))
}

fn pg_bindir() -> std::path::PathBuf {
    if let Ok(out) = Command::new("sh").args(["-c", "command -v initdb"]).output() {
        let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !path.is_empty() {
            return std::fs::canonicalize(path).unwrap().parent().unwrap().to_path_buf();
        }
    }
    let mut dirs: Vec<_> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries not found: run scripts/test, which installs them")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    dirs.sort();
    dirs.pop().expect("no initdb under /usr/lib/postgresql/*/bin: run scripts/test")
}

impl PostgresServer {
    pub fn start() -> Self {
        use std::os::unix::process::CommandExt;
        let dir = tempfile::tempdir().unwrap();
        let bindir = pg_bindir();
        let identity = pg_identity();
        if let Some((uid, gid)) = identity {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        let mut initdb = Command::new(bindir.join("initdb"));
        initdb
            .arg("-D")
            .arg(dir.path().join("data"))
            .args(["-U", "webhook", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some((uid, gid)) = identity {
            initdb.uid(uid).gid(gid);
        }
        assert!(initdb.status().expect("initdb runs").success(), "initdb failed");
        let mut server = Self { port: free_port(), dir, bindir, child: None };
        server.launch();
        server
    }

    pub fn launch(&mut self) {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(self.bindir.join("postgres"));
        cmd.arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-p", &self.port.to_string(), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .arg("-k")
            .arg(self.dir.path())
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some((uid, gid)) = pg_identity() {
            cmd.uid(uid).gid(gid);
        }
        self.child = Some(cmd.spawn().expect("postgres starts"));
        let deadline = Instant::now() + Duration::from_secs(30);
        while postgres::Client::connect(&self.url("postgres"), postgres::NoTls).is_err() {
            assert!(Instant::now() < deadline, "postgres on port {} did not come up", self.port);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://webhook@127.0.0.1:{}/{db}", self.port)
    }

    pub fn create_database(&self, db: &str) {
        self.client("postgres").batch_execute(&format!("CREATE DATABASE {db}")).unwrap();
    }

    pub fn client(&self, db: &str) -> postgres::Client {
        postgres::Client::connect(&self.url(db), postgres::NoTls).unwrap()
    }

    /// Fast shutdown (SIGINT to the postmaster, by pid) and wait.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
            let _ = child.wait();
        }
    }

    pub fn start_again(&mut self) {
        self.stop();
        self.launch();
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The database each test's gateway writes to.
pub const DB: &str = "webhooks";

/// The gateway under test with its own Redis (and PostgreSQL for roles
/// that run workers).
pub struct TestApp {
    pub redis: RedisServer,
    pub postgres: Option<PostgresServer>,
    pub addr: SocketAddr,
    pub config: Config,
    app: Option<RunningApp>,
}

impl TestApp {
    /// The gateway alone (`--role api`): loopback, port 0, two unpinned runtimes.
    pub fn spawn() -> Self {
        Self::spawn_with(|_| {})
    }

    pub fn spawn_with(tweak: impl FnOnce(&mut Config)) -> Self {
        Self::start(Role::Api, RedisServer::start(), None, tweak)
    }

    /// Gateway and workers (`--role all`) with a private PostgreSQL.
    pub fn spawn_full(tweak: impl FnOnce(&mut Config)) -> Self {
        let pg = PostgresServer::start();
        pg.create_database(DB);
        Self::start(Role::All, RedisServer::start(), Some(pg), tweak)
    }

    /// The gateway alone (`--role api`) with a PostgreSQL beside it, for tests
    /// that drive the workers themselves or start them later.
    pub fn spawn_api_with_postgres() -> Self {
        let pg = PostgresServer::start();
        pg.create_database(DB);
        Self::start(Role::Api, RedisServer::start(), Some(pg), |_| {})
    }

    /// Starts `role` against the given servers.
    pub fn start(
        role: Role,
        redis: RedisServer,
        postgres: Option<PostgresServer>,
        tweak: impl FnOnce(&mut Config),
    ) -> Self {
        let mut config = Config::default();
        config.http.host = [127, 0, 0, 1].into();
        config.http.port = 0;
        config.http.cores = CoreSelection::Count(2);
        config.http.pin_cores = false;
        config.queue.redis_url = redis.url();
        config.store.database_url = postgres.as_ref().map(|pg| pg.url(DB));
        config.worker.block = Duration::from_millis(100);
        tweak(&mut config);
        let app = app::start(&config, role).expect("app starts");
        let addr = app.local_addr().unwrap_or_else(|| "127.0.0.1:9".parse().unwrap());
        Self { addr, redis, postgres, config, app: Some(app) }
    }

    /// Stops the app and hands back its servers (to start another role on them).
    pub fn into_servers(mut self) -> (RedisServer, Option<PostgresServer>) {
        if let Some(app) = self.app.take() {
            app.stop();
        }
        let redis = std::mem::replace(&mut self.redis, RedisServer::detached());
        (redis, self.postgres.take())
    }

    /// Where the API listens; panics when it is off.
    pub fn api_addr(&self) -> SocketAddr {
        self.app_api_addr().expect("the API is on (API_TOKENS)")
    }

    /// Where the API listens, if it is on.
    pub fn app_api_addr(&self) -> Option<SocketAddr> {
        self.app.as_ref().and_then(RunningApp::api_addr)
    }

    pub fn pg(&self) -> postgres::Client {
        self.postgres.as_ref().expect("this app has postgres").client(DB)
    }

    pub fn rows(&self) -> i64 {
        self.pg().query_one("SELECT count(*) FROM webhook_events", &[]).map(|r| r.get(0)).unwrap_or(0)
    }

    /// Entries delivered to a worker and not yet acknowledged.
    pub fn pending(&self) -> u64 {
        redis::cmd("XPENDING")
            .arg(&self.config.queue.queue_name)
            .arg("ingest")
            .query::<(u64, redis::Value, redis::Value, redis::Value)>(&mut self.redis.con())
            .map(|r| r.0)
            .unwrap_or(0)
    }

    /// Dead letters: rows of `webhook_dead_letters` (with PostgreSQL) and
    /// entries of the Redis fallback stream.
    pub fn dead_letters(&self) -> usize {
        self.dead_letters_in_redis() + self.dead_letter_rows().len()
    }

    /// Entries of the Redis dead-letter fallback stream.
    pub fn dead_letters_in_redis(&self) -> usize {
        redis::cmd("XLEN")
            .arg(format!("{}:dead", self.config.queue.queue_name))
            .query(&mut self.redis.con())
            .unwrap()
    }

    /// The rows of `webhook_dead_letters` (none without PostgreSQL, or
    /// before the migrations ran).
    pub fn dead_letter_rows(&self) -> Vec<webhook_ingestor::store::dead_letters::DeadLetter> {
        let Some(pg) = &self.postgres else { return Vec::new() };
        webhook_ingestor::store::dead_letters::list(&mut pg.client(DB), None, 100_000).unwrap_or_default()
    }

    pub fn client(&self) -> Client {
        Client::connect(self.addr)
    }

    /// One POST on a fresh connection.
    pub fn post(&self, provider: &str, body: &str) -> Response {
        self.client().post(provider, body)
    }

    pub fn stream_len(&self) -> usize {
        redis::cmd("XLEN").arg(&self.config.queue.queue_name).query(&mut self.redis.con()).unwrap()
    }

    /// Every entry of the stream, oldest first: `(id, fields)`.
    pub fn stream_entries(&self) -> Vec<(String, HashMap<String, redis::Value>)> {
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(&self.config.queue.queue_name)
            .arg("-")
            .arg("+")
            .query(&mut self.redis.con())
            .unwrap();
        reply.ids.into_iter().map(|e| (e.id, e.map)).collect()
    }

    pub fn drivers(&self) -> Vec<webhook_ingestor::http::server::Driver> {
        self.app.as_ref().expect("running").drivers().to_vec()
    }

    pub fn queue_backlog(&self) -> usize {
        self.app.as_ref().expect("running").queue_backlog()
    }

    pub fn shutdown_token(&self) -> tokio_util::sync::CancellationToken {
        self.app.as_ref().expect("running").shutdown_token()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(app) = self.app.take() {
            app.stop();
        }
    }
}

/// `clients` keep-alive clients posting `each` distinct Stripe events at
/// once; every answer must be 202. Returns the job ids.
pub fn post_concurrently(addr: std::net::SocketAddr, clients: usize, each: usize) -> Vec<String> {
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            std::thread::spawn(move || {
                let mut client = Client::connect(addr);
                (0..each)
                    .map(|i| {
                        let resp = client.post("stripe", &event("stripe", &format!("evt_{c}_{i}")));
                        assert_eq!(resp.status, 202, "{}", String::from_utf8_lossy(&resp.body));
                        resp.job_id()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    threads.into_iter().flat_map(|t| t.join().unwrap()).collect()
}

/// Polls `check` until it holds, failing with `what` after `within`.
pub fn wait_until(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "timed out after {within:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A webhook body in the seed's shape.
pub fn event(provider: &str, event_id: &str) -> String {
    format!(
        r#"{{"provider":"{provider}","eventId":"{event_id}","timestamp":"2026-11-22T21:35:25.123Z","data":{{"amount":4200,"currency":"brl","customer_id":"cus_x","status":"succeeded"}}}}"#
    )
}

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The `message` array of a 400, as strings.
    pub fn messages(&self) -> Vec<String> {
        let v = self.json();
        v["message"]
            .as_array()
            .unwrap_or_else(|| panic!("no message array in {v}"))
            .iter()
            .map(|m| m.as_str().unwrap().to_string())
            .collect()
    }

    pub fn job_id(&self) -> String {
        assert_eq!(self.status, 202, "{}", String::from_utf8_lossy(&self.body));
        self.json()["jobId"].as_str().unwrap().to_string()
    }
}

/// A raw HTTP/1.1 client over one TCP connection.
pub struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Self {
        Self::try_connect(addr).unwrap()
    }

    /// Wraps an already connected stream.
    pub fn from_stream(stream: TcpStream) -> Self {
        Self { stream, buf: Vec::new() }
    }

    /// Like `connect`, but a refused connection is returned, not a panic.
    pub fn try_connect(addr: SocketAddr) -> std::io::Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(15)))?;
        stream.set_nodelay(true)?;
        Ok(Self { stream, buf: Vec::new() })
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Like `send`, but a peer that already closed is not a failure.
    pub fn try_send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    pub fn post(&mut self, provider: &str, body: &str) -> Response {
        self.send(&post_request(provider, body));
        self.read_response().expect("a response")
    }

    /// Reads one response; `None` if the server closed first.
    pub fn read_response(&mut self) -> Option<Response> {
        match self.try_read_response() {
            Ok(resp) => resp,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => None,
            Err(e) => panic!("read failed: {e}"),
        }
    }

    /// Like `read_response`, but every I/O error (a timeout included) is returned.
    pub fn try_read_response(&mut self) -> std::io::Result<Option<Response>> {
        loop {
            if let Some((resp, used)) = parse_response(&self.buf) {
                self.buf.drain(..used);
                return Ok(Some(resp));
            }
            let mut chunk = [0u8; 16384];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Ok(None),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                // A signal another test sends this process (the in-process
                // gateways handle SIGTERM) interrupts the read: read again.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Sets how long a read may wait.
    pub fn set_read_timeout(&self, timeout: Duration) {
        self.stream.set_read_timeout(Some(timeout)).unwrap();
    }

    /// True when the server has closed the connection (EOF or reset).
    pub fn is_closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.stream.read(&mut b), Ok(0) | Err(_))
    }
}

/// A `POST /webhooks/{provider}` request with a JSON body.
pub fn post_request(provider: &str, body: &str) -> Vec<u8> {
    format!(
        "POST /webhooks/{provider} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Adds to `stream` an entry no worker can ever store: a job without its
/// provider (and a body that is not UTF-8), dead-lettered at once.
pub fn add_unstorable_entry(con: &mut impl redis::ConnectionLike, stream: &str, event_id: &str) {
    redis::cmd("XADD")
        .arg(stream)
        .arg("*")
        .arg("v")
        .arg("2")
        .arg("y")
        .arg("")
        .arg("e")
        .arg(event_id)
        .arg("b")
        .arg(b"{\"\xff\":1}".as_slice())
        .exec(con)
        .unwrap();
}

/// Posts `bodies` to the stripe route pipelined in one write on one
/// connection, so the workers see them in one batch, and checks each gets 202.
pub fn post_together(app: &TestApp, bodies: &[String]) {
    let batch: Vec<u8> = bodies.iter().flat_map(|b| post_request("stripe", b)).collect();
    let mut client = app.client();
    client.send(&batch);
    for body in bodies {
        assert_eq!(client.read_response().unwrap().status, 202, "{body}");
    }
}

fn parse_response(buf: &[u8]) -> Option<(Response, usize)> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf).expect("valid response head") {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return None,
    };
    let status = resp.code.unwrap();
    let headers: Vec<(String, String)> = resp
        .headers
        .iter()
        .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).into_owned()))
        .collect();
    if status == 100 {
        return Some((Response { status, headers, body: vec![] }, head_len));
    }
    let len: usize =
        headers.iter().find(|(n, _)| n == "content-length").map(|(_, v)| v.parse().unwrap()).unwrap_or(0);
    if buf.len() < head_len + len {
        return None;
    }
    Some((Response { status, headers, body: buf[head_len..head_len + len].to_vec() }, head_len + len))
}

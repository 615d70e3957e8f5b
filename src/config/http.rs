//! `http/`'s section: the listener, the runtimes and their cores, the
//! limits, security headers, CORS, rate limits and proxies, and the
//! [`CoreSettings`](crate::http::server::CoreSettings) each core runtime takes.

use std::net::IpAddr;
use std::time::Duration;

use super::vars::{parse_cores, Vars};
use super::{at_least_body, ConfigError, CoreSelection};
use crate::http::cors::Cors;
use crate::http::proxy::TrustedProxies;
use crate::http::server::TaskRun;

/// `http/`: listeners, runtimes, request limits, security.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// `HOST` (default `0.0.0.0`): the address to listen on.
    pub host: IpAddr,
    /// `PORT` (default 3000). `0` picks a free port (tests).
    pub port: u16,
    /// `CORES` (default `auto`: the CPU set, capped at the CPU quota's whole
    /// cores): `all`, a count (`2`) or a list (`0,2-3`).
    pub cores: CoreSelection,
    /// `PIN_CORES` (default true): pin each runtime thread to its core.
    pub pin_cores: bool,
    /// `URING_TASKRUN` (default `defer`): `defer`, `coop` or `signal`, when
    /// the kernel completes a ring's I/O; an older kernel gets the newest
    /// mode it has ([`TaskRun`]).
    pub uring_taskrun: TaskRun,
    /// `MAX_BODY_BYTES` (default 1 MiB): larger bodies get 413, unread.
    pub max_body_bytes: usize,
    /// `MAX_HEADER_BYTES` (default 16 KiB): a larger request head gets 431.
    pub max_header_bytes: usize,
    /// `REQUEST_TIMEOUT_MS` (default 10000): from a request's first byte to
    /// its last, and for writing its answer; slower clients are cut off.
    pub request_timeout: Duration,
    /// `KEEPALIVE_TIMEOUT_MS` (default 30000): an idle connection is closed after this.
    pub keepalive_timeout: Duration,
    /// `MAX_CONNECTIONS_PER_CORE` (default 20000): connections beyond it get
    /// 503 at accept and are closed.
    pub max_connections_per_core: usize,
    /// `MAX_CONNECTIONS_PER_IP` (default 4096, 0 = no cap): connections one
    /// client (an IPv4 address, an IPv6 /64) may hold on each core; beyond
    /// it, 503 at accept. Trusted proxies (`TRUST_PROXY`) are exempt.
    pub max_connections_per_ip: u32,
    /// `MAX_BUFFER_BYTES_PER_CORE` (default 256 MiB, at least
    /// `MAX_BODY_BYTES`): request bodies over 16 KiB in flight on one core;
    /// a body that would pass it gets 503 unread.
    pub max_buffer_bytes_per_core: usize,
    /// `RETRY_AFTER_SECS` (default 1): the `Retry-After` sent with 503.
    pub retry_after_secs: u32,
    /// `SECURITY_HEADERS` (default true): helmet's default headers on every response.
    pub security_headers: bool,
    /// `CORS_ORIGINS` (default empty = no cross-origin access): comma list of origins, or `*`.
    pub cors: Cors,
    /// `RATE_LIMIT_GLOBAL` (default 100000): requests/s for the process, 0 = off.
    pub rate_limit_global: u64,
    /// `RATE_LIMIT_PER_IP` (default 20000): requests/s per client IP, 0 = off.
    pub rate_limit_per_ip: u64,
    /// `TRUST_PROXY` (default `false`): the proxies' networks (a comma list
    /// of CIDRs and addresses). A request from one of them is counted as the
    /// rightmost `X-Forwarded-For` address that is not a trusted proxy.
    pub trusted_proxies: TrustedProxies,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            host: IpAddr::from([0, 0, 0, 0]),
            port: 3000,
            cores: CoreSelection::Auto,
            pin_cores: true,
            uring_taskrun: TaskRun::Defer,
            max_body_bytes: 1024 * 1024,
            max_header_bytes: 16 * 1024,
            request_timeout: Duration::from_millis(10_000),
            keepalive_timeout: Duration::from_millis(30_000),
            max_connections_per_core: 20_000,
            max_connections_per_ip: 4096,
            max_buffer_bytes_per_core: 256 << 20,
            retry_after_secs: 1,
            security_headers: true,
            cors: Cors::default(),
            rate_limit_global: 100_000,
            rate_limit_per_ip: 20_000,
            trusted_proxies: TrustedProxies::default(),
        }
    }
}

impl HttpConfig {
    pub(super) fn read(v: &Vars<'_>) -> Result<Self, ConfigError> {
        let d = Self::default();
        let c = Self {
            host: v.var("HOST").parse_or(d.host, "an IP address such as 0.0.0.0 or 127.0.0.1")?,
            port: v.var("PORT").parse_or(d.port, "a port number from 0 to 65535")?,
            cores: v.var("CORES").map_or(d.cores, parse_cores)?,
            pin_cores: v.var("PIN_CORES").bool_or(d.pin_cores)?,
            uring_taskrun: v.var("URING_TASKRUN").map_or(d.uring_taskrun, |t| {
                match t.to_ascii_lowercase().as_str() {
                    "defer" => Ok(TaskRun::Defer),
                    "coop" => Ok(TaskRun::Coop),
                    "signal" => Ok(TaskRun::Signal),
                    _ => Err("`defer`, `coop` or `signal`".into()),
                }
            })?,
            max_body_bytes: v.var("MAX_BODY_BYTES").in_range(d.max_body_bytes, 64, 1 << 30)?,
            max_header_bytes: v.var("MAX_HEADER_BYTES").in_range(d.max_header_bytes, 1024, 1 << 20)?,
            request_timeout: v.var("REQUEST_TIMEOUT_MS").millis(d.request_timeout, 10, 3_600_000)?,
            keepalive_timeout: v.var("KEEPALIVE_TIMEOUT_MS").millis(d.keepalive_timeout, 10, 3_600_000)?,
            max_connections_per_core: v.var("MAX_CONNECTIONS_PER_CORE").in_range(
                d.max_connections_per_core,
                1,
                10_000_000,
            )?,
            max_connections_per_ip: v.var("MAX_CONNECTIONS_PER_IP").in_range(
                d.max_connections_per_ip,
                0,
                10_000_000,
            )?,
            max_buffer_bytes_per_core: v.var("MAX_BUFFER_BYTES_PER_CORE").in_range(
                d.max_buffer_bytes_per_core,
                1 << 16,
                1 << 40,
            )?,
            retry_after_secs: v.var("RETRY_AFTER_SECS").in_range(d.retry_after_secs, 0, 86_400)?,
            security_headers: v.var("SECURITY_HEADERS").bool_or(d.security_headers)?,
            cors: v.var("CORS_ORIGINS").map_or(d.cors, Cors::parse)?,
            rate_limit_global: v.var("RATE_LIMIT_GLOBAL").in_range(d.rate_limit_global, 0, 100_000_000)?,
            rate_limit_per_ip: v.var("RATE_LIMIT_PER_IP").in_range(d.rate_limit_per_ip, 0, 100_000_000)?,
            trusted_proxies: v.var("TRUST_PROXY").map_or(d.trusted_proxies, TrustedProxies::parse)?,
        };
        if c.max_buffer_bytes_per_core < c.max_body_bytes {
            return Err(at_least_body(v, "MAX_BUFFER_BYTES_PER_CORE", c.max_body_bytes));
        }
        Ok(c)
    }
}

impl super::Config {
    /// What each core runtime takes: this section, the body parser's
    /// settings, the shutdown timeout, how many cores share the global rate
    /// limit, and the sources.
    pub fn core_settings(
        &self,
        cores: usize,
        sources: std::sync::Arc<crate::ingest::sources::Sources>,
    ) -> crate::http::server::CoreSettings {
        let h = &self.http;
        crate::http::server::CoreSettings {
            uring_taskrun: h.uring_taskrun,
            limits: crate::http::request::Limits {
                max_head: h.max_header_bytes,
                max_body: self.largest_body(),
            },
            max_body: h.max_body_bytes,
            request_timeout: h.request_timeout,
            keepalive_timeout: h.keepalive_timeout,
            retry_after_secs: h.retry_after_secs,
            max_connections: h.max_connections_per_core,
            max_connections_per_ip: h.max_connections_per_ip,
            max_buffer_bytes: h.max_buffer_bytes_per_core,
            shutdown_timeout: self.ops.shutdown_timeout,
            json_parser: self.ingest.json_parser,
            max_json_depth: self.ingest.max_json_depth,
            security_headers: h.security_headers,
            cors: h.cors.clone(),
            rate_limit_global: h.rate_limit_global,
            rate_limit_per_ip: h.rate_limit_per_ip,
            cores,
            trusted_proxies: h.trusted_proxies.clone(),
            sources,
        }
    }
}

//! Every Redis key spelling the system uses, in one place. The stream is
//! `QUEUE_NAME` itself; everything else is derived from it, so one queue's
//! keys share its prefix (and, with a hash tag in the name, its slot).

/// The dead-letter stream of `stream`: entries that could not be stored.
pub fn dead_letters(stream: &str) -> String {
    format!("{stream}:dead")
}

/// The key recording that `(provider, event_id)` is stored, set with a TTL
/// after the commit. Providers never contain `:`, so the key is unambiguous.
pub fn seen(stream: &str, provider: &str, event_id: &str) -> String {
    format!("{stream}:seen:{provider}:{event_id}")
}

/// The consumer name of worker thread `n` of process `pid` on `host`.
pub fn consumer(host: &str, pid: u32, n: usize) -> String {
    format!("{host}-{pid}-{n}")
}

/// The host and pid a [`consumer`] name was made from (host names may hold `-`).
pub fn consumer_origin(name: &str) -> Option<(&str, u32)> {
    let mut parts = name.rsplitn(3, '-');
    let _n: usize = parts.next()?.parse().ok()?;
    let pid = parts.next()?.parse().ok()?;
    Some((parts.next()?, pid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_names_give_back_their_host_and_pid() {
        let name = consumer("web-01.example", 4242, 3);
        assert_eq!(name, "web-01.example-4242-3");
        assert_eq!(consumer_origin(&name), Some(("web-01.example", 4242)));
        assert_eq!(consumer_origin("a"), None);
        assert_eq!(consumer_origin("host-x-1"), None);
    }
}

//! Per-core bounds on what clients can make the gateway hold: body bytes in
//! flight (`MAX_BUFFER_BYTES_PER_CORE`) and connections per client
//! (`MAX_CONNECTIONS_PER_IP`). Both are plain counters in `Cell`s: a core's
//! connections are tasks on one thread, so nothing is locked.
//!
//! A body larger than [`SMALL_BODY`] takes a [`Grant`] that grows with the
//! bytes that actually arrive (never with what `Content-Length` declares: a
//! client that declares a megabyte and sends nothing holds nothing), and
//! gives it back when its request is answered. When the core's budget, or
//! the client's share of it ([`CLIENT_SHARE`]), cannot cover the next
//! bytes, the request gets 503 with `Retry-After` and is closed unread.
//! Smaller bodies are bounded by the connection count and skip the
//! accounting, so the common webhook pays nothing for it.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::IpAddr;

use super::proxy::client_key;

/// Bodies up to this size are not accounted (they fit a connection's base buffer).
pub const SMALL_BODY: usize = 16 * 1024;

/// The most of a core's budget one client (an IP, an IPv6 /64) may hold:
/// one slow sender cannot starve the others.
pub const CLIENT_SHARE: f64 = 0.5;

/// One core's body-byte budget.
#[derive(Debug)]
pub struct BufferBudget {
    used: Cell<usize>,
    max: usize,
    /// Bytes held per client; a client is absent when it holds none.
    by_client: RefCell<HashMap<IpAddr, usize>>,
    client_max: usize,
}

impl BufferBudget {
    /// A budget of `max` bytes, of which one client may hold
    /// [`CLIENT_SHARE`] but never less than `at_least` (one whole body).
    pub fn new(max: usize, at_least: usize) -> Self {
        let client_max = ((max as f64 * CLIENT_SHARE) as usize).max(at_least).min(max);
        Self { used: Cell::new(0), max, by_client: RefCell::new(HashMap::new()), client_max }
    }

    /// Bytes granted now.
    pub fn used(&self) -> usize {
        self.used.get()
    }

    /// An empty grant for `peer`'s request, to grow as its body arrives.
    pub fn open(&self, peer: IpAddr) -> Grant<'_> {
        Grant { budget: self, client: client_key(peer), bytes: 0 }
    }
}

/// Bytes held on a [`BufferBudget`]; returned on drop.
#[derive(Debug)]
pub struct Grant<'a> {
    budget: &'a BufferBudget,
    client: IpAddr,
    bytes: usize,
}

impl Grant<'_> {
    /// Extends the grant to `bytes` in total (a body arriving); false, and
    /// unchanged, when the core's budget or the client's share cannot cover it.
    pub fn grow_to(&mut self, bytes: usize) -> bool {
        let extra = bytes.saturating_sub(self.bytes);
        if extra == 0 {
            return true;
        }
        let used = self.budget.used.get();
        let mut by_client = self.budget.by_client.borrow_mut();
        let held = by_client.get(&self.client).copied().unwrap_or(0);
        if used + extra > self.budget.max || held + extra > self.budget.client_max {
            return false;
        }
        by_client.insert(self.client, held + extra);
        self.budget.used.set(used + extra);
        self.bytes += extra;
        true
    }
}

impl Drop for Grant<'_> {
    fn drop(&mut self) {
        if self.bytes == 0 {
            return;
        }
        self.budget.used.set(self.budget.used.get() - self.bytes);
        let mut by_client = self.budget.by_client.borrow_mut();
        if let Some(held) = by_client.get_mut(&self.client) {
            *held -= self.bytes;
            if *held == 0 {
                by_client.remove(&self.client);
            }
        }
    }
}

/// Open connections per client on one core.
#[derive(Debug)]
pub struct ConnectionsPerClient {
    open: RefCell<HashMap<IpAddr, u32>>,
    /// 0 = no cap.
    max: u32,
}

impl ConnectionsPerClient {
    /// At most `max` connections per client (0 = no cap).
    pub fn new(max: u32) -> Self {
        Self { open: RefCell::new(HashMap::new()), max }
    }

    /// Counts a new connection from `peer`; false (and nothing counted) when
    /// the client already has `max`.
    pub fn admit(&self, peer: IpAddr) -> bool {
        if self.max == 0 {
            return true;
        }
        let mut open = self.open.borrow_mut();
        let n = open.entry(client_key(peer)).or_insert(0);
        if *n >= self.max {
            return false;
        }
        *n += 1;
        true
    }

    /// Forgets a connection [`admit`](Self::admit) counted.
    pub fn release(&self, peer: IpAddr) {
        if self.max == 0 {
            return;
        }
        let mut open = self.open.borrow_mut();
        let key = client_key(peer);
        if let Some(n) = open.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    #[test]
    fn grants_share_the_budget_and_return_it_on_drop() {
        let budget = BufferBudget::new(100, 0);
        let mut a = budget.open(ip(1));
        assert!(a.grow_to(50));
        let mut a2 = budget.open(ip(1));
        assert!(!a2.grow_to(1), "a client holds at most half");
        let mut b = budget.open(ip(2));
        assert!(b.grow_to(50));
        let mut c = budget.open(ip(3));
        assert!(!c.grow_to(1), "over the budget");
        assert_eq!(budget.used(), 100);
        drop(a);
        assert!(c.grow_to(30));
        assert!(a2.grow_to(20));
        drop((b, c, a2));
        assert_eq!(budget.used(), 0);
        assert!(budget.by_client.borrow().is_empty(), "nothing kept per client once released");
    }

    #[test]
    fn a_declared_size_holds_nothing_until_it_arrives() {
        let budget = BufferBudget::new(100, 0);
        let idle: Vec<Grant<'_>> = (0..1000).map(|i| budget.open(ip((i % 250) as u8))).collect();
        assert_eq!(budget.used(), 0);
        let mut real = budget.open(ip(251));
        assert!(real.grow_to(40), "{} grants that received nothing take no room", idle.len());
    }

    #[test]
    fn one_client_may_always_hold_one_whole_body() {
        let budget = BufferBudget::new(100, 80);
        let mut a = budget.open(ip(1));
        assert!(a.grow_to(80));
        assert!(!a.grow_to(81));
    }

    #[test]
    fn connections_are_capped_per_client_and_released() {
        let caps = ConnectionsPerClient::new(2);
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        assert!(caps.admit(a) && caps.admit(a));
        assert!(!caps.admit(a));
        assert!(caps.admit(b));
        caps.release(a);
        assert!(caps.admit(a));
        // One IPv6 /64 is one client.
        let v6 = |last: u16| IpAddr::from([0x2001, 0xdb8, 0, 7, 0, 0, 0, last]);
        assert!(caps.admit(v6(1)) && caps.admit(v6(2)) && !caps.admit(v6(3)));
        assert!(ConnectionsPerClient::new(0).admit(a), "0 = no cap");
    }
}

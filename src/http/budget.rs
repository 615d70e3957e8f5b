//! Per-core bounds on what clients can make the gateway hold: body bytes in
//! flight (`MAX_BUFFER_BYTES_PER_CORE`) and connections per client
//! (`MAX_CONNECTIONS_PER_IP`). Both are plain counters in `Cell`s: a core's
//! connections are tasks on one thread, so nothing is locked.
//!
//! A body larger than [`SMALL_BODY`] takes a [`Grant`] for its size before
//! it is read, and gives it back when its request is answered; when the core
//! holds `MAX_BUFFER_BYTES_PER_CORE` already, the request gets 503 with
//! `Retry-After` and its body is never read. Smaller bodies are bounded by
//! the connection count and skip the accounting, so the common webhook pays
//! nothing for it.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::IpAddr;

use super::proxy::client_key;

/// Bodies up to this size are not accounted (they fit a connection's base buffer).
pub const SMALL_BODY: usize = 16 * 1024;

/// One core's body-byte budget.
#[derive(Debug)]
pub struct BufferBudget {
    used: Cell<usize>,
    max: usize,
}

impl BufferBudget {
    /// A budget of `max` bytes.
    pub fn new(max: usize) -> Self {
        Self { used: Cell::new(0), max }
    }

    /// Bytes granted now.
    pub fn used(&self) -> usize {
        self.used.get()
    }

    /// A grant for `bytes`, or `None` when the budget cannot cover it.
    pub fn take(&self, bytes: usize) -> Option<Grant<'_>> {
        let mut grant = Grant { budget: self, bytes: 0 };
        grant.grow_to(bytes).then_some(grant)
    }
}

/// Bytes held on a [`BufferBudget`]; returned on drop.
#[derive(Debug)]
pub struct Grant<'a> {
    budget: &'a BufferBudget,
    bytes: usize,
}

impl Grant<'_> {
    /// Extends the grant to `bytes` in total (a chunked body growing);
    /// false, and unchanged, when the budget cannot cover it.
    pub fn grow_to(&mut self, bytes: usize) -> bool {
        let extra = bytes.saturating_sub(self.bytes);
        let used = self.budget.used.get();
        if used + extra > self.budget.max {
            return false;
        }
        self.budget.used.set(used + extra);
        self.bytes += extra;
        true
    }
}

impl Drop for Grant<'_> {
    fn drop(&mut self) {
        self.budget.used.set(self.budget.used.get() - self.bytes);
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

    #[test]
    fn grants_share_the_budget_and_return_it_on_drop() {
        let budget = BufferBudget::new(100);
        let a = budget.take(60).unwrap();
        assert!(budget.take(50).is_none());
        let mut b = budget.take(40).unwrap();
        assert!(!b.grow_to(41), "over the budget");
        assert_eq!(budget.used(), 100);
        drop(a);
        assert!(b.grow_to(90));
        drop(b);
        assert_eq!(budget.used(), 0);
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

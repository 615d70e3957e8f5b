//! The real binary as a process: signals. (Faults under load are in `chaos`.)

use std::time::{Duration, Instant};

use crate::fault::Gateway;
use crate::harness::{event, free_port, post_request, Client, RedisServer};

#[test]
fn a_second_signal_exits_at_once() {
    let redis = RedisServer::start();
    let patient = [("ENQUEUE_TIMEOUT_MS", "30000"), ("SHUTDOWN_TIMEOUT_MS", "30000")];
    let mut gateway = Gateway::spawn(free_port(), &redis, None, "api", &patient);
    let addr = gateway.addr();
    assert_eq!(Client::connect(addr).post("stripe", &event("stripe", "evt_up")).status, 202);
    // A request stuck on a frozen Redis keeps the drain waiting...
    redis.pause();
    let stuck = std::thread::spawn(move || {
        let mut c = Client::connect(addr);
        c.try_send(&post_request("stripe", &event("stripe", "evt_stuck"))).unwrap();
        c.read_response()
    });
    std::thread::sleep(Duration::from_millis(300));
    gateway.signal("-TERM");
    std::thread::sleep(Duration::from_millis(300));
    assert!(gateway.is_running(), "still draining after the first signal");
    // ...until the second signal.
    let second = Instant::now();
    gateway.signal("-TERM");
    let status = gateway.wait_exit(Duration::from_secs(5));
    assert!(second.elapsed() < Duration::from_secs(2));
    assert_eq!(status.code(), Some(143));
    redis.resume();
    assert!(stuck.join().unwrap().is_none(), "the stuck request got no 202");
}

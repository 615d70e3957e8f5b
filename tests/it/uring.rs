//! `URING_TASKRUN`: each of the three completion modes serves, and the one
//! asked for is the one the cores run with (this kernel has all three; an
//! older one would get the newest it has, with a warning).

use std::collections::HashSet;

use webhook_ingestor::http::server::{Driver, TaskRun};

use crate::harness::{event, post_concurrently, TestApp};

fn serves_with(taskrun: TaskRun) {
    let app = TestApp::spawn_with(|c| c.http.uring_taskrun = taskrun);
    assert_eq!(app.drivers(), vec![Driver::IoUring(taskrun); 2], "both cores run the mode asked for");
    // Concurrent keep-alive clients: completions arrive while the core is busy.
    let ids = post_concurrently(app.addr, 8, 50);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 400, "400 distinct 202s");
    assert_eq!(app.stream_len(), 400);
    // A pipelined burst on one connection: many completions per read.
    let mut client = app.client();
    let burst: Vec<u8> = (0..20)
        .flat_map(|i| crate::harness::post_request("stripe", &event("stripe", &format!("evt_burst_{i}"))))
        .collect();
    client.send(&burst);
    for _ in 0..20 {
        assert_eq!(client.read_response().expect("an answer").status, 202);
    }
    assert_eq!(app.stream_len(), 420);
}

#[test]
fn deferred_completion_work_serves() {
    serves_with(TaskRun::Defer);
}

#[test]
fn cooperative_completion_work_serves() {
    serves_with(TaskRun::Coop);
}

#[test]
fn signalled_completion_work_serves() {
    serves_with(TaskRun::Signal);
}

//! Many clients at once: every answer is 202 and the stream holds exactly
//! one entry per 202.

use std::collections::HashSet;

use crate::harness::{post_concurrently, TestApp};

#[test]
fn fifty_concurrent_clients_get_only_202s_and_the_stream_counts_them_all() {
    let app = TestApp::spawn();
    let ids = post_concurrently(app.addr, 50, 200);

    assert_eq!(ids.len(), 10_000);
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "every job has its own stream id");
    assert_eq!(app.stream_len(), ids.len(), "stream length equals the number of 202s");
}

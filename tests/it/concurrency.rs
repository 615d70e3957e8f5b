//! Many clients at once: every answer is 202 and the stream holds exactly
//! one entry per 202.

use std::collections::HashSet;

use crate::harness::{event, Client, TestApp};

#[test]
fn fifty_concurrent_clients_get_only_202s_and_the_stream_counts_them_all() {
    let app = TestApp::spawn();
    let addr = app.addr;
    let clients: Vec<_> = (0..50)
        .map(|c| {
            std::thread::spawn(move || {
                let mut client = Client::connect(addr);
                (0..200)
                    .map(|i| {
                        let resp = client.post("stripe", &event("stripe", &format!("evt_{c}_{i}")));
                        assert_eq!(resp.status, 202, "{}", String::from_utf8_lossy(&resp.body));
                        resp.job_id()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let ids: Vec<String> = clients.into_iter().flat_map(|c| c.join().unwrap()).collect();

    assert_eq!(ids.len(), 10_000);
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "every job has its own stream id");
    assert_eq!(app.stream_len(), ids.len(), "stream length equals the number of 202s");
}

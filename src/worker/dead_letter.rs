//! The dead-letter stream `<QUEUE_NAME>:dead`: entries that could not be
//! stored after `MAX_ATTEMPTS` deliveries (or could not be decoded), with the
//! original fields plus why, how often, and where from. `replay` moves them
//! back into the main stream once the cause is fixed.

use std::time::{SystemTime, UNIX_EPOCH};

use redis::streams::StreamRangeReply;

use super::Entry;

/// Extra fields a dead letter carries besides the original entry's.
pub mod fields {
    /// The last error.
    pub const ERROR: &str = "error";
    /// Deliveries when it was given up.
    pub const ATTEMPTS: &str = "attempts";
    /// Its id in the main stream.
    pub const SOURCE_ID: &str = "source_id";
    /// When it was dead-lettered, µs since the epoch.
    pub const DEAD_AT: &str = "dead_at";
}

/// The dead-letter stream of `stream`.
pub fn dead_letter_stream(stream: &str) -> String {
    crate::queue::keys::dead_letters(stream)
}

/// The `XADD` of `entry` to the dead-letter stream: its fields as they
/// were in the main stream, plus why, how often, and where from.
pub(super) fn xadd(dead_stream: &str, entry: &Entry, reason: &str) -> redis::Cmd {
    let now_us = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0);
    let mut cmd = redis::cmd("XADD");
    cmd.arg(dead_stream).arg("*");
    match &entry.job {
        Ok(job) => job.write_stream_fields(&mut cmd),
        Err(undecodable) => {
            let mut names: Vec<&String> = undecodable.fields.keys().collect();
            names.sort();
            for name in names {
                if let redis::Value::BulkString(value) = &undecodable.fields[name] {
                    cmd.arg(name).arg(&value[..]);
                }
            }
        }
    }
    cmd.arg(fields::ERROR)
        .arg(reason)
        .arg(fields::ATTEMPTS)
        .arg(entry.deliveries)
        .arg(fields::SOURCE_ID)
        .arg(&entry.id)
        .arg(fields::DEAD_AT)
        .arg(now_us);
    cmd
}

/// Which dead letters to replay.
#[derive(Debug, Clone)]
pub enum ReplayScope {
    /// Every one.
    All,
    /// These dead-letter stream ids.
    Ids(Vec<String>),
}

/// Moves dead letters back into the main stream (as new entries, with their
/// original fields) and deletes them from the dead-letter stream, atomically
/// per entry. Returns how many were moved.
///
/// # Errors
/// Redis failed; entries moved before the failure stay moved.
pub fn replay(
    con: &mut impl redis::ConnectionLike,
    stream: &str,
    scope: &ReplayScope,
) -> redis::RedisResult<usize> {
    let dead = dead_letter_stream(stream);
    let entries: Vec<redis::streams::StreamId> = match scope {
        ReplayScope::All => {
            let r: StreamRangeReply = redis::cmd("XRANGE").arg(&dead).arg("-").arg("+").query(con)?;
            r.ids
        }
        ReplayScope::Ids(ids) => {
            let mut found = Vec::new();
            for id in ids {
                let r: StreamRangeReply = redis::cmd("XRANGE").arg(&dead).arg(id).arg(id).query(con)?;
                found.extend(r.ids);
            }
            found
        }
    };
    let extra = [fields::ERROR, fields::ATTEMPTS, fields::SOURCE_ID, fields::DEAD_AT];
    let mut moved = 0;
    for e in entries {
        let mut pipe = redis::pipe();
        pipe.atomic();
        let cmd = pipe.cmd("XADD").arg(stream).arg("*");
        let mut names: Vec<&String> = e.map.keys().filter(|k| !extra.contains(&k.as_str())).collect();
        names.sort();
        for name in names {
            if let redis::Value::BulkString(value) = &e.map[name] {
                cmd.arg(name).arg(&value[..]);
            }
        }
        cmd.ignore();
        pipe.cmd("XDEL").arg(&dead).arg(&e.id).ignore();
        pipe.query::<()>(con)?;
        moved += 1;
    }
    Ok(moved)
}

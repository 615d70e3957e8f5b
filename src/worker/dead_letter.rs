//! Dead letters: entries PostgreSQL refused `MAX_ATTEMPTS` times while it
//! stored other rows (or that could not be decoded). They go to PostgreSQL's
//! `webhook_dead_letters` ([`crate::store::dead_letters`]) with their body,
//! error and SQLSTATE, so Redis holds only work in flight. While
//! PostgreSQL is unreachable they wait in the Redis fallback stream
//! `<stream>:dead` (capped by `DEAD_LETTER_REDIS_MAX_BYTES`; past it the
//! entry stays pending in its own stream), and [`move_fallback`] moves
//! them into the table once PostgreSQL is back. [`replay`] puts dead
//! letters back into their stream as replays of their row: the row leaves
//! the table in the transaction that stores the event (dedupe included),
//! and takes the new error if the replay dies again.

use std::collections::HashMap;

use base64::Engine as _;
use redis::streams::{StreamId, StreamRangeReply};
use thiserror::Error;

use super::Entry;
use crate::job::{fields::REPLAY_OF, now_us, WebhookJob};
use crate::store::dead_letters::{self, DeadLetter, Filter};
use crate::store::StoreError;

/// Extra fields a fallback dead letter carries besides the original entry's.
pub mod fields {
    /// The last error.
    pub const ERROR: &str = "error";
    /// Its SQLSTATE, when PostgreSQL gave one.
    pub const SQLSTATE: &str = "sqlstate";
    /// Failed attempts when it was given up.
    pub const ATTEMPTS: &str = "attempts";
    /// Its id in the main stream.
    pub const SOURCE_ID: &str = "source_id";
    /// When it was dead-lettered, µs since the epoch.
    pub const DEAD_AT: &str = "dead_at";
    /// Every extra field, to tell them from the entry's own.
    pub const ALL: [&str; 5] = [ERROR, SQLSTATE, ATTEMPTS, SOURCE_ID, DEAD_AT];
}

/// An entry given up, and why.
#[derive(Debug)]
pub struct Dead {
    /// The entry.
    pub entry: Entry,
    /// The last error.
    pub error: String,
    /// Its SQLSTATE, when PostgreSQL gave one.
    pub sqlstate: Option<String>,
    /// Attempts that failed because of it (deliveries, for an entry that
    /// could not be decoded).
    pub attempts: u64,
}

/// The Redis fallback stream of `stream`.
pub fn dead_letter_stream(stream: &str) -> String {
    crate::queue::keys::dead_letters(stream)
}

fn base64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// A job's fields, or (undecodable) the entry's fields as name → base64.
fn letter_of(
    job: Result<&WebhookJob, &HashMap<String, redis::Value>>,
    error: String,
    sqlstate: Option<String>,
    attempts: u64,
    stream: &str,
    stream_id: &str,
    dead_at_us: i64,
) -> DeadLetter {
    let mut letter = DeadLetter {
        id: 0,
        provider: None,
        event_id: None,
        event_type: None,
        verified_by: None,
        event_timestamp_us: None,
        received_at_us: None,
        raw_body: None,
        payload: None,
        fields: None,
        error,
        sqlstate,
        attempts: attempts as i64,
        stream: stream.to_string(),
        stream_id: stream_id.to_string(),
        dead_at_us,
        unsigned_fields: None,
        replay_of: None,
        replayed_at_us: None,
        replays: 0,
    };
    match job {
        Ok(job) => {
            letter.provider = Some(job.provider.clone());
            letter.event_id = Some(job.event_id.clone());
            letter.event_type = Some(job.event_type.clone());
            letter.verified_by = job.verified_by.clone();
            letter.event_timestamp_us = Some(job.event_timestamp_us);
            letter.received_at_us = Some(job.received_at_us);
            letter.raw_body = Some(job.body_as_received().to_vec());
            letter.payload = job.raw_body.as_ref().map(|_| job.payload.clone());
            letter.unsigned_fields = Some(job.unsigned_fields.clone()).filter(|u| !u.is_empty());
            letter.replay_of = job.replay_of;
        }
        Err(map) => {
            // A replay of an undecodable entry carries its row's id beside
            // the entry's own fields: it names the row, it is not kept.
            letter.replay_of = match map.get(REPLAY_OF) {
                Some(redis::Value::BulkString(id)) => {
                    std::str::from_utf8(id).ok().and_then(|i| i.parse().ok())
                }
                _ => None,
            };
            let mut names: Vec<&String> = map.keys().filter(|n| n.as_str() != REPLAY_OF).collect();
            names.sort();
            let mut fields = serde_json::Map::new();
            for name in names {
                if let redis::Value::BulkString(value) = &map[name] {
                    fields.insert(name.clone(), serde_json::Value::String(base64(value)));
                }
            }
            letter.fields = Some(serde_json::Value::Object(fields));
        }
    }
    letter
}

/// The row for `dead`, which came from `stream`.
pub(super) fn letter(stream: &str, dead: &Dead) -> DeadLetter {
    let job = dead.entry.job.as_ref().map_err(|u| &u.fields);
    letter_of(job, dead.error.clone(), dead.sqlstate.clone(), dead.attempts, stream, &dead.entry.id, now_us())
}

/// The `XADD` of `dead` to the fallback stream: its fields as they were in
/// the main stream, plus why, how often, and where from.
pub(super) fn xadd(dead_stream: &str, dead: &Dead) -> redis::Cmd {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(dead_stream).arg("*");
    match &dead.entry.job {
        Ok(job) => job.stream_fields(&mut cmd),
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
    cmd.arg(fields::ERROR).arg(&dead.error);
    if let Some(code) = &dead.sqlstate {
        cmd.arg(fields::SQLSTATE).arg(code);
    }
    cmd.arg(fields::ATTEMPTS)
        .arg(dead.attempts)
        .arg(fields::SOURCE_ID)
        .arg(&dead.entry.id)
        .arg(fields::DEAD_AT)
        .arg(now_us());
    cmd
}

/// The row for a fallback dead letter read back from `stream`'s fallback stream.
fn from_fallback(stream: &str, e: StreamId) -> DeadLetter {
    let mut map = e.map;
    let mut text = |name: &str| match map.remove(name) {
        Some(redis::Value::BulkString(b)) => Some(String::from_utf8_lossy(&b).into_owned()),
        _ => None,
    };
    let error = text(fields::ERROR).unwrap_or_default();
    let sqlstate = text(fields::SQLSTATE);
    let attempts = text(fields::ATTEMPTS).and_then(|a| a.parse().ok()).unwrap_or(0);
    let source_id = text(fields::SOURCE_ID).unwrap_or_else(|| e.id.clone());
    let dead_at = text(fields::DEAD_AT).and_then(|a| a.parse().ok()).unwrap_or_else(now_us);
    match WebhookJob::from_stream_fields(map) {
        Ok(job) => letter_of(Ok(&job), error, sqlstate, attempts, stream, &source_id, dead_at),
        Err(u) => letter_of(Err(&u.fields), error, sqlstate, attempts, stream, &source_id, dead_at),
    }
}

/// The `XADD` that puts `letter` back into its stream as it first came.
fn replay_command(letter: &DeadLetter) -> Result<redis::Cmd, ReplayError> {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(&letter.stream).arg("*");
    if let Some(serde_json::Value::Object(fields)) = &letter.fields {
        for (name, value) in fields {
            let bytes = value
                .as_str()
                .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
                .ok_or(ReplayError::Malformed(letter.id))?;
            cmd.arg(name).arg(bytes);
        }
        cmd.arg(REPLAY_OF).arg(letter.id);
        return Ok(cmd);
    }
    let (Some(provider), Some(event_id), Some(ts), Some(received), Some(raw)) = (
        &letter.provider,
        &letter.event_id,
        letter.event_timestamp_us,
        letter.received_at_us,
        &letter.raw_body,
    ) else {
        return Err(ReplayError::Malformed(letter.id));
    };
    let job = WebhookJob {
        provider: provider.clone(),
        event_id: event_id.clone(),
        event_type: letter.event_type.clone().unwrap_or_default(),
        event_timestamp_us: ts,
        received_at_us: received,
        verified_by: letter.verified_by.clone(),
        payload: letter.payload.clone().unwrap_or_else(|| raw.clone()),
        raw_body: letter.payload.as_ref().map(|_| raw.clone()),
        unsigned_fields: letter.unsigned_fields.clone().unwrap_or_default(),
        replay_of: Some(letter.id),
    };
    job.stream_fields(&mut cmd);
    Ok(cmd)
}

/// Why a move or a replay stopped.
#[derive(Debug, Error)]
pub enum ReplayError {
    /// Redis failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// PostgreSQL failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A row holds neither a job nor an entry's fields (edited by hand?).
    #[error("dead letter {0} holds neither a job nor an entry's fields")]
    Malformed(i64),
}

/// Moves up to `max` fallback dead letters of `stream` into the table
/// (inserted first, then deleted from Redis: a crash in between repeats the
/// insert, which the table's unique key absorbs). Returns how many left
/// the stream and how many of those were new rows (another worker moving the
/// same ones at once inserted the rest).
///
/// # Errors
/// [`ReplayError`]; what moved before stays moved.
pub fn move_fallback(
    con: &mut impl redis::ConnectionLike,
    client: &mut postgres::Client,
    stream: &str,
    max: usize,
) -> Result<(usize, u64), ReplayError> {
    let dead = dead_letter_stream(stream);
    let r: StreamRangeReply =
        redis::cmd("XRANGE").arg(&dead).arg("-").arg("+").arg("COUNT").arg(max).query(con)?;
    if r.ids.is_empty() {
        return Ok((0, 0));
    }
    let ids: Vec<String> = r.ids.iter().map(|e| e.id.clone()).collect();
    let letters: Vec<DeadLetter> = r.ids.into_iter().map(|e| from_fallback(stream, e)).collect();
    let new = dead_letters::insert(client, &letters)?;
    redis::cmd("XDEL").arg(&dead).arg(&ids).exec(con)?;
    Ok((ids.len(), new))
}

/// Which dead letters to replay.
#[derive(Debug, Clone)]
pub enum ReplayScope {
    /// Every one not being replayed.
    All,
    /// These rows of `webhook_dead_letters`, being replayed or not.
    Ids(Vec<i64>),
    /// Those `filter` matches that are not being replayed, at most `max`.
    Filter {
        /// Which.
        filter: Filter,
        /// At most this many (`None`: all).
        max: Option<u64>,
    },
}

/// What a replay found and did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Replayed {
    /// Dead letters the scope matched (all of them, also past `max`).
    pub matched: u64,
    /// Those put back into their stream.
    pub replayed: u64,
}

/// Dead letters read per round of a replay.
const REPLAY_CHUNK: i64 = 1000;

/// Puts dead letters back into their streams (as new entries, with their
/// original fields and the row they came from) and marks them replayed,
/// one at a time: added first, marked once Redis has it. The row leaves
/// the table with the commit that stores its event; a crash between the
/// add and the mark leaves it unmarked, and replaying it again makes a
/// copy the dedupe stores once. Fallback dead letters still in Redis
/// (`streams`) are moved into the table first. With `dry_run`, only counts.
///
/// # Errors
/// [`ReplayError`]; entries replayed before the failure stay replayed.
pub fn replay(
    con: &mut impl redis::ConnectionLike,
    client: &mut postgres::Client,
    streams: &[String],
    scope: &ReplayScope,
    dry_run: bool,
) -> Result<Replayed, ReplayError> {
    for stream in streams {
        while move_fallback(con, client, stream, 1000)?.0 > 0 {}
    }
    let (filter, max) = match scope {
        ReplayScope::All => (Filter::default(), None),
        ReplayScope::Filter { filter, max } => (filter.clone(), *max),
        ReplayScope::Ids(ids) => {
            let letters = dead_letters::list(client, Some(ids), ids.len() as i64)?;
            let mut done = Replayed { matched: letters.len() as u64, replayed: 0 };
            if !dry_run {
                for letter in &letters {
                    put_back(con, client, letter)?;
                    done.replayed += 1;
                }
            }
            return Ok(done);
        }
    };
    let mut done = Replayed { matched: dead_letters::count_matching(client, &filter)? as u64, replayed: 0 };
    if dry_run {
        return Ok(done);
    }
    let max = max.unwrap_or(u64::MAX);
    let mut after = 0;
    while done.replayed < max {
        let want = REPLAY_CHUNK.min(i64::try_from(max - done.replayed).unwrap_or(i64::MAX));
        let letters = dead_letters::matching(client, &filter, after, want)?;
        let Some(last) = letters.last() else { break };
        after = last.id;
        for letter in &letters {
            put_back(con, client, letter)?;
            done.replayed += 1;
        }
    }
    Ok(done)
}

/// One dead letter back into its stream, then marked replayed.
fn put_back(
    con: &mut impl redis::ConnectionLike,
    client: &mut postgres::Client,
    letter: &DeadLetter,
) -> Result<(), ReplayError> {
    replay_command(letter)?.exec(con)?;
    dead_letters::mark_replayed(client, letter.id)?;
    Ok(())
}

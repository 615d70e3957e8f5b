//! The workers' consumer group, made with its stream when either is
//! missing: one spelling of `XGROUP CREATE` for every connection that
//! prepares the streams (the pipeline's links, the per-core enqueue, the
//! workers after a Redis that restarted empty).

use super::GROUP;

/// `XGROUP CREATE <stream> <GROUP> 0 MKSTREAM`.
pub(super) fn create(stream: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("XGROUP");
    cmd.arg("CREATE").arg(stream).arg(GROUP).arg("0").arg("MKSTREAM");
    cmd
}

/// Whether an error to [`create`] says the group exists already (made by
/// another connection, or before): the stream is ready all the same.
pub(super) fn exists_already(code: &str) -> bool {
    code == "BUSYGROUP"
}

/// Creates the stream and the consumer group if either is missing.
///
/// # Errors
/// Redis failed.
pub fn prepare_stream(con: &mut impl redis::ConnectionLike, stream: &str) -> redis::RedisResult<()> {
    match create(stream).query::<()>(con) {
        Err(e) if e.code().is_some_and(exists_already) => Ok(()),
        other => other,
    }
}

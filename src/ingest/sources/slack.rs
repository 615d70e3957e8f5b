//! `kind = "slack"`: the Events API's `X-Slack-Signature: v0=<hex>`, an
//! HMAC-SHA256 of `"v0:{X-Slack-Request-Timestamp}:{body}"` keyed with the
//! app's signing secret, as `slack_sdk.signature` checks it: a timestamp more
//! than `tolerance_secs` (default 300) away from now, in either direction, is
//! refused.
//!
//! A `url_verification` request (sent when the endpoint is configured) is
//! verified, then answered 200 `{"challenge": …}` at once and not stored.
//! Stored, as `slack_sdk` and Bolt receive them (the signature is the same
//! for every one: it covers the raw body, whatever its format):
//!
//! * Events API callbacks: body `event_id` (retries carry it again, with
//!   `X-Slack-Retry-Num`), `event.type` as the type (the outer `type` when
//!   there is no `event`), and `event_time`;
//! * `app_rate_limited` (no `event_id`): the id
//!   `app_rate_limited:<api_app_id>:<team_id>:<minute_rate_limited>`, that
//!   minute as the time;
//! * interactivity (a form whose `payload` field is the JSON: block
//!   actions, shortcuts, view submissions): the JSON as `payload`, its
//!   `type`, and its `trigger_id` as the id (else the body's SHA-256: Slack
//!   does not retry these);
//! * slash commands (a form of plain fields): the fields as one JSON object,
//!   type `slash_command`, `trigger_id` as the id.
//!
//! ```toml
//! [[source]]
//! route = "slack"
//! kind = "slack"
//! secrets = ["…signing secret"]
//! ```

use std::borrow::Cow;

use serde::Deserialize;

use super::mac::{Algorithm, Encoding, Keys};
use super::spec::Reading;
use super::util::{
    body_digest_id, event_id, event_type, fields_as_json, form_fields, fresh, given_time, is_form,
    payload_field, required, secs, secs_to_us,
};
use super::{Admitted, Identity, Kind, Request, SourceError, Unauthorized};
use crate::ingest::{IngestError, Ingestor};

const SIGNATURE: &str = "X-Slack-Signature";
const TIMESTAMP: &str = "X-Slack-Request-Timestamp";

/// The Slack source.
#[derive(Debug)]
pub struct Slack {
    keys: Keys,
    tolerance: u64,
}

impl Slack {
    pub(super) fn read(r: &mut Reading<'_>) -> Result<Self, SourceError> {
        Ok(Self { keys: r.keys(Algorithm::Sha256)?, tolerance: r.tolerance(300)? })
    }
}

#[derive(Deserialize)]
struct Inner<'a> {
    #[serde(borrow, rename = "type")]
    kind: Option<Cow<'a, str>>,
}

/// What of a Slack request the gateway reads.
#[derive(Deserialize)]
struct Body<'a> {
    #[serde(borrow, rename = "type")]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    event_id: Option<Cow<'a, str>>,
    event_time: Option<i64>,
    #[serde(borrow)]
    challenge: Option<Cow<'a, str>>,
    #[serde(borrow)]
    event: Option<Inner<'a>>,
    // app_rate_limited
    #[serde(borrow)]
    api_app_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    team_id: Option<Cow<'a, str>>,
    minute_rate_limited: Option<i64>,
    // interactivity and slash commands
    #[serde(borrow)]
    trigger_id: Option<Cow<'a, str>>,
}

impl Kind for Slack {
    fn scheme(&self) -> Option<&'static str> {
        Some("slack")
    }

    fn verify(&self, req: &Request<'_>) -> Result<(), Unauthorized> {
        verify_v0(&self.keys, [SIGNATURE, TIMESTAMP], req, self.tolerance)
    }

    fn takes_form(&self) -> bool {
        true
    }

    fn admit(&self, ingestor: &mut Ingestor, req: &Request<'_>) -> Result<Admitted, IngestError> {
        if is_form(req) {
            return Self::admit_form(ingestor, req);
        }
        let body: Body<'_> = ingestor.parse_storable(req.body)?;
        if body.kind.as_deref() == Some("url_verification") {
            let challenge = body.challenge.unwrap_or_default();
            let reply =
                serde_json::to_vec(&serde_json::json!({ "challenge": challenge })).unwrap_or_default();
            return Ok(Admitted::Reply(reply));
        }
        if body.kind.as_deref() == Some("app_rate_limited") {
            let minute = body.minute_rate_limited.ok_or_else(|| {
                IngestError::Invalid(vec!["app_rate_limited needs minute_rate_limited".into()])
            })?;
            let id = format!(
                "app_rate_limited:{}:{}:{minute}",
                body.api_app_id.as_deref().unwrap_or_default(),
                body.team_id.as_deref().unwrap_or_default()
            );
            return Ok(Admitted::Event(Identity {
                event_id: event_id(Some(&id), "api_app_id, team_id and minute_rate_limited")?,
                event_type: "app_rate_limited".into(),
                event_timestamp_us: given_time(
                    Some(minute),
                    secs_to_us,
                    "minute_rate_limited",
                    req.received_at_us,
                )?,
            }));
        }
        let kind = body.event.as_ref().and_then(|e| e.kind.as_deref()).or(body.kind.as_deref());
        Ok(Admitted::Event(Identity {
            event_id: event_id(body.event_id.as_deref(), "event_id")?,
            event_type: event_type(kind, "event.type")?,
            event_timestamp_us: given_time(body.event_time, secs_to_us, "event_time", req.received_at_us)?,
        }))
    }
}

impl Slack {
    /// Interactivity (`payload=<json>`) and slash commands (plain fields).
    fn admit_form(ingestor: &mut Ingestor, req: &Request<'_>) -> Result<Admitted, IngestError> {
        let fields = form_fields(req.body);
        let (json, default_type) = if fields.iter().any(|(name, _)| name == b"payload") {
            (payload_field(fields)?, "")
        } else {
            (fields_as_json(fields)?, "slash_command")
        };
        let body: Body<'_> = ingestor.parse_storable(&json)?;
        let id = match body.trigger_id.as_deref() {
            Some(t) if !t.is_empty() => t.to_string(),
            _ => body_digest_id(req.body),
        };
        let identity = Identity {
            event_id: event_id(Some(&id), "trigger_id")?,
            event_type: event_type(Some(body.kind.as_deref().unwrap_or(default_type)), "type")?,
            event_timestamp_us: req.received_at_us,
        };
        Ok(Admitted::Decoded(identity, json))
    }
}

/// Slack's form of signature, which Zoom took too: `headers[0]: v0=<hex>`,
/// an HMAC of `"v0:{headers[1]}:{body}"`; as slack_sdk checks it, the
/// timestamp within `tolerance` seconds either way first, then the MAC.
pub(super) fn verify_v0(
    keys: &Keys,
    [signature_header, timestamp_header]: [&str; 2],
    req: &Request<'_>,
    tolerance: u64,
) -> Result<(), Unauthorized> {
    let signature = required(&req.headers, signature_header)?;
    let ts_text = required(&req.headers, timestamp_header)?;
    let ts = secs(ts_text).ok_or_else(|| Unauthorized::Malformed(timestamp_header.into()))?;
    fresh(req.now_secs, ts, tolerance, true)?;
    let malformed = || Unauthorized::Malformed(signature_header.into());
    let hex = signature.strip_prefix(b"v0=").ok_or_else(malformed)?;
    let candidate = Encoding::Hex.decode(hex).ok_or_else(malformed)?;
    if keys.any_matches(&[b"v0:", ts_text, b":", req.body], &[candidate]) {
        Ok(())
    } else {
        Err(Unauthorized::NoMatch)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{request, source};
    use super::*;

    const FILE: &str =
        "[[source]]\nroute = \"slack\"\nkind = \"slack\"\nsecrets = [\"8f742231b10e8888abcd99yyyzzz85a5\"]";
    const BODY: &[u8] = br#"{"type":"event_callback","event_id":"Ev1","event_time":1700000000,"event":{"type":"app_mention"}}"#;

    fn headers(ts: i64, secret: &str, body: &[u8]) -> String {
        let sig = Keys::new(Algorithm::Sha256, &[secret.as_bytes().to_vec()])
            .sign(&[b"v0:", ts.to_string().as_bytes(), b":", body], Encoding::Hex);
        format!("X-Slack-Request-Timestamp: {ts}\r\nX-Slack-Signature: v0={sig}\r\n")
    }

    #[test]
    fn slack_signatures_and_their_window_in_both_directions() {
        let s = source(FILE, "slack");
        let secret = "8f742231b10e8888abcd99yyyzzz85a5";
        let t = 1_700_000_000;
        assert_eq!(request(&s, &headers(t, secret, BODY), BODY, t + 300).0, Ok(()));
        assert_eq!(request(&s, &headers(t, secret, BODY), BODY, t + 301).0, Err(Unauthorized::Stale));
        assert_eq!(request(&s, &headers(t, secret, BODY), BODY, t - 301).0, Err(Unauthorized::Stale));
        assert_eq!(request(&s, &headers(t, "wrong", BODY), BODY, t).0, Err(Unauthorized::NoMatch));
        let no_prefix = headers(t, secret, BODY).replace("v0=", "");
        assert_eq!(request(&s, &no_prefix, BODY, t).0, Err(Unauthorized::Malformed(SIGNATURE.into())));
        let (_, admitted) = request(&s, "", BODY, t);
        let Ok(Admitted::Event(id)) = admitted else { panic!("{admitted:?}") };
        assert_eq!((id.event_id.as_str(), id.event_type.as_str()), ("Ev1", "app_mention"));
        assert_eq!(id.event_timestamp_us, 1_700_000_000_000_000);
    }

    #[test]
    fn a_url_verification_is_answered_with_its_challenge() {
        let body = br#"{"token":"x","challenge":"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P","type":"url_verification"}"#;
        let (_, admitted) = request(&source(FILE, "slack"), "", body, 0);
        let Ok(Admitted::Reply(reply)) = admitted else { panic!("{admitted:?}") };
        assert_eq!(
            reply,
            br#"{"challenge":"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"}"#.to_vec()
        );
    }
}

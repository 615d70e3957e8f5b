//! The sender catalog end to end: requests signed by the senders' own
//! libraries (`tests/senders/catalog.py`: PyNaCl for Discord, the
//! `sendgrid` library verifying every SendGrid signature, twilio's
//! `RequestValidator`, `hubspot-api-client`, `squareup`; the documented
//! recipes for Zoom, Twitch and Mailgun) posted over real HTTP to a gateway
//! with a sources file, a real Redis and a real PostgreSQL. Each sender:
//! valid, a wrong key, one byte changed, its challenge where it has one, and
//! its retry, which must be one row.

use std::sync::Arc;

use serde_json::{json, Value};
use webhook_ingestor::ingest::sources::Sources;

use crate::harness::{Client, Response, TestApp};
use crate::senders::{h, now, python, wait_rows};

const PUBLIC_URL: &str = "https://hooks.example.com";
const DISCORD_SEED: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
const SENDGRID_PRIVATE: u64 = 0x5eed_5eed_5eed;

/// Runs `ops` through `catalog.py`, one result each.
fn py(ops: Value) -> Vec<Value> {
    python("catalog.py", &ops)
}

fn text(v: &Value) -> String {
    v.as_str().expect("a string").to_string()
}

/// The catalog's routes; the public keys come from the signing libraries.
fn gateway() -> TestApp {
    let keys = py(json!([
        {"op": "discord-key", "seed": DISCORD_SEED},
        {"op": "sendgrid-key", "private": SENDGRID_PRIVATE},
    ]));
    let file = format!(
        r#"
[[source]]
route = "discord"
kind = "discord"
public_keys = ["{discord}"]

[[source]]
route = "sendgrid"
kind = "sendgrid"
public_keys = ["{sendgrid}"]

[[source]]
route = "twilio"
kind = "twilio"
secrets = ["twilio-token-new", "twilio-token-old"]
public_url = "{PUBLIC_URL}"

[[source]]
route = "hubspot"
kind = "hubspot"
secrets = ["hubspot-client-secret"]
public_url = "{PUBLIC_URL}"

[[source]]
route = "square"
kind = "square"
secrets = ["square-signature-key"]
public_url = "{PUBLIC_URL}"

[[source]]
route = "zoom"
kind = "zoom"
secrets = ["zoom-secret-token"]

[[source]]
route = "twitch"
kind = "twitch"
secrets = ["twitch-secret-0123"]

[[source]]
route = "mailgun"
kind = "mailgun"
secrets = ["mailgun-signing-key"]

[[source]]
route = "gitlab"
kind = "gitlab"
secrets = ["gitlab-token-new", "gitlab-token-old"]

[[source]]
route = "linear"
kind = "linear"
secrets = ["linear-secret"]

[[source]]
route = "woo"
kind = "woocommerce"
secrets = ["woo-secret"]

[[source]]
route = "clerk"
kind = "clerk"
secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]
"#,
        discord = text(&keys[0]),
        sendgrid = text(&keys[1]),
    );
    let sources = Sources::parse(&file, &|_| None).unwrap_or_else(|e| panic!("{e}"));
    TestApp::spawn_full(|c| c.ingest.sources = Some(Arc::new(sources)))
}

/// POSTs `body` to `target` with `content_type` and `headers`.
fn post(
    app: &TestApp,
    target: &str,
    content_type: &str,
    headers: &[(String, String)],
    body: &str,
) -> Response {
    let mut req =
        format!("POST {target} HTTP/1.1\r\nHost: hooks.example.com\r\nContent-Type: {content_type}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    let mut client = Client::connect(app.addr);
    client.send(req.as_bytes());
    client.read_response().expect("an answer")
}

fn json_post(app: &TestApp, route: &str, headers: &[(String, String)], body: &str) -> Response {
    post(app, &format!("/webhooks/{route}"), "application/json", headers, body)
}

fn expect(resp: &Response, status: u16, what: &str) {
    assert_eq!(resp.status, status, "{what}: {}", String::from_utf8_lossy(&resp.body));
}

fn flip(s: &str) -> String {
    s.replacen("\"a\"", "\"b\"", 1)
}

#[test]
fn public_key_senders_discord_by_pynacl_and_sendgrid_verified_by_its_library() {
    let app = gateway();
    let ts = now().to_string();
    let interaction = r#"{"type":2,"id":"1100000000000000001","data":{"name":"a"}}"#;
    let ping = r#"{"type":1,"id":"1100000000000000000"}"#;
    let sg_one = r#"[{"email":"a@example.com","event":"delivered","sg_event_id":"sg-1","timestamp":1700000000,"a":"a"}]"#;
    let sg_batch = r#"[{"sg_event_id":"sg-2","event":"open"},{"sg_event_id":"sg-3","event":"click"}]"#;
    let sigs = py(json!([
        {"op": "discord", "seed": DISCORD_SEED, "timestamp": ts, "body": interaction},
        {"op": "discord", "seed": DISCORD_SEED, "timestamp": ts, "body": ping},
        {"op": "discord", "seed": "00".repeat(32), "timestamp": ts, "body": interaction},
        {"op": "sendgrid", "private": SENDGRID_PRIVATE, "timestamp": ts, "body": sg_one},
        {"op": "sendgrid", "private": SENDGRID_PRIVATE, "timestamp": ts, "body": sg_batch},
        {"op": "sendgrid", "private": SENDGRID_PRIVATE + 1, "timestamp": ts, "body": sg_one},
    ]));
    let discord = |sig: &Value| vec![h("X-Signature-Ed25519", &text(sig)), h("X-Signature-Timestamp", &ts)];
    // Stored, then answered in Discord's words once Redis has it: deferred.
    let deferred = json_post(&app, "discord", &discord(&sigs[0]), interaction);
    expect(&deferred, 200, "discord interaction");
    assert_eq!(deferred.json(), json!({"type": 5}));
    expect(&json_post(&app, "discord", &discord(&sigs[0]), interaction), 200, "discord, the same again");
    let pong = json_post(&app, "discord", &discord(&sigs[1]), ping);
    expect(&pong, 200, "discord ping");
    assert_eq!(pong.json(), json!({"type": 1}));
    expect(&json_post(&app, "discord", &discord(&sigs[2]), interaction), 401, "discord, another key");
    expect(
        &json_post(&app, "discord", &discord(&sigs[0]), &flip(interaction)),
        401,
        "discord, a byte changed",
    );
    expect(
        &json_post(&app, "discord", &discord(&sigs[1]), interaction),
        401,
        "discord, another body's signature",
    );

    let sendgrid = |sig: &Value| {
        vec![
            h("X-Twilio-Email-Event-Webhook-Signature", &text(sig)),
            h("X-Twilio-Email-Event-Webhook-Timestamp", &ts),
        ]
    };
    expect(&json_post(&app, "sendgrid", &sendgrid(&sigs[3]), sg_one), 202, "sendgrid one event");
    expect(&json_post(&app, "sendgrid", &sendgrid(&sigs[3]), sg_one), 202, "sendgrid's retry");
    expect(&json_post(&app, "sendgrid", &sendgrid(&sigs[4]), sg_batch), 202, "sendgrid batch");
    expect(&json_post(&app, "sendgrid", &sendgrid(&sigs[5]), sg_one), 401, "sendgrid, another key");
    expect(&json_post(&app, "sendgrid", &sendgrid(&sigs[3]), &flip(sg_one)), 401, "sendgrid, a byte changed");

    let stored = wait_rows(&app, "discord", 1);
    let (kind, by, _) = &stored["1100000000000000001"];
    assert_eq!((kind.as_str(), by.as_deref()), ("interaction.2.a", Some("discord")));
    let stored = wait_rows(&app, "sendgrid", 2);
    assert_eq!(stored["sg-1"].0, "delivered");
    let batch = stored.iter().find(|(id, _)| id.starts_with("sha256:")).expect("the batch by its digest");
    assert_eq!((batch.1 .0.as_str(), batch.1 .2[1]["sg_event_id"].as_str()), ("batch", Some("sg-3")));
}

#[test]
fn url_signers_twilio_hubspot_and_square_by_their_libraries() {
    let app = gateway();
    let form_target = "/webhooks/twilio?account=main";
    let url = format!("{PUBLIC_URL}{form_target}");
    let params = json!({"MessageSid": "SM0001", "MessageStatus": "delivered", "From": "+14158675310", "Body": "a & b = c"});
    let form = "MessageSid=SM0001&MessageStatus=delivered&From=%2B14158675310&Body=a+%26+b+%3D+c";
    let twilio_json = r#"{"data":{"sid":"a"}}"#;
    let ms = (now() * 1000).to_string();
    let hs_body = r#"[{"eventId":4242,"subscriptionType":"contact.creation","occurredAt":1700000000000,"objectId":1,"a":"a"}]"#;
    let hs_uri = format!("{PUBLIC_URL}/webhooks/hubspot?portal=1&name=a%3Ab");
    let sq_body = r#"{"merchant_id":"M","type":"payment.created","event_id":"sq-1","created_at":"2023-11-14T22:13:20Z","a":"a"}"#;
    let sq_url = format!("{PUBLIC_URL}/webhooks/square");
    let out = py(json!([
        {"op": "twilio", "token": "twilio-token-old", "url": url, "params": params},
        {"op": "twilio", "token": "twilio-token-new", "url": format!("{PUBLIC_URL}/webhooks/twilio"), "body": twilio_json},
        {"op": "twilio", "token": "twilio-token-new", "url": url, "params": params, "algorithm": "HMAC_SHA256"},
        {"op": "twilio", "token": "wrong", "url": url, "params": params},
        {"op": "hubspot", "secret": "hubspot-client-secret", "uri": hs_uri.replace("%3A", ":"), "body": hs_body, "timestamp": ms},
        {"op": "square", "key": "square-signature-key", "url": sq_url, "body": sq_body},
        {"op": "square", "key": "wrong", "url": sq_url, "body": sq_body},
    ]));
    let form_type = "application/x-www-form-urlencoded";
    let tw = |v: &Value| vec![h("X-Twilio-Signature", &text(&v["signature"]))];
    expect(&post(&app, form_target, form_type, &tw(&out[0]), form), 202, "twilio form, old token");
    let mut sha256 = tw(&out[2]);
    sha256.push(h("X-Twilio-Webhooks-Signature-Settings", "key=webhooks_sharedkey_1,algorithm=HMAC_SHA256"));
    expect(&post(&app, form_target, form_type, &sha256, form), 202, "twilio form, HMAC-SHA256 (its retry)");
    expect(&post(&app, form_target, form_type, &tw(&out[3]), form), 401, "twilio, a wrong token");
    expect(
        &post(&app, "/webhooks/twilio?account=other", form_type, &tw(&out[0]), form),
        401,
        "twilio, another URL",
    );
    let changed = form.replace("delivered", "failed");
    expect(&post(&app, form_target, form_type, &tw(&out[0]), &changed), 401, "twilio, a field changed");
    let json_url = text(&out[1]["url"]);
    let json_target = json_url.strip_prefix(PUBLIC_URL).unwrap();
    let mut keyed = tw(&out[1]);
    keyed.push(h("I-Twilio-Idempotency-Token", "idem-1"));
    expect(&post(&app, json_target, "application/json", &keyed, twilio_json), 202, "twilio JSON");
    expect(
        &post(&app, json_target, "application/json", &keyed, &flip(twilio_json)),
        401,
        "twilio JSON changed",
    );

    let hs = vec![h("X-HubSpot-Signature-v3", &text(&out[4])), h("X-HubSpot-Request-Timestamp", &ms)];
    let hs_target = hs_uri.strip_prefix(PUBLIC_URL).unwrap();
    expect(&post(&app, hs_target, "application/json", &hs, hs_body), 202, "hubspot v3");
    expect(&post(&app, hs_target, "application/json", &hs, hs_body), 202, "hubspot's retry");
    expect(&post(&app, hs_target, "application/json", &hs, &flip(hs_body)), 401, "hubspot, a byte changed");
    expect(
        &post(&app, "/webhooks/hubspot?portal=2", "application/json", &hs, hs_body),
        401,
        "hubspot, another URI",
    );

    let sq = |v: &Value| vec![h("x-square-hmacsha256-signature", &text(v))];
    expect(&json_post(&app, "square", &sq(&out[5]), sq_body), 202, "square");
    expect(&json_post(&app, "square", &sq(&out[5]), sq_body), 202, "square's retry");
    expect(&json_post(&app, "square", &sq(&out[6]), sq_body), 401, "square, a wrong key");
    expect(
        &post(&app, "/webhooks/square?x=1", "application/json", &sq(&out[5]), sq_body),
        401,
        "square, another URL",
    );

    let stored = wait_rows(&app, "twilio", 2);
    let (kind, by, payload) = &stored["SM0001:delivered"];
    assert_eq!((kind.as_str(), by.as_deref()), ("delivered", Some("twilio")));
    assert_eq!(payload["Body"], "a & b = c", "the form's fields, decoded, as the payload");
    assert!(stored.contains_key("idem-1"));
    let raw: Vec<u8> = app
        .pg()
        .query_one("SELECT raw_body FROM webhook_events WHERE event_id = 'SM0001:delivered'", &[])
        .unwrap()
        .get(0);
    assert_eq!(raw, form.as_bytes(), "the form as Twilio signed it");
    assert_eq!(wait_rows(&app, "hubspot", 1)["4242"].0, "contact.creation");
    assert_eq!(wait_rows(&app, "square", 1)["sq-1"].0, "payment.created");
}

#[test]
fn challenges_zoom_and_twitch_are_answered_and_not_stored() {
    let app = gateway();
    let ts = now().to_string();
    let validation = r#"{"payload":{"plainToken":"qgg8vlvZRS6UYooatFL8Aw"},"event_ts":1654503849680,"event":"endpoint.url_validation"}"#;
    let started = r#"{"event":"meeting.started","event_ts":1700000000000,"payload":{"object":{"id":"a"}}}"#;
    let iso = time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap();
    let challenge =
        r#"{"challenge":"pogchamp-kappa-360noscope-vohiyo","subscription":{"type":"channel.follow"}}"#;
    let follow = r#"{"subscription":{"type":"channel.follow"},"event":{"user_id":"a"}}"#;
    let out = py(json!([
        {"op": "zoom", "secret": "zoom-secret-token", "timestamp": ts, "body": validation},
        {"op": "zoom-token", "secret": "zoom-secret-token", "plain": "qgg8vlvZRS6UYooatFL8Aw"},
        {"op": "zoom", "secret": "zoom-secret-token", "timestamp": ts, "body": started},
        {"op": "zoom", "secret": "wrong", "timestamp": ts, "body": started},
        {"op": "twitch", "secret": "twitch-secret-0123", "id": "m-0", "timestamp": iso, "body": challenge},
        {"op": "twitch", "secret": "twitch-secret-0123", "id": "m-1", "timestamp": iso, "body": follow},
    ]));
    let zoom = |sig: &Value| vec![h("x-zm-signature", &text(sig)), h("x-zm-request-timestamp", &ts)];
    let answer = json_post(&app, "zoom", &zoom(&out[0]), validation);
    expect(&answer, 200, "zoom url validation");
    assert_eq!(answer.json(), json!({"plainToken": "qgg8vlvZRS6UYooatFL8Aw", "encryptedToken": out[1]}));
    expect(&json_post(&app, "zoom", &zoom(&out[2]), started), 202, "zoom event");
    expect(&json_post(&app, "zoom", &zoom(&out[2]), started), 202, "zoom's retry");
    expect(&json_post(&app, "zoom", &zoom(&out[3]), started), 401, "zoom, a wrong secret");
    expect(&json_post(&app, "zoom", &zoom(&out[0]), started), 401, "zoom, another body's signature");

    let twitch = |id: &str, kind: &str, sig: &Value| {
        vec![
            h("Twitch-Eventsub-Message-Id", id),
            h("Twitch-Eventsub-Message-Timestamp", &iso),
            h("Twitch-Eventsub-Message-Signature", &text(sig)),
            h("Twitch-Eventsub-Message-Type", kind),
        ]
    };
    let answer =
        json_post(&app, "twitch", &twitch("m-0", "webhook_callback_verification", &out[4]), challenge);
    expect(&answer, 200, "twitch callback verification");
    assert_eq!(answer.body, b"pogchamp-kappa-360noscope-vohiyo");
    assert!(answer.header("content-type").unwrap().starts_with("text/plain"));
    expect(
        &json_post(&app, "twitch", &twitch("m-1", "notification", &out[5]), follow),
        202,
        "twitch notification",
    );
    expect(
        &json_post(&app, "twitch", &twitch("m-1", "notification", &out[5]), follow),
        202,
        "twitch's retry",
    );
    expect(
        &json_post(&app, "twitch", &twitch("m-2", "notification", &out[5]), follow),
        401,
        "twitch, the id is signed",
    );

    let stored = wait_rows(&app, "zoom", 1);
    assert_eq!(stored.values().next().unwrap().0, "meeting.started");
    assert_eq!(wait_rows(&app, "twitch", 1)["m-1"].0, "channel.follow");
}

#[test]
fn mailgun_signs_inside_the_body_gitlab_sends_a_token_and_presets_by_name() {
    let app = gateway();
    let t = now();
    let mailgun = |token: &str, sig: &str, event: &str| {
        format!(
            r#"{{"signature":{{"timestamp":"{t}","token":"{token}","signature":"{sig}"}},"event-data":{{"id":"mg-{event}","event":"{event}","timestamp":1700000000.5}}}}"#
        )
    };
    let out = py(json!([
        {"op": "mailgun", "key": "mailgun-signing-key", "timestamp": t.to_string(), "token": "tok-a"},
        {"op": "mailgun", "key": "wrong", "timestamp": t.to_string(), "token": "tok-b"},
    ]));
    let good = mailgun("tok-a", &text(&out[0]), "delivered");
    expect(&json_post(&app, "mailgun", &[], &good), 202, "mailgun");
    expect(&json_post(&app, "mailgun", &[], &good), 202, "mailgun's retry of the same body");
    let forged = mailgun("tok-a", &text(&out[0]), "failed");
    let refused = json_post(&app, "mailgun", &[], &forged);
    expect(&refused, 401, "mailgun, a taken token on another event");
    assert_eq!(refused.json()["message"], "this signature's token was already used");
    expect(
        &json_post(&app, "mailgun", &[], &mailgun("tok-b", &text(&out[1]), "opened")),
        401,
        "mailgun, wrong key",
    );

    let gitlab = |token: &str| {
        vec![h("X-Gitlab-Token", token), h("X-Gitlab-Event", "Push Hook"), h("X-Gitlab-Event-UUID", "gl-1")]
    };
    let push = r#"{"object_kind":"push","ref":"refs/heads/main"}"#;
    expect(&json_post(&app, "gitlab", &gitlab("gitlab-token-old"), push), 202, "gitlab");
    expect(&json_post(&app, "gitlab", &gitlab("gitlab-token-new"), push), 202, "gitlab's retry");
    expect(&json_post(&app, "gitlab", &gitlab("gitlab-token-ne"), push), 401, "gitlab, a wrong token");

    // A preset: Linear's header and clock, as Linear's docs build them.
    let linear = format!(
        r#"{{"action":"create","type":"Issue","data":{{"id":"a"}},"webhookTimestamp":{}}}"#,
        t * 1000
    );
    let mac = |secret: &str, body: &str| {
        use hmac::{KeyInit as _, Mac as _};
        let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        m.update(body.as_bytes());
        m.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    let lh = |sig: String| {
        vec![h("Linear-Signature", &sig), h("Linear-Delivery", "lin-1"), h("Linear-Event", "Issue")]
    };
    expect(&json_post(&app, "linear", &lh(mac("linear-secret", &linear)), &linear), 202, "linear");
    expect(&json_post(&app, "linear", &lh(mac("wrong", &linear)), &linear), 401, "linear, a wrong secret");
    let old = linear.replace(&(t * 1000).to_string(), &((t - 120) * 1000).to_string());
    let stale = json_post(&app, "linear", &lh(mac("linear-secret", &old)), &old);
    expect(&stale, 401, "linear, a webhookTimestamp two minutes old");
    // WooCommerce's ping when a webhook is saved: an unsigned form.
    let ping = post(&app, "/webhooks/woo", "application/x-www-form-urlencoded", &[], "webhook_id=17");
    expect(&ping, 200, "woocommerce ping");
    expect(
        &post(&app, "/webhooks/woo", "application/x-www-form-urlencoded", &[], "webhook_id=17&a=1"),
        401,
        "not a ping",
    );
    // A Standard Webhooks sender by name, with the svix-* headers Clerk sends.
    let user = r#"{"type":"user.created","data":{"id":"user_a"}}"#;
    let sig = py(
        json!([{"op": "standard-webhooks", "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "id": "msg_1", "timestamp": t, "body": user}]),
    );
    let svix = |sig: &Value| {
        vec![h("svix-id", "msg_1"), h("svix-timestamp", &t.to_string()), h("svix-signature", &text(sig))]
    };
    expect(&json_post(&app, "clerk", &svix(&sig[0]), user), 202, "clerk");
    expect(
        &json_post(&app, "clerk", &svix(&sig[0]), &user.replace("user_a", "user_b")),
        401,
        "clerk, a byte changed",
    );

    let stored = wait_rows(&app, "mailgun", 1);
    let (kind, by, _) = &stored["mg-delivered"];
    assert_eq!((kind.as_str(), by.as_deref()), ("delivered", Some("mailgun")));
    assert_eq!(wait_rows(&app, "gitlab", 1)["gl-1"].0, "Push Hook");
    let (kind, by, _) = &wait_rows(&app, "clerk", 1)["msg_1"];
    assert_eq!((kind.as_str(), by.as_deref()), ("user.created", Some("standard-webhooks")));
    let (kind, by, _) = &wait_rows(&app, "linear", 1)["lin-1"];
    assert_eq!((kind.as_str(), by.as_deref()), ("Issue", Some("linear")));
    let unsigned: String = app
        .pg()
        .query_one("SELECT unsigned_fields FROM webhook_events WHERE event_id = 'gl-1'", &[])
        .unwrap()
        .get(0);
    assert_eq!(unsigned, "event_id,event_type", "GitLab's headers are not signed, and the row says so");
    let metrics = crate::ops::scrape(&app);
    assert_eq!(
        metrics[r#"webhook_source_rejected_total{source="mailgun",status="401",reason="replayed_token"}"#],
        1.0
    );
}

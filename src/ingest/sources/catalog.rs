//! The catalog: every kind a `[[source]]` may name, and the one place a
//! name becomes its kind (adding a sender is its file plus a line here).

use super::spec::Reading;
use super::{
    discord, envelope, github, gitlab, hmac, hubspot, mailgun, paddle, preset, sendgrid, shopify, slack,
    square, standard_webhooks, stripe, twilio, twitch, zoom, Kind, SourceError,
};

/// The senders built on Standard Webhooks, by name: the same kind.
pub const STANDARD_WEBHOOKS_SENDERS: [&str; 6] = ["clerk", "resend", "svix", "brex", "openai", "replicate"];

/// Every kind a `[[source]]` may name, in the README's order.
pub fn kind_names() -> Vec<&'static str> {
    let mut names = vec![
        "envelope",
        "hmac",
        "stripe",
        "github",
        "shopify",
        "slack",
        "standard-webhooks",
        "paddle",
        "discord",
        "sendgrid",
        "twilio",
        "zoom",
        "twitch",
        "mailgun",
        "hubspot",
        "square",
        "gitlab",
    ];
    names.extend(preset::names());
    names.extend(STANDARD_WEBHOOKS_SENDERS);
    names
}

/// The sample's Discord key: RFC 8032's first test key (its secret half is public too).
pub const SAMPLE_DISCORD_KEY: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
/// The sample's SendGrid key: a P-256 point nobody's private key is known for here.
pub const SAMPLE_SENDGRID_KEY: &str = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEZd4V/st+w837Vw+oercc4fGOidWXawcFfNu/9f+Ft2Bn2FCYtpA7rYK+sMmI958fKV6cEoXFgLGZg2Eg7Ru/fg==";

/// A sources file with one route per kind (the route is the kind's name
/// without `-`), placeholder secrets and keys: what the fuzz target and the
/// benchmarks run every kind through.
pub fn every_kind_sample() -> String {
    let mut file = String::new();
    for name in kind_names() {
        let settings = match name {
            "envelope" => String::new(),
            "discord" => format!("public_keys = [\"{SAMPLE_DISCORD_KEY}\"]"),
            "sendgrid" => format!("public_keys = [\"{SAMPLE_SENDGRID_KEY}\"]"),
            "hmac" => "secrets = [\"sample-secret-0123456789\"]\nheader = \"X-Acme-Signature\"\nid_pointer = \"/id\"".into(),
            "twilio" | "hubspot" | "square" => {
                "secrets = [\"sample-secret-0123456789\"]\npublic_url = \"https://hooks.example.com\"".into()
            }
            n if n == "standard-webhooks" || STANDARD_WEBHOOKS_SENDERS.contains(&n) => {
                "secrets = [\"whsec_c2FtcGxlLXNlY3JldC0wMTIzNDU2Nzg5\"]".into()
            }
            _ => "secrets = [\"sample-secret-0123456789\"]".into(),
        };
        let route = name.replace('-', "");
        file.push_str(&format!("[[source]]\nroute = \"{route}\"\nkind = \"{name}\"\n{settings}\n\n"));
    }
    file
}

/// The kind called `name`, read from its table.
pub(super) fn read_kind(
    name: &str,
    r: &mut Reading<'_>,
) -> Result<(&'static str, Box<dyn Kind>), SourceError> {
    fn boxed<K: Kind + 'static>(name: &'static str, kind: K) -> (&'static str, Box<dyn Kind>) {
        (name, Box::new(kind))
    }
    Ok(match name {
        "envelope" => boxed("envelope", envelope::Envelope::read(r)?),
        "stripe" => boxed("stripe", stripe::Stripe::read(r)?),
        "github" => boxed("github", github::GitHub::read(r)?),
        "shopify" => boxed("shopify", shopify::Shopify::read(r)?),
        "slack" => boxed("slack", slack::Slack::read(r)?),
        "standard-webhooks" => boxed("standard-webhooks", standard_webhooks::StandardWebhooks::read(r)?),
        "paddle" => boxed("paddle", paddle::Paddle::read(r)?),
        "hmac" => boxed("hmac", hmac::GenericHmac::read(r)?),
        "discord" => boxed("discord", discord::Discord::read(r)?),
        "sendgrid" => boxed("sendgrid", sendgrid::SendGrid::read(r)?),
        "twilio" => boxed("twilio", twilio::Twilio::read(r)?),
        "hubspot" => boxed("hubspot", hubspot::HubSpot::read(r)?),
        "square" => boxed("square", square::Square::read(r)?),
        "zoom" => boxed("zoom", zoom::Zoom::read(r)?),
        "twitch" => boxed("twitch", twitch::Twitch::read(r)?),
        "mailgun" => boxed("mailgun", mailgun::Mailgun::read(r)?),
        "gitlab" => boxed("gitlab", gitlab::GitLab::read(r)?),
        other => {
            if let Some(&sender) = STANDARD_WEBHOOKS_SENDERS.iter().find(|&&s| s == other) {
                return Ok(boxed(sender, standard_webhooks::StandardWebhooks::read(r)?));
            }
            match preset::Preset::read(other, r) {
                Some(read) => {
                    let (name, kind) = read?;
                    boxed(name, kind)
                }
                None => {
                    return Err(r.error(
                        "kind",
                        format!("unknown kind {other:?}: one of {}", kind_names().join(", ")),
                    ))
                }
            }
        }
    })
}

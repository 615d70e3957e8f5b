//! Path → [`Route`]. The gateway has one real route; everything else is
//! answered by the caller as 404 (unknown path) or 405 (known path, other
//! method).

/// Where a request path leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/webhooks/:provider` with a provider matching `[a-z0-9_-]{1,64}`.
    Webhook {
        /// The provider segment.
        provider: String,
    },
    /// `/webhooks/:segment` where the segment is not a valid provider name.
    BadProvider,
    /// `/health`: readiness (Redis, PostgreSQL, memory).
    Health,
    /// `/metrics`: Prometheus text.
    Metrics,
    /// `/health/live`: liveness, answered without touching Redis or PostgreSQL.
    Live,
    /// Any other path.
    NotFound,
}

/// Longest provider name.
pub const MAX_PROVIDER_LEN: usize = 64;

/// Methods the webhook route answers, for the `Allow` header of a 405.
pub const WEBHOOK_ALLOW: &str = "POST";

/// Matches a request target (query string and fragment ignored).
pub fn route(target: &str) -> Route {
    let path = target.split(['?', '#']).next().unwrap_or_default();
    match path {
        "/health" | "/health/" => return Route::Health,
        "/health/live" => return Route::Live,
        "/metrics" => return Route::Metrics,
        _ => {}
    }
    let Some(rest) = path.strip_prefix("/webhooks/") else { return Route::NotFound };
    let provider = rest.strip_suffix('/').unwrap_or(rest);
    if provider.is_empty() || provider.contains('/') {
        return Route::NotFound;
    }
    if provider.len() <= MAX_PROVIDER_LEN && provider.bytes().all(is_provider_byte) {
        Route::Webhook { provider: provider.to_owned() }
    } else {
        Route::BadProvider
    }
}

fn is_provider_byte(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
}

#[cfg(test)]
mod tests {
    use super::*;

    fn webhook(p: &str) -> Route {
        Route::Webhook { provider: p.into() }
    }

    #[test]
    fn routes_are_matched() {
        assert_eq!(route("/webhooks/stripe"), webhook("stripe"));
        assert_eq!(route("/webhooks/my_co-2/"), webhook("my_co-2"));
        assert_eq!(route("/webhooks/github?delivery=1"), webhook("github"));
        assert_eq!(route("/health/live"), Route::Live);
        assert_eq!(route("/health?x"), Route::Health);
        assert_eq!(route("/webhooks/"), Route::NotFound);
        assert_eq!(route("/webhooks/a/b"), Route::NotFound);
        assert_eq!(route("/webhook/stripe"), Route::NotFound);
        assert_eq!(route("*"), Route::NotFound);
        assert_eq!(route("/webhooks/Stripe"), Route::BadProvider);
        assert_eq!(route("/webhooks/str%20ipe"), Route::BadProvider);
        assert_eq!(route(&format!("/webhooks/{}", "a".repeat(65))), Route::BadProvider);
        assert_eq!(route(&format!("/webhooks/{}", "a".repeat(64))), webhook(&"a".repeat(64)));
    }
}

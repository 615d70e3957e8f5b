//! Path → [`Route`]. `/webhooks/:provider` leads to the provider's source
//! (every valid provider without a `SOURCES_FILE`, only the listed ones with
//! it); `/health`, `/health/live` and `/metrics` are the operations routes;
//! everything else is answered 404 (unknown path) or 405 (known path, other
//! method).

use crate::ingest::sources::Sources;
use crate::job::is_provider;

/// Where a request path leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/webhooks/:provider` with a provider matching `[a-z0-9_-]{1,64}`
    /// that has a source.
    Webhook {
        /// The provider segment.
        provider: String,
        /// Its source's index in the [`Sources`].
        source: usize,
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

/// Methods the webhook route answers, for the `Allow` header of a 405.
pub const WEBHOOK_ALLOW: &str = "POST";

/// Matches a request target (query string and fragment ignored).
pub fn route(target: &str, sources: &Sources) -> Route {
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
    if !is_provider(provider) {
        return Route::BadProvider;
    }
    match sources.lookup(provider) {
        Some(source) => Route::Webhook { provider: provider.to_owned(), source: source.index },
        None => Route::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn webhook(p: &str) -> Route {
        Route::Webhook { provider: p.into(), source: 0 }
    }

    fn route(target: &str) -> Route {
        super::route(target, &Sources::default())
    }

    #[test]
    fn only_the_listed_routes_exist_with_a_sources_file() {
        let file = "[[source]]\nroute = \"stripe\"\nkind = \"stripe\"\nsecrets = [\"x\"]\n[[source]]\nroute = \"gh\"\nkind = \"github\"\nsecrets = [\"y\"]";
        let sources = Sources::parse(file, &|_| None).unwrap();
        assert_eq!(
            super::route("/webhooks/gh", &sources),
            Route::Webhook { provider: "gh".into(), source: 1 }
        );
        assert_eq!(super::route("/webhooks/other", &sources), Route::NotFound);
        assert_eq!(super::route("/webhooks/Bad!", &sources), Route::BadProvider);
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

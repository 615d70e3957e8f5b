//! CORS restricted to `CORS_ORIGINS`. Webhook senders are servers and send
//! no `Origin`; this exists for browser-based tools and is closed by default.
//!
//! An allowed origin gets `Access-Control-Allow-Origin: <origin>` (echoed,
//! never `*`) and `Vary: Origin`; its preflight `OPTIONS` is answered 204
//! with the allowed method and headers. Any other origin gets no CORS header.

/// Methods and headers granted to an allowed origin's preflight.
pub const ALLOW_METHODS: &str = "POST";
/// Request headers a browser may send.
pub const ALLOW_HEADERS: &str = "Content-Type";
/// How long a browser may cache a preflight answer, in seconds.
pub const MAX_AGE_SECS: u32 = 600;

/// The allow-list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cors {
    origins: Vec<String>,
    any: bool,
}

impl Cors {
    /// Parses `CORS_ORIGINS`: a comma list of origins (`https://app.example.com`),
    /// `*` for any origin, or empty for none.
    ///
    /// # Errors
    /// An entry that is not `*` and not `scheme://host[:port]`.
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut cors = Self::default();
        for origin in list.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            if origin == "*" {
                cors.any = true;
            } else if let Some((scheme, host)) = origin.split_once("://") {
                if scheme.is_empty() || host.is_empty() || host.contains('/') {
                    return Err(format!("{origin:?} is not an origin like https://app.example.com"));
                }
                cors.origins.push(origin.to_ascii_lowercase());
            } else {
                return Err(format!("{origin:?} is not an origin like https://app.example.com"));
            }
        }
        Ok(cors)
    }

    /// Whether any cross-origin access is configured (then `Vary: Origin` is sent).
    pub fn enabled(&self) -> bool {
        self.any || !self.origins.is_empty()
    }

    /// Whether `origin` may read our answers.
    pub fn allows(&self, origin: &str) -> bool {
        self.any || self.origins.iter().any(|o| o.eq_ignore_ascii_case(origin))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allow_list_is_exact() {
        let cors = Cors::parse(" https://app.example.com , http://localhost:8080").unwrap();
        assert!(cors.enabled());
        assert!(cors.allows("https://app.example.com"));
        assert!(cors.allows("HTTPS://APP.EXAMPLE.COM"));
        assert!(!cors.allows("https://app.example.com.evil.test"));
        assert!(!cors.allows("http://app.example.com"));
        assert!(!Cors::parse("").unwrap().enabled());
        assert!(Cors::parse("*").unwrap().allows("https://any.test"));
        assert!(Cors::parse("example.com").is_err());
        assert!(Cors::parse("https://a.test/path").is_err());
    }
}

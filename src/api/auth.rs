//! Who may call the API: bearer tokens with a scope.
//!
//! `API_TOKENS` (or the lines of `API_TOKENS_FILE`) are `scope:token`
//! pairs, scope `read` or `admin` (`admin` implies `read`). A request's
//! `Authorization: Bearer <token>` is compared with every configured token,
//! each comparison in constant time (SHA-256 digests of equal length), and
//! all of them whatever matched, so neither the position of a match nor a
//! prefix shows in the time taken. Tokens are never logged or shown: a
//! caller is named by its token's position in the list.

use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// Read events and move its named consumers.
    Read,
    /// Everything, the operator routes too.
    Admin,
}

impl Scope {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "read" => Some(Self::Read),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }
}

/// The configured tokens, kept only as digests.
#[derive(Clone, Default)]
pub struct Tokens {
    entries: Vec<(Scope, [u8; 32])>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scopes: Vec<Scope> = self.entries.iter().map(|e| e.0).collect();
        f.debug_struct("Tokens").field("scopes", &scopes).finish()
    }
}

/// A token that passed: its position in the list (1-based) and scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// 1-based position of its token in `API_TOKENS` (then the file's lines).
    pub token: usize,
    /// What it may do.
    pub scope: Scope,
}

impl Tokens {
    /// Parses `scope:token` entries; the error names the entry by position
    /// only (an entry may be a token with a typo in its scope).
    ///
    /// # Errors
    /// An entry without a known scope, or with an empty token.
    pub fn parse<'a>(entries: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut out = Vec::new();
        for (i, entry) in entries.into_iter().map(str::trim).filter(|e| !e.is_empty()).enumerate() {
            let (scope, token) = entry
                .split_once(':')
                .and_then(|(s, t)| Some((Scope::parse(s.trim())?, t.trim())))
                .filter(|(_, t)| !t.is_empty())
                .ok_or_else(|| format!("entry {} is not `read:<token>` or `admin:<token>`", i + 1))?;
            out.push((scope, digest(token)));
        }
        Ok(Self { entries: out })
    }

    /// Appends another list (the file's after the variable's).
    pub fn extend(&mut self, other: Tokens) {
        self.entries.extend(other.entries);
    }

    /// Whether no token is configured (the API is off).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many tokens are configured.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The caller whose token `presented` is, if any.
    pub fn check(&self, presented: &str) -> Option<Caller> {
        let d = digest(presented);
        let mut found = subtle::Choice::from(0);
        let mut position = 0u64;
        for (i, (_, known)) in self.entries.iter().enumerate() {
            let hit = known.ct_eq(&d);
            // The first match wins; every entry is compared all the same.
            position = u64::conditional_select(&position, &(i as u64 + 1), hit & !found);
            found |= hit;
        }
        if bool::from(found) {
            let token = position as usize;
            Some(Caller { token, scope: self.entries[token - 1].0 })
        } else {
            None
        }
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The token of an `Authorization` header value, if it is a bearer token.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_found_by_position_and_scope_and_unknown_ones_are_not() {
        let t = Tokens::parse("read:r-1, admin:a-2".split(',')).unwrap();
        assert_eq!(t.check("r-1"), Some(Caller { token: 1, scope: Scope::Read }));
        assert_eq!(t.check("a-2"), Some(Caller { token: 2, scope: Scope::Admin }));
        assert_eq!(t.check("r-"), None);
        assert_eq!(t.check(""), None);
        assert!(Scope::Admin > Scope::Read, "admin implies read");
        let e = Tokens::parse(["read:ok", "owner:secret-value"]).unwrap_err();
        assert!(e.contains("entry 2") && !e.contains("secret-value"), "{e}");
        assert!(Tokens::parse(["read:"]).is_err());
        assert!(!format!("{t:?}").contains("r-1"));
    }

    #[test]
    fn bearer_tokens_are_read_from_the_header() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer"), None);
    }
}

//! Keyed MACs and their comparison, shared by every signature scheme.
//!
//! Each secret is keyed once, at start; a request clones the keyed state
//! and feeds it the signed parts in order (no concatenated copy of the
//! body). A candidate signature is decoded first and compared with every
//! key's tag in constant time (`subtle`); a candidate of the wrong length
//! never matches, which rules out the empty-signature bug class (`v1,`
//! passing a zipped XOR fold, svix/svix-webhooks#1190).

use std::fmt;

use base64::Engine as _;
use hmac::{Hmac, KeyInit};
use sha1::Sha1;
use sha2::{Sha256, Sha512};
use subtle::ConstantTimeEq;

/// The hash under the HMAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// HMAC-SHA256 (every named sender).
    Sha256,
    /// HMAC-SHA512.
    Sha512,
    /// HMAC-SHA1 (legacy senders only).
    Sha1,
}

impl Algorithm {
    /// `sha256`, `sha512` or `sha1`.
    pub fn parse(v: &str) -> Option<Self> {
        match v.to_ascii_lowercase().as_str() {
            "sha256" => Some(Self::Sha256),
            "sha512" => Some(Self::Sha512),
            "sha1" => Some(Self::Sha1),
            _ => None,
        }
    }
}

/// How a signature is written in its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Hexadecimal, either case.
    Hex,
    /// Standard base64 with padding.
    Base64,
}

impl Encoding {
    /// `hex` or `base64`.
    pub fn parse(v: &str) -> Option<Self> {
        match v.to_ascii_lowercase().as_str() {
            "hex" => Some(Self::Hex),
            "base64" => Some(Self::Base64),
            _ => None,
        }
    }

    /// The signature `text` encodes, or `None` if it is not valid in this
    /// encoding. Decoded on the stack: the hot path allocates nothing here
    /// (`hex::decode` into a `Vec` went byte by byte through a `Result`
    /// iterator and cost more than the HMAC itself, tuning.md §21).
    pub fn decode(self, text: &[u8]) -> Option<Signature> {
        let mut sig = Signature { bytes: [0; SIGNATURE_BUF], len: 0 };
        match self {
            Self::Hex if text.len() <= 2 * MAX_TAG => {
                sig.len = text.len() / 2;
                // An odd length is an error here too.
                hex::decode_to_slice(text, &mut sig.bytes[..sig.len]).ok()?;
                Some(sig)
            }
            Self::Base64 if text.len() <= SIGNATURE_BUF / 3 * 4 => {
                sig.len =
                    base64::engine::general_purpose::STANDARD.decode_slice(text, &mut sig.bytes).ok()?;
                Some(sig)
            }
            // Longer than any MAC: it can never match, but is it even valid?
            Self::Hex => hex::decode(text).ok().map(|_| Signature::TOO_LONG),
            Self::Base64 => {
                base64::engine::general_purpose::STANDARD.decode(text).ok().map(|_| Signature::TOO_LONG)
            }
        }
    }
}

/// The longest MAC here: SHA-512's 64 bytes.
const MAX_TAG: usize = 64;
/// Room for a base64 text of up to 96 characters (72 bytes) to decode in place.
const SIGNATURE_BUF: usize = 72;

/// A signature or a computed MAC, on the stack. A decoded signature longer
/// than any MAC is kept as an empty one, which no MAC (never empty) equals.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature {
    bytes: [u8; SIGNATURE_BUF],
    len: usize,
}

impl Signature {
    const TOO_LONG: Self = Self { bytes: [0; SIGNATURE_BUF], len: 0 };

    /// The bytes (a test's 31- or 33-byte variant of a real one, say).
    pub fn from_bytes(b: &[u8]) -> Self {
        if b.len() > MAX_TAG {
            return Self::TOO_LONG;
        }
        let mut sig = Self { bytes: [0; SIGNATURE_BUF], len: b.len() };
        sig.bytes[..b.len()].copy_from_slice(b);
        sig
    }

    /// Its bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({} bytes)", self.len)
    }
}

#[derive(Clone)]
enum Keyed {
    Sha256(Hmac<Sha256>),
    Sha512(Hmac<Sha512>),
    Sha1(Hmac<Sha1>),
}

impl Keyed {
    fn tag(&self, parts: &[&[u8]]) -> Signature {
        fn run<M: hmac::Mac + Clone>(m: &M, parts: &[&[u8]]) -> Signature {
            let mut m = m.clone();
            for p in parts {
                m.update(p);
            }
            let out = m.finalize().into_bytes();
            Signature::from_bytes(&out)
        }
        match self {
            Self::Sha256(m) => run(m, parts),
            Self::Sha512(m) => run(m, parts),
            Self::Sha1(m) => run(m, parts),
        }
    }
}

/// The keyed MACs of one source: one per secret, tried in order.
#[derive(Clone)]
pub struct Keys {
    keyed: Vec<Keyed>,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} secret(s), redacted", self.keyed.len())
    }
}

impl Keys {
    /// Keys each secret (its bytes as given) for `algorithm`.
    pub fn new(algorithm: Algorithm, secrets: &[Vec<u8>]) -> Self {
        // HMAC takes a key of any length, so keying cannot fail.
        let keyed = secrets
            .iter()
            .map(|s| match algorithm {
                Algorithm::Sha256 => Keyed::Sha256(Hmac::new_from_slice(s).expect("any key length")),
                Algorithm::Sha512 => Keyed::Sha512(Hmac::new_from_slice(s).expect("any key length")),
                Algorithm::Sha1 => Keyed::Sha1(Hmac::new_from_slice(s).expect("any key length")),
            })
            .collect();
        Self { keyed }
    }

    /// Whether any decoded `candidates` signature is the MAC of `parts`
    /// (fed in order) under any key. Constant time in the tag's bytes.
    pub fn any_matches(&self, parts: &[&[u8]], candidates: &[Signature]) -> bool {
        let mut found = subtle::Choice::from(0);
        for key in &self.keyed {
            let tag = key.tag(parts);
            let tag = tag.as_slice();
            for c in candidates.iter().map(Signature::as_slice) {
                // Length is no secret; equal lengths are compared in constant time.
                if c.len() == tag.len() {
                    found |= tag.ct_eq(c);
                }
            }
        }
        found.into()
    }

    /// The encoded MAC of `parts` under the first key (tests and benches sign with it).
    pub fn sign(&self, parts: &[&[u8]], encoding: Encoding) -> String {
        let tag = self.keyed[0].tag(parts);
        match encoding {
            Encoding::Hex => hex::encode(tag.as_slice()),
            Encoding::Base64 => base64::engine::general_purpose::STANDARD.encode(tag.as_slice()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_github_docs_vector() {
        // docs.github.com, "Validating webhook deliveries".
        let keys = Keys::new(Algorithm::Sha256, &[b"It's a Secret to Everybody".to_vec()]);
        let sig = "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(keys.sign(&[b"Hello, World!"], Encoding::Hex), sig);
        let good = Encoding::Hex.decode(sig.as_bytes()).unwrap();
        assert!(
            keys.any_matches(&[b"Hello, ", b"World!"], std::slice::from_ref(&good)),
            "parts are fed in order"
        );
        assert!(!keys.any_matches(&[b"Hello, World?"], std::slice::from_ref(&good)));
        let good = good.as_slice();
        let variant = |b: &[u8]| [Signature::from_bytes(b)];
        assert!(!keys.any_matches(&[b"Hello, World!"], &variant(&good[..31])), "31 bytes");
        assert!(!keys.any_matches(&[b"Hello, World!"], &variant(&[good, &[0]].concat())), "33 bytes");
        assert!(!keys.any_matches(&[b"Hello, World!"], &variant(&[])), "empty");
        let long = [good, good, good].concat();
        assert!(!keys.any_matches(&[b"Hello, World!"], &variant(&long)), "96 bytes holding it");
        assert_eq!(
            Encoding::Hex.decode(hex::encode(&long).as_bytes()).map(|s| s.len),
            Some(0),
            "too long, valid"
        );
    }

    #[test]
    fn any_key_and_any_candidate_may_match() {
        let old = b"old".to_vec();
        let keys = Keys::new(Algorithm::Sha256, &[b"new".to_vec(), old.clone()]);
        let by_old = Encoding::Hex
            .decode(Keys::new(Algorithm::Sha256, &[old]).sign(&[b"x"], Encoding::Hex).as_bytes());
        assert!(keys.any_matches(&[b"x"], &[Signature::from_bytes(&[0; 32]), by_old.unwrap()]));
        for alg in [Algorithm::Sha512, Algorithm::Sha1] {
            let k = Keys::new(alg, &[b"k".to_vec()]);
            let sig = Encoding::Base64.decode(k.sign(&[b"x"], Encoding::Base64).as_bytes()).unwrap();
            assert!(k.any_matches(&[b"x"], &[sig]), "{alg:?}");
        }
        assert_eq!(Encoding::Hex.decode(b"zz"), None);
        assert_eq!(Encoding::Hex.decode(b"abc"), None, "odd length");
        assert_eq!(Encoding::Hex.decode(&[b'z'; 200]), None);
        assert_eq!(Encoding::Base64.decode(b"%%%"), None);
        assert_eq!(Encoding::Base64.decode(&[b'%'; 200]), None);
        // SHA-512 in base64 (88 characters) decodes in place.
        let k = Keys::new(Algorithm::Sha512, &[b"k".to_vec()]);
        let b64 = k.sign(&[b"x"], Encoding::Base64);
        assert_eq!(Encoding::Base64.decode(b64.as_bytes()).map(|s| s.len), Some(64));
        assert_eq!(format!("{keys:?}"), "2 secret(s), redacted");
    }
}

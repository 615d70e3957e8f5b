//! `api/`: the second listener, for applications and operators.

use std::net::SocketAddr;

use super::vars::Vars;
use super::ConfigError;
use crate::api::Tokens;

/// `api/`: where it listens and who may call it.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// `API_ADDR` (default `127.0.0.1:3001`).
    pub addr: SocketAddr,
    /// `API_TOKENS` (a comma list of `read:<token>` / `admin:<token>`) and
    /// the lines of `API_TOKENS_FILE`; none: the API is off.
    pub tokens: Tokens,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self { addr: SocketAddr::from(([127, 0, 0, 1], 3001)), tokens: Tokens::default() }
    }
}

impl ApiConfig {
    pub(super) fn read(v: &Vars<'_>) -> Result<Self, ConfigError> {
        let d = Self::default();
        let addr = v
            .var("API_ADDR")
            .map_or(d.addr, |s| s.parse().map_err(|_| "host:port, such as 127.0.0.1:3001".to_string()))?;
        let listed = v.var("API_TOKENS");
        let mut tokens = match &listed.value {
            Some(list) => Tokens::parse(list.split(',')).map_err(|e| listed.error(e))?,
            None => Tokens::default(),
        };
        let file = v.var("API_TOKENS_FILE");
        if let Some(path) = &file.value {
            tokens.extend(read_token_file(path).map_err(|e| file.error(e))?);
        }
        Ok(Self { addr, tokens })
    }
}

/// The tokens of `path`: one `scope:token` a line, the file readable by its
/// owner only (a token file anyone may read is a leak waiting).
fn read_token_file(path: &str) -> Result<Tokens, String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read it: {e}"))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!("its mode is {mode:o}: only its owner may read it (chmod 600)"));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}"))?;
    Tokens::parse(text.lines().filter(|l| !l.trim_start().starts_with('#')))
        .map_err(|e| format!("{e} (by line, comments and blank lines not counted)"))
}

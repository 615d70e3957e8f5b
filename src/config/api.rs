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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use crate::config::Config;

    fn load(vars: &[(&str, String)]) -> Result<Config, crate::config::ConfigError> {
        Config::from_lookup(|k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone()))
    }

    #[test]
    fn a_token_file_is_read_only_when_only_its_owner_may_read_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "# ops\nread:from-the-file\n\nadmin:second-one\n").unwrap();
        let file = path.to_str().unwrap().to_string();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load(&[("API_TOKENS_FILE", file.clone())]).unwrap_err();
        assert_eq!(e.var, "API_TOKENS_FILE");
        assert!(e.expected.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = load(&[("API_TOKENS", "read:from-the-env".into()), ("API_TOKENS_FILE", file)]).unwrap();
        let t = &c.api.tokens;
        assert_eq!(t.len(), 3);
        assert_eq!(t.check("from-the-env").map(|c| c.token), Some(1));
        assert_eq!(t.check("second-one").map(|c| (c.token, c.scope)), Some((3, crate::api::Scope::Admin)));
        assert!(load(&[("API_ADDR", "nowhere".into())]).is_err());
        assert!(Config::default().api.tokens.is_empty(), "off by default");
    }
}

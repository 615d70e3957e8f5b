//! `ingest/`'s section: the JSON parser, its depth limit and the webhook
//! sources (`SOURCES_FILE`).

use std::sync::Arc;

use super::vars::Vars;
use super::ConfigError;
use crate::ingest::sources::Sources;
use crate::ingest::JsonParser;

/// `ingest/`: what bodies must be, and who may send them.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// `JSON_PARSER` (default `serde`): `serde` (serde_json into borrowed
    /// fields) or `simd` (simd-json). Measured in `benches/ingest.rs`.
    pub json_parser: JsonParser,
    /// `MAX_JSON_DEPTH` (default 1000, 0 = unchecked): bodies nesting arrays
    /// and objects deeper get 400 (PostgreSQL's jsonb parser stops at its
    /// stack limit, ~13,000 levels under the default `max_stack_depth`).
    pub max_json_depth: usize,
    /// `SOURCES_FILE` (default unset): the webhook sources, one per route,
    /// with their signature schemes and secrets. Unset: every
    /// `/webhooks/:provider` takes the seed's unsigned envelope.
    pub sources: Option<Arc<Sources>>,
    /// `REQUIRE_SIGNED` (default false): refuse to start with a route that
    /// takes unsigned requests (no `SOURCES_FILE`, or an `envelope` source)
    /// unless `ALLOW_UNSIGNED` names it. For production.
    pub require_signed: bool,
    /// `ALLOW_UNSIGNED` (default empty): the routes allowed to stay unsigned
    /// under `REQUIRE_SIGNED` (`*` = every route, as without a file).
    pub allow_unsigned: Vec<String>,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            json_parser: crate::ingest::Ingestor::DEFAULT_PARSER,
            max_json_depth: crate::ingest::DEFAULT_MAX_DEPTH,
            sources: None,
            require_signed: false,
            allow_unsigned: Vec::new(),
        }
    }
}

impl IngestConfig {
    pub(super) fn read(v: &Vars<'_>) -> Result<Self, ConfigError> {
        let d = Self::default();
        let file = v.var("SOURCES_FILE");
        // Set but blank (`SOURCES_FILE=$UNSET_VAR`) is a mistake, not a wish
        // for the unsigned envelope on every route: say so.
        if file.value.is_none() && v.lookup("SOURCES_FILE").is_some() {
            return Err(file.error("a file name; unset it to have the unsigned envelope on every route"));
        }
        let sources = match &file.value {
            None => None,
            Some(path) => {
                let text = std::fs::read_to_string(path.trim())
                    .map_err(|e| file.error(format!("a readable TOML file of sources ({e})")))?;
                let parsed =
                    Sources::parse(&text, &|name| v.lookup(name)).map_err(|e| file.error(e.to_string()))?;
                Some(Arc::new(parsed))
            }
        };
        Self {
            json_parser: v.var("JSON_PARSER").map_or(d.json_parser, |p| {
                match p.to_ascii_lowercase().as_str() {
                    "serde" => Ok(JsonParser::Serde),
                    "simd" => Ok(JsonParser::Simd),
                    _ => Err("`serde` or `simd`".into()),
                }
            })?,
            max_json_depth: v.var("MAX_JSON_DEPTH").in_range(d.max_json_depth, 0, 1_000_000)?,
            require_signed: v.var("REQUIRE_SIGNED").bool_or(d.require_signed)?,
            allow_unsigned: v.var("ALLOW_UNSIGNED").map_or(d.allow_unsigned, |list| {
                Ok(list.split(',').map(|r| r.trim().to_string()).filter(|r| !r.is_empty()).collect())
            })?,
            sources,
        }
        .checked(v)
    }

    /// Under `REQUIRE_SIGNED`, every unsigned route must be named in `ALLOW_UNSIGNED`.
    fn checked(self, v: &Vars<'_>) -> Result<Self, ConfigError> {
        if !self.require_signed {
            return Ok(self);
        }
        let sources = self.sources.clone().unwrap_or_default();
        let unnamed: Vec<&str> = sources
            .unsigned_routes()
            .into_iter()
            .filter(|r| !self.allow_unsigned.iter().any(|a| a == r))
            .collect();
        if unnamed.is_empty() {
            return Ok(self);
        }
        let mut e = v.var("REQUIRE_SIGNED").error(if sources.from_file() {
            format!(
                "routes {unnamed:?} take unsigned requests (kind = \"envelope\"): give them a signing kind, \
                 or name them in ALLOW_UNSIGNED"
            )
        } else {
            "no SOURCES_FILE: every route would take unsigned requests; set SOURCES_FILE \
             (or ALLOW_UNSIGNED=* to accept that)"
                .into()
        });
        e.value = "true".into();
        Err(e)
    }
}

//! Reading one environment variable: blank counts as unset, a bad value
//! becomes a [`ConfigError`] naming the variable, and variables that may
//! hold a password are never repeated as given.

use std::fmt;
use std::time::Duration;

use super::{redact, ConfigError, CoreSelection};

/// Variables whose values may hold a password.
const SECRET_VARS: &[&str] = &["REDIS_URL", "REDIS_CLUSTER_NODES", "DATABASE_URL"];
/// Variables that are secrets through and through: never shown at all.
const HIDDEN_VARS: &[&str] = &["API_TOKENS"];

/// Where variables come from (the environment, or a map in tests).
pub(super) struct Vars<'a> {
    get: &'a dyn Fn(&str) -> Option<String>,
}

impl<'a> Vars<'a> {
    pub(super) fn new(get: &'a dyn Fn(&str) -> Option<String>) -> Self {
        Self { get }
    }

    /// The variable `name` (blank counts as unset).
    pub(super) fn var(&self, name: &'static str) -> Var {
        Var { name, value: (self.get)(name).filter(|v| !v.trim().is_empty()) }
    }

    /// The raw lookup, for values that name other variables (`secrets_env`).
    pub(super) fn lookup(&self, name: &str) -> Option<String> {
        (self.get)(name)
    }
}

/// One variable as found.
pub(super) struct Var {
    pub(super) name: &'static str,
    pub(super) value: Option<String>,
}

impl Var {
    /// The value as it may be shown: redacted for secret variables.
    fn shown(&self, v: &str) -> String {
        if HIDDEN_VARS.contains(&self.name) {
            "***".into()
        } else if SECRET_VARS.contains(&self.name) {
            redact(v)
        } else {
            v.to_string()
        }
    }

    /// An error for this variable's value.
    pub(super) fn error(&self, expected: impl Into<String>) -> ConfigError {
        let value = self.value.as_deref().map(|v| self.shown(v)).unwrap_or_default();
        ConfigError { var: self.name, value, expected: expected.into() }
    }

    pub(super) fn map_or<T>(
        self,
        default: T,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        match &self.value {
            None => Ok(default),
            Some(v) => parse(v.trim()).map_err(|expected| self.error(expected)),
        }
    }

    pub(super) fn parse_or<T: std::str::FromStr>(self, default: T, expected: &str) -> Result<T, ConfigError> {
        self.map_or(default, |v| v.parse().map_err(|_| expected.to_string()))
    }

    pub(super) fn in_range<T>(self, default: T, min: T, max: T) -> Result<T, ConfigError>
    where
        T: std::str::FromStr + PartialOrd + fmt::Display + Copy,
    {
        self.map_or(default, |v| match v.parse::<T>() {
            Ok(n) if n >= min && n <= max => Ok(n),
            _ => Err(format!("a whole number from {min} to {max}")),
        })
    }

    /// Milliseconds from `min` to `max`, defaulting to `default`.
    pub(super) fn millis(self, default: Duration, min: u64, max: u64) -> Result<Duration, ConfigError> {
        self.in_range(default.as_millis() as u64, min, max).map(Duration::from_millis)
    }

    /// A duration written with its unit (`90s`, `15m`, `12h`, `30d`; `0`
    /// alone is zero), from `min` to `max`.
    pub(super) fn duration(
        self,
        default: Duration,
        min: Duration,
        max: Duration,
    ) -> Result<Duration, ConfigError> {
        self.map_or(default, |v| match parse_duration(v) {
            Some(d) if d >= min && d <= max => Ok(d),
            _ => Err(format!(
                "a duration with its unit (s, m, h, d) from {} to {}",
                show_duration(min),
                show_duration(max)
            )),
        })
    }

    pub(super) fn bool_or(self, default: bool) -> Result<bool, ConfigError> {
        self.map_or(default, |v| match v.to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" => Ok(false),
            _ => Err("true or false".into()),
        })
    }
}

/// `CORES`: `auto`, `all`, a count (`2`), or a list of ids and ranges (`0,2-3`).
pub(super) fn parse_cores(v: &str) -> Result<CoreSelection, String> {
    const EXPECTED: &str = "`auto`, `all`, a count such as 2, or a core list such as 0,2-3";
    if v.eq_ignore_ascii_case("auto") {
        return Ok(CoreSelection::Auto);
    }
    if v.eq_ignore_ascii_case("all") {
        return Ok(CoreSelection::All);
    }
    if let Ok(n) = v.parse::<usize>() {
        return if n == 0 { Err(EXPECTED.into()) } else { Ok(CoreSelection::Count(n)) };
    }
    let mut ids = Vec::new();
    for part in v.split(',').map(str::trim) {
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        let (lo, hi) = match (lo.trim().parse::<usize>(), hi.trim().parse::<usize>()) {
            (Ok(lo), Ok(hi)) if lo <= hi && hi < 4096 => (lo, hi),
            _ => return Err(EXPECTED.into()),
        };
        ids.extend(lo..=hi);
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(CoreSelection::List(ids))
}

/// `90s`, `15m`, `12h`, `30d`, or `0`.
pub(super) fn parse_duration(v: &str) -> Option<Duration> {
    if v == "0" {
        return Some(Duration::ZERO);
    }
    let unit = match v.chars().last()? {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return None,
    };
    let n: u64 = v[..v.len() - 1].trim().parse().ok()?;
    n.checked_mul(unit).map(Duration::from_secs)
}

/// The largest unit that divides `d` exactly.
pub(super) fn show_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => "0".into(),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

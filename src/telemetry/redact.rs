//! Passwords out of connection strings, for logs, `check-config` and
//! configuration errors. Every form the clients accept is covered:
//!
//! * URLs: `scheme://user:password@host/…`. The user info ends at the
//!   **last** `@`, so a password holding `/`, `?`, `#` or `@` (invalid
//!   unescaped, but people write it) is still hidden; when that `@` was in
//!   fact in a query value, more is hidden than needed, never less.
//! * query parameters: `?password=…`, `&pass=…` (redis-rs's Unix-socket
//!   form), `passwd`, `pwd`, any letter case;
//! * libpq's `key=value` strings: `password=…`, `password = '…'` with
//!   quotes and `\'` escapes.
//!
//! Whatever cannot be read with certainty from a password key on is hidden
//! to the end.

const HIDDEN: &str = "***";
const PASSWORD_KEYS: [&str; 4] = ["password", "pass", "passwd", "pwd"];

/// `s` with every password replaced by `***`.
pub fn redact(s: &str) -> String {
    match s.find("://") {
        Some(i) => redact_url(s, i + 3),
        None if s.contains('=') => redact_key_values(s),
        None => s.to_string(),
    }
}

fn is_password_key(key: &str) -> bool {
    PASSWORD_KEYS.iter().any(|k| key.trim().eq_ignore_ascii_case(k))
}

fn redact_url(url: &str, authority: usize) -> String {
    let rest = &url[authority..];
    let mut out = String::with_capacity(url.len());
    out.push_str(&url[..authority]);
    let after = match rest.rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            match userinfo.split_once(':') {
                // A user name cannot hold these; if it seems to, the split is
                // not the user's and all of it is hidden.
                Some((user, _)) if !user.contains(['/', '?', '#']) => {
                    out.push_str(user);
                    out.push(':');
                    out.push_str(HIDDEN);
                }
                Some(_) => out.push_str(HIDDEN),
                None => out.push_str(userinfo),
            }
            out.push('@');
            &rest[at + 1..]
        }
        None => rest,
    };
    match after.find('?') {
        Some(q) => {
            out.push_str(&after[..=q]);
            let (query, fragment) =
                after[q + 1..].split_once('#').map_or((&after[q + 1..], None), |(a, b)| (a, Some(b)));
            let params: Vec<String> = query
                .split('&')
                .map(|param| match param.split_once('=') {
                    Some((k, _)) if is_password_key(k) => format!("{k}={HIDDEN}"),
                    _ => param.to_string(),
                })
                .collect();
            out.push_str(&params.join("&"));
            if let Some(f) = fragment {
                out.push('#');
                out.push_str(f);
            }
        }
        None => out.push_str(after),
    }
    out
}

/// libpq's `key = value …`: values bare (up to white space) or single-quoted
/// (`\'` and `\\` escapes). Only password values are replaced.
fn redact_key_values(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        // Key: up to `=` or white space.
        let key_start = i;
        while i < b.len() && b[i] != b'=' && !b[i].is_ascii_whitespace() {
            i += 1;
        }
        let key = &s[key_start..i];
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= b.len() || b[i] != b'=' {
            // Not `key=value`: keep what is certain not to be a value.
            out.push_str(&s[key_start..i]);
            if is_password_key(key) {
                out.push_str(HIDDEN);
                return out;
            }
            continue;
        }
        i += 1; // '='
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let value_start = i;
        if i < b.len() && b[i] == b'\'' {
            i += 1;
            while i < b.len() && b[i] != b'\'' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i = (i + 1).min(b.len());
        } else {
            while i < b.len() && !b[i].is_ascii_whitespace() {
                i += 1;
            }
        }
        out.push_str(key);
        out.push('=');
        if is_password_key(key) {
            out.push_str(HIDDEN);
        } else {
            out.push_str(&s[value_start..i]);
        }
        // Keep the separating white space as written.
        let ws = i;
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        out.push_str(&s[ws..i]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn url_passwords_are_hidden_in_every_spelling() {
        for (url, shown) in [
            ("redis://:s3cret@h:6379/0", "redis://:***@h:6379/0"),
            ("redis://user:s3cret@h:6379/", "redis://user:***@h:6379/"),
            ("postgres://u:s3cret@h/db", "postgres://u:***@h/db"),
            ("postgres://u:s3/cr?et@h/db", "postgres://u:***@h/db"),
            ("postgres://u:s3cr@t@h/db", "postgres://u:***@h/db"),
            (
                "postgresql://u@h/db?password=s3cret&sslmode=off",
                "postgresql://u@h/db?password=***&sslmode=off",
            ),
            ("redis+unix:///run/r.sock?db=1&pass=s3cret", "redis+unix:///run/r.sock?db=1&pass=***"),
            ("postgres://h/db?PassWord=s3cret#x", "postgres://h/db?PassWord=***#x"),
            ("redis://h:6379/", "redis://h:6379/"),
        ] {
            assert_eq!(redact(url), shown, "{url}");
        }
    }

    #[test]
    fn key_value_passwords_are_hidden_quoted_or_not() {
        for (dsn, shown) in [
            ("host=h user=u password=s3cret dbname=d", "host=h user=u password=*** dbname=d"),
            ("host=h password = 's3 c\\'ret' dbname=d", "host=h password=*** dbname=d"),
            ("password='s3cret", "password=***"),
            ("host=h  password=s3cret", "host=h  password=***"),
            ("host=h password", "host=h password***"),
        ] {
            let out = redact(dsn);
            assert_eq!(out, shown, "{dsn}");
            assert!(!out.contains("s3"), "{out}");
        }
    }
}

//! A sources file that does not parse, reported by line, column and key,
//! never by its text: the TOML parser's own message quotes the offending
//! line and value, and in a sources file that value is often a secret.

use super::SourceError;

/// The error for `e`, raised while parsing `text`: where it is, which key
/// (when the line names one), and the parser's words with every quoted
/// value cut out.
pub(super) fn describe(e: &toml::de::Error, text: &str) -> SourceError {
    let at = e.span().map_or(0, |s| s.start.min(text.len()));
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    let line_text = text.lines().nth(line - 1).unwrap_or("");
    let key = line_text
        .split_once('=')
        .map(|(k, _)| k.trim())
        .filter(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'));
    let mut problem = format!("line {line}, column {column}");
    if let Some(key) = key {
        problem.push_str(&format!(", key `{key}`"));
    }
    problem.push_str(": ");
    problem.push_str(&without_quoted(e.message()));
    SourceError { source_name: "the file".into(), field: "toml", problem }
}

/// `text` with every `"…"` and `'…'` replaced by `…`: serde and the TOML
/// parser quote values that way (`invalid type: string "whsec_…"`), and
/// name fields in backticks, which stay.
fn without_quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut open: Option<char> = None;
    for c in text.lines().next().unwrap_or("").chars() {
        match open {
            Some(q) if c == q => open = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => {
                open = Some(c);
                out.push('…');
            }
            None => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::Sources;

    const SECRET: &str = "whsec_s3cr3t_do_not_print";

    #[test]
    fn a_malformed_file_is_reported_by_place_never_by_its_text() {
        let files = [
            // A string where a list is expected.
            format!("[[source]]\nroute = \"stripe\"\nkind = \"stripe\"\nsecrets = \"{SECRET}\"\n"),
            // An unknown field.
            format!("[[source]]\nroute = \"stripe\"\nkind = \"stripe\"\nsecret = [\"{SECRET}\"]\n"),
            // An unclosed quote.
            format!("[[source]]\nroute = \"stripe\"\nkind = \"stripe\"\nsecrets = [\"{SECRET}]\n"),
            // A bare value.
            format!("[[source]]\nroute = \"stripe\"\nkind = \"stripe\"\nsecrets = [{SECRET}]\n"),
            format!("[[source]]\nroute = \"stripe\"\nkind = \"stripe\"\nsecrets = ['{SECRET}', 7]\n"),
        ];
        for (i, file) in files.iter().enumerate() {
            let e = Sources::parse(file, &|_| None).err().unwrap_or_else(|| panic!("file {i} parsed"));
            let shown = e.to_string();
            assert!(!shown.contains("s3cr3t"), "file {i}: {shown}");
            assert!(shown.contains("line 4"), "file {i} names its line: {shown}");
            assert_eq!(e.field, "toml");
        }
        let e = Sources::parse(&files[1], &|_| None).unwrap_err().to_string();
        assert!(e.contains("`secret`"), "an unknown field keeps its name: {e}");
        let e = Sources::parse(&files[0], &|_| None).unwrap_err().to_string();
        assert!(e.contains("key `secrets`") && e.contains("invalid type"), "{e}");
    }
}

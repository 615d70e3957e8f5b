//! Security headers: helmet's defaults (v7/v8), sent on every response,
//! errors included. Built once as one byte string, so they cost a `memcpy`
//! per response. No `X-Powered-By` is ever sent.

/// helmet's default headers, each line ending in CRLF.
pub const HELMET_HEADERS: &[u8] = b"content-security-policy: default-src 'self';base-uri 'self';font-src 'self' https: data:;form-action 'self';frame-ancestors 'self';img-src 'self' data:;object-src 'none';script-src 'self';script-src-attr 'none';style-src 'self' https: 'unsafe-inline';upgrade-insecure-requests\r\n\
cross-origin-opener-policy: same-origin\r\n\
cross-origin-resource-policy: same-origin\r\n\
origin-agent-cluster: ?1\r\n\
referrer-policy: no-referrer\r\n\
strict-transport-security: max-age=31536000; includeSubDomains\r\n\
x-content-type-options: nosniff\r\n\
x-dns-prefetch-control: off\r\n\
x-download-options: noopen\r\n\
x-frame-options: SAMEORIGIN\r\n\
x-permitted-cross-domain-policies: none\r\n\
x-xss-protection: 0\r\n";

#[cfg(test)]
mod tests {
    #[test]
    fn every_line_is_a_well_formed_header() {
        let text = std::str::from_utf8(super::HELMET_HEADERS).unwrap();
        assert!(text.ends_with("\r\n"));
        let lines: Vec<&str> = text.split_terminator("\r\n").collect();
        assert_eq!(lines.len(), 12);
        for line in lines {
            let (name, value) = line.split_once(": ").expect(line);
            assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'), "{name}");
            assert!(!value.is_empty() && !value.contains('\n'));
        }
    }
}

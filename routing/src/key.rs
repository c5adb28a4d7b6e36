//! Routing keys and the names the filter reads them under.

/// Longest routing key accepted. The control service mints shorter ones; the
/// bound keeps every lookup key small.
pub const MAX_ROUTING_KEY_LEN: usize = 64;

/// A routing key is 1..=64 characters of the URL-safe base64 alphabet
/// (`A-Z a-z 0-9 - _`), so it needs no escaping in any header format.
pub fn is_valid_routing_key(key: &[u8]) -> bool {
    !key.is_empty()
        && key.len() <= MAX_ROUTING_KEY_LEN
        && key
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
}

/// Sandbox and route group names are DNS labels (RFC 1123): `a-z 0-9 -`, at
/// most 63, starting and ending with a letter or digit.
pub fn is_valid_sandbox_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b.first() != Some(&b'-')
        && b.last() != Some(&b'-')
}

/// A context key name (a baggage key, the suffix of `ot-baggage-*` and
/// `uberctx-*`, a `tracestate` member key) must be valid in all of those
/// places at once: lowercase letters, digits, `-` and `_`, starting with a
/// letter, at most 200 characters (so `ot-baggage-` + name stays a short header name).
pub fn is_valid_context_key_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    matches!(bytes.first(), Some(b'a'..=b'z'))
        && bytes.len() <= 200
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-' || *b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_key_alphabet_and_length() {
        assert!(is_valid_routing_key(b"k7F_q-9"));
        assert!(is_valid_routing_key(&[b'a'; 64]));
        assert!(!is_valid_routing_key(&[b'a'; 65]));
        assert!(!is_valid_routing_key(b""));
        assert!(!is_valid_routing_key(b"a b"));
        assert!(!is_valid_routing_key(b"a%20"));
        assert!(!is_valid_routing_key(b"a\0"));
        assert!(!is_valid_routing_key("é".as_bytes()));
    }

    #[test]
    fn context_key_names() {
        assert!(is_valid_context_key_name("sandbox-routing-key"));
        assert!(is_valid_context_key_name("sd-routing-key"));
        assert!(!is_valid_context_key_name("Sandbox"));
        assert!(!is_valid_context_key_name("1key"));
        assert!(!is_valid_context_key_name(""));
        assert!(!is_valid_context_key_name("a=b"));
    }
}

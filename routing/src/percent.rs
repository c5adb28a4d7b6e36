//! Strict percent-decoding for header values.
//!
//! `percent_encoding::percent_decode` passes malformed escapes (`%zz`, a lone
//! `%`) through unchanged; for a routing decision an ambiguous value must be
//! rejected instead, so escapes are checked first.

use std::borrow::Cow;

/// Decodes `%XX` escapes. `None` when a `%` is not followed by two hex digits.
pub fn decode_strict(value: &[u8]) -> Option<Cow<'_, [u8]>> {
    let mut rest = value;
    while let Some(at) = rest.iter().position(|b| *b == b'%') {
        match rest.get(at + 1..at + 3) {
            Some([hi, lo]) if hi.is_ascii_hexdigit() && lo.is_ascii_hexdigit() => {}
            _ => return None,
        }
        rest = rest.get(at + 3..).unwrap_or_default();
    }
    Some(percent_encoding::percent_decode(value).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_valid_escapes() {
        assert_eq!(decode_strict(b"plain").as_deref(), Some(&b"plain"[..]));
        assert_eq!(decode_strict(b"a%2Cb%3d").as_deref(), Some(&b"a,b="[..]));
        assert_eq!(decode_strict(b"%00").as_deref(), Some(&b"\0"[..]));
        // An overlong UTF-8 encoding decodes to bytes; UTF-8 validation is the caller's.
        assert_eq!(decode_strict(b"%C0%AF").as_deref(), Some(&[0xC0, 0xAF][..]));
    }

    #[test]
    fn rejects_malformed_escapes() {
        for bad in [&b"%"[..], b"%2", b"%zz", b"a%g1", b"ok%2Cthen%"] {
            assert_eq!(
                decode_strict(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}

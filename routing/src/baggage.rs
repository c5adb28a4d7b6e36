//! W3C Baggage (<https://www.w3.org/TR/baggage/>), read member by member.
//!
//! ```text
//! baggage-string =  list-member 0*179( OWS "," OWS list-member )
//! list-member    =  key OWS "=" OWS value *( OWS ";" OWS property )
//! key            =  token                        ; RFC 7230 3.2.6
//! value          =  *baggage-octet
//! baggage-octet  =  %x21 / %x23-2B / %x2D-3A / %x3C-5B / %x5D-7E
//! ```
//!
//! Several `baggage` headers form one list (RFC 9110 5.3). The spec's limits
//! are 64 list-members and 8192 bytes; a platform may drop what lies beyond
//! them, and this reader does: members past either limit are never looked at,
//! and `over_limit()` says so. Properties (`;...`) are skipped, not interpreted.

/// List-members read at most (W3C Baggage, "Limits").
pub const MAX_MEMBERS: usize = 64;
/// Bytes of the combined list read at most (W3C Baggage, "Limits").
pub const MAX_BYTES: usize = 8192;

/// One list-member. `value` is still percent-encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member<'a> {
    pub key: &'a [u8],
    /// `None` when the value holds bytes the grammar forbids (including
    /// non-ASCII bytes), or the `=` is missing.
    pub value: Option<&'a [u8]>,
}

/// Iterates the list-members of one or more `baggage` header values.
/// Members whose key is not a token are skipped; members with a bad value
/// are yielded with `value: None`, so a caller can tell "my key, broken"
/// from "not my key".
#[derive(Debug, Clone)]
pub struct Members<'s, 'a> {
    headers: &'s [&'a [u8]],
    /// Index of the next header line to start on.
    next_header: usize,
    /// Unread part of the current header line; `None` between lines.
    rest: Option<&'a [u8]>,
    members: usize,
    bytes: usize,
    over_limit: bool,
}

impl<'s, 'a> Members<'s, 'a> {
    pub fn new(headers: &'s [&'a [u8]]) -> Self {
        Members {
            headers,
            next_header: 0,
            rest: None,
            members: 0,
            bytes: 0,
            over_limit: false,
        }
    }

    /// True once the iterator has stopped because the list went past a limit.
    pub fn over_limit(&self) -> bool {
        self.over_limit
    }

    /// The next raw list element (text between commas), across header lines.
    fn next_element(&mut self) -> Option<&'a [u8]> {
        loop {
            if let Some(rest) = self.rest {
                let element = match rest.iter().position(|b| *b == b',') {
                    Some(comma) => {
                        self.rest = rest.get(comma + 1..);
                        rest.get(..comma).unwrap_or_default()
                    }
                    None => {
                        self.rest = None;
                        rest
                    }
                };
                // Each element is counted with one separator (`,` or the line join).
                self.bytes += element.len() + 1;
                return Some(element);
            }
            self.rest = Some(self.headers.get(self.next_header).copied()?);
            self.next_header += 1;
        }
    }
}

impl<'a> Iterator for Members<'_, 'a> {
    type Item = Member<'a>;

    fn next(&mut self) -> Option<Member<'a>> {
        while !self.over_limit {
            let element = self.next_element()?;
            // `bytes` counts one separator too many for the last element; the
            // bound stays conservative by at most one byte.
            if self.bytes > MAX_BYTES + 1 {
                self.over_limit = true;
                return None;
            }
            let element = trim_ows(element);
            if element.is_empty() {
                continue; // RFC 9110 5.6.1: empty list elements are ignored.
            }
            self.members += 1;
            if self.members > MAX_MEMBERS {
                self.over_limit = true;
                return None;
            }
            if let Some(member) = parse_member(element) {
                return Some(member);
            }
        }
        None
    }
}

fn parse_member(element: &[u8]) -> Option<Member<'_>> {
    let pair = match element.iter().position(|b| *b == b';') {
        Some(semi) => element.get(..semi)?,
        None => element,
    };
    let Some(eq) = pair.iter().position(|b| *b == b'=') else {
        let key = trim_ows(pair);
        return is_token(key).then_some(Member { key, value: None });
    };
    let key = trim_ows(pair.get(..eq)?);
    if !is_token(key) {
        return None;
    }
    let value = trim_ows(pair.get(eq + 1..)?);
    let value = value.iter().all(|b| is_baggage_octet(*b)).then_some(value);
    Some(Member { key, value })
}

/// Removes optional white space (RFC 9110 `OWS`: spaces and tabs) at both ends.
pub(crate) fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// RFC 7230 `token`.
fn is_token(s: &[u8]) -> bool {
    !s.is_empty()
        && s.iter()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b))
}

fn is_baggage_octet(b: u8) -> bool {
    matches!(b, 0x21 | 0x23..=0x2B | 0x2D..=0x3A | 0x3C..=0x5B | 0x5D..=0x7E)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(headers: &[&[u8]]) -> Vec<(String, Option<String>)> {
        Members::new(headers)
            .map(|m| {
                (
                    String::from_utf8_lossy(m.key).into_owned(),
                    m.value.map(|v| String::from_utf8_lossy(v).into_owned()),
                )
            })
            .collect()
    }

    fn kv(k: &str, v: &str) -> (String, Option<String>) {
        (k.to_owned(), Some(v.to_owned()))
    }

    #[test]
    fn reads_members_with_ows_and_properties() {
        assert_eq!(
            members(&[b"a=1, b = 2 ;prop;p2=x , c=%2C"]),
            vec![kv("a", "1"), kv("b", "2"), kv("c", "%2C")]
        );
    }

    #[test]
    fn several_headers_form_one_list() {
        assert_eq!(
            members(&[b"a=1,b=2", b"c=3", b"", b"d=4"]),
            vec![kv("a", "1"), kv("b", "2"), kv("c", "3"), kv("d", "4")]
        );
    }

    #[test]
    fn empty_elements_are_ignored() {
        assert_eq!(
            members(&[b",a=1,, ,b=2,"]),
            vec![kv("a", "1"), kv("b", "2")]
        );
    }

    #[test]
    fn bad_values_are_flagged_bad_keys_skipped() {
        assert_eq!(
            members(&[b"a=x y,b\x80=1,c=\xff,d,e=\"q\",f=ok"]),
            vec![
                ("a".into(), None),
                ("c".into(), None),
                ("d".into(), None),
                ("e".into(), None),
                kv("f", "ok")
            ]
        );
    }

    #[test]
    fn stops_after_64_members() {
        let list: Vec<String> = (0..70).map(|i| format!("k{i}=v")).collect();
        let joined = list.join(",");
        let headers = [joined.as_bytes()];
        let mut it = Members::new(&headers);
        assert_eq!(it.by_ref().count(), 64);
        assert!(it.over_limit());
    }

    #[test]
    fn stops_at_8192_bytes() {
        let filler = format!("filler={}", "x".repeat(8180));
        let header = format!("{filler},late=1");
        let headers = [header.as_bytes()];
        let mut it = Members::new(&headers);
        assert_eq!(it.next().map(|m| m.key), Some(&b"filler"[..]));
        assert_eq!(it.next(), None);
        assert!(it.over_limit());

        let exact = format!("k={}", "x".repeat(MAX_BYTES - 2));
        let headers = [exact.as_bytes()];
        let mut it = Members::new(&headers);
        assert_eq!(it.next().map(|m| m.key), Some(&b"k"[..]));
        assert!(!it.over_limit());
    }

    #[test]
    fn limits_span_several_headers() {
        let big = format!("a={}", "x".repeat(5000));
        let headers: [&[u8]; 2] = [big.as_bytes(), big.as_bytes()];
        let mut it = Members::new(&headers);
        assert_eq!(it.by_ref().count(), 1);
        assert!(it.over_limit());
    }
}

//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>): the validity
//! of `traceparent`, and members of `tracestate`.
//!
//! The spec says a receiver must ignore `tracestate` unless `traceparent` is
//! valid, so the filter honours a routing key in `tracestate` only then.

use crate::baggage::trim_ows;

/// `tracestate` holds at most 32 list-members (Trace Context 3.3.1.1).
pub const MAX_TRACESTATE_MEMBERS: usize = 32;

/// True when the `traceparent` header lines form one valid traceparent.
pub fn is_valid_traceparent(lines: &[&[u8]]) -> bool {
    // Several traceparent lines cannot be combined: treat as invalid.
    let [line] = lines else { return false };
    let v = *line;
    let (Some(version), Some(trace_id), Some(parent_id), Some(flags)) =
        (v.get(0..2), v.get(3..35), v.get(36..52), v.get(53..55))
    else {
        return false;
    };
    let dashes = [2, 35, 52].iter().all(|at| v.get(*at) == Some(&b'-'));
    let tail_ok = match version {
        b"00" => v.len() == 55,
        b"ff" => false,
        // Future versions may append fields after another dash.
        _ => v.len() == 55 || v.get(55) == Some(&b'-'),
    };
    dashes
        && tail_ok
        && is_lower_hex(version)
        && is_lower_hex(trace_id)
        && is_lower_hex(parent_id)
        && is_lower_hex(flags)
        && trace_id.iter().any(|b| *b != b'0')
        && parent_id.iter().any(|b| *b != b'0')
}

fn is_lower_hex(s: &[u8]) -> bool {
    s.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// What the `tracestate` lines say about one member key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TracestateMember<'a> {
    Absent,
    Value(&'a [u8]),
    /// The key appears more than once with different values, or its value
    /// breaks the grammar.
    Invalid,
}

/// Finds member `key` among the first 32 members of the `tracestate` lines.
pub fn tracestate_member<'a>(lines: &[&'a [u8]], key: &[u8]) -> TracestateMember<'a> {
    let mut found = TracestateMember::Absent;
    let elements = lines.iter().flat_map(|line| line.split(|b| *b == b','));
    let members = elements
        .map(trim_ows)
        .filter(|element| !element.is_empty())
        .take(MAX_TRACESTATE_MEMBERS);
    for member in members {
        let Some(eq) = member.iter().position(|b| *b == b'=') else {
            continue;
        };
        if member.get(..eq) != Some(key) {
            continue;
        }
        let value = member.get(eq + 1..).unwrap_or_default();
        if !is_tracestate_value(value) {
            return TracestateMember::Invalid;
        }
        found = match found {
            TracestateMember::Value(seen) if seen != value => return TracestateMember::Invalid,
            _ => TracestateMember::Value(value),
        };
    }
    found
}

/// `value = 0*255(chr) nblk-chr`, `chr = %x20 / nblk-chr`,
/// `nblk-chr = %x21-2B / %x2D-3C / %x3E-7E`.
fn is_tracestate_value(v: &[u8]) -> bool {
    !v.is_empty()
        && v.len() <= 256
        && v.last() != Some(&b' ')
        && v.iter()
            .all(|b| matches!(b, 0x20..=0x2B | 0x2D..=0x3C | 0x3E..=0x7E))
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn traceparent_validity() {
        assert!(is_valid_traceparent(&[VALID]));
        assert!(!is_valid_traceparent(&[]));
        assert!(!is_valid_traceparent(&[VALID, VALID]));
        assert!(!is_valid_traceparent(&[
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"
        ]));
        assert!(!is_valid_traceparent(&[
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01"
        ]));
        assert!(!is_valid_traceparent(&[
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"
        ]));
        assert!(!is_valid_traceparent(&[
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ]));
        assert!(!is_valid_traceparent(&[
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x"
        ]));
        assert!(is_valid_traceparent(&[
            b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x"
        ]));
        assert!(!is_valid_traceparent(&[
            b"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ]));
        assert!(!is_valid_traceparent(&[
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7"
        ]));
    }

    #[test]
    fn tracestate_lookup() {
        let key = b"sandbox-routing-key";
        assert_eq!(
            tracestate_member(&[b"congo=t61rcWkgMzE, sandbox-routing-key=abc"], key),
            TracestateMember::Value(b"abc")
        );
        assert_eq!(
            tracestate_member(&[b"congo=1", b"sandbox-routing-key=abc"], key),
            TracestateMember::Value(b"abc")
        );
        assert_eq!(
            tracestate_member(&[b"congo=1"], key),
            TracestateMember::Absent
        );
        assert_eq!(
            tracestate_member(&[b"sandbox-routing-key=a,sandbox-routing-key=b"], key),
            TracestateMember::Invalid
        );
        assert_eq!(
            tracestate_member(&[b"sandbox-routing-key=a=b"], key),
            TracestateMember::Invalid
        );
    }

    #[test]
    fn tracestate_reads_only_32_members() {
        let mut list: Vec<String> = (0..32).map(|i| format!("v{i}=x")).collect();
        list.push("sandbox-routing-key=abc".into());
        let joined = list.join(",");
        assert_eq!(
            tracestate_member(&[joined.as_bytes()], b"sandbox-routing-key"),
            TracestateMember::Absent
        );
    }
}

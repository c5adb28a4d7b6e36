//! W3C baggage: one or several `baggage` header lines (the input split at
//! `\n`), read by `baggage::Members` and by the configured context reader.
//!
//! Invariants: the reader yields exactly the members a plain model of the
//! spec's limits allows (a member is read only if it ends within the first
//! 8192 bytes of the combined list and is among its first 64 members), so a
//! routing key past a limit is never used; a key found is one of those
//! members, percent-decoded.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sandbox_router_fuzz::{lines, settings_once};
use sandbox_router_routing::baggage::{Members, MAX_BYTES, MAX_MEMBERS};
use sandbox_router_routing::percent::decode_strict;
use sandbox_router_routing::{
    RoutingContext, Settings, Source, DEFAULT_KEY, DEFAULT_OVERRIDES_KEY,
};

type Pair<'a> = (&'a [u8], Option<&'a [u8]>);

fuzz_target!(|data: &[u8]| {
    let lines = lines(data);
    let mut members = Members::new(&lines);
    let got: Vec<Pair<'_>> = members.by_ref().map(|m| (m.key, m.value)).collect();
    let over = members.over_limit();
    let (expected, expected_over) = model(&lines);
    assert_eq!(got, expected);
    assert_eq!(over, expected_over);
    assert!(got.len() <= MAX_MEMBERS);

    // Through the configured reader (only baggage headers, so baggage decides).
    static SETTINGS: OnceLock<Settings> = OnceLock::new();
    let settings = settings_once(&SETTINGS, b"");
    let headers: Vec<(&str, &[u8])> = lines.iter().map(|l| ("baggage", *l)).collect();
    let extracted = settings.context.extract(&settings.scan(headers));
    let ours = |name: &str| -> Vec<Option<&[u8]>> {
        expected
            .iter()
            .filter(|(k, _)| *k == name.as_bytes())
            .map(|(_, v)| *v)
            .collect()
    };
    let (keys, overrides) = (ours(DEFAULT_KEY), ours(DEFAULT_OVERRIDES_KEY));
    match &extracted.context {
        RoutingContext::None => {
            assert!(keys.is_empty() && overrides.is_empty(), "our member missed");
            assert_eq!(extracted.baggage_over_limit, over);
        }
        RoutingContext::Found {
            source,
            key,
            overrides: found_overrides,
        } => {
            assert_eq!(*source, Source::Baggage);
            assert_eq!(extracted.baggage_over_limit, over);
            // Every one of our members is well-formed and they agree.
            for values in [&keys, &overrides] {
                assert!(values.iter().all(|v| v.is_some() && *v == values[0]));
            }
            match key {
                Some(key) => {
                    let raw = keys.first().copied().flatten().expect("a key member");
                    assert_eq!(decode_strict(raw).as_deref(), Some(key.as_bytes()));
                }
                None => assert!(keys.is_empty()),
            }
            assert_eq!(found_overrides.is_some(), !overrides.is_empty());
        }
        RoutingContext::Malformed { source, .. } => {
            assert_eq!(*source, Source::Baggage);
            assert!(!keys.is_empty() || !overrides.is_empty());
        }
        RoutingContext::Named { .. } => panic!("only the preview-host source names a sandbox"),
    }
});

/// The members a reader may yield, by the spec's limits, and whether the
/// list went past one. The combined list is the lines joined by `,`.
fn model<'a>(lines: &[&'a [u8]]) -> (Vec<Pair<'a>>, bool) {
    let mut out = Vec::new();
    let mut end = 0; // where the current element ends in the combined list
    let mut count = 0;
    let elements = lines.iter().flat_map(|line| line.split(|b| *b == b','));
    for (i, element) in elements.enumerate() {
        end += element.len() + usize::from(i > 0);
        if end > MAX_BYTES {
            return (out, true);
        }
        let element = trim(element);
        if element.is_empty() {
            continue;
        }
        count += 1;
        if count > MAX_MEMBERS {
            return (out, true);
        }
        // key OWS "=" OWS value *( OWS ";" OWS property )
        let pair = element.split(|b| *b == b';').next().unwrap_or_default();
        let mut halves = pair.splitn(2, |b| *b == b'=');
        let key = trim(halves.next().unwrap_or_default());
        let token = |b: &u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b);
        if key.is_empty() || !key.iter().all(token) {
            continue;
        }
        let octet =
            |b: &u8| matches!(*b, 0x21 | 0x23..=0x2b | 0x2d..=0x3a | 0x3c..=0x5b | 0x5d..=0x7e);
        let value = halves.next().map(trim).filter(|v| v.iter().all(octet));
        out.push((key, value));
    }
    (out, false)
}

fn trim(s: &[u8]) -> &[u8] {
    let ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = s.iter().position(|b| !ows(b)).unwrap_or(s.len());
    let end = s.iter().rposition(|b| !ows(b)).map_or(start, |e| e + 1);
    &s[start..end.max(start)]
}

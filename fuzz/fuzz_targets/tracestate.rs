//! W3C Trace Context: the first input line holds the `traceparent` lines
//! (split at `|`; an empty first line means none), the other lines are
//! `tracestate` lines.
//!
//! Invariants: `is_valid_traceparent` agrees with a model of the spec's
//! grammar; `tracestate_member` agrees with a set-based model (first 32
//! members; a value at most 256 bytes of the allowed characters; the key
//! twice with different values is invalid); the context reader honours
//! `tracestate` only with a valid `traceparent`, and the first key name
//! (canonical before alias) wins.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sandbox_router_fuzz::{lines, settings_once};
use sandbox_router_routing::key::is_valid_routing_key;
use sandbox_router_routing::tracecontext::{
    is_valid_traceparent, tracestate_member, TracestateMember, MAX_TRACESTATE_MEMBERS,
};
use sandbox_router_routing::{RoutingContext, Settings, Source};

const CONFIG: &[u8] =
    br#"{"keys": ["sandbox-routing-key", "sd-routing-key"], "sources": ["tracestate"]}"#;

fuzz_target!(|data: &[u8]| {
    let all = lines(data);
    let (first, tracestate) = all.split_first().expect("split yields a line");
    let traceparent: Vec<&[u8]> = if first.is_empty() {
        Vec::new()
    } else {
        first.split(|b| *b == b'|').collect()
    };
    let valid = is_valid_traceparent(&traceparent);
    assert_eq!(
        valid,
        traceparent_model(&traceparent),
        "traceparent {traceparent:?}"
    );

    static SETTINGS: OnceLock<Settings> = OnceLock::new();
    let settings = settings_once(&SETTINGS, CONFIG);
    let mut expected = Ok(None);
    for key in &settings.context.keys {
        let found = tracestate_member(tracestate, key.as_bytes());
        assert_eq!(
            found,
            tracestate_model(tracestate, key.as_bytes()),
            "key {key}"
        );
        expected = match (expected, found) {
            (Err(()), _) | (_, TracestateMember::Invalid) => Err(()),
            (Ok(None), TracestateMember::Value(v)) => Ok(Some(v)),
            (earlier, _) => earlier,
        };
    }
    // Also an arbitrary key: the last tracestate member's name.
    if let Some(name) = tracestate
        .last()
        .and_then(|l| l.split(|b| *b == b'=').next())
    {
        assert_eq!(
            tracestate_member(tracestate, name),
            tracestate_model(tracestate, name)
        );
    }

    let mut headers: Vec<(&str, &[u8])> = traceparent.iter().map(|v| ("traceparent", *v)).collect();
    headers.extend(tracestate.iter().map(|v| ("tracestate", *v)));
    let context = settings.context.extract(&settings.scan(headers)).context;
    if !valid || tracestate.is_empty() {
        assert_eq!(context, RoutingContext::None);
        return;
    }
    match expected {
        Ok(None) => assert_eq!(context, RoutingContext::None),
        Ok(Some(value)) if is_valid_routing_key(value) => assert_eq!(
            context,
            RoutingContext::Found {
                source: Source::Tracestate,
                key: Some(String::from_utf8(value.to_vec()).expect("ASCII")),
                overrides: None,
            }
        ),
        _ => assert!(
            matches!(context, RoutingContext::Malformed { .. }),
            "{context:?}"
        ),
    }
});

/// `version "-" trace-id "-" parent-id "-" trace-flags`, lowercase hex, ids
/// not all zero; version `ff` is invalid; version `00` has nothing after the
/// flags, a later version may go on after a `-`.
fn traceparent_model(lines: &[&[u8]]) -> bool {
    let [line] = lines else { return false };
    // The tail after a later version's flags is opaque bytes.
    let parts: Vec<&[u8]> = line.splitn(5, |b| *b == b'-').collect();
    let (version, trace_id, parent_id, flags) = match parts.as_slice() {
        [v, t, p, f] | [v, t, p, f, _] => (*v, *t, *p, *f),
        _ => return false,
    };
    let hex = |s: &[u8], len: usize| {
        s.len() == len
            && s.iter()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
    };
    let nonzero = |s: &[u8]| s.iter().any(|b| *b != b'0');
    hex(version, 2)
        && version != b"ff"
        && (parts.len() == 4 || version != b"00")
        && hex(trace_id, 32)
        && nonzero(trace_id)
        && hex(parent_id, 16)
        && nonzero(parent_id)
        && hex(flags, 2)
}

fn tracestate_model<'a>(lines: &[&'a [u8]], key: &[u8]) -> TracestateMember<'a> {
    let ows = |b: &u8| *b == b' ' || *b == b'\t';
    let members = lines
        .iter()
        .flat_map(|l| l.split(|b| *b == b','))
        .map(|m| {
            let start = m.iter().position(|b| !ows(b)).unwrap_or(m.len());
            let end = m.iter().rposition(|b| !ows(b)).map_or(start, |e| e + 1);
            &m[start..end]
        })
        .filter(|m| !m.is_empty())
        .take(MAX_TRACESTATE_MEMBERS);
    let mut values: Vec<&[u8]> = Vec::new();
    for member in members {
        let mut halves = member.splitn(2, |b| *b == b'=');
        if halves.next() == Some(key) {
            if let Some(value) = halves.next() {
                values.push(value);
            }
        }
    }
    let valid = |v: &[u8]| {
        (1..=256).contains(&v.len())
            && v.last() != Some(&b' ')
            && v.iter()
                .all(|b| (0x20..=0x7e).contains(b) && *b != b',' && *b != b'=')
    };
    match values.first() {
        None => TracestateMember::Absent,
        Some(first) if values.iter().all(|v| v == first && valid(v)) => {
            TracestateMember::Value(first)
        }
        Some(_) => TracestateMember::Invalid,
    }
}

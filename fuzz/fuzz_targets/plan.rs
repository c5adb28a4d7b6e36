//! The whole per-request plan (`Settings::plan`) with every input enabled:
//! header formats, the URL query, a cookie, a preview host, edge mode with a
//! credential header or cookie, and a sandbox's `origin` stamp. Input: the
//! first line is the downstream address, the rest header lines (see
//! `header_lines`).
//!
//! Invariants: exactly one of `routed` / `baseline.*` moves; a route goes
//! only to an endpoint the table registers for the service, and only a route
//! sets the destination and the marker; the compiled table and shared data
//! plan the same; at the edge, after the edits, no credential is left and an
//! untrusted request's routing context is gone for every inner hop; a key
//! carried on in baggage is what the next hop reads.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sandbox_router_fuzz::{fixture, header_lines, lines};
use sandbox_router_routing::edge::HeaderEdit;
use sandbox_router_routing::shared::SharedTable;
use sandbox_router_routing::{
    BaselineReason, Counter, Decision, RequestFacts, RouteLookup, RoutingContext, Settings,
    ORIGINAL_DST_HEADER,
};

const EDGE: &[u8] = br#"{
  "sources": ["preview-host", "cookie", "query", "baggage", "ot-baggage", "uberctx", "tracestate", "x-ot-span-context"],
  "preview_host": "{sandbox}.preview.example.com",
  "edge": {"trusted_cidrs": ["10.0.0.0/8"], "credential_cookie": "sr-credential",
           "credential_sha256": ["2e7d2c03a9507ae265ecf5b5356885a53393a2029d241394997265a1a25aefc6"]},
  "debug_header": true
}"#;
const ORIGIN: &[u8] = br#"{
  "sources": ["baggage", "query", "cookie", "x-ot-span-context"],
  "query": {"remove": true},
  "origin": {"sandbox": "feature-x"}
}"#;
/// What the hops behind the edge read: the header formats only.
const INNER: &[u8] = br#"{"sources": ["baggage", "ot-baggage", "uberctx", "tracestate", "x-ot-span-context", "query", "cookie"]}"#;

fn settings() -> &'static [Settings; 3] {
    static SETTINGS: OnceLock<[Settings; 3]> = OnceLock::new();
    SETTINGS.get_or_init(|| [EDGE, ORIGIN, INNER].map(|j| Settings::from_json(j).expect("config")))
}

struct Facts<'a> {
    source: &'a [u8],
    authority: Option<Vec<u8>>,
}

impl RequestFacts for Facts<'_> {
    fn source_address(&self) -> Option<Vec<u8>> {
        Some(self.source.to_vec())
    }
    fn cluster_name(&self) -> Option<Vec<u8>> {
        self.authority.clone()
    }
}

/// The request after the edits, as Envoy applies them: a removal drops
/// every line of the name, a replacement leaves exactly one.
fn applied(headers: &[(&str, &[u8])], edits: &[HeaderEdit]) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = headers
        .iter()
        .map(|(n, v)| ((*n).to_owned(), v.to_vec()))
        .collect();
    for edit in edits {
        match edit {
            HeaderEdit::Remove(name) => out.retain(|(n, _)| n != name),
            HeaderEdit::Replace(name, value) => {
                out.retain(|(n, _)| n != name);
                out.push((name.clone(), value.clone()));
            }
        }
    }
    out
}

fn plan_twice(
    settings: &Settings,
    headers: &[(&str, &[u8])],
    facts: &Facts<'_>,
    pick: usize,
) -> sandbox_router_routing::Plan {
    let fx = fixture();
    let scanned = settings.scan(headers.iter().copied());
    let plan = settings.plan(&scanned, facts, &fx.compiled, pick);
    let again = settings.plan(&scanned, facts, &SharedTable::new(&fx.memory), pick);
    assert_eq!(plan, again, "the compiled table and shared data plan differently");
    plan
}

/// Spaces and tabs off both ends.
fn trim_wsp(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

fuzz_target!(|data: &[u8]| {
    let all = lines(data);
    let Some((source, rest)) = all.split_first() else {
        return;
    };
    let joined = rest.join(&b'\n');
    let headers = header_lines(&joined);
    let [edge, origin, inner] = settings();
    let fx = fixture();
    for settings in [edge, origin] {
        let scanned = settings.scan(headers.iter().copied());
        let facts = Facts {
            source,
            authority: scanned.authority.map(<[u8]>::to_vec),
        };
        let plan = plan_twice(settings, &headers, &facts, data.len());
        let decisions = plan
            .counters
            .iter()
            .filter(|c| matches!(c, Counter::Routed | Counter::Baseline(_)))
            .count();
        assert_eq!(decisions, 1, "{:?}", plan.counters);
        let sets = |name: &str| {
            plan.edits
                .iter()
                .any(|e| matches!(e, HeaderEdit::Replace(n, _) if n == name))
        };
        match plan.outcome.decision {
            Decision::Route(endpoint) => {
                let service = plan.outcome.service.as_deref().expect("a routed service");
                assert!(
                    fx.compiled.is_registered(service, endpoint),
                    "{endpoint} is not registered for {service}"
                );
                assert!(plan.edits.contains(&HeaderEdit::Replace(
                    ORIGINAL_DST_HEADER.to_owned(),
                    endpoint.to_string().into_bytes()
                )));
                assert!(sets(&settings.marker_header));
            }
            Decision::Baseline(_) => {
                assert!(!sets(ORIGINAL_DST_HEADER) && !sets(&settings.marker_header));
            }
        }
        let after = applied(&headers, &plan.edits);
        let after_refs: Vec<(&str, &[u8])> =
            after.iter().map(|(n, v)| (n.as_str(), v.as_slice())).collect();
        if let Some(policy) = &settings.edge {
            assert!(
                !after.iter().any(|(n, _)| *n == policy.credential_header),
                "the credential header went on"
            );
            let rescanned = settings.scan(after_refs.iter().copied());
            // Cookie names as RFC 6265 reads them: trimmed of spaces and tabs.
            let cookie = policy.credential_cookie.as_deref().unwrap_or_default();
            assert!(
                !rescanned
                    .cookies
                    .iter()
                    .flat_map(|l| l.split(|b| *b == b';'))
                    .any(|pair| pair.split(|b| *b == b'=').next().map(trim_wsp)
                        == Some(cookie.as_bytes())),
                "the credential cookie went on"
            );
        }
        let inner_plan = plan_twice(inner, &after_refs, &facts, 0);
        if plan.outcome.decision == Decision::Baseline(BaselineReason::Untrusted) {
            assert_eq!(
                inner_plan.outcome.extracted.context,
                RoutingContext::None,
                "untrusted context reached an inner hop"
            );
        }
        if plan.counters.contains(Counter::BaggageAdded) {
            // The key carried on is the one this hop routed by.
            let key = match &plan.outcome.extracted.context {
                RoutingContext::Found { key: Some(key), .. } => Some(key.clone()),
                RoutingContext::Named { sandbox, .. } => {
                    fx.compiled.routing_key_of(sandbox).map(|k| k.into_owned())
                }
                other => panic!("baggage added without a key: {other:?}"),
            };
            match &inner_plan.outcome.extracted.context {
                RoutingContext::Found { key: found, .. } => assert_eq!(found, &key),
                other => panic!("the next hop reads {other:?}, not {key:?}"),
            }
        }
    }
});

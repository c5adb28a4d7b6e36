//! The whole per-request policy, as one pure function: [`Settings::plan`].
//!
//! A host (the proxy-wasm filter, a native Envoy module, the CLI's
//! `explain`) reads what the plan needs of a request, calls it, and applies
//! what it returns: the header edits in order, then the counters. No host
//! decides anything itself, so the hosts and `explain` cannot drift.
//!
//! The plan, in order:
//! 1. remove client-sent `x-envoy-original-dst-host` and marker headers
//!    (a client must never steer the ORIGINAL_DST cluster itself);
//! 2. edge mode: remove the credential header; remove the routing context of
//!    an untrusted request, which then stays on the baseline;
//! 3. read the routing context; only with one: name the destination service
//!    and look up the table;
//! 4. on a hit, set `x-envoy-original-dst-host` and the marker.
//!
//! A request without routing context costs no allocation here (no edits, a
//! counter bit set, no debug text unless `debug_header` is on).

use crate::context::{Extracted, RequestHeaders, RoutingContext, ORIGINAL_DST_HEADER};
use crate::decision::{BaselineReason, Decision};
use crate::edge::HeaderEdit;
use crate::table::RouteLookup;
use crate::{Outcome, Settings};

/// What a host can tell about a request beyond its headers. Each is asked
/// only when the plan needs it (most requests need neither).
pub trait RequestFacts {
    /// The downstream address, `ip:port` or `ip` (edge mode, untrusted context).
    fn source_address(&self) -> Option<Vec<u8>>;
    /// The route's cluster name (destination from the cluster name).
    fn cluster_name(&self) -> Option<Vec<u8>>;
}

/// No facts: for hosts and tests that have none.
impl RequestFacts for () {
    fn source_address(&self) -> Option<Vec<u8>> {
        None
    }
    fn cluster_name(&self) -> Option<Vec<u8>> {
        None
    }
}

/// One of the filter's fixed counters. Every host defines exactly
/// [`Counter::ALL`] at start-up, under the names [`Counter::name`] gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Counter {
    /// Sent to a sandbox endpoint.
    Routed,
    /// Stayed on the baseline, and why.
    Baseline(BaselineReason),
    /// The client sent `x-envoy-original-dst-host` or the marker; removed.
    InternalHeadersRemoved,
    /// Baggage went past the W3C limits; the rest was not read.
    BaggageOverLimit,
}

impl Counter {
    pub const ALL: [Counter; 10] = [
        Counter::Routed,
        Counter::Baseline(BaselineReason::NoContext),
        Counter::Baseline(BaselineReason::UnknownKey),
        Counter::Baseline(BaselineReason::NoForkForService),
        Counter::Baseline(BaselineReason::Malformed),
        Counter::Baseline(BaselineReason::UnregisteredEndpoint),
        Counter::Baseline(BaselineReason::NoDestination),
        Counter::Baseline(BaselineReason::Untrusted),
        Counter::InternalHeadersRemoved,
        Counter::BaggageOverLimit,
    ];

    /// The stat name below the host's prefix, e.g. `baseline.no_context`.
    pub fn name(self) -> &'static str {
        match self {
            Counter::Routed => "routed",
            Counter::Baseline(reason) => match reason {
                BaselineReason::NoContext => "baseline.no_context",
                BaselineReason::UnknownKey => "baseline.unknown_key",
                BaselineReason::NoForkForService => "baseline.no_fork_for_service",
                BaselineReason::Malformed => "baseline.malformed",
                BaselineReason::UnregisteredEndpoint => "baseline.unregistered_endpoint",
                BaselineReason::NoDestination => "baseline.no_destination",
                BaselineReason::Untrusted => "baseline.untrusted",
            },
            Counter::InternalHeadersRemoved => "internal_headers_removed",
            Counter::BaggageOverLimit => "baggage_over_limit",
        }
    }

    /// Position in [`Counter::ALL`] (a host's counter ids are indexed so).
    pub fn index(self) -> usize {
        Counter::ALL
            .iter()
            .position(|c| *c == self)
            .unwrap_or_default()
    }
}

/// The counters one request moves, each by one: a set, without allocation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters(u32);

impl Counters {
    pub fn insert(&mut self, counter: Counter) {
        self.0 |= 1 << counter.index();
    }

    pub fn remove(&mut self, counter: Counter) {
        self.0 &= !(1 << counter.index());
    }

    pub fn contains(self, counter: Counter) -> bool {
        self.0 & (1 << counter.index()) != 0
    }

    pub fn iter(self) -> impl Iterator<Item = Counter> {
        Counter::ALL.into_iter().filter(move |c| self.contains(*c))
    }
}

/// Everything a host must do for one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Request header edits, to apply in order.
    pub edits: Vec<HeaderEdit>,
    pub outcome: Outcome,
    pub counters: Counters,
    /// The `x-sandbox-router-decision` response header, when `debug_header` is on.
    pub debug: Option<String>,
}

impl Plan {
    /// The host could not apply a route's edits: Envoy would take the
    /// baseline route, so say so. Returns the edit that undoes the marker.
    pub fn abandon_route(&mut self, settings: &Settings) -> HeaderEdit {
        self.counters.remove(Counter::Routed);
        self.counters
            .insert(Counter::Baseline(BaselineReason::Malformed));
        self.outcome.decision = Decision::Baseline(BaselineReason::Malformed);
        if settings.debug_header {
            self.debug = Some(describe(&self.outcome));
        }
        HeaderEdit::Remove(settings.marker_header.clone())
    }
}

impl Settings {
    /// Plans one request: `headers` from [`Settings::scan`], `facts` asked
    /// only when needed, the table read only for a request with routing
    /// context. `pick` chooses among a fork's endpoints (round robin).
    pub fn plan(
        &self,
        headers: &RequestHeaders<'_>,
        facts: &impl RequestFacts,
        table: &impl RouteLookup,
        pick: usize,
    ) -> Plan {
        let mut edits = Vec::new();
        let mut counters = Counters::default();
        if headers.internal_headers {
            edits.push(HeaderEdit::Remove(ORIGINAL_DST_HEADER.to_owned()));
            edits.push(HeaderEdit::Remove(self.marker_header.clone()));
            counters.insert(Counter::InternalHeadersRemoved);
        }
        if let Some(edge) = &self.edge {
            if headers.credential.is_some() {
                // Never forwarded, trusted or not.
                edits.push(HeaderEdit::Remove(edge.credential_header.clone()));
            }
            let removal =
                self.untrusted_context(headers, headers.credential, || facts.source_address());
            if !removal.is_empty() {
                edits.extend(removal);
                let reason = BaselineReason::Untrusted;
                counters.insert(Counter::Baseline(reason));
                let outcome = Outcome {
                    decision: Decision::Baseline(reason),
                    extracted: Extracted {
                        context: RoutingContext::None,
                        baggage_over_limit: false,
                    },
                    service: None,
                };
                return self.finish(edits, outcome, counters);
            }
        }
        let outcome = self.route(headers, || facts.cluster_name(), table, pick);
        if outcome.extracted.baggage_over_limit {
            counters.insert(Counter::BaggageOverLimit);
        }
        match outcome.decision {
            Decision::Route(endpoint) => {
                edits.push(HeaderEdit::Replace(
                    ORIGINAL_DST_HEADER.to_owned(),
                    endpoint.to_string().into_bytes(),
                ));
                edits.push(HeaderEdit::Replace(
                    self.marker_header.clone(),
                    b"1".to_vec(),
                ));
                counters.insert(Counter::Routed);
            }
            Decision::Baseline(reason) => counters.insert(Counter::Baseline(reason)),
        }
        self.finish(edits, outcome, counters)
    }

    fn finish(&self, edits: Vec<HeaderEdit>, outcome: Outcome, counters: Counters) -> Plan {
        let debug = self.debug_header.then(|| describe(&outcome));
        Plan {
            edits,
            outcome,
            counters,
            debug,
        }
    }
}

/// The debug header value, e.g. `routed; source=baggage; service=backend; endpoint=10.0.0.7:8080`
/// or `baseline; reason=unknown_key; source=baggage; service=backend`. Holds
/// no client-supplied text beyond the validated service name.
pub fn describe(outcome: &Outcome) -> String {
    let mut text = match outcome.decision {
        Decision::Route(_) => String::from("routed"),
        Decision::Baseline(reason) => format!("baseline; reason={}", reason.as_str()),
    };
    match &outcome.extracted.context {
        RoutingContext::Found { source, .. } | RoutingContext::Malformed { source, .. } => {
            text.push_str("; source=");
            text.push_str(source.as_str());
        }
        RoutingContext::None => {}
    }
    if let Some(service) = &outcome.service {
        text.push_str("; service=");
        text.push_str(service);
    }
    if let Decision::Route(endpoint) = outcome.decision {
        text.push_str(&format!("; endpoint={endpoint}"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::RoutingTable;
    use crate::TableSpec;

    const KEY: &str = "abcdefghijklmnopqrstuvwx";

    fn settings(json: &str) -> Settings {
        Settings::from_json(json.as_bytes()).unwrap()
    }

    fn table() -> RoutingTable {
        let spec: TableSpec = serde_json::from_value(serde_json::json!({
            "version": 1,
            "entries": [{"routing_key": KEY, "sandbox": "s1",
                         "forks": [{"service": "backend", "endpoints": ["10.0.0.7:8080", "10.0.0.8:8080"]}]}]
        }))
        .unwrap();
        RoutingTable::compile(&spec.into(), "table").unwrap()
    }

    struct Facts {
        source: &'static str,
    }

    impl RequestFacts for Facts {
        fn source_address(&self) -> Option<Vec<u8>> {
            Some(self.source.as_bytes().to_vec())
        }
        fn cluster_name(&self) -> Option<Vec<u8>> {
            None
        }
    }

    fn plan(settings: &Settings, headers: &[(&str, &str)], source: &'static str) -> Plan {
        let scanned = settings.scan(headers.iter().map(|(n, v)| (*n, v.as_bytes())));
        settings.plan(&scanned, &Facts { source }, &table(), 1)
    }

    fn remove(name: &str) -> HeaderEdit {
        HeaderEdit::Remove(name.to_owned())
    }

    fn set(name: &str, value: &str) -> HeaderEdit {
        HeaderEdit::Replace(name.to_owned(), value.as_bytes().to_vec())
    }

    #[test]
    fn no_context_is_baseline_without_edits() {
        let s = settings("");
        let p = plan(&s, &[(":authority", "backend")], "1.2.3.4");
        assert!(p.edits.is_empty());
        assert_eq!(p.edits.capacity(), 0, "no allocation without context");
        assert_eq!(
            p.counters.iter().collect::<Vec<_>>(),
            [Counter::Baseline(BaselineReason::NoContext)]
        );
        assert_eq!(p.debug, None);
    }

    #[test]
    fn a_hit_sets_the_destination_and_the_marker_after_removing_spoofed_ones() {
        let s = settings(r#"{"debug_header": true}"#);
        let baggage = format!("sandbox-routing-key={KEY}");
        let p = plan(
            &s,
            &[
                (":authority", "backend"),
                ("x-envoy-original-dst-host", "169.254.169.254:80"),
                ("baggage", &baggage),
            ],
            "1.2.3.4",
        );
        assert_eq!(
            p.edits,
            [
                remove("x-envoy-original-dst-host"),
                remove("x-sandbox-router-route"),
                set("x-envoy-original-dst-host", "10.0.0.8:8080"),
                set("x-sandbox-router-route", "1"),
            ]
        );
        assert_eq!(
            p.counters.iter().collect::<Vec<_>>(),
            [Counter::Routed, Counter::InternalHeadersRemoved]
        );
        assert_eq!(
            p.debug.as_deref(),
            Some("routed; source=baggage; service=backend; endpoint=10.0.0.8:8080")
        );
    }

    #[test]
    fn the_edge_removes_untrusted_context_and_every_credential() {
        let s = settings(r#"{"debug_header": true, "edge": {"trusted_cidrs": ["10.0.0.0/8"]}}"#);
        let baggage = format!("sandbox-routing-key={KEY},other=1");
        let headers = [
            (":authority", "backend"),
            ("baggage", baggage.as_str()),
            ("x-sandbox-router-credential", "wrong"),
        ];
        let untrusted = plan(&s, &headers, "203.0.113.9:4000");
        assert_eq!(
            untrusted.edits,
            [
                remove("x-sandbox-router-credential"),
                set("baggage", "other=1")
            ]
        );
        assert_eq!(
            untrusted.counters.iter().collect::<Vec<_>>(),
            [Counter::Baseline(BaselineReason::Untrusted)]
        );
        assert_eq!(
            untrusted.debug.as_deref(),
            Some("baseline; reason=untrusted")
        );
        let trusted = plan(&s, &headers, "10.1.2.3:4000");
        assert_eq!(trusted.edits[0], remove("x-sandbox-router-credential"));
        assert_eq!(
            trusted.outcome.decision,
            Decision::Route("10.0.0.8:8080".parse().unwrap())
        );
    }

    #[test]
    fn an_abandoned_route_is_counted_as_malformed() {
        let s = settings(r#"{"debug_header": true}"#);
        let baggage = format!("sandbox-routing-key={KEY}");
        let mut p = plan(&s, &[(":authority", "backend"), ("baggage", &baggage)], "");
        assert_eq!(p.abandon_route(&s), remove("x-sandbox-router-route"));
        assert_eq!(
            p.counters.iter().collect::<Vec<_>>(),
            [Counter::Baseline(BaselineReason::Malformed)]
        );
        assert_eq!(
            p.debug.as_deref(),
            Some("baseline; reason=malformed; source=baggage; service=backend")
        );
    }

    #[test]
    fn scanning_only_the_header_names_equals_scanning_the_whole_map() {
        let s = settings(r#"{"keys": ["sandbox-routing-key", "sd-routing-key"], "edge": {}}"#);
        let headers = [
            (":authority", "backend"),
            (":path", "/"),
            ("user-agent", "x"),
            ("baggage", "sd-routing-key=abcdefghijklmnopqrstuvwx"),
            ("baggage", "a=b"),
            ("ot-baggage-sandbox-overrides", "CgA="),
            ("uberctx-other", "1"),
            ("x-sandbox-router-route", "1"),
            ("x-sandbox-router-credential", "c"),
        ];
        let whole = plan(&s, &headers, "10.0.0.1");
        let by_name: Vec<(&str, &str)> = s
            .header_names()
            .iter()
            .flat_map(|name| headers.iter().filter(move |(n, _)| n == name).copied())
            .collect();
        assert_eq!(by_name.len(), headers.len() - 3);
        assert_eq!(plan(&s, &by_name, "10.0.0.1"), whole);
    }

    #[test]
    fn every_counter_has_a_distinct_name_and_index() {
        for (i, counter) in Counter::ALL.iter().enumerate() {
            assert_eq!(counter.index(), i);
            assert_eq!(
                Counter::ALL
                    .iter()
                    .filter(|c| c.name() == counter.name())
                    .count(),
                1
            );
        }
        for reason in BaselineReason::ALL {
            assert!(Counter::ALL.contains(&Counter::Baseline(reason)));
            assert_eq!(
                Counter::Baseline(reason).name(),
                format!("baseline.{}", reason.as_str())
            );
        }
    }
}

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
//! 3. read the routing context; a sandbox's sidecar (`origin`) stamps its own
//!    key into a request that has none;
//! 4. only with a routing context: name the destination service and look up
//!    the table; on a hit, set `x-envoy-original-dst-host` and the marker;
//! 5. a key that came from where applications do not pass it on (the URL
//!    query, the origin's stamp) is carried on in `baggage`, so every later
//!    hop routes by it too.
//!
//! A request without routing context costs no allocation here (no edits, a
//! counter bit set, no debug text unless `debug_header` is on).

use std::borrow::Cow;
use std::net::SocketAddr;

use crate::context::{
    cookie_value, without_cookies, without_query_param, Extracted, RequestHeaders, RoutingContext,
    Source, ORIGINAL_DST_HEADER,
};
use crate::decision::{BaselineReason, Decision};
use crate::edge::{self, HeaderEdit};
use crate::table::RouteLookup;
use crate::{Origin, Outcome, Settings};

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
    /// A key from a source applications do not propagate (query, origin)
    /// was written into `baggage` for the hops after this one.
    BaggageAdded,
    /// This sandbox's sidecar stamped its key into a request without context.
    Stamped,
    /// This sandbox's sidecar could not stamp: the table has no sandbox of
    /// the configured name (not created yet, deleted, or expired).
    OriginUnknown,
}

impl Counter {
    pub const ALL: [Counter; 13] = [
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
        Counter::BaggageAdded,
        Counter::Stamped,
        Counter::OriginUnknown,
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
            Counter::BaggageAdded => "baggage_added",
            Counter::Stamped => "stamped",
            Counter::OriginUnknown => "origin_unknown",
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
        // Cookies to drop from the `cookie` header, in one edit at the end.
        let mut drop_cookies: Vec<&str> = Vec::new();
        let routing_cookie = self.context.sources.contains(&Source::Cookie)
            && cookie_value(&headers.cookies, &self.context.cookie_name).is_some();
        if let Some(edge) = &self.edge {
            let cookie_credential = edge.credential_cookie.as_deref().and_then(|name| {
                let value = cookie_value(&headers.cookies, name)?;
                drop_cookies.push(name);
                Some(value)
            });
            if headers.credential.is_some() {
                // Never forwarded, trusted or not (as a cookie neither).
                edits.push(HeaderEdit::Remove(edge.credential_header.clone()));
            }
            let credential = headers.credential.or(cookie_credential);
            let removal = edge::context_removal(&self.context, headers);
            let has_context = !removal.is_empty()
                || routing_cookie
                || self.context.preview_sandbox(headers).is_some();
            if has_context && edge.trust(credential, || facts.source_address()).is_none() {
                edits.extend(removal);
                if routing_cookie {
                    drop_cookies.push(&self.context.cookie_name);
                }
                edits.extend(without_cookies(&headers.cookies, &drop_cookies));
                let reason = BaselineReason::Untrusted;
                counters.insert(Counter::Baseline(reason));
                let outcome = Outcome {
                    decision: Decision::Baseline(reason),
                    extracted: Extracted {
                        context: RoutingContext::None,
                        baggage_over_limit: false,
                    },
                    service: None,
                    stamped: false,
                };
                return self.finish(edits, outcome, counters);
            }
        }
        if routing_cookie && !self.cookie_forward {
            drop_cookies.push(&self.context.cookie_name);
        }
        edits.extend(without_cookies(&headers.cookies, &drop_cookies));
        let mut extracted = self.context.extract(headers);
        let mut stamped = false;
        if let (RoutingContext::None, Some(origin)) = (&extracted.context, &self.origin) {
            let key = match origin {
                Origin::RoutingKey(key) => Some(key.clone()),
                Origin::Sandbox(name) => table.routing_key_of(name).map(|k| k.into_owned()),
            };
            match key {
                Some(key) => {
                    extracted.context = RoutingContext::Found {
                        source: Source::Baggage,
                        key: Some(key),
                        overrides: None,
                    };
                    stamped = true;
                    counters.insert(Counter::Stamped);
                }
                None => counters.insert(Counter::OriginUnknown),
            }
        }
        let mut outcome =
            self.route_extracted(extracted, headers, || facts.cluster_name(), table, pick);
        outcome.stamped = stamped;
        // A key from where applications do not pass it on goes on in baggage.
        let carried = match &outcome.extracted.context {
            RoutingContext::Found {
                source,
                key: Some(key),
                ..
            } if stamped || !source.propagates() => Some(Cow::Borrowed(key.as_str())),
            RoutingContext::Named { sandbox, .. } => table.routing_key_of(sandbox),
            _ => None,
        };
        if let Some(key) = carried {
            edits.push(self.baggage_with_key(headers, &key));
            counters.insert(Counter::BaggageAdded);
        }
        if let RoutingContext::Found {
            source: Source::Query,
            ..
        } = &outcome.extracted.context
        {
            if self.query_remove {
                if let Some(path) = headers
                    .path
                    .and_then(|p| without_query_param(p, &self.context.query_param))
                {
                    edits.push(HeaderEdit::Replace(":path".to_owned(), path));
                }
            }
        }
        if outcome.extracted.baggage_over_limit {
            counters.insert(Counter::BaggageOverLimit);
        }
        match outcome.decision {
            Decision::Route(endpoint) => {
                edits.push(HeaderEdit::Replace(
                    ORIGINAL_DST_HEADER.to_owned(),
                    original_dst_value(endpoint),
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

    /// `baggage` carrying `key` under the canonical name, in place of any
    /// member under one of our names (keys and Overrides: this hop decided
    /// by `key` alone, and so must the next); the other members are kept,
    /// after ours (so the W3C limits a reader applies never cut it off).
    fn baggage_with_key(&self, headers: &RequestHeaders<'_>, key: &str) -> HeaderEdit {
        let kept = edge::kept_members(headers.baggage_lines(), |m| {
            edge::named(m, self.context.names())
        });
        let canonical = self.context.names().next().unwrap_or(crate::DEFAULT_KEY);
        // Routing keys need no percent-encoding (`A-Z a-z 0-9 - _`).
        let mut value = format!("{canonical}={key}").into_bytes();
        for member in kept {
            value.push(b',');
            value.extend_from_slice(member);
        }
        HeaderEdit::Replace("baggage".to_owned(), value)
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
        RoutingContext::Found { .. } if outcome.stamped => text.push_str("; source=origin"),
        RoutingContext::Found { source, .. }
        | RoutingContext::Named { source, .. }
        | RoutingContext::Malformed { source, .. } => {
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

/// `x-envoy-original-dst-host`'s value, `IP:PORT`, as `SocketAddr`'s
/// `Display` writes it. IPv4 is written digit by digit: through `Display`
/// a routed request cost about 1,150 instructions more, a sixth of the
/// plan's own cost (callgrind of the plan alone).
fn original_dst_value(endpoint: SocketAddr) -> Vec<u8> {
    let SocketAddr::V4(v4) = endpoint else {
        return endpoint.to_string().into_bytes();
    };
    let mut value = Vec::with_capacity("255.255.255.255:65535".len());
    for (i, octet) in v4.ip().octets().into_iter().enumerate() {
        if i > 0 {
            value.push(b'.');
        }
        push_decimal(&mut value, u16::from(octet));
    }
    value.push(b':');
    push_decimal(&mut value, v4.port());
    value
}

fn push_decimal(out: &mut Vec<u8>, mut n: u16) {
    let start = out.len();
    loop {
        out.push(b'0' + (n % 10) as u8);
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if let Some(digits) = out.get_mut(start..) {
        digits.reverse();
    }
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

    fn counted(p: &Plan) -> Vec<&'static str> {
        p.counters.iter().map(Counter::name).collect()
    }

    #[test]
    fn the_query_source_is_off_unless_listed() {
        let path = format!("/stripe?a=1&sandbox-routing-key={KEY}");
        let headers = [(":authority", "backend"), (":path", path.as_str())];
        let off = plan(&settings(""), &headers, "");
        assert_eq!(counted(&off), ["baseline.no_context"]);
        let on = plan(
            &settings(r#"{"sources": ["baggage", "query"]}"#),
            &headers,
            "",
        );
        assert_eq!(counted(&on), ["routed", "baggage_added"]);
        assert_eq!(
            on.edits,
            [
                set("baggage", &format!("sandbox-routing-key={KEY}")),
                set("x-envoy-original-dst-host", "10.0.0.8:8080"),
                set("x-sandbox-router-route", "1"),
            ]
        );
    }

    #[test]
    fn a_query_key_is_carried_on_in_baggage_and_optionally_removed() {
        let s = settings(
            r#"{"sources": ["query", "baggage"], "query": {"param": "sr", "remove": true}, "debug_header": true}"#,
        );
        let path = format!("/hook?sr={KEY}&b=2#top?sr=x");
        let other = "zzzzzzzzzzzzzzzzzzzzzzzz";
        let baggage = format!("userId=alice,sandbox-routing-key={other}");
        // Accepted even where the service has no fork: later hops may have one.
        let p = plan(
            &s,
            &[
                (":authority", "frontend"),
                (":path", &path),
                ("baggage", &baggage),
            ],
            "",
        );
        assert_eq!(
            p.edits,
            [
                set(
                    "baggage",
                    &format!("sandbox-routing-key={KEY},userId=alice")
                ),
                set(":path", "/hook?b=2#top?sr=x"),
            ]
        );
        assert_eq!(
            counted(&p),
            ["baseline.no_fork_for_service", "baggage_added"]
        );
        assert_eq!(
            p.debug.as_deref(),
            Some("baseline; reason=no_fork_for_service; source=query; service=frontend")
        );
        // A malformed or repeated-and-different parameter carries nothing on.
        for path in ["/h?sr=a%zz", "/h?sr=abc&sr=abd"] {
            let p = plan(&s, &[(":authority", "backend"), (":path", path)], "");
            assert!(p.edits.is_empty(), "{path}");
            assert_eq!(counted(&p), ["baseline.malformed"], "{path}");
        }
    }

    #[test]
    fn the_key_carried_on_replaces_all_our_members_and_goes_first() {
        // Found by the plan fuzz target: Overrides left in baggage beside the
        // carried key made the next hop read both (here: malformed).
        let s = settings(r#"{"sources": ["cookie", "baggage"]}"#);
        let cookie = format!("sandbox-routing-key={KEY}");
        let p = plan(
            &s,
            &[
                (":authority", "backend"),
                ("cookie", &cookie),
                (
                    "baggage",
                    "a=1,sandbox-overrides=c,sandbox-routing-key=other",
                ),
            ],
            "",
        );
        assert_eq!(
            p.edits[1],
            set("baggage", &format!("sandbox-routing-key={KEY},a=1"))
        );
    }

    #[test]
    fn the_edge_removes_an_untrusted_query_key() {
        let s = settings(r#"{"sources": ["query"], "edge": {"trusted_cidrs": ["10.0.0.0/8"]}}"#);
        let path = format!("/stripe?sandbox-routing-key={KEY}&id=7");
        let headers = [(":authority", "backend"), (":path", path.as_str())];
        let untrusted = plan(&s, &headers, "203.0.113.9:4000");
        assert_eq!(untrusted.edits, [set(":path", "/stripe?id=7")]);
        assert_eq!(counted(&untrusted), ["baseline.untrusted"]);
        let trusted = plan(&s, &headers, "10.0.0.9:4000");
        assert_eq!(counted(&trusted), ["routed", "baggage_added"]);
    }

    #[test]
    fn a_sandboxs_sidecar_stamps_its_key_into_requests_without_context() {
        let s = settings(r#"{"origin": {"sandbox": "s1"}, "debug_header": true}"#);
        let p = plan(
            &s,
            &[(":authority", "backend"), ("baggage", "userId=alice")],
            "",
        );
        assert_eq!(
            p.edits,
            [
                set(
                    "baggage",
                    &format!("sandbox-routing-key={KEY},userId=alice")
                ),
                set("x-envoy-original-dst-host", "10.0.0.8:8080"),
                set("x-sandbox-router-route", "1"),
            ]
        );
        assert_eq!(counted(&p), ["routed", "baggage_added", "stamped"]);
        assert_eq!(
            p.debug.as_deref(),
            Some("routed; source=origin; service=backend; endpoint=10.0.0.8:8080")
        );
        // Stamped, but the table has no fork of this service: baseline, key carried on.
        let p = plan(&s, &[(":authority", "frontend")], "");
        assert_eq!(
            counted(&p),
            ["baseline.no_fork_for_service", "baggage_added", "stamped"]
        );
        // A request with context (even malformed) is left alone.
        let theirs = "sandbox-routing-key=zzzzzzzzzzzzzzzzzzzzzzzz";
        let p = plan(&s, &[(":authority", "backend"), ("baggage", theirs)], "");
        assert_eq!(counted(&p), ["baseline.unknown_key"]);
        assert!(p.edits.is_empty());
        let p = plan(
            &s,
            &[
                (":authority", "backend"),
                ("baggage", "sandbox-routing-key=%zz"),
            ],
            "",
        );
        assert_eq!(counted(&p), ["baseline.malformed"]);
        // A sandbox the table does not know: nothing stamped.
        let gone = settings(r#"{"origin": {"sandbox": "gone"}}"#);
        let p = plan(&gone, &[(":authority", "backend")], "");
        assert_eq!(counted(&p), ["baseline.no_context", "origin_unknown"]);
        assert!(p.edits.is_empty());
        // By key: no lookup by name needed.
        let by_key = settings(&format!(r#"{{"origin": {{"routing_key": "{KEY}"}}}}"#));
        let p = plan(&by_key, &[(":authority", "backend")], "");
        assert_eq!(counted(&p), ["routed", "baggage_added", "stamped"]);
    }

    #[test]
    fn a_cookie_routes_and_is_carried_on_in_baggage_not_forwarded() {
        let s = settings(r#"{"sources": ["cookie", "baggage"], "debug_header": true}"#);
        let cookie = format!("theme=dark; sandbox-routing-key={KEY}; sid=\"7\"");
        let p = plan(&s, &[(":authority", "backend"), ("cookie", &cookie)], "");
        assert_eq!(
            p.edits,
            [
                set("cookie", "theme=dark; sid=\"7\""),
                set("baggage", &format!("sandbox-routing-key={KEY}")),
                set("x-envoy-original-dst-host", "10.0.0.8:8080"),
                set("x-sandbox-router-route", "1"),
            ]
        );
        assert_eq!(counted(&p), ["routed", "baggage_added"]);
        assert_eq!(
            p.debug.as_deref(),
            Some("routed; source=cookie; service=backend; endpoint=10.0.0.8:8080")
        );
        // Forwarded when configured; the only cookie removed leaves no header.
        let forward = settings(r#"{"sources": ["cookie"], "cookie": {"forward": true}}"#);
        let p = plan(
            &forward,
            &[(":authority", "backend"), ("cookie", &cookie)],
            "",
        );
        assert!(!p
            .edits
            .iter()
            .any(|e| e == &set("cookie", "theme=dark; sid=\"7\"")));
        let only = format!("sandbox-routing-key={KEY}");
        let p = plan(&s, &[(":authority", "backend"), ("cookie", &only)], "");
        assert_eq!(p.edits[0], remove("cookie"));
        // Off unless listed: the cookie is nobody's business.
        let p = plan(
            &settings(""),
            &[(":authority", "backend"), ("cookie", &cookie)],
            "",
        );
        assert!(p.edits.is_empty());
        assert_eq!(counted(&p), ["baseline.no_context"]);
    }

    #[test]
    fn a_preview_host_names_the_sandbox_whose_key_goes_on() {
        let s = settings(
            r#"{"sources": ["preview-host", "baggage"], "preview_host": "{sandbox}.preview.example.com",
                "destination": {"from": "cluster_name"}, "debug_header": true}"#,
        );
        struct Cluster;
        impl RequestFacts for Cluster {
            fn source_address(&self) -> Option<Vec<u8>> {
                None
            }
            fn cluster_name(&self) -> Option<Vec<u8>> {
                Some(b"backend".to_vec())
            }
        }
        let route = |host: &str| {
            let scanned = s.scan([(":authority", host.as_bytes())]);
            s.plan(&scanned, &Cluster, &table(), 0)
        };
        let p = route("S1.Preview.Example.com:443");
        assert_eq!(counted(&p), ["routed", "baggage_added"]);
        assert_eq!(
            p.edits[0],
            set("baggage", &format!("sandbox-routing-key={KEY}"))
        );
        assert_eq!(
            p.debug.as_deref(),
            Some("routed; source=preview-host; service=backend; endpoint=10.0.0.7:8080")
        );
        let p = route("gone.preview.example.com");
        assert_eq!(counted(&p), ["baseline.unknown_key"]);
        assert!(p.edits.is_empty());
        for other in [
            "preview.example.com",
            "a.b.preview.example.com",
            "s1.preview.example.org",
        ] {
            assert_eq!(counted(&route(other)), ["baseline.no_context"], "{other}");
        }
    }

    #[test]
    fn the_edge_trusts_a_credential_cookie_and_never_forwards_it() {
        // printf %s c | sha256sum
        let s = settings(
            r#"{"sources": ["cookie", "preview-host"], "preview_host": "{sandbox}.preview.example.com",
                "edge": {"credential_cookie": "sr-credential",
                         "credential_sha256": ["2e7d2c03a9507ae265ecf5b5356885a53393a2029d241394997265a1a25aefc6"]}}"#,
        );
        let cookie = format!("sandbox-routing-key={KEY}; sr-credential=c; a=1");
        let trusted = plan(
            &s,
            &[(":authority", "backend"), ("cookie", &cookie)],
            "203.0.113.9",
        );
        assert_eq!(trusted.edits[0], set("cookie", "a=1"));
        assert_eq!(counted(&trusted), ["routed", "baggage_added"]);
        let wrong = format!("sandbox-routing-key={KEY}; sr-credential=d; a=1");
        let untrusted = plan(
            &s,
            &[(":authority", "backend"), ("cookie", &wrong)],
            "203.0.113.9",
        );
        assert_eq!(untrusted.edits, [set("cookie", "a=1")]);
        assert_eq!(counted(&untrusted), ["baseline.untrusted"]);
        // A preview host from an untrusted browser: nothing to remove, still untrusted.
        let host = plan(
            &s,
            &[(":authority", "s1.preview.example.com")],
            "203.0.113.9",
        );
        assert!(host.edits.is_empty());
        assert_eq!(counted(&host), ["baseline.untrusted"]);
        let host = plan(
            &s,
            &[
                (":authority", "s1.preview.example.com"),
                ("cookie", "sr-credential=c"),
            ],
            "203.0.113.9",
        );
        assert_eq!(
            host.edits,
            [
                remove("cookie"),
                set("baggage", &format!("sandbox-routing-key={KEY}"))
            ]
        );
        // Trusted by the cookie: the host's sandbox key goes on (this
        // edge names services by authority, and has no fork for the host).
        assert_eq!(
            counted(&host),
            ["baseline.no_fork_for_service", "baggage_added"]
        );
    }

    #[test]
    fn bad_query_and_origin_sections_name_the_field() {
        for (json, field) in [
            (r#"{"query": {"param": "Bad Name"}}"#, "query.param:"),
            (r#"{"query": {"name": "x"}}"#, "query.name: unknown field"),
            (r#"{"origin": {}}"#, "origin:"),
            (
                r#"{"origin": {"sandbox": "a", "routing_key": "b"}}"#,
                "origin:",
            ),
            (r#"{"origin": {"sandbox": "-a"}}"#, "origin.sandbox:"),
            (
                r#"{"origin": {"routing_key": "a b"}}"#,
                "origin.routing_key:",
            ),
            (
                r#"{"sources": ["querystring"]}"#,
                "sources[0]: unknown variant",
            ),
        ] {
            let err = Settings::from_json(json.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(field), "{json}: {err}");
        }
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

    #[test]
    fn the_original_dst_value_at_the_edges_of_each_field() {
        for text in [
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "10.0.0.7:8080",
            "[::1]:9",
        ] {
            let endpoint: SocketAddr = text.parse().unwrap();
            assert_eq!(original_dst_value(endpoint), text.as_bytes());
        }
    }

    proptest::proptest! {
        #[test]
        fn the_original_dst_value_is_the_address_as_display_writes_it(
            ip in proptest::prelude::any::<[u8; 4]>(),
            v6 in proptest::prelude::any::<[u16; 8]>(),
            port in proptest::prelude::any::<u16>(),
        ) {
            for endpoint in [
                SocketAddr::from((ip, port)),
                SocketAddr::from((std::net::Ipv6Addr::from(v6), port)),
            ] {
                proptest::prop_assert_eq!(
                    String::from_utf8(original_dst_value(endpoint)).unwrap(),
                    endpoint.to_string()
                );
            }
        }
    }
}

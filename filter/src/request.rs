//! The per-request context: strip internal headers, route, count.

use std::cell::Cell;
use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, MapType};
use sandbox_router_routing::header_map;
use sandbox_router_routing::shared::{SharedStore, SharedTable};
use sandbox_router_routing::{
    BaselineReason, Decision, HeaderEdit, Outcome, RoutingContext, Settings, DEBUG_HEADER,
    ORIGINAL_DST_HEADER,
};

use crate::host_map;
use crate::metrics::Metrics;

pub struct RouteRequest {
    settings: Rc<Settings>,
    metrics: Option<Rc<Metrics>>,
    next_endpoint: Rc<Cell<usize>>,
    /// Kept only when the debug response header is on.
    debug_decision: Option<String>,
}

/// Shared data of this VM's `vm_id`, where the singleton keeps the pushed table.
struct HostSharedData;

impl SharedStore for HostSharedData {
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        hostcalls::get_shared_data(key)
            .ok()
            .and_then(|(value, _)| value)
    }
}

impl RouteRequest {
    pub fn new(
        settings: Rc<Settings>,
        metrics: Option<Rc<Metrics>>,
        next_endpoint: Rc<Cell<usize>>,
    ) -> Self {
        RouteRequest {
            settings,
            metrics,
            next_endpoint,
            debug_decision: None,
        }
    }

    fn count(&self, f: impl FnOnce(&Metrics)) {
        if let Some(metrics) = &self.metrics {
            f(metrics);
        }
    }
}

impl Context for RouteRequest {}

impl HttpContext for RouteRequest {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // One host call for the whole map, read in place: header values stay
        // bytes (client controlled, maybe not UTF-8), and repeated headers
        // (several `baggage` lines) are all seen. Header names are tokens:
        // Envoy's codecs refuse any other name before filters run, so a
        // non-UTF-8 name cannot occur (and would only be skipped).
        let buffer = host_map::request_headers();
        let headers: Vec<(&str, &[u8])> = header_map::pairs(&buffer)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(name, value)| Some((std::str::from_utf8(name).ok()?, value)))
            .collect();
        #[cfg(feature = "test-trap")]
        if headers
            .iter()
            .any(|(name, _)| *name == "x-sandbox-router-test-trap")
        {
            // Aborting in Wasm is an `unreachable` trap: the VM is dead.
            std::process::abort();
        }
        let settings = Rc::clone(&self.settings);
        let scanned = settings.scan(headers.iter().copied());

        // Before anything else: a client must never steer the ORIGINAL_DST
        // cluster itself (Envoy's docs warn about exactly this).
        if scanned.internal_headers {
            let _ = hostcalls::remove_map_value(MapType::HttpRequestHeaders, ORIGINAL_DST_HEADER);
            let _ =
                hostcalls::remove_map_value(MapType::HttpRequestHeaders, &settings.marker_header);
            self.count(|m| m.internal_headers_removed());
        }

        if let Some(edge) = &settings.edge {
            let credential = headers
                .iter()
                .find(|(name, _)| *name == edge.credential_header)
                .map(|(_, value)| *value);
            if credential.is_some() {
                // Never forwarded, trusted or not.
                let _ = hostcalls::remove_map_value(
                    MapType::HttpRequestHeaders,
                    &edge.credential_header,
                );
            }
            let source_address = || {
                hostcalls::get_property(vec!["source", "address"])
                    .ok()
                    .flatten()
            };
            let removal = settings.untrusted_context(&scanned, credential, source_address);
            if !removal.is_empty() {
                for edit in &removal {
                    let _ = match edit {
                        HeaderEdit::Remove(name) => {
                            hostcalls::remove_map_value(MapType::HttpRequestHeaders, name)
                        }
                        HeaderEdit::Replace(name, value) => hostcalls::set_map_value_bytes(
                            MapType::HttpRequestHeaders,
                            name,
                            Some(value),
                        ),
                    };
                }
                self.count(|m| m.baseline(BaselineReason::Untrusted));
                if settings.debug_header {
                    self.debug_decision = Some(String::from("baseline; reason=untrusted"));
                }
                return Action::Continue;
            }
        }

        let pick = self.next_endpoint.get();
        let cluster_name = || {
            hostcalls::get_property(vec!["xds", "cluster_name"])
                .ok()
                .flatten()
        };
        // Shared data is read only inside the lookup, i.e. only for a request
        // that carries routing context.
        let outcome = match &settings.table {
            Some(table) => settings.route(&scanned, cluster_name, table, pick),
            None => settings.route(
                &scanned,
                cluster_name,
                &SharedTable::new(HostSharedData),
                pick,
            ),
        };
        if outcome.extracted.baggage_over_limit {
            self.count(|m| m.baggage_over_limit());
        }
        match outcome.decision {
            Decision::Route(endpoint) => {
                self.next_endpoint.set(pick.wrapping_add(1));
                let set_dst = hostcalls::set_map_value(
                    MapType::HttpRequestHeaders,
                    ORIGINAL_DST_HEADER,
                    Some(&endpoint.to_string()),
                );
                let set_marker = hostcalls::set_map_value(
                    MapType::HttpRequestHeaders,
                    &settings.marker_header,
                    Some("1"),
                );
                if set_dst.is_ok() && set_marker.is_ok() {
                    self.count(|m| m.routed());
                } else {
                    // Without both headers Envoy takes the baseline route: say so.
                    let _ = hostcalls::remove_map_value(
                        MapType::HttpRequestHeaders,
                        &settings.marker_header,
                    );
                    self.count(|m| m.baseline(BaselineReason::Malformed));
                }
            }
            Decision::Baseline(reason) => self.count(|m| m.baseline(reason)),
        }
        if settings.debug_header {
            self.debug_decision = Some(describe(&outcome));
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Some(decision) = self.debug_decision.take() {
            let _ = hostcalls::set_map_value(
                MapType::HttpResponseHeaders,
                DEBUG_HEADER,
                Some(&decision),
            );
        }
        Action::Continue
    }
}

/// The debug header value, e.g. `routed; source=baggage; service=backend; endpoint=10.0.0.7:8080`
/// or `baseline; reason=unknown_key; source=baggage; service=backend`. Holds
/// no client-supplied text beyond the validated service name.
fn describe(outcome: &Outcome) -> String {
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

//! The per-request context: strip internal headers, route, count.

use std::cell::Cell;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use sandbox_router_routing::{
    Decision, Outcome, RoutingContext, Settings, DEBUG_HEADER, ORIGINAL_DST_HEADER,
};

use crate::metrics::Metrics;

pub struct RouteRequest {
    settings: Rc<Settings>,
    metrics: Option<Rc<Metrics>>,
    next_endpoint: Rc<Cell<usize>>,
    /// Kept only when the debug response header is on.
    debug_decision: Option<String>,
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
}

impl Context for RouteRequest {}

impl HttpContext for RouteRequest {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // One host call for the whole map: header values stay bytes (client
        // controlled, maybe not UTF-8), and repeated headers (several
        // `baggage` lines) are all seen.
        let headers = self.get_http_request_headers_bytes();
        let settings = Rc::clone(&self.settings);
        let scanned = settings.scan(
            headers
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_slice())),
        );

        // Before anything else: a client must never steer the ORIGINAL_DST
        // cluster itself (Envoy's docs warn about exactly this).
        if scanned.internal_headers {
            self.remove_http_request_header(ORIGINAL_DST_HEADER);
            self.remove_http_request_header(&settings.marker_header);
            self.count(|m| m.internal_headers_removed());
        }

        let pick = self.next_endpoint.get();
        let outcome = settings.route(
            &scanned,
            || self.get_property(vec!["xds", "cluster_name"]),
            &settings.table,
            pick,
        );
        if outcome.extracted.baggage_over_limit {
            self.count(|m| m.baggage_over_limit());
        }
        match outcome.decision {
            Decision::Route(endpoint) => {
                self.next_endpoint.set(pick.wrapping_add(1));
                self.set_http_request_header(ORIGINAL_DST_HEADER, Some(&endpoint.to_string()));
                self.set_http_request_header(&settings.marker_header, Some("1"));
                self.count(|m| m.routed());
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
            self.set_http_response_header(DEBUG_HEADER, Some(&decision));
        }
        Action::Continue
    }
}

impl RouteRequest {
    fn count(&self, f: impl FnOnce(&Metrics)) {
        if let Some(metrics) = &self.metrics {
            f(metrics);
        }
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

//! The per-request context: read the headers, call the routing plan
//! (`Settings::plan`), apply its header edits, count.

use std::cell::Cell;
use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, MapType};
use sandbox_router_routing::header_map;
use sandbox_router_routing::shared::{SharedStore, SharedTable};
use sandbox_router_routing::{Decision, HeaderEdit, RequestFacts, Settings, DEBUG_HEADER};

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

/// What the plan may ask of the host beyond the headers.
struct HostFacts;

impl RequestFacts for HostFacts {
    fn source_address(&self) -> Option<Vec<u8>> {
        hostcalls::get_property(vec!["source", "address"])
            .ok()
            .flatten()
    }

    fn cluster_name(&self) -> Option<Vec<u8>> {
        hostcalls::get_property(vec!["xds", "cluster_name"])
            .ok()
            .flatten()
    }
}

/// Applies one request header edit; false if the host refused it.
fn apply(edit: &HeaderEdit) -> bool {
    let done = match edit {
        HeaderEdit::Remove(name) => hostcalls::remove_map_value(MapType::HttpRequestHeaders, name),
        HeaderEdit::Replace(name, value) => {
            hostcalls::set_map_value_bytes(MapType::HttpRequestHeaders, name, Some(value))
        }
    };
    done.is_ok()
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
        // One host call for the whole map, read in place: header values stay
        // bytes (client controlled, maybe not UTF-8), and repeated headers
        // (several `baggage` lines) are all seen. Names are compared as
        // bytes, as Envoy hands them over.
        let buffer = host_map::request_headers();
        let headers = header_map::pairs(&buffer).unwrap_or_default();
        #[cfg(feature = "test-trap")]
        if headers
            .iter()
            .any(|(name, _)| *name == b"x-sandbox-router-test-trap")
        {
            // Aborting in Wasm is an `unreachable` trap: the VM is dead.
            std::process::abort();
        }
        let settings = Rc::clone(&self.settings);
        let scanned = settings.scan(headers.iter().copied());
        let pick = self.next_endpoint.get();
        // Shared data is read only inside the lookup, i.e. only for a request
        // that carries routing context.
        let mut plan = match &settings.table {
            Some(table) => settings.plan(&scanned, &HostFacts, table, pick),
            None => settings.plan(
                &scanned,
                &HostFacts,
                &SharedTable::new(HostSharedData),
                pick,
            ),
        };
        // Every edit is tried, even after one fails.
        let applied = plan.edits.iter().filter(|edit| !apply(edit)).count() == 0;
        if let Decision::Route(_) = plan.outcome.decision {
            self.next_endpoint.set(pick.wrapping_add(1));
            if !applied {
                // Without both headers Envoy takes the baseline route: say so.
                apply(&plan.abandon_route(&settings));
            }
        }
        if let Some(metrics) = &self.metrics {
            metrics.count(plan.counters);
        }
        self.debug_decision = plan.debug;
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

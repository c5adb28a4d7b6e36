//! sandbox-router proxy-wasm HTTP filter: host glue only.
//!
//! All routing logic lives in `sandbox-router-routing`; this crate reads the
//! plugin configuration, hands request headers to it, applies the decision
//! (headers for Envoy's ORIGINAL_DST cluster) and counts outcomes.

#![forbid(unsafe_code)]

mod metrics;
mod request;

use std::cell::Cell;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel};
use sandbox_router_routing::{ConfigSpec, Settings};

use crate::metrics::Metrics;
use crate::request::RouteRequest;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(FilterRoot::default()) });
}}

/// One per plugin configuration per VM (one VM per Envoy worker).
#[derive(Default)]
struct FilterRoot {
    /// `None` until `on_configure` accepts a configuration.
    settings: Option<Rc<Settings>>,
    metrics: Option<Rc<Metrics>>,
    /// Round-robin position among a fork's endpoints, shared by this VM's requests.
    next_endpoint: Rc<Cell<usize>>,
}

impl Context for FilterRoot {}

impl RootContext for FilterRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        let settings = match Settings::from_json(&bytes) {
            Ok(settings) => settings,
            Err(err) => {
                // Returning false makes Envoy reject the configuration instead
                // of running half-configured.
                log::error!("sandbox-router: rejected plugin configuration: {err}");
                return false;
            }
        };
        if self.metrics.is_none() {
            match Metrics::define() {
                Ok(metrics) => self.metrics = Some(Rc::new(metrics)),
                Err(status) => {
                    log::error!("sandbox-router: cannot define metrics: {status:?}");
                    return false;
                }
            }
        }
        log::info!(
            "sandbox-router: configured; table version {} with {} routing keys",
            settings.table.version(),
            settings.table.len()
        );
        self.settings = Some(Rc::new(settings));
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        // Envoy creates HTTP contexts only after `on_configure` returned true,
        // but the SDK panics on `None`: fall back to defaults rather than trap.
        let settings = match &self.settings {
            Some(settings) => Rc::clone(settings),
            None => Rc::new(Settings::compile(ConfigSpec::default()).ok()?),
        };
        Some(Box::new(RouteRequest::new(
            settings,
            self.metrics.clone(),
            Rc::clone(&self.next_endpoint),
        )))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

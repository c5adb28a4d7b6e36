//! sandbox-router proxy-wasm module: host glue only.
//!
//! One `.wasm`, two roles, chosen by the plugin's root id:
//! - the HTTP filter (any root id but `sandbox_router_sync`): reads the
//!   routing context of each request and applies the decision of
//!   `sandbox-router-routing` (headers for Envoy's ORIGINAL_DST cluster);
//! - the singleton `sandbox_router_sync` (bootstrap `WasmService`): holds the
//!   watch stream to the control service and writes the table into shared data.
//!
//! Host calls go through `proxy_wasm::hostcalls`, whose results are handled:
//! the SDK's trait helpers `unwrap` them, and a trap takes the VM down.

// One module reads the host's header buffer in place (host_map.rs).
#![deny(unsafe_code)]

mod host_map;
mod metrics;
mod request;
mod sync;

use std::cell::Cell;
use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType, LogLevel};
use sandbox_router_routing::sync::{SyncSettings, SYNC_ROOT_ID};
use sandbox_router_routing::{ConfigSpec, Settings};

use crate::metrics::Metrics;
use crate::request::RouteRequest;
use crate::sync::SyncRoot;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::Unconfigured) });
}}

/// A root context; its role is known once it is configured.
enum Root {
    Unconfigured,
    Filter(FilterRoot),
    Sync(Box<SyncRoot>),
}

/// One per plugin configuration per VM (one VM per Envoy worker).
struct FilterRoot {
    settings: Rc<Settings>,
    metrics: Option<Rc<Metrics>>,
    /// Round-robin position among a fork's endpoints, shared by this VM's requests.
    next_endpoint: Rc<Cell<usize>>,
}

impl Context for Root {
    fn on_grpc_stream_message(&mut self, token_id: u32, message_size: usize) {
        if let Root::Sync(sync) = self {
            sync.on_message(token_id, message_size);
        }
    }

    fn on_grpc_stream_close(&mut self, token_id: u32, status_code: u32) {
        if let Root::Sync(sync) = self {
            sync.on_close(token_id, status_code);
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let config = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .ok()
            .flatten()
            .unwrap_or_default();
        let root_id = hostcalls::get_property(vec!["plugin_root_id"])
            .ok()
            .flatten();
        if root_id.as_deref() == Some(SYNC_ROOT_ID.as_bytes()) {
            self.configure_sync(&config)
        } else {
            self.configure_filter(&config)
        }
    }

    fn on_tick(&mut self) {
        if let Root::Sync(sync) = self {
            sync.on_tick();
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let request = match self {
            Root::Filter(f) => RouteRequest::new(
                Rc::clone(&f.settings),
                f.metrics.clone(),
                Rc::clone(&f.next_endpoint),
            ),
            // Envoy creates HTTP contexts only on a configured filter root, but
            // the SDK panics on `None`: answer with a default (pushed-table) filter.
            _ => RouteRequest::new(
                Rc::new(Settings::compile(ConfigSpec::default()).ok()?),
                None,
                Rc::new(Cell::new(0)),
            ),
        };
        Some(Box::new(request))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

impl Root {
    fn configure_filter(&mut self, config: &[u8]) -> bool {
        let settings = match Settings::from_json(config) {
            Ok(settings) => settings,
            Err(err) => {
                // Returning false makes Envoy reject the configuration instead
                // of running half-configured.
                log::error!("sandbox-router: rejected plugin configuration: {err}");
                return false;
            }
        };
        let metrics = match self {
            Root::Filter(f) if f.metrics.is_some() => f.metrics.clone(),
            _ => match Metrics::define() {
                Ok(metrics) => Some(Rc::new(metrics)),
                Err(status) => {
                    log::error!("sandbox-router: cannot define metrics: {status:?}");
                    return false;
                }
            },
        };
        match &settings.table {
            Some(table) => log::info!(
                "sandbox-router: configured; static table version {} with {} routing keys",
                table.version(),
                table.len()
            ),
            None => log::info!(
                "sandbox-router: configured; routing by the table the control service pushes"
            ),
        }
        if let Some(edge) = &settings.edge {
            log::info!(
                "sandbox-router: edge mode; routing context honoured from {} trusted CIDRs or with one of {} credentials in {}",
                edge.trusted_cidrs(),
                edge.credentials(),
                edge.credential_header
            );
        }
        *self = Root::Filter(FilterRoot {
            settings: Rc::new(settings),
            metrics,
            next_endpoint: Rc::new(Cell::new(0)),
        });
        true
    }

    fn configure_sync(&mut self, config: &[u8]) -> bool {
        let settings = match SyncSettings::from_json(config) {
            Ok(settings) => settings,
            Err(err) => {
                log::error!("sandbox-router sync: rejected plugin configuration: {err}");
                return false;
            }
        };
        match self {
            Root::Sync(sync) => sync.reconfigure(settings),
            _ => *self = Root::Sync(Box::new(SyncRoot::new(settings))),
        }
        if let Root::Sync(sync) = self {
            sync.start();
        }
        true
    }
}

//! sandbox-router as a native Envoy dynamic module: the second host of the
//! routing plan (`routing::Settings::plan`), beside the proxy-wasm filter.
//! Envoy 1.40's `envoy.filters.http.dynamic_modules` loads the built
//! `libsandbox_router_envoy_module.so`; docs/native-module.md says how.
//!
//! - `ffi`: the C ABI, the only `unsafe` code, with a fake Envoy for the
//!   unit tests;
//! - `config`: the Wasm filter's JSON plus the `control` section;
//! - `filter`: per request, read the header list in place, apply the plan,
//!   count (safe Rust over the `RequestHost` trait);
//! - `metrics`: the fixed counters and the watch's stats;
//! - `pushed`: the process's one watch of the control service.

#![deny(unsafe_code)]
#![deny(clippy::indexing_slicing)]

mod config;
mod ffi;
mod filter;
mod metrics;
mod pushed;

use crate::ffi::{log, ConfigInit, ConfigMetrics, Level};
use crate::filter::{FilterConfig, Table};

pub use crate::ffi::ABI_VERSION;
pub use crate::metrics::STAT_PREFIX;

/// One filter configuration (one `config_new`): what all its streams use.
pub(crate) struct Module {
    filter: FilterConfig,
    /// Its use of the process's watch (the pushed table).
    sync: Option<pushed::Subscription>,
}

impl Module {
    /// Parses, defines the stats, joins the process's watch when the
    /// configuration asks for the pushed table. `None`: refused (logged, with
    /// the field).
    fn new(config: &[u8], init: &mut ConfigInit) -> Option<Module> {
        let parsed = match config::parse(config) {
            Ok(parsed) => parsed,
            Err(err) => {
                log(
                    Level::Error,
                    &format!("sandbox-router: rejected plugin configuration: {err}"),
                );
                return None;
            }
        };
        let counters = match metrics::define_counters(init) {
            Ok(ids) => ids,
            Err(err) => {
                log(Level::Error, &format!("sandbox-router: {err}"));
                return None;
            }
        };
        let settings = parsed.settings;
        let mut sync = None;
        let table = match (&settings.table, parsed.control) {
            (Some(table), _) => {
                log(
                    Level::Info,
                    &format!(
                        "sandbox-router: configured; static table version {} with {} routing keys",
                        table.version(),
                        table.len()
                    ),
                );
                Table::Static
            }
            (None, Some(control)) => {
                let subscribed = metrics::define_sync(init)
                    .and_then(|ids| pushed::subscribe(&control, init, ids));
                let subscription = match subscribed {
                    Ok(subscription) => subscription,
                    Err(err) => {
                        log(
                            Level::Error,
                            &format!("sandbox-router: rejected plugin configuration: {err}"),
                        );
                        return None;
                    }
                };
                log(
                    Level::Info,
                    "sandbox-router: configured; routing by the table the control service pushes",
                );
                let reader = subscription.reader();
                sync = Some(subscription);
                Table::Pushed(reader)
            }
            // config::parse refuses a configuration without either.
            (None, None) => Table::Static,
        };
        if let Some(edge) = &settings.edge {
            log(
                Level::Info,
                &format!(
                    "sandbox-router: edge mode; routing context honoured from {} trusted CIDRs or with one of {} credentials in {}",
                    edge.trusted_cidrs(),
                    edge.credentials(),
                    edge.credential_header
                ),
            );
        }
        Some(Module {
            filter: FilterConfig::new(settings, table, counters),
            sync,
        })
    }

    /// On Envoy's main thread, after the watch said something changed.
    fn on_scheduled(&self, metrics: &ConfigMetrics) {
        if let Some(sync) = &self.sync {
            sync.publish(metrics);
        }
    }
}

/// Once per process (at load): a panic's message and place go to Envoy's
/// log (Envoy's stderr may go nowhere; the hook that caught the panic then
/// logs what it did), and so do the watch's `log` lines.
#[cfg(not(test))]
fn install_logging() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            log(Level::Error, &format!("sandbox-router: {info}"));
        }));
        if ::log::set_logger(&EnvoyLog).is_ok() {
            ::log::set_max_level(::log::LevelFilter::Info);
        }
    });
}

/// The `log` crate's records (the watch's), in Envoy's log.
#[cfg(not(test))]
struct EnvoyLog;

#[cfg(not(test))]
impl ::log::Log for EnvoyLog {
    fn enabled(&self, metadata: &::log::Metadata<'_>) -> bool {
        metadata.level() <= ::log::Level::Info
    }

    fn log(&self, record: &::log::Record<'_>) {
        let level = match record.level() {
            ::log::Level::Error => Level::Error,
            ::log::Level::Warn => Level::Warn,
            _ => Level::Info,
        };
        if self.enabled(record.metadata()) {
            log(level, &record.args().to_string());
        }
    }

    fn flush(&self) {}
}

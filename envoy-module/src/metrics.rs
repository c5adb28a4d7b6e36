//! The module's stats: the Wasm filter's fixed set of counters
//! (`routing::Counter::ALL`, named by `Counter::name`) and, where the pushed
//! table is used, the Wasm singleton's `sync.*` counters and gauges. Envoy
//! lets a module define stats only inside `config_new` (frozen afterwards),
//! so every configuration defines all of them there. Envoy names them
//! `<metrics_namespace>.<name>`; the shipped configs set the namespace to
//! `sandbox_router` (`sandbox_router.routed`, `sandbox_router.sync.connects`).

use sandbox_router_routing::Counter;

use crate::ffi::ConfigInit;

/// The `metrics_namespace` the shipped configurations give the module (the
/// `dynamic_module_config` field; Envoy's default is `dynamicmodulescustom`).
pub const STAT_PREFIX: &str = "sandbox_router";

/// Envoy's ids of `Counter::ALL`, in that order.
pub fn define_counters(init: &mut ConfigInit) -> Result<[usize; Counter::ALL.len()], String> {
    let mut ids = [0; Counter::ALL.len()];
    for (id, counter) in ids.iter_mut().zip(Counter::ALL) {
        *id = init.define_counter(counter.name())?;
    }
    Ok(ids)
}

/// Envoy's ids of the watch's stats (the Wasm singleton's `sync.*` set).
#[derive(Debug, Clone, Copy)]
pub struct SyncIds {
    pub connects: usize,
    pub disconnects: usize,
    pub updates_applied: usize,
    pub update_errors: usize,
    pub table_version: usize,
    pub routing_keys: usize,
}

pub fn define_sync(init: &mut ConfigInit) -> Result<SyncIds, String> {
    Ok(SyncIds {
        connects: init.define_counter("sync.connects")?,
        disconnects: init.define_counter("sync.disconnects")?,
        updates_applied: init.define_counter("sync.updates_applied")?,
        update_errors: init.define_counter("sync.update_errors")?,
        table_version: init.define_gauge("sync.table_version")?,
        routing_keys: init.define_gauge("sync.routing_keys")?,
    })
}

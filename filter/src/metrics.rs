//! The filter's fixed set of counters (`routing::Counter::ALL`), defined once
//! per VM. Names never contain request data. Envoy shows them with a
//! `wasmcustom.` prefix: `wasmcustom.sandbox_router.<name>`.

use proxy_wasm::hostcalls;
use proxy_wasm::types::{MetricType, Status};
use sandbox_router_routing::{Counter, Counters};

pub struct Metrics {
    /// Indexed like `Counter::ALL`.
    ids: [u32; Counter::ALL.len()],
}

impl Metrics {
    pub fn define() -> Result<Self, Status> {
        let mut ids = [0; Counter::ALL.len()];
        for (id, counter) in ids.iter_mut().zip(Counter::ALL) {
            *id = hostcalls::define_metric(
                MetricType::Counter,
                &format!("sandbox_router.{}", counter.name()),
            )?;
        }
        Ok(Metrics { ids })
    }

    /// Moves each counter of the set by one.
    pub fn count(&self, counters: Counters) {
        for counter in counters.iter() {
            if let Some(id) = self.ids.get(counter.index()) {
                // A failed increment loses one count; it must not fail the request.
                let _ = hostcalls::increment_metric(*id, 1);
            }
        }
    }
}

//! The filter's fixed set of counters, defined once per VM. Names never
//! contain request data. Envoy shows them with a `wasmcustom.` prefix.

use proxy_wasm::hostcalls;
use proxy_wasm::types::{MetricType, Status};
use sandbox_router_routing::BaselineReason;

pub struct Metrics {
    routed: u32,
    /// Indexed like `BaselineReason::ALL`.
    baseline: [u32; BaselineReason::ALL.len()],
    internal_headers_removed: u32,
    baggage_over_limit: u32,
}

impl Metrics {
    pub fn define() -> Result<Self, Status> {
        let counter = |name: &str| {
            hostcalls::define_metric(MetricType::Counter, &format!("sandbox_router.{name}"))
        };
        let mut baseline = [0; BaselineReason::ALL.len()];
        for (slot, reason) in baseline.iter_mut().zip(BaselineReason::ALL) {
            *slot = counter(&format!("baseline.{}", reason.as_str()))?;
        }
        Ok(Metrics {
            routed: counter("routed")?,
            baseline,
            internal_headers_removed: counter("internal_headers_removed")?,
            baggage_over_limit: counter("baggage_over_limit")?,
        })
    }

    pub fn routed(&self) {
        bump(self.routed);
    }

    pub fn baseline(&self, reason: BaselineReason) {
        if let Some(id) = BaselineReason::ALL
            .iter()
            .position(|r| *r == reason)
            .and_then(|i| self.baseline.get(i))
        {
            bump(*id);
        }
    }

    pub fn internal_headers_removed(&self) {
        bump(self.internal_headers_removed);
    }

    pub fn baggage_over_limit(&self) {
        bump(self.baggage_over_limit);
    }
}

fn bump(id: u32) {
    // A failed increment loses one count; it must not fail the request.
    let _ = hostcalls::increment_metric(id, 1);
}

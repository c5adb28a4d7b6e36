//! Whole requests: header lines `name: value` (see `header_lines`), with any
//! names and byte values, through `Settings::scan` and `Settings::route`
//! under three configurations (the shipped `filter-config.json`, the
//! defaults, and `destination.from: cluster_name` with the sources
//! reversed and other names), against the fixture table.
//!
//! Invariants (`route_and_check`): a client-sent internal header is flagged;
//! the compiled table and shared data decide the same; a `Route` endpoint is
//! registered for the service (by the sandbox an override names, if any), and
//! a routing key alone routes exactly as the table says; without usable
//! context neither the table nor the cluster name is consulted.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sandbox_router_fuzz::{header_lines, route_and_check};
use sandbox_router_routing::Settings;

const SHIPPED: &[u8] = include_bytes!("../../envoy-config/filter-config.json");
const CLUSTER_NAME: &[u8] = br#"{
  "keys": ["sandbox-routing-key", "sd-routing-key", "x_key"],
  "overrides_key": "ovr",
  "sources": ["x-ot-span-context", "tracestate", "uberctx", "ot-baggage", "baggage"],
  "destination": {"from": "cluster_name", "strip_suffixes": [".svc.cluster.local"]},
  "marker_header": "x-mark"
}"#;

fn settings() -> &'static [Settings; 3] {
    static SETTINGS: OnceLock<[Settings; 3]> = OnceLock::new();
    SETTINGS.get_or_init(|| {
        [SHIPPED, b"", CLUSTER_NAME].map(|json| Settings::from_json(json).expect("config"))
    })
}

fuzz_target!(|data: &[u8]| {
    let headers = header_lines(data);
    for settings in settings() {
        route_and_check(settings, &headers, data.len());
    }
});

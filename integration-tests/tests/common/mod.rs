//! Shared set-up: a sidecar with two sandboxes and a standard table.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;

use sandbox_router_proto::v1::Overrides;
use sandbox_router_routing::mint::{self, Carried};
use sandbox_router_routing::Source;
use testbed::{Sidecar, SidecarOptions, Stats};

/// Routing key of sandbox `feature-x`, which forks `backend`.
pub const KEY_X: &str = "key-feature-x";
/// Routing key of sandbox `frontend-y`, which forks `frontend`.
pub const KEY_Y: &str = "key-frontend-y";

/// The standard filter configuration; `extra` is merged into it (top-level keys).
pub fn config(sandboxes: &[SocketAddr], extra: serde_json::Value) -> String {
    let mut config = serde_json::json!({
        "keys": ["sandbox-routing-key", "sd-routing-key"],
        "debug_header": true,
        "table": {
            "version": 7,
            "entries": [
                { "routing_key": KEY_X, "sandbox": "feature-x",
                  "forks": [{ "service": "backend", "endpoints": [sandboxes[0].to_string()] }] },
                { "routing_key": KEY_Y, "sandbox": "frontend-y",
                  "forks": [{ "service": "frontend", "endpoints": [sandboxes[1].to_string()] }] }
            ]
        }
    });
    if let (Some(base), Some(extra)) = (config.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            base.insert(k.clone(), v.clone());
        }
    }
    config.to_string()
}

/// A sidecar with `backend/feature-x` and `frontend/frontend-y` sandboxes and the standard table.
pub async fn sidecar() -> Sidecar {
    sidecar_with(serde_json::json!({})).await
}

pub async fn sidecar_with(extra: serde_json::Value) -> Sidecar {
    Sidecar::start(two_sandboxes(), |addrs| Ok(config(addrs, extra)))
        .await
        .expect("sidecar starts")
}

pub fn two_sandboxes() -> SidecarOptions {
    SidecarOptions {
        sandboxes: vec![
            ("backend".into(), "feature-x".into()),
            ("frontend".into(), "frontend-y".into()),
        ],
        ..SidecarOptions::default()
    }
}

/// Header lines carrying `key` (and/or `overrides`) in `format`, under the default names.
pub fn carrying(
    format: Source,
    key: Option<&str>,
    overrides: Option<&Overrides>,
) -> Vec<(String, String)> {
    mint::headers(format, &Carried::default_names(key, overrides))
}

/// The plainest request for sandbox `feature-x`: its key in W3C baggage.
pub const BAGGAGE_KEY_X: (&str, &[u8]) = ("baggage", b"sandbox-routing-key=key-feature-x");

/// Request headers as a test writes them: (name, raw value bytes).
pub type Headers<'a> = &'a [(&'a str, &'a [u8])];

pub fn as_refs(lines: &[(String, String)]) -> Vec<(&str, &[u8])> {
    lines
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_bytes()))
        .collect()
}

pub async fn stats(sidecar: &Sidecar) -> Stats {
    sidecar.envoy.stats().await.expect("stats")
}

/// Filter counters that moved between two snapshots.
pub fn moved(after: &Stats, before: &Stats) -> BTreeMap<String, u64> {
    after.filter_delta(before)
}

pub fn counts(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
}

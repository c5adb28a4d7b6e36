//! The docker-compose setup in `envoy-config/compose/`: the `make demo`
//! topology in containers. Its Envoy configs are `envoy-config/sidecar.yaml`
//! (the template `make demo` and the tests run) rendered with the compose
//! service names, so there is one source: `integration-tests/tests/compose.rs`
//! fails when a checked-in file differs from [`compose_envoy_configs`], and
//! rewrites them with `UPDATE_COMPOSE=1`.

use anyhow::Result;

use crate::{render, shipped_config, DEFAULT_SYNC_CONFIG};

/// The compose setup, relative to the workspace root.
pub const COMPOSE_DIR: &str = "envoy-config/compose";

/// Where `compose.yaml` mounts the built filter in the Envoy containers.
pub const COMPOSE_WASM_PATH: &str = "/etc/envoy/sandbox_router_filter.wasm";

/// The testers' edge credential in the compose demo. It is published here, so
/// it guards nothing: anywhere but a local demo, make one with
/// `sandbox-router edge-credential` and put its digest in the edge config.
pub const COMPOSE_DEMO_CREDENTIAL: &str = "sandbox-router-compose-demo";

const GENERATED: &str = "\
# GENERATED from envoy-config/sidecar.yaml for envoy-config/compose/compose.yaml
# (testbed::compose_envoy_configs): do not edit. Regenerate with
#   UPDATE_COMPOSE=1 cargo test -p integration-tests --test compose
# The test fails whenever this file differs from a fresh render.
#
";

/// The Envoy configs of the compose setup, as (file name in [`COMPOSE_DIR`],
/// contents): `edge.yaml` (the edge Envoy in front of `frontend`, in edge
/// mode with [`COMPOSE_DEMO_CREDENTIAL`]) and `sidecar.yaml` (`frontend`'s
/// sidecar for its calls to `backend`). Both know both baseline services by
/// their compose names (STRICT_DNS) and reach the control service at
/// `control:7070`.
pub fn compose_envoy_configs() -> Result<Vec<(&'static str, String)>> {
    let digest =
        sandbox_router_routing::edge::credential_sha256(COMPOSE_DEMO_CREDENTIAL.as_bytes());
    let edge_filter = render(
        &shipped_config("filter-config-edge.json")?,
        &[("EDGE_CREDENTIAL_SHA256", &digest)],
    )?;
    let sidecar_filter = shipped_config("filter-config.json")?;
    let template = shipped_config("sidecar.yaml")?;
    let mut configs = Vec::new();
    for (file, node_id, listen_port, filter_config) in [
        ("edge.yaml", "edge", "10000", &edge_filter),
        ("sidecar.yaml", "frontend-sidecar", "15001", &sidecar_filter),
    ] {
        let body = render(
            &template,
            &[
                ("NODE_ID", node_id),
                ("ADMIN_PORT", "9901"),
                ("LISTEN_ADDRESS", "0.0.0.0"),
                ("LISTEN_PORT", listen_port),
                ("CLUSTER_TYPE", "STRICT_DNS"),
                ("BACKEND_BASELINE_ADDRESS", "backend"),
                ("BACKEND_BASELINE_PORT", "8080"),
                ("FRONTEND_BASELINE_ADDRESS", "frontend"),
                ("FRONTEND_BASELINE_PORT", "8080"),
                ("CONTROL_ADDRESS", "control"),
                ("CONTROL_PORT", "7070"),
                ("WASM_PATH", COMPOSE_WASM_PATH),
                ("FILTER_CONFIG", filter_config),
                ("SYNC_CONFIG", DEFAULT_SYNC_CONFIG),
            ],
        )?;
        configs.push((file, format!("{GENERATED}{body}")));
    }
    Ok(configs)
}

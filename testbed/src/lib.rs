//! Test bed for sandbox-router: real Envoy processes running the built filter,
//! small echo services standing in for baseline and sandboxed workloads, and
//! the rendering of the shipped config templates. Used by `integration-tests`
//! and by `make demo`, so the demo runs exactly what the tests check.

#![forbid(unsafe_code)]

mod broker;
mod compose;
mod control;
pub mod docs;
mod echo;
mod envoy;
pub mod grpc;
mod host;
mod render;
mod sidecar;

use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use broker::{redis_server_binary, RedisBroker};
pub use compose::{compose_envoy_configs, COMPOSE_DEMO_CREDENTIAL, COMPOSE_DIR, COMPOSE_WASM_PATH};
pub use control::ControlService;
pub use echo::{EchoReply, EchoService, NextHop};
pub use envoy::{Envoy, Stats};
pub use grpc::{grpc_client, proto as echo_proto};
pub use host::{
    native_control_section, native_module_config, native_sidecar_template, Host, HOST_ENV,
    NATIVE_SIDECAR,
};
pub use render::render;
pub use sidecar::{
    get_path_via, get_via, sidecar_config, sidecar_config_for, sidecar_config_with_sync,
    wait_for_filter, Reply, Sidecar, SidecarOptions, SidecarPorts, DEFAULT_SYNC_CONFIG,
    PREVIEW_DOMAIN, SHIPPED_FAILURE_POLICY,
};

/// The workspace root (parent of this crate).
pub fn workspace_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(PathBuf::from).unwrap_or(here)
}

/// `$ENVOY_BIN`, else the Envoy `make` installs into `.venv`.
pub fn envoy_binary() -> PathBuf {
    std::env::var_os("ENVOY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv/bin/envoy"))
}

/// `$SANDBOX_ROUTER_WASM`, else the build `make wasm` produces.
pub fn filter_wasm() -> PathBuf {
    std::env::var_os("SANDBOX_ROUTER_WASM")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            workspace_root().join("target/wasm32-wasip1/wasm/sandbox_router_filter.wasm")
        })
}

/// `$SANDBOX_ROUTER_MODULE`, else the native module `make build` produces
/// (`cargo build --release -p sandbox-router-envoy-module`).
pub fn native_module() -> PathBuf {
    std::env::var_os("SANDBOX_ROUTER_MODULE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            workspace_root().join("target/release/libsandbox_router_envoy_module.so")
        })
}

/// The test-only build of the native module (`make module-test`, feature
/// `test-hooks`): a request with `x-sandbox-router-test-panic` panics in the
/// module's hook, and `SANDBOX_ROUTER_TEST_ABI_VERSION` replaces its ABI version.
pub fn test_hooks_module() -> PathBuf {
    workspace_root().join("target/module-test/libsandbox_router_envoy_module.so")
}

/// The test-only build of the filter that traps on request
/// (`make wasm-trap`, feature `test-trap`), for the failure-policy tests.
pub fn trap_filter_wasm() -> PathBuf {
    workspace_root().join("target/trap/wasm32-wasip1/wasm/sandbox_router_filter.wasm")
}

/// A binary built next to the running one (`make build` builds them together),
/// e.g. `sandbox-router` for the demo and the benchmarks. A test binary lives
/// one level down (`target/debug/deps/`), so its parent directory counts too.
pub fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    let candidates = [Some(dir.join(name)), dir.parent().map(|d| d.join(name))];
    candidates
        .into_iter()
        .flatten()
        .find(|path| path.exists())
        .ok_or_else(|| anyhow::anyhow!("no {name} next to {} (run `make build`)", exe.display()))
}

/// A file shipped in `envoy-config/`.
pub fn shipped_config(name: &str) -> anyhow::Result<String> {
    let path = workspace_root().join("envoy-config").join(name);
    std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))
}

/// Polls `check` every 20 ms until it returns `Some`, or fails after `deadline`
/// with `what` in the error. The way to wait in tests: for a condition, never a fixed time.
pub async fn poll_until<T, F, Fut>(
    what: &str,
    deadline: Duration,
    mut check: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if start.elapsed() > deadline {
            anyhow::bail!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

//! What the harnesses share about the two hosts of sandbox-router (the Wasm
//! filter and the native module), and the helpers `bench/callgrind.py` calls
//! so that it builds the same stores and Envoy configurations as `cost`
//! instead of a second copy of them in Python:
//!
//! - `sandbox-router-bench store`: a control-service store of N sandboxes;
//! - `sandbox-router-bench sidecar-config`: the shipped sidecar of either
//!   host, rendered for a control service and an upstream;
//! - `sandbox-router-bench filter`: the HTTP filter of a variant in the bench
//!   layout (the native no-op, sandbox-router with a static table).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::Args as ClapArgs;
use sandbox_router_control::model::{Model, NewSandbox};
use sandbox_router_control::store::{Row, Store};
use serde_json::{json, Value};
use testbed::{
    render, shipped_config, sidecar_config_for, Host, SidecarPorts, DEFAULT_SYNC_CONFIG,
};

/// `wasm` or `native` (clap value parser).
pub fn parse_host(name: &str) -> Result<Host, String> {
    match name {
        "wasm" => Ok(Host::Wasm),
        "native" => Ok(Host::Native),
        other => Err(format!("{other:?}: expected wasm or native")),
    }
}

/// The name of a sandbox-router variant: `sr-<table>-<traffic>` for the Wasm
/// filter (the names earlier results use), `sr-native-<table>-<traffic>` for
/// the native module. `table`: `static` or the number of sandboxes.
pub fn sr_name(host: Host, table: &str, traffic: &str) -> String {
    match host {
        Host::Wasm => format!("sr-{table}-{traffic}"),
        Host::Native => format!("sr-native-{table}-{traffic}"),
    }
}

/// The no-op dynamic module (`bench/noop-module`, built by the Makefile's
/// bench targets): `$BENCH_NOOP_MODULE`, else `target/release/libbench_noop_module.so`.
pub fn noop_module() -> Result<PathBuf> {
    let path = std::env::var_os("BENCH_NOOP_MODULE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            testbed::workspace_root().join("target/release/libbench_noop_module.so")
        });
    if !path.exists() {
        bail!(
            "no {} (cargo build --release --manifest-path bench/noop-module/Cargo.toml --target-dir target)",
            path.display()
        );
    }
    Ok(path)
}

/// sandbox-router's native module (`make module`).
pub fn sr_module() -> Result<PathBuf> {
    let path = testbed::native_module();
    if !path.exists() {
        bail!("no {} (make module)", path.display());
    }
    Ok(path)
}

/// The bench layout's HTTP filter for a native module
/// (`envoy-config/bench/native-module-filter.yaml`).
pub fn module_filter(name: &str, module: &Path, namespace: &str, config: &str) -> Result<String> {
    render(
        &shipped_config("bench/native-module-filter.yaml")?,
        &[
            ("FILTER_NAME", name),
            ("MODULE_PATH", &module.display().to_string()),
            ("METRICS_NAMESPACE", namespace),
            ("MODULE_CONFIG", config),
        ],
    )
}

/// The configuration of the `sr-*-static-*` variants (both hosts): the
/// shipped one (as the pushed-table variants run it), with a static table
/// of 10 instead of the control service's.
pub fn static_table_config(upstream: SocketAddr) -> Result<String> {
    let entries: Vec<Value> = (0..10)
        .map(|i| json!({ "routing_key": format!("static-key-{i}"), "forks": [{ "service": "backend", "endpoints": [upstream.to_string()] }] }))
        .collect();
    let mut config: Value = serde_json::from_str(&shipped_filter_config()?)?;
    config["table"] = json!({ "version": 1, "entries": entries });
    Ok(config.to_string())
}

/// The routing key routed traffic sends to a static table.
pub const STATIC_KEY: &str = "static-key-5";

/// The shipped filter configuration, debug header off (as measured).
pub fn shipped_filter_config() -> Result<String> {
    let mut config: Value = serde_json::from_str(&shipped_config("filter-config.json")?)?;
    config["debug_header"] = json!(false);
    Ok(config.to_string())
}

/// The shipped sidecar of `host` (`envoy-config/sidecar.yaml` or
/// `envoy-config/native/sidecar.yaml`), watching the control service on
/// `control_port`, its `backend` baseline on `backend_port`.
pub fn sidecar(host: Host, node_id: &str, control_port: u16, backend_port: u16) -> Result<String> {
    let ports = SidecarPorts {
        backend_baseline: backend_port,
        frontend_baseline: 1,
        control: control_port,
    };
    sidecar_config_for(
        host,
        node_id,
        &ports,
        &shipped_filter_config()?,
        DEFAULT_SYNC_CONFIG,
    )
}

/// Writes a store with `count` sandboxes forking `backend` to `endpoint`;
/// returns the routing key of one in the middle.
pub fn write_store(db: &Path, count: usize, endpoint: SocketAddr) -> Result<String> {
    let mut model = Model::default();
    for i in 0..count {
        let new = NewSandbox {
            name: format!("bench-{i}"),
            forks: [("backend".to_owned(), vec![endpoint.to_string()])].into(),
            labels: Default::default(),
            ttl_seconds: None,
        };
        model
            .create_sandbox(new, format!("benchkey{i:016}"), 0)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let rows: Vec<Row<'_>> = model.sandboxes().map(Row::PutSandbox).collect();
    Store::open(db)?.commit(1, &rows)?;
    Ok(format!("benchkey{:016}", count / 2))
}

/// `store`: writes a store of N sandboxes, prints the routing key to route by.
#[derive(ClapArgs)]
pub struct StoreArgs {
    /// The SQLite store to write (must not exist).
    #[arg(long)]
    db: PathBuf,
    #[arg(long)]
    sandboxes: usize,
    /// Every sandbox's `backend` endpoint.
    #[arg(long)]
    endpoint: SocketAddr,
}

pub fn store(args: StoreArgs) -> Result<()> {
    if args.db.exists() {
        bail!("{} exists", args.db.display());
    }
    println!("{}", write_store(&args.db, args.sandboxes, args.endpoint)?);
    Ok(())
}

/// `sidecar-config`: prints the shipped sidecar of a host, rendered.
#[derive(ClapArgs)]
pub struct SidecarArgs {
    #[arg(long, value_parser = parse_host)]
    host: Host,
    #[arg(long)]
    node_id: String,
    #[arg(long)]
    control_port: u16,
    #[arg(long)]
    backend_port: u16,
}

pub fn sidecar_config(args: SidecarArgs) -> Result<()> {
    if args.host == Host::Native {
        sr_module()?;
    }
    print!(
        "{}",
        sidecar(
            args.host,
            &args.node_id,
            args.control_port,
            args.backend_port
        )?
    );
    Ok(())
}

/// `filter`: prints one of the bench layout's HTTP filters.
#[derive(ClapArgs)]
pub struct FilterArgs {
    /// `module-noop`, `module-get-headers`, `module-get-all-headers`,
    /// `sr-static-wasm` or `sr-static-native` (see [`bench_filter`]).
    #[arg(long)]
    kind: String,
    /// The upstream the static table's sandboxes fork `backend` to.
    #[arg(long)]
    upstream: SocketAddr,
}

pub fn print_filter(args: FilterArgs) -> Result<()> {
    print!("{}", bench_filter(&args.kind, args.upstream)?);
    Ok(())
}

/// The HTTP filter (`HTTP_FILTERS` of `envoy-config/bench/envoy.yaml`) of
/// a variant of the bench layout:
/// - `module-noop`: the no-op dynamic module (the native floor);
/// - `module-get-headers`: the same, reading the headers sandbox-router's
///   shipped configuration can need, one `get_header` each;
/// - `module-get-all-headers`: the same, getting every request header in one
///   call, as pointers into Envoy's map;
/// - `sr-static-wasm`, `sr-static-native`: sandbox-router, shipped
///   configuration with a static table of 10 forking `backend` to `upstream`.
pub fn bench_filter(kind: &str, upstream: SocketAddr) -> Result<String> {
    match kind {
        "module-noop" => module_filter("noop", &noop_module()?, "noop", ""),
        "module-get-headers" => module_filter(
            "noop",
            &noop_module()?,
            "noop",
            &format!("get-headers {}", shipped_header_names()?.join(",")),
        ),
        "module-get-all-headers" => {
            module_filter("noop", &noop_module()?, "noop", "get-all-headers")
        }
        "sr-static-wasm" => render(
            &shipped_config("bench/sandbox-router-filter.yaml")?,
            &[
                ("WASM_PATH", &testbed::filter_wasm().display().to_string()),
                ("FILTER_CONFIG", &static_table_config(upstream)?),
            ],
        ),
        "sr-static-native" => module_filter(
            "sandbox_router",
            &sr_module()?,
            "sandbox_router",
            &static_table_config(upstream)?,
        ),
        other => bail!(
            "{other:?}: expected module-noop, module-get-headers, module-get-all-headers, sr-static-wasm or sr-static-native"
        ),
    }
}

/// The request headers the shipped configuration makes the module read (by
/// name, one `get_header` each): what `module-get-headers` reads.
pub fn shipped_header_names() -> Result<Vec<String>> {
    let spec: sandbox_router_routing::ConfigSpec = serde_json::from_str(&shipped_filter_config()?)?;
    let settings = sandbox_router_routing::Settings::compile(spec)
        .map_err(|e| anyhow::anyhow!("filter-config.json: {e}"))?;
    Ok(settings.header_names().to_vec())
}

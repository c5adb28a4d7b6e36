//! The two hosts of the routing plan, and what differs between them in a
//! test: the Envoy config (the Wasm filter with its singleton, or the native
//! dynamic module with its `control` section), and the prefix of the stats.
//!
//! The integration suites run once per host: `SANDBOX_ROUTER_HOST=wasm|native`
//! (`make integration` runs them twice) picks the host every [`crate::Sidecar`]
//! and [`crate::sidecar_config`] uses; unset means `wasm`.
//!
//! The native host's Envoy config, `envoy-config/native/sidecar.yaml`, is
//! generated from `envoy-config/sidecar.yaml` by [`native_sidecar_template`]
//! (one source; `integration-tests/tests/native_module.rs` fails when the
//! checked-in file drifts, and rewrites it with `UPDATE_NATIVE=1`).

use anyhow::{anyhow, bail, Context as _, Result};

/// The environment variable that picks the host.
pub const HOST_ENV: &str = "SANDBOX_ROUTER_HOST";

/// The generated native config, relative to `envoy-config/`.
pub const NATIVE_SIDECAR: &str = "native/sidecar.yaml";

/// Which build of sandbox-router an Envoy runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Host {
    /// The proxy-wasm filter (`sandbox_router_filter.wasm`) and its singleton.
    Wasm,
    /// The native dynamic module (`libsandbox_router_envoy_module.so`).
    Native,
}

impl Host {
    pub const ALL: [Host; 2] = [Host::Wasm, Host::Native];

    /// `$SANDBOX_ROUTER_HOST`: `wasm` (or unset) or `native`.
    pub fn from_env() -> Result<Host> {
        match std::env::var(HOST_ENV).as_deref() {
            Err(_) | Ok("") | Ok("wasm") => Ok(Host::Wasm),
            Ok("native") => Ok(Host::Native),
            Ok(other) => bail!("{HOST_ENV}={other:?}: expected wasm or native"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Host::Wasm => "wasm",
            Host::Native => "native",
        }
    }

    /// The host an Envoy configuration loads: the Wasm filter or the
    /// native module (None for neither or both).
    pub fn loaded_by(config: &str) -> Option<Host> {
        let wasm = config.contains("envoy.extensions.filters.http.wasm.v3.Wasm");
        let native = config.contains("dynamic_modules.v3.DynamicModuleFilter");
        match (wasm, native) {
            (true, false) => Some(Host::Wasm),
            (false, true) => Some(Host::Native),
            _ => None,
        }
    }

    /// The prefix of the filter's stats: `wasmcustom.sandbox_router.` (the
    /// Wasm runtime's custom metrics) or `sandbox_router.` (the module's
    /// `metrics_namespace` in the shipped native config).
    pub fn stat_prefix(self) -> &'static str {
        match self {
            Host::Wasm => "wasmcustom.sandbox_router.",
            Host::Native => "sandbox_router.",
        }
    }
}

/// The `control` section the native module takes where the Wasm build runs
/// its singleton: the control service's address, this proxy's name, and the
/// singleton configuration's `token` and backoff (`sync_config`, JSON).
pub fn native_control_section(
    server: &str,
    node_id: &str,
    sync_config: &str,
) -> Result<serde_json::Value> {
    let sync: serde_json::Value = if sync_config.trim().is_empty() {
        serde_json::json!({})
    } else {
        serde_json::from_str(sync_config).context("the singleton configuration")?
    };
    let mut control = serde_json::json!({ "server": server, "node_id": node_id });
    for field in ["node_id", "token", "initial_backoff_ms", "max_backoff_ms"] {
        if let Some(value) = sync.get(field).filter(|v| !v.is_null()) {
            if !(field == "node_id" && value == "") {
                control[field] = value.clone();
            }
        }
    }
    Ok(control)
}

/// The native module's configuration: the filter's JSON `filter_config`
/// with `control` added in front, unless it has a static `table` (then it
/// needs none). Textual, so a configuration that is not valid JSON reaches
/// the module as written (and is refused there, as by the Wasm filter).
pub fn native_module_config(filter_config: &str, control: &serde_json::Value) -> String {
    let has_table = serde_json::from_str::<serde_json::Value>(filter_config)
        .ok()
        .is_some_and(|v| v.get("table").is_some());
    if has_table {
        return filter_config.to_owned();
    }
    let trimmed = filter_config.trim_start();
    match trimmed.strip_prefix('{') {
        Some(rest) if rest.trim_start().starts_with('}') => {
            format!("{{\"control\": {control}{rest}")
        }
        Some(rest) => format!("{{\"control\": {control},{rest}"),
        None if trimmed.is_empty() => format!("{{\"control\": {control}}}"),
        None => filter_config.to_owned(),
    }
}

const GENERATED: &str = "\
# GENERATED from envoy-config/sidecar.yaml (testbed::native_sidecar_template):
# do not edit. Regenerate with `make native-config`; a test fails whenever this
# file differs from a fresh transformation.
#
";

/// Each (what, Wasm text, native text) the transformation replaces; every
/// piece must be found exactly once in the template, or the transformation
/// fails (and with it the drift test), so a change to the template that the
/// native config would miss cannot pass unnoticed.
const REPLACEMENTS: &[(&str, &str, &str)] = &[
    (
        "the title",
        "# sandbox-router sidecar: one outbound listener whose requests pass through the
# sandbox-router Wasm filter before Envoy routes them.
",
        "# sandbox-router sidecar, native host: one outbound listener whose requests pass
# through the sandbox-router dynamic module (libsandbox_router_envoy_module.so, a
# native Envoy extension) before Envoy routes them. The same routing as the Wasm
# filter's envoy-config/sidecar.yaml, which this file is generated from, at the
# cost of a built-in filter (docs/native-module.md).
",
    ),
    (
        "the placeholders of the Wasm build",
        "#   CONTROL_ADDRESS, CONTROL_PORT  the control service
",
        "",
    ),
    (
        "the module's placeholders",
        "#   WASM_PATH                      the built sandbox_router_filter.wasm
#   FILTER_CONFIG                  the filter's JSON configuration (filter-config.json)
#   SYNC_CONFIG                    the singleton's JSON configuration, e.g.
#                                  {\"control_cluster\": \"sandbox_router_control\", \"token\": \"...\"}
#                                  (`token`: the control service's --watch-token)
",
        "#   MODULE_PATH                    the built libsandbox_router_envoy_module.so
#   FILTER_CONFIG                  the module's JSON configuration: the filter's
#                                  (filter-config.json, filter-config-edge.json) and,
#                                  without a static table, a \"control\" section:
#                                  \"control\": {\"server\": \"http://127.0.0.1:7070\",
#                                  \"node_id\": \"<this proxy>\", \"token\": \"...\"}
#                                  (`token`: the control service's --watch-token)
",
    ),
    (
        "the singleton",
        "# The routing table comes from the control service: the singleton WasmService
# below (same .wasm, same vm_id) holds one watch stream per Envoy process and
# writes each update into shared data, where the filter on every worker reads
# it. If the control service goes away, the last table keeps routing.
node:
  id: ${NODE_ID}

bootstrap_extensions:
- name: envoy.bootstrap.wasm
  typed_config:
    \"@type\": type.googleapis.com/envoy.extensions.wasm.v3.WasmService
    singleton: true
    config:
      name: sandbox_router_sync
      root_id: sandbox_router_sync
      vm_config:
        vm_id: sandbox_router
        runtime: envoy.wasm.runtime.v8
        code: { local: { filename: ${WASM_PATH} } }
      configuration:
        \"@type\": type.googleapis.com/google.protobuf.StringValue
        value: |
          ${SYNC_CONFIG}
",
        "# The routing table comes from the control service: the module's first
# configuration with a \"control\" section starts one watch stream per Envoy
# process (a thread of the module's own, talking gRPC to the server it names);
# every configuration and worker reads the table it holds, without a lock. If
# the control service goes away, the last table keeps routing.
node:
  id: ${NODE_ID}
",
    ),
    (
        "the HTTP filter",
        "          - name: sandbox_router
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: sandbox_router
                root_id: sandbox_router
                # If the VM traps, Envoy answers 503 until the reload backoff
                # has passed, then starts a fresh VM (shared data, i.e. the
                # pushed table, survives). FAIL_OPEN would bypass the filter,
                # and with it the removal of client-sent routing headers: a
                # client could then steer the ORIGINAL_DST cluster. FAIL_CLOSED
                # answers 503 until Envoy restarts. integration-tests/tests/
                # failure_policy.rs shows all three.
                failure_policy: FAIL_RELOAD
                # 0.1 s instead of the default 1 s; repeated traps back off
                # up to 1 s.
                reload_config: { backoff: { base_interval: 0.1s, max_interval: 1s } }
                vm_config:
                  # vm_id is also the namespace of the filter's shared data.
                  vm_id: sandbox_router
                  runtime: envoy.wasm.runtime.v8
                  code: { local: { filename: ${WASM_PATH} } }
                configuration:
                  \"@type\": type.googleapis.com/google.protobuf.StringValue
                  value: |
                    ${FILTER_CONFIG}
",
        "          - name: sandbox_router
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter
              dynamic_module_config:
                module: { local: { filename: ${MODULE_PATH} } }
                # The module runs a thread of its own (the watch): Envoy must
                # never unload it.
                do_not_close: true
                # Stats read sandbox_router.<name>, e.g. sandbox_router.routed
                # (Envoy's default namespace is dynamicmodulescustom).
                metrics_namespace: sandbox_router
              filter_name: sandbox_router
              # No failure policy: the module catches a panic in any of its
              # hooks itself, leaves that request on the baseline and counts
              # it (baseline.malformed); Envoy keeps serving.
              filter_config:
                \"@type\": type.googleapis.com/google.protobuf.StringValue
                value: |
                  ${FILTER_CONFIG}
",
    ),
    (
        "the control service's cluster",
        "  # The control service (gRPC: HTTP/2 without TLS).
  - name: sandbox_router_control
    type: ${CLUSTER_TYPE}
    dns_lookup_family: V4_PREFERRED
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }
    load_assignment:
      cluster_name: sandbox_router_control
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: ${CONTROL_ADDRESS}, port_value: ${CONTROL_PORT} } } }
",
        // The module's watch connects by itself (control.server): no cluster.
        "",
    ),
];

/// `envoy-config/native/sidecar.yaml` from the Wasm template
/// (`envoy-config/sidecar.yaml`): the bootstrap singleton and the control
/// service's cluster go (the module's watch thread connects by itself), the
/// Wasm HTTP filter becomes the dynamic module, the rest stays as it is.
pub fn native_sidecar_template(wasm_template: &str) -> Result<String> {
    let mut out = wasm_template.to_owned();
    for (what, from, to) in REPLACEMENTS {
        match out.matches(from).count() {
            1 => out = out.replacen(from, to, 1),
            n => bail!(
                "envoy-config/sidecar.yaml: {what} found {n} times (expected once); update testbed::host::REPLACEMENTS"
            ),
        }
    }
    for wasm_only in [
        "WASM_PATH",
        "SYNC_CONFIG",
        "envoy.wasm",
        "wasm.v3",
        ".wasm",
        "vm_id",
    ] {
        if let Some(line) = out.lines().find(|l| l.contains(wasm_only)) {
            return Err(anyhow!(
                "the native config still says {wasm_only:?}: {line:?}; update testbed::host::REPLACEMENTS"
            ));
        }
    }
    Ok(format!("{GENERATED}{out}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_goes_in_front_unless_there_is_a_table() {
        let control = serde_json::json!({"server": "http://127.0.0.1:7", "node_id": "n"});
        let merged = native_module_config("{\"debug_header\": true}", &control);
        let value: serde_json::Value = serde_json::from_str(&merged).unwrap();
        assert_eq!(value["control"]["node_id"], "n");
        assert_eq!(value["debug_header"], true);
        for empty in ["{}", " { } ", ""] {
            let value: serde_json::Value =
                serde_json::from_str(&native_module_config(empty, &control)).unwrap();
            assert_eq!(
                value,
                serde_json::json!({ "control": control }),
                "{empty:?}"
            );
        }
        let table = r#"{"table": {"entries": []}}"#;
        assert_eq!(native_module_config(table, &control), table);
        assert_eq!(native_module_config("not json", &control), "not json");
    }

    #[test]
    fn the_singletons_token_and_backoff_go_to_the_control_section() {
        let control = native_control_section(
            "http://127.0.0.1:7",
            "sidecar",
            r#"{"control_cluster": "sandbox_router_control", "token": "w", "max_backoff_ms": 200}"#,
        )
        .unwrap();
        assert_eq!(
            control,
            serde_json::json!({"server": "http://127.0.0.1:7", "node_id": "sidecar", "token": "w", "max_backoff_ms": 200})
        );
    }

    #[test]
    fn the_native_template_is_the_wasm_one_transformed() {
        let wasm =
            std::fs::read_to_string(crate::workspace_root().join("envoy-config/sidecar.yaml"))
                .unwrap();
        let native = native_sidecar_template(&wasm).unwrap();
        assert!(native.contains("DynamicModuleFilter"));
        assert!(!native.contains("bootstrap_extensions"));
        assert!(!native.contains("sandbox_router_control"));
        // Everything else is the Wasm template's: the routes, clusters, listener.
        for line in wasm
            .lines()
            .filter(|l| l.contains("original_dst") || l.contains("use_remote_address"))
        {
            assert!(native.contains(line), "{line}");
        }
        assert!(native_sidecar_template("no such template").is_err());
    }
}

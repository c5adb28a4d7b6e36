//! The shipped configuration is valid for the real Envoy, and a bad filter
//! configuration is refused by Envoy with a log line naming the field.

mod common;

use common::*;
use testbed::{render, shipped_config, sidecar_config, Envoy, SidecarPorts};

const PORTS: SidecarPorts = SidecarPorts {
    backend_baseline: 8081,
    frontend_baseline: 8083,
    control: 7070,
};

fn validate_sidecar_with(filter_config: &str) -> Result<String, String> {
    let config = sidecar_config("validate", &PORTS, filter_config).unwrap();
    Envoy::validate(&config).unwrap()
}

#[test]
fn shipped_sidecar_and_filter_configs_validate() {
    // The production shape: the table comes from the control service. (The
    // singleton WasmService does not run in validate mode; the push tests run it.)
    let pushed = shipped_config("filter-config.json").unwrap();
    let output =
        validate_sidecar_with(&pushed).unwrap_or_else(|e| panic!("envoy rejected it:\n{e}"));
    assert!(
        output.contains("routing by the table the control service pushes"),
        "{output}"
    );

    // The static-table example.
    let static_table = render(
        &shipped_config("filter-config-static.json").unwrap(),
        &[("BACKEND_SANDBOX", "127.0.0.1:9")],
    )
    .unwrap();
    let output =
        validate_sidecar_with(&static_table).unwrap_or_else(|e| panic!("envoy rejected it:\n{e}"));
    assert!(
        output.contains("static table version 1 with 1 routing keys"),
        "{output}"
    );

    // The ingress Envoy's configuration (edge mode).
    let edge = render(
        &shipped_config("filter-config-edge.json").unwrap(),
        &[("EDGE_CREDENTIAL_SHA256", &"ab".repeat(32))],
    )
    .unwrap();
    let output = validate_sidecar_with(&edge).unwrap_or_else(|e| panic!("envoy rejected it:\n{e}"));
    assert!(
        output.contains(
            "edge mode; routing context honoured from 0 trusted CIDRs or with one of 1 credentials in x-sandbox-router-credential"
        ),
        "{output}"
    );
}

#[test]
fn a_bad_filter_configuration_is_refused_naming_the_field() {
    let cases = [
        (r#"{"keyz": []}"#, "keyz: unknown field `keyz`"),
        (r#"{"keys": ["Bad Name"]}"#, "keys[0]: must start with a-z"),
        (
            r#"{"sources": ["baggage", "smoke-signals"]}"#,
            "sources[1]: unknown variant `smoke-signals`",
        ),
        (
            r#"{"marker_header": "x-envoy-original-dst-host"}"#,
            "marker_header:",
        ),
        (
            r#"{"destination": {"strip_suffixes": ["svc"]}}"#,
            "destination.strip_suffixes[0]:",
        ),
        (
            r#"{"table": {"entries": [{"routing_key": "k", "forks": [{"service": "backend", "endpoints": ["backend:80"]}]}]}}"#,
            "table.entries[0].forks[0].endpoints[0]: must be IP:PORT",
        ),
        (
            r#"{"table": {"entries": [{"routing_key": "has space"}]}}"#,
            "table.entries[0].routing_key:",
        ),
        (
            r#"{"edge": {"trusted_cidrs": ["10.0.0.0/33"]}}"#,
            "edge.trusted_cidrs[0]: must be a CIDR",
        ),
        (
            r#"{"edge": {"credential_sha256": ["s3cret"]}}"#,
            "edge.credential_sha256[0]: must be a SHA-256 digest",
        ),
        ("not json", "configuration: expected ident"),
        (
            r#"{"table": {"entries": [{"routing_key": 5}]}}"#,
            "table.entries[0].routing_key: invalid type",
        ),
    ];
    for (filter_config, expected) in cases {
        let output = validate_sidecar_with(filter_config).expect_err(filter_config);
        assert!(
            output.contains(&format!("rejected plugin configuration: {expected}")),
            "{filter_config}: expected {expected:?} in\n{output}"
        );
    }
}

#[tokio::test]
async fn destination_can_come_from_the_cluster_name() {
    // Under Istio the cluster carries the service (outbound|8080||backend...);
    // here the shipped sidecar's cluster for backend is `backend_baseline`.
    let sidecar = testbed::Sidecar::start(two_sandboxes(), |addrs| {
        Ok(serde_json::json!({
            "destination": { "from": "cluster_name" },
            "debug_header": true,
            "table": { "entries": [{
                "routing_key": KEY_X,
                "forks": [{ "service": "backend_baseline", "endpoints": [addrs[0].to_string()] }]
            }]}
        })
        .to_string())
    })
    .await
    .unwrap();
    let reply = sidecar.get("backend", &[BAGGAGE_KEY_X]).await.unwrap();
    assert_eq!(
        reply.served_by(),
        "backend/feature-x",
        "{:?}",
        reply.decision
    );
    let frontend = sidecar.get("frontend", &[BAGGAGE_KEY_X]).await.unwrap();
    assert_eq!(
        frontend.decision.as_deref(),
        Some("baseline; reason=no_fork_for_service; source=baggage; service=frontend_baseline")
    );
}

/// Every config `make bench` runs is valid for the real Envoy.
#[test]
fn shipped_bench_configs_validate() {
    let upstream = render(
        &shipped_config("bench/upstream.yaml").unwrap(),
        &[("ADMIN_PORT", "0"), ("LISTEN_PORT", "0")],
    )
    .unwrap();
    Envoy::validate(&upstream)
        .unwrap()
        .unwrap_or_else(|e| panic!("upstream: {e}"));

    let template = shipped_config("bench/envoy.yaml").unwrap();
    let native = render(
        &shipped_config("bench/native-route.yaml").unwrap(),
        &[("KEY", "k1")],
    )
    .unwrap();
    let lua = render(
        &shipped_config("bench/lua-filter.yaml").unwrap(),
        &[("LUA_ROUTES", "[\"k1\"] = \"127.0.0.1:9\",")],
    )
    .unwrap();
    let noop_wasm = testbed::filter_wasm().with_file_name("noop_filter.wasm");
    let noop = render(
        &shipped_config("bench/noop-filter.yaml").unwrap(),
        &[
            ("NOOP_WASM_PATH", &noop_wasm.display().to_string()),
            ("NOOP_CONFIG", "read-headers"),
        ],
    )
    .unwrap();
    let marker = shipped_config("bench/marker-route.yaml").unwrap();
    let sandbox_router = render(
        &shipped_config("bench/sandbox-router-filter.yaml").unwrap(),
        &[
            ("WASM_PATH", &testbed::filter_wasm().display().to_string()),
            ("FILTER_CONFIG", r#"{"table": {"entries": [{"routing_key": "k1", "forks": [{"service": "backend", "endpoints": ["127.0.0.1:9"]}]}]}}"#),
        ],
    )
    .unwrap();
    // The native layout, with sandbox-router's module (the no-op module of
    // the same layout is built only by the bench targets).
    let sandbox_router_native = render(
        &shipped_config("bench/native-module-filter.yaml").unwrap(),
        &[
            ("FILTER_NAME", "sandbox_router"),
            ("MODULE_PATH", &testbed::native_module().display().to_string()),
            ("METRICS_NAMESPACE", "sandbox_router"),
            ("MODULE_CONFIG", r#"{"table": {"entries": [{"routing_key": "k1", "forks": [{"service": "backend", "endpoints": ["127.0.0.1:9"]}]}]}}"#),
        ],
    )
    .unwrap();
    let variants = [
        ("plain", String::new(), String::new()),
        ("native", String::new(), format!("{native}{native}")),
        ("lua", lua, marker),
        ("wasm-noop", noop, String::new()),
        (
            "sandbox-router static",
            sandbox_router,
            shipped_config("bench/marker-route.yaml").unwrap(),
        ),
        (
            "sandbox-router native static",
            sandbox_router_native,
            shipped_config("bench/marker-route.yaml").unwrap(),
        ),
    ];
    for (name, filters, routes) in variants {
        let config = render(
            &template,
            &[
                ("ADMIN_PORT", "0"),
                ("LISTEN_PORT", "0"),
                ("UPSTREAM_PORT", "9"),
                ("HTTP_FILTERS", &filters),
                ("EXTRA_ROUTES", &routes),
            ],
        )
        .unwrap();
        Envoy::validate(&config)
            .unwrap()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

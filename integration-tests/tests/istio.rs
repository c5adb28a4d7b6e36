//! The Istio install (`envoy-config/istio/`, with the control service of
//! `envoy-config/kubernetes/`), as far as this machine allows
//! without a cluster:
//! - every Kubernetes built-in resource validates against the Kubernetes API
//!   schemas (`kubernetes-validate`, from PyPI, strict);
//! - the WasmPlugin and the EnvoyFilter validate against Istio's own CRD
//!   schemas (`../shared/schemas/istio-crds.gen.yaml`, or `$ISTIO_CRDS`),
//!   including no field the API server would prune;
//! - the `WasmPlugin` pins the digest of the image `make oci` builds from the
//!   current filter;
//! - what istiod would make of them runs in a real Envoy with the real
//!   control service: the filter configured as istiod configures a WasmPlugin
//!   (no vm_id, root id = pluginName, the pluginConfig as JSON), the three
//!   EnvoyFilter patches applied as they are, on cluster and virtual-host
//!   names in istiod's scheme, and the singleton fetching its module from the
//!   control service. A sandbox created through the API then routes.
//!
//! Wasm-only by nature: Istio's proxies load the filter as a WasmPlugin (the
//! native module is for plain Envoy, docs/native-module.md); these tests run
//! the Wasm filter whatever `SANDBOX_ROUTER_HOST` says.
//!
//! Not checked here: istiod's own handling (CEL rules, EnvoyFilter matching in
//! a live mesh), mTLS, and pulling the image from a registry.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use testbed::echo_proto::SayRequest;
use testbed::{poll_until, render, workspace_root, ControlService, EchoService, Envoy};
use tonic::metadata::MetadataValue;

const IMAGE: &str = "ghcr.io/example/sandbox-router-filter:0.1.0";
const CONTROL_IMAGE: &str = "ghcr.io/example/sandbox-router:0.1.0";

struct Rendered {
    wasm_sha256: String,
    image_digest: String,
}

/// The manifests rendered as `make istio` renders them, for the current filter.
fn rendered() -> (Rendered, Vec<(String, String)>) {
    let wasm = std::fs::read(testbed::filter_wasm()).expect("built filter (make wasm)");
    let dir = tempfile::tempdir().unwrap();
    let image = sandbox_router_oci::write_layout(&wasm, "0.1.0", dir.path()).unwrap();
    let hex = image.digest.strip_prefix("sha256:").unwrap().to_owned();
    let vars = [
        ("FILTER_IMAGE", IMAGE),
        ("FILTER_IMAGE_DIGEST", hex.as_str()),
        ("FILTER_WASM_SHA256", image.wasm_sha256.as_str()),
        ("CONTROL_IMAGE", CONTROL_IMAGE),
    ];
    let mut files = Vec::new();
    for name in [
        "istio/wasmplugin.yaml",
        "istio/envoyfilter.yaml",
        "kubernetes/crds.yaml",
        "kubernetes/control-service.yaml",
        "kubernetes/examples.yaml",
    ] {
        let path = workspace_root().join("envoy-config").join(name);
        let text = render(&std::fs::read_to_string(&path).unwrap(), &vars).unwrap();
        assert!(!text.contains("${"), "{name}: a placeholder is left");
        files.push((name.to_owned(), text));
    }
    (
        Rendered {
            wasm_sha256: image.wasm_sha256,
            image_digest: hex,
        },
        files,
    )
}

fn documents(text: &str) -> Vec<Value> {
    use serde::Deserialize as _;
    serde_norway::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).unwrap())
        .filter(|doc| !doc.is_null())
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
}

fn istio_crds() -> PathBuf {
    std::env::var_os("ISTIO_CRDS").map_or_else(
        || workspace_root().join("../shared/schemas/istio-crds.gen.yaml"),
        PathBuf::from,
    )
}

/// The openAPIV3Schema of Istio's CRD for `kind`, version `version`.
fn istio_schema(kind: &str, version: &str) -> Value {
    let path = istio_crds();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (set ISTIO_CRDS)", path.display()));
    let crds = documents(&text);
    let crd = crds
        .iter()
        .find(|c| c["spec"]["names"]["kind"] == kind)
        .unwrap_or_else(|| panic!("no CRD for {kind}"));
    crd["spec"]["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == version)
        .map(|v| v["schema"]["openAPIV3Schema"].clone())
        .unwrap_or_else(|| panic!("no {kind} {version}"))
}

/// Fields the API server would drop: absent from a structural schema's
/// `properties`, where the schema neither allows additional properties nor
/// preserves unknown fields.
fn pruned(schema: &Value, value: &Value, at: &str, out: &mut Vec<String>) {
    if schema["x-kubernetes-preserve-unknown-fields"] == true {
        return;
    }
    match value {
        Value::Object(fields) => {
            for (name, field) in fields {
                let here = format!("{at}.{name}");
                match (
                    schema["properties"].get(name),
                    schema.get("additionalProperties"),
                ) {
                    (Some(sub), _) => pruned(sub, field, &here, out),
                    (None, Some(sub)) if sub.is_object() => pruned(sub, field, &here, out),
                    (None, _)
                        if at.is_empty()
                            && ["apiVersion", "kind", "metadata"].contains(&name.as_str()) => {}
                    (None, _) => out.push(here),
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                pruned(&schema["items"], item, &format!("{at}[{i}]"), out);
            }
        }
        _ => {}
    }
}

fn check_against_crd(doc: &Value, kind: &str, version: &str) {
    let schema = istio_schema(kind, version);
    let validator = jsonschema::draft4::new(&schema).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(doc)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{kind}: {errors:#?}");
    let mut unknown = Vec::new();
    pruned(&schema, doc, "", &mut unknown);
    assert!(
        unknown.is_empty(),
        "{kind}: fields the API server would prune: {unknown:?}"
    );
}

#[test]
fn istio_resources_validate_against_istios_crd_schemas() {
    let (rendered, files) = rendered();
    let all: Vec<Value> = files.iter().flat_map(|(_, text)| documents(text)).collect();
    let plugin = find(&all, "WasmPlugin");
    check_against_crd(plugin, "WasmPlugin", "v1alpha1");
    check_against_crd(find(&all, "EnvoyFilter"), "EnvoyFilter", "v1alpha3");

    // The plugin pins the image of the filter this tree builds, and its
    // configuration is one the filter accepts.
    assert_eq!(plugin["spec"]["sha256"], rendered.image_digest);
    assert_eq!(plugin["spec"]["failStrategy"], "FAIL_RELOAD");
    let config = serde_json::to_vec(&plugin["spec"]["pluginConfig"]).unwrap();
    sandbox_router_routing::Settings::from_json(&config).unwrap();

    // A broken resource is caught: the check can fail.
    let mut typo = plugin.clone();
    typo["spec"]["failStrategyy"] = json!("FAIL_OPEN");
    let mut unknown = Vec::new();
    pruned(
        &istio_schema("WasmPlugin", "v1alpha1"),
        &typo,
        "",
        &mut unknown,
    );
    assert_eq!(unknown, [".spec.failStrategyy"]);
    let mut bad = plugin.clone();
    bad["spec"]["failStrategy"] = json!("FAIL_SOMETIMES");
    let schema = istio_schema("WasmPlugin", "v1alpha1");
    assert!(!jsonschema::draft4::new(&schema).unwrap().is_valid(&bad));
    let _ = rendered.wasm_sha256;
}

#[test]
fn kubernetes_resources_validate_against_the_kubernetes_api_schemas() {
    let (_, files) = rendered();
    let validate = workspace_root().join(".venv/bin/kubernetes-validate");
    assert!(
        validate.exists(),
        "{} missing (make deps)",
        validate.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let mut builtin = 0;
    for (name, text) in &files {
        let path = dir.path().join(name.replace('/', "-"));
        std::fs::write(&path, text).unwrap();
        let output = std::process::Command::new(&validate)
            .args(["--strict", "-k", "1.33.0"])
            .arg(&path)
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{name}:\n{report}");
        builtin += report.matches(" passed for resource ").count();
        assert!(!report.contains("ERROR"), "{name}:\n{report}");
    }
    // Two CustomResourceDefinitions; Namespace, ServiceAccount, ClusterRole,
    // ClusterRoleBinding, Deployment, Service; the examples' Service and two
    // Deployments (their Sandbox and RouteGroup are checked against the CRDs
    // in control/tests/kubernetes.rs).
    assert_eq!(builtin, 11);
}

/// Envoy's configuration for one sidecar as istiod would generate it from
/// the manifests: `backend.default` on port 8080, baseline at `baseline`.
/// The port is unnamed, so istiod sniffs its protocol and gives the service's
/// cluster the caller's protocol (`setUpstreamProtocol`: use_downstream_protocol_config
/// for sidecars; a port named `grpc`/`http2` gets HTTP/2, one named `http` HTTP/1.1).
fn istio_shaped_envoy(files: &[(String, String)], baseline: u16, control: u16) -> String {
    let all: Vec<Value> = files.iter().flat_map(|(_, text)| documents(text)).collect();
    let plugin = &find(&all, "WasmPlugin")["spec"];
    let patches = find(&all, "EnvoyFilter")["spec"]["configPatches"]
        .as_array()
        .unwrap()
        .clone();
    let patch = |apply_to: &str| -> Value {
        patches
            .iter()
            .find(|p| p["applyTo"] == apply_to)
            .map(|p| p["patch"]["value"].clone())
            .unwrap_or_else(|| panic!("no {apply_to} patch"))
    };
    let failure_policy = match plugin["failStrategy"].as_str().unwrap() {
        "FAIL_CLOSE" => "FAIL_CLOSED",
        other => other,
    };
    // As istiod's convertToWasmPluginWrapper: no vm_id; istio-agent has
    // already fetched the module to a local file.
    let wasm_filter = json!({
        "name": "istio-system.sandbox-router",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": "istio-system.sandbox-router",
                "root_id": plugin["pluginName"],
                "failure_policy": failure_policy,
                "vm_config": {
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": { "local": { "filename": testbed::filter_wasm() } },
                },
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": plugin["pluginConfig"].to_string(),
                },
            },
        },
    });
    let service_cluster = "outbound|8080||backend.default.svc.cluster.local";
    let mut bootstrap = patch("BOOTSTRAP");
    // The control service's address in the mesh is a Service name; here it is loopback.
    let text = bootstrap
        .to_string()
        .replace(
            "sandbox-router.sandbox-router.svc.cluster.local",
            "127.0.0.1",
        )
        .replace(":7070", &format!(":{control}"))
        .replace("\"port_value\":7070", &format!("\"port_value\":{control}"));
    bootstrap = serde_json::from_str(&text).unwrap();
    let mut clusters = bootstrap["static_resources"]["clusters"]
        .as_array()
        .unwrap()
        .clone();
    clusters.push(patch("CLUSTER"));
    clusters.push(json!({
        "name": service_cluster,
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "use_downstream_protocol_config": { "http_protocol_options": {}, "http2_protocol_options": {} },
            },
        },
        "load_assignment": {
            "cluster_name": service_cluster,
            "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": {
                "socket_address": { "address": "127.0.0.1", "port_value": baseline } } } }] }],
        },
    }));
    let config = json!({
        "node": { "id": "sidecar~10.0.0.9~frontend-7d4b9.default~default.svc.cluster.local" },
        "bootstrap_extensions": bootstrap["bootstrap_extensions"],
        "admin": { "address": { "socket_address": { "address": "127.0.0.1", "port_value": 0 } } },
        "static_resources": {
            "clusters": clusters,
            "listeners": [{
                "name": "outbound",
                "address": { "socket_address": { "address": "127.0.0.1", "port_value": 0 } },
                "filter_chains": [{ "filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "outbound_0.0.0.0_8080",
                        "route_config": {
                            "name": "8080",
                            "virtual_hosts": [{
                                "name": "backend.default.svc.cluster.local:8080",
                                "domains": ["backend.default.svc.cluster.local", "backend", "backend.default",
                                            "backend.default.svc.cluster.local:8080", "backend:8080"],
                                // INSERT_FIRST puts the patch's route before istiod's default route.
                                "routes": [
                                    patch("HTTP_ROUTE"),
                                    { "name": "default", "match": { "prefix": "/" },
                                      "route": { "cluster": service_cluster, "timeout": "0s" } },
                                ],
                            }],
                        },
                        "http_filters": [
                            wasm_filter,
                            { "name": "envoy.filters.http.router", "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" } },
                        ],
                    },
                }] }],
            }],
        },
    });
    // JSON is YAML.
    config.to_string()
}

#[tokio::test]
async fn what_istiod_makes_of_the_manifests_routes_in_a_real_envoy() {
    let (_, files) = rendered();
    let control = ControlService::start_with_args(
        &testbed::sibling_binary("sandbox-router").unwrap(),
        None,
        &[
            "--filter-wasm",
            &testbed::filter_wasm().display().to_string(),
        ],
    )
    .await
    .unwrap();
    let baseline = EchoService::start("backend", "baseline").await.unwrap();
    let sandbox = EchoService::start("backend", "feature-x").await.unwrap();
    let envoy = Envoy::start(
        &istio_shaped_envoy(&files, baseline.addr().port(), control.addr().port()),
        1,
    )
    .await
    .unwrap();
    let listener = envoy.listener("outbound").await.unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();

    // In the mesh, forks name services NAME.NAMESPACE (from istiod's cluster names).
    let (status, body) = control
        .api(
            reqwest::Method::POST,
            "/v1/sandboxes",
            Some(json!({ "name": "feature-x",
                         "forks": { "backend.default": [sandbox.addr().to_string()] } })),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");
    let baggage = format!(
        "sandbox-routing-key={}",
        body["routing_key"].as_str().unwrap()
    );
    poll_until("a routed request", Duration::from_secs(20), || async {
        let reply = testbed::get_via(
            &http,
            listener,
            "backend:8080",
            &[("baggage", baggage.as_bytes())],
        )
        .await
        .ok()?;
        (reply.served_by() == "backend/feature-x").then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", envoy.log_tail()));
    let plain = testbed::get_via(&http, listener, "backend:8080", &[])
        .await
        .unwrap();
    assert_eq!(plain.served_by(), "backend/baseline");
    let spoof = sandbox.addr().to_string();
    let spoofed = testbed::get_via(
        &http,
        listener,
        "backend:8080",
        &[
            ("x-envoy-original-dst-host", spoof.as_bytes()),
            ("x-sandbox-router-route", b"1"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(spoofed.served_by(), "backend/baseline");

    // gRPC (h2c) through the same patches: the ORIGINAL_DST cluster speaks
    // the caller's protocol to the sandbox, as istiod's cluster does to the baseline.
    let grpc = testbed::grpc_client(&format!("http://{listener}"), "backend:8080").unwrap();
    for (metadata, expected) in [
        (Some(baggage.as_str()), "backend/feature-x"),
        (None, "backend/baseline"),
    ] {
        let mut call = tonic::Request::new(SayRequest::default());
        if let Some(value) = metadata {
            call.metadata_mut()
                .insert("baggage", MetadataValue::try_from(value).unwrap());
        }
        let answer = tokio::time::timeout(Duration::from_secs(10), grpc.clone().say(call))
            .await
            .unwrap()
            .unwrap_or_else(|s| panic!("{expected}: {s:?}\n{}", envoy.log_tail()))
            .into_inner();
        assert_eq!(answer.chain(), expected);
        assert_eq!(answer.http_version, "HTTP/2.0");
    }
}

//! `envoy-config/compose/`: the `make demo` topology in containers. Docker
//! does not run here, so this checks everything that can be checked without
//! it: the compose file against the Compose Specification's JSON schema, its
//! services against the demo's, its Envoy configs against a fresh render of
//! `envoy-config/sidecar.yaml` and against the real Envoy, and the Envoy image
//! against the version the Makefile installs.
//!
//! The compose setup runs the Wasm filter (its containers mount the .wasm);
//! these tests run it whatever `SANDBOX_ROUTER_HOST` says.
//!
//! `UPDATE_COMPOSE=1 cargo test -p integration-tests --test compose` rewrites
//! the generated Envoy configs after a change to the template.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use testbed::{
    compose_envoy_configs, workspace_root, Envoy, COMPOSE_DEMO_CREDENTIAL, COMPOSE_DIR,
    COMPOSE_WASM_PATH,
};

fn compose_dir() -> PathBuf {
    workspace_root().join(COMPOSE_DIR)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn yaml(text: &str) -> Value {
    serde_norway::from_str(text).unwrap()
}

fn compose() -> Value {
    yaml(&read(&compose_dir().join("compose.yaml")))
}

fn services(compose: &Value) -> &serde_json::Map<String, Value> {
    compose["services"].as_object().expect("services")
}

/// A service's `command` as strings.
fn command(service: &Value) -> Vec<&str> {
    service["command"]
        .as_array()
        .expect("command as a list")
        .iter()
        .map(|v| v.as_str().expect("command item"))
        .collect()
}

/// The value after `--flag` in a command.
fn flag<'a>(command: &[&'a str], flag: &str) -> Option<&'a str> {
    command
        .iter()
        .position(|a| *a == flag)
        .and_then(|i| command.get(i + 1).copied())
}

/// `--listen 0.0.0.0:PORT` -> PORT.
fn listen_port(command: &[&str]) -> u16 {
    let listen = flag(command, "--listen").expect("--listen");
    listen.rsplit_once(':').unwrap().1.parse().unwrap()
}

/// Bind mounts of a service as (container path, host path resolved from the
/// compose file's directory).
fn binds(service: &Value) -> BTreeMap<String, PathBuf> {
    service["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["type"] == "bind")
        .map(|v| {
            (
                v["target"].as_str().unwrap().to_owned(),
                normalize(&compose_dir().join(v["source"].as_str().unwrap())),
            )
        })
        .collect()
}

/// `a/b/../c` -> `a/c` (without touching the file system: the path may not exist).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

fn envoy_services(compose: &Value) -> Vec<(&str, &Value)> {
    services(compose)
        .iter()
        .filter(|(_, s)| {
            s["image"]
                .as_str()
                .is_some_and(|i| i.starts_with("envoyproxy/envoy:"))
        })
        .map(|(name, s)| (name.as_str(), s))
        .collect()
}

/// The services built as `demo-service`, with their command.
fn demo_services(compose: &Value) -> BTreeMap<&str, Vec<&str>> {
    services(compose)
        .iter()
        .filter(|(_, s)| s["build"]["target"] == "demo-service")
        .map(|(name, s)| (name.as_str(), command(s)))
        .collect()
}

/// The Envoy config file an Envoy service runs (the bind mount on `-c`).
fn envoy_config_of(service: &Value) -> PathBuf {
    let cmd = command(service);
    let config = flag(&cmd, "-c").expect("envoy -c");
    binds(service)
        .remove(config)
        .unwrap_or_else(|| panic!("no bind mount for {config}"))
}

#[test]
fn compose_file_follows_the_compose_specification() {
    // CI has shared/ beside the clone; the schema is not copied into the repo.
    let schema_path = workspace_root().join("../shared/schemas/compose-spec.json");
    let schema: Value = serde_json::from_str(&read(&schema_path)).unwrap();
    let validator = jsonschema::draft7::new(&schema).unwrap();
    let compose = compose();
    let errors: Vec<String> = validator
        .iter_errors(&compose)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "compose.yaml does not follow the Compose Specification:\n{}",
        errors.join("\n")
    );

    // The validator does reject what the specification forbids.
    let mut typo = compose.clone();
    typo["services"]["edge"]["imag"] = "envoyproxy/envoy".into();
    assert!(!validator.is_valid(&typo));
    let mut bad_port = compose.clone();
    bad_port["services"]["edge"]["ports"] = serde_json::json!({"10000": 10000});
    assert!(!validator.is_valid(&bad_port));
}

#[test]
fn generated_envoy_configs_equal_a_fresh_render_of_the_template() {
    let update = std::env::var_os("UPDATE_COMPOSE").is_some();
    for (file, fresh) in compose_envoy_configs().unwrap() {
        let path = compose_dir().join(file);
        if update {
            std::fs::write(&path, &fresh).unwrap();
            continue;
        }
        let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            checked_in == fresh,
            "{} differs from envoy-config/sidecar.yaml rendered for compose; run\n  \
             UPDATE_COMPOSE=1 cargo test -p integration-tests --test compose\nand commit the result",
            path.display()
        );
    }
}

#[test]
fn every_envoy_config_compose_runs_validates_with_the_real_envoy() {
    let compose = compose();
    let wasm = testbed::filter_wasm();
    assert!(
        wasm.exists(),
        "no filter at {} (run `make wasm`)",
        wasm.display()
    );
    let envoys = envoy_services(&compose);
    assert_eq!(envoys.len(), 2, "{envoys:?}");
    for (name, service) in envoys {
        let path = envoy_config_of(service);
        // The .wasm's path inside the container does not exist here.
        let config = read(&path).replace(COMPOSE_WASM_PATH, &wasm.display().to_string());
        let output = Envoy::validate(&config)
            .unwrap()
            .unwrap_or_else(|e| panic!("{name}: Envoy rejected {}:\n{e}", path.display()));
        let expected = if name == "edge" {
            "edge mode; routing context honoured from 0 trusted CIDRs or with one of 1 credentials"
        } else {
            "routing by the table the control service pushes"
        };
        assert!(output.contains(expected), "{name}: {output}");
    }
}

#[test]
fn envoy_image_is_the_version_the_makefile_installs() {
    let makefile = read(&workspace_root().join("Makefile"));
    let version = makefile
        .lines()
        .find_map(|l| l.strip_prefix("ENVOY_VERSION"))
        .and_then(|rest| rest.split_once('='))
        .map(|(_, v)| v.trim())
        .expect("ENVOY_VERSION in the Makefile");
    let compose = compose();
    for (name, service) in envoy_services(&compose) {
        assert_eq!(
            service["image"],
            format!("envoyproxy/envoy:v{version}"),
            "{name}"
        );
    }
}

/// The services `make demo` starts, read from `demo/src/main.rs` as
/// (service, version), and its Envoys' node ids.
fn demo_topology() -> (BTreeSet<(String, String)>, BTreeSet<String>) {
    let source = read(&workspace_root().join("demo/src/main.rs"));
    let string_args = |call: &str| -> Vec<Vec<String>> {
        source
            .match_indices(call)
            .map(|(at, _)| {
                let rest = &source[at + call.len()..];
                let args = &rest[..rest.find(')').unwrap()];
                args.split('"')
                    .skip(1)
                    .step_by(2)
                    .map(str::to_owned)
                    .collect()
            })
            .collect()
    };
    let mut services = BTreeSet::new();
    for call in ["EchoService::start(", "EchoService::start_calling("] {
        for args in string_args(call) {
            services.insert((args[0].clone(), args[1].clone()));
        }
    }
    let envoys = string_args("sidecar_config(")
        .into_iter()
        .map(|args| args[0].clone())
        .collect();
    (services, envoys)
}

#[test]
fn compose_topology_matches_make_demo() {
    let compose = compose();
    let (demo_services_expected, demo_envoys) = demo_topology();
    assert_eq!(
        demo_services_expected,
        [
            ("backend", "backend-v2"),
            ("backend", "baseline"),
            ("frontend", "baseline"),
            ("frontend", "frontend-v2"),
        ]
        .iter()
        .map(|(s, v)| (s.to_string(), v.to_string()))
        .collect(),
        "demo/src/main.rs changed its services: change compose.yaml and this test with it"
    );
    let names: BTreeSet<&str> = services(&compose).keys().map(String::as_str).collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "control",
            "edge",
            "frontend",
            "frontend-v2",
            "frontend-sidecar",
            "backend",
            "backend-v2",
        ])
    );

    // The same demo services: the baseline named after its service, a
    // sandboxed version after the sandbox (its version).
    let demos = demo_services(&compose);
    let mut ran = BTreeSet::new();
    for (name, cmd) in &demos {
        let service = flag(cmd, "--service").unwrap();
        let version = flag(cmd, "--version").unwrap();
        let expected_name = if version == "baseline" {
            service
        } else {
            version
        };
        assert_eq!(*name, expected_name);
        ran.insert((service.to_owned(), version.to_owned()));
    }
    assert_eq!(ran, demo_services_expected);

    // The demo's Envoys: the edge in front of frontend, and frontend's sidecar.
    let envoys: BTreeMap<&str, Value> = envoy_services(&compose)
        .into_iter()
        .map(|(name, s)| (name, yaml(&read(&envoy_config_of(s)))))
        .collect();
    let node_ids: BTreeSet<String> = envoys
        .values()
        .map(|c| c["node"]["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(node_ids, demo_envoys);
    assert_eq!(envoys["edge"]["node"]["id"], "edge");
    assert_eq!(envoys["frontend-sidecar"]["node"]["id"], "frontend-sidecar");

    // Every upstream an Envoy names is a compose service on its listening port.
    let control_cmd = command(&services(&compose)["control"]);
    assert_eq!(control_cmd[0], "serve");
    let control_port = listen_port(&control_cmd);
    assert!(flag(&control_cmd, "--db").unwrap().starts_with("/data/"));
    assert_eq!(
        services(&compose)["control"]["volumes"][0],
        "control-data:/data"
    );
    for (name, config) in &envoys {
        let listener = &config["static_resources"]["listeners"][0]["address"]["socket_address"];
        assert_eq!(listener["address"], "0.0.0.0", "{name}");
        for cluster in config["static_resources"]["clusters"].as_array().unwrap() {
            let cluster_name = cluster["name"].as_str().unwrap();
            if cluster["type"] == "ORIGINAL_DST" {
                continue;
            }
            assert_eq!(cluster["type"], "STRICT_DNS", "{name}: {cluster_name}");
            let socket = &cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
                ["address"]["socket_address"];
            let host = socket["address"].as_str().unwrap();
            let port = socket["port_value"].as_u64().unwrap();
            let expected_port = match host {
                "control" => control_port,
                _ => listen_port(
                    demos
                        .get(host)
                        .unwrap_or_else(|| panic!("{name}: {cluster_name} -> {host}")),
                ),
            };
            assert_eq!(port, u64::from(expected_port), "{name}: {cluster_name}");
            let expected_host = cluster_name.strip_suffix("_baseline").unwrap_or("control");
            assert_eq!(host, expected_host, "{name}: {cluster_name}");
        }
    }
    let listen_port_of = |envoy: &str| {
        envoys[envoy]["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"]
            .as_u64()
            .unwrap()
    };

    // Both frontends call backend through frontend's sidecar, as in the demo.
    for name in ["frontend", "frontend-v2"] {
        let cmd = &demos[name];
        assert_eq!(
            flag(cmd, "--next-hop"),
            Some(
                format!(
                    "http://frontend-sidecar:{}",
                    listen_port_of("frontend-sidecar")
                )
                .as_str()
            ),
            "{name}"
        );
        assert_eq!(flag(cmd, "--next-host"), Some("backend"), "{name}");
    }
    for name in ["backend", "backend-v2"] {
        assert_eq!(flag(&demos[name], "--next-hop"), None, "{name}");
    }

    // The edge: edge mode with the demo credential, published on loopback.
    let edge_filter = envoys["edge"]["static_resources"]["listeners"][0]["filter_chains"][0]
        ["filters"][0]["typed_config"]["http_filters"][0]["typed_config"]["config"]
        ["configuration"]["value"]
        .as_str()
        .unwrap();
    let edge_filter: Value = serde_json::from_str(edge_filter).unwrap();
    assert_eq!(
        edge_filter["edge"]["credential_sha256"][0],
        sandbox_router_routing::edge::credential_sha256(COMPOSE_DEMO_CREDENTIAL.as_bytes())
    );
    let edge_port = listen_port_of("edge");
    assert_eq!(
        services(&compose)["edge"]["ports"][0],
        format!("127.0.0.1:{edge_port}:{edge_port}")
    );

    // Both Envoys run the filter `make wasm` builds, where the configs expect it.
    let built = workspace_root().join("target/wasm32-wasip1/wasm/sandbox_router_filter.wasm");
    for (name, service) in envoy_services(&compose) {
        assert_eq!(
            binds(service).get(COMPOSE_WASM_PATH),
            Some(&built),
            "{name}"
        );
        let mut deps: Vec<&str> = service["depends_on"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_str().unwrap())
            .collect();
        deps.sort_unstable();
        assert!(deps.contains(&"control"), "{name}: {deps:?}");
    }

    // Sandboxed versions have fixed addresses on the network (the routing
    // table holds IP:PORT), inside its subnet and outside the range Docker
    // hands out; the header comment's `sandbox create` uses them.
    let ipam = &compose["networks"]["demo"]["ipam"]["config"][0];
    assert_eq!(ipam["subnet"], "10.201.57.0/24");
    assert_eq!(ipam["ip_range"], "10.201.57.128/25");
    let text = read(&compose_dir().join("compose.yaml"));
    for (name, service) in ["frontend", "backend"].map(|s| (format!("{s}-v2"), s)) {
        let ip = services(&compose)[&name]["networks"]["demo"]["ipv4_address"]
            .as_str()
            .unwrap_or_else(|| panic!("{name} has no fixed address"));
        let last: u8 = ip.strip_prefix("10.201.57.").unwrap().parse().unwrap();
        assert!((2..128).contains(&last), "{name}: {ip}");
        let fork = format!(
            "--fork {service}={ip}:{}",
            listen_port(&demos[name.as_str()])
        );
        assert!(text.contains(&fork), "the header comment should say {fork}");
    }

    // Images built from this repository: the Dockerfile has the targets.
    let dockerfile = read(&compose_dir().join("Dockerfile"));
    for (name, service) in services(&compose) {
        let build = &service["build"];
        if build.is_null() {
            continue;
        }
        assert_eq!(
            normalize(&compose_dir().join(build["context"].as_str().unwrap())),
            normalize(&workspace_root()),
            "{name}"
        );
        assert_eq!(
            build["dockerfile"],
            format!("{COMPOSE_DIR}/Dockerfile"),
            "{name}"
        );
        let target = build["target"].as_str().unwrap();
        assert!(
            dockerfile
                .lines()
                .any(|l| l.starts_with("FROM ") && l.ends_with(&format!(" AS {target}"))),
            "{name}: no stage {target} in the Dockerfile"
        );
    }
}

/// The `sandbox-router` binary `make build` builds.
fn control_binary() -> PathBuf {
    testbed::sibling_binary("sandbox-router").unwrap()
}

/// A compose Envoy config run on this host: each compose service name it
/// calls becomes `localhost` (still resolved by DNS, as in compose) on the
/// port that service has here; the listener and admin take free loopback
/// ports, and the .wasm is the built one.
fn on_this_host(config: &str, upstreams: &[(&str, u16, u16)]) -> String {
    let mut config = config.replace(
        COMPOSE_WASM_PATH,
        &testbed::filter_wasm().display().to_string(),
    );
    let mut swaps: Vec<(String, String)> = upstreams
        .iter()
        .map(|(name, compose_port, port)| {
            (
                format!("address: {name}, port_value: {compose_port} "),
                format!("address: localhost, port_value: {port} "),
            )
        })
        .collect();
    for compose_port in ["10000", "15001"] {
        swaps.push((
            format!("address: 0.0.0.0, port_value: {compose_port} "),
            "address: 127.0.0.1, port_value: 0 ".to_owned(),
        ));
    }
    swaps.push((
        "address: 127.0.0.1, port_value: 9901 ".to_owned(),
        "address: 127.0.0.1, port_value: 0 ".to_owned(),
    ));
    for (from, to) in swaps {
        config = config.replace(&from, &to);
    }
    assert!(!config.contains("port_value: 8080 "), "{config}");
    assert!(!config.contains("port_value: 7070 "), "{config}");
    config
}

/// The compose Envoy configs route for real: the topology of compose.yaml
/// with its services on this host's loopback (Docker does not run here).
#[tokio::test]
async fn compose_envoy_configs_route_the_demo_requests() {
    use testbed::{get_via, poll_until, wait_for_filter, ControlService, EchoService, NextHop};

    let control = ControlService::start(&control_binary(), None)
        .await
        .unwrap();
    let cport = control.addr().port();
    let backend = EchoService::start("backend", "baseline").await.unwrap();
    let backend_v2 = EchoService::start("backend", "backend-v2").await.unwrap();
    let bport = backend.addr().port();

    let sidecar_config = read(&compose_dir().join("sidecar.yaml"));
    let sidecar = Envoy::start(
        &on_this_host(
            &sidecar_config,
            &[
                ("backend", 8080, bport),
                ("frontend", 8080, 1),
                ("control", 7070, cport),
            ],
        ),
        1,
    )
    .await
    .unwrap();
    let sidecar_listener = sidecar.listener("outbound").await.unwrap();
    let next = Some(NextHop {
        via: format!("http://{sidecar_listener}"),
        host: "backend".into(),
    });
    let frontend = EchoService::start_calling("frontend", "baseline", next)
        .await
        .unwrap();
    let edge_config = read(&compose_dir().join("edge.yaml"));
    let edge = Envoy::start(
        &on_this_host(
            &edge_config,
            &[
                ("backend", 8080, bport),
                ("frontend", 8080, frontend.addr().port()),
                ("control", 7070, cport),
            ],
        ),
        1,
    )
    .await
    .unwrap();
    let edge_listener = edge.listener("outbound").await.unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    wait_for_filter(&sidecar, &http, sidecar_listener, "backend")
        .await
        .unwrap();
    wait_for_filter(&edge, &http, edge_listener, "frontend")
        .await
        .unwrap();

    // As the compose header says: a sandbox for backend-v2 with the CLI, then
    // a request with its key and the demo credential.
    let output = control
        .cli(&[
            "--output",
            "json",
            "sandbox",
            "create",
            "backend-v2",
            "--fork",
            &format!("backend={}", backend_v2.addr()),
        ])
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let created: Value = serde_json::from_slice(&output.stdout).unwrap();
    let key = created["routing_key"].as_str().unwrap().to_owned();
    let baggage = format!("sandbox-routing-key={key}");
    let as_tester = [
        ("baggage", baggage.as_bytes()),
        (
            "x-sandbox-router-credential",
            COMPOSE_DEMO_CREDENTIAL.as_bytes(),
        ),
    ];
    poll_until("the sandbox to route", Duration::from_secs(10), || async {
        let reply = get_via(&http, edge_listener, "frontend", &as_tester)
            .await
            .ok()?;
        (reply.served_by() == "frontend/baseline -> backend/backend-v2").then_some(())
    })
    .await
    .unwrap();
    // Without the credential the edge drops the routing context.
    let public = get_via(&http, edge_listener, "frontend", &as_tester[..1])
        .await
        .unwrap();
    assert_eq!(public.served_by(), "frontend/baseline -> backend/baseline");
    let plain = get_via(&http, edge_listener, "frontend", &[])
        .await
        .unwrap();
    assert_eq!(plain.served_by(), "frontend/baseline -> backend/baseline");

    // The same over gRPC: the demo services answer `Echo/Say` too, and the
    // frontend calls the backend over gRPC, passing the metadata on.
    let grpc = testbed::grpc_client(&format!("http://{edge_listener}"), "frontend").unwrap();
    for (metadata, expected) in [
        (&as_tester[..], "frontend/baseline -> backend/backend-v2"),
        (&as_tester[..1], "frontend/baseline -> backend/baseline"),
        (&[][..], "frontend/baseline -> backend/baseline"),
    ] {
        let mut call = tonic::Request::new(testbed::echo_proto::SayRequest::default());
        for (name, value) in metadata {
            call.metadata_mut().insert(
                tonic::metadata::MetadataKey::from_bytes(name.as_bytes()).unwrap(),
                tonic::metadata::MetadataValue::try_from(*value).unwrap(),
            );
        }
        let answer = tokio::time::timeout(Duration::from_secs(10), grpc.clone().say(call))
            .await
            .unwrap()
            .unwrap_or_else(|s| panic!("{expected}: {s:?}"))
            .into_inner();
        assert_eq!(answer.chain(), expected);
    }
}

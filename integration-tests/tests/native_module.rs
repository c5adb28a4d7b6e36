//! What is new with the native host (the dynamic module), beyond the suites
//! both hosts run (`SANDBOX_ROUTER_HOST=native`, see testbed::Host): its
//! generated Envoy config, loading and the ABI version, a panic in a hook,
//! and one watch per Envoy process. These run whatever the host variable says.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::*;
use reqwest::Method;
use serde_json::{json, Value};
use testbed::{
    get_via, native_module, native_sidecar_template, poll_until, shipped_config, sibling_binary,
    sidecar_config_for, test_hooks_module, workspace_root, ControlService, EchoService, Envoy,
    Host, Sidecar, SidecarOptions, SidecarPorts, DEFAULT_SYNC_CONFIG, NATIVE_SIDECAR,
};

#[test]
fn the_native_config_is_the_wasm_template_transformed() {
    let fresh = native_sidecar_template(&shipped_config("sidecar.yaml").unwrap()).unwrap();
    let path = workspace_root().join("envoy-config").join(NATIVE_SIDECAR);
    if std::env::var_os("UPDATE_NATIVE").is_some() {
        std::fs::write(&path, &fresh).unwrap();
        return;
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == fresh,
        "{} differs from envoy-config/sidecar.yaml transformed; run `make native-config` and commit the result",
        path.display()
    );
}

const STATIC_TABLE: &str = r#"{"table": {"version": 1, "entries": []}}"#;

fn ports(control: u16) -> SidecarPorts {
    SidecarPorts {
        backend_baseline: 8081,
        frontend_baseline: 8083,
        control,
    }
}

/// The native sidecar config with `filter_config`, the control service at `control`.
fn native_config(filter_config: &str, control: u16) -> String {
    sidecar_config_for(
        Host::Native,
        "native-test",
        &ports(control),
        filter_config,
        DEFAULT_SYNC_CONFIG,
    )
    .unwrap()
}

/// The same config running the test build of the module (`make module-test`).
fn with_test_hooks(config: &str) -> String {
    let test_build = test_hooks_module();
    assert!(
        test_build.exists(),
        "no {} (run `make module-test`)",
        test_build.display()
    );
    config.replace(
        &native_module().display().to_string(),
        &test_build.display().to_string(),
    )
}

#[test]
fn the_module_loads_with_envoys_abi_version() {
    let output = Envoy::validate(&native_config(STATIC_TABLE, 1))
        .unwrap()
        .unwrap();
    assert!(
        output.contains("Dynamic module ABI version v0.2.0 matched."),
        "{output}"
    );
    assert!(
        output.contains("sandbox-router: configured; static table version 1 with 0 routing keys"),
        "{output}"
    );
}

/// The Envoy ELF behind `.venv/bin/envoy` (a Python console script).
fn envoy_elf() -> PathBuf {
    let launcher = testbed::envoy_binary();
    let is_elf = |p: &PathBuf| {
        std::fs::read(p)
            .map(|b| b.starts_with(b"\x7fELF"))
            .unwrap_or(false)
    };
    if is_elf(&launcher) {
        return launcher;
    }
    let venv = launcher
        .parent()
        .and_then(|bin| bin.parent())
        .unwrap()
        .join("lib");
    std::fs::read_dir(&venv)
        .unwrap()
        .filter_map(|entry| Some(entry.ok()?.path().join("site-packages/envoy/_bin/envoy")))
        .find(is_elf)
        .unwrap_or_else(|| panic!("no Envoy ELF under {}", venv.display()))
}

fn dynamic_symbols(file: &PathBuf, which: &str) -> Vec<String> {
    let output = Command::new("nm")
        .args(["-D", which])
        .arg(file)
        .output()
        .expect("nm (binutils)");
    assert!(output.status.success(), "nm {}", file.display());
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .filter(|s| s.starts_with("envoy_dynamic_module_"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_callback_the_module_calls_is_in_this_envoy_and_every_required_hook_in_the_module() {
    // A callback missing from Envoy (a module built for another Envoy) makes
    // Envoy refuse the module at load ("undefined symbol"); a required hook
    // missing from the module, the configuration ("Failed to resolve symbol").
    let module = native_module();
    let envoy = dynamic_symbols(&envoy_elf(), "--defined-only");
    let needed = dynamic_symbols(&module, "--undefined-only");
    assert!(needed.len() >= 10, "{needed:?}");
    for callback in &needed {
        assert!(envoy.contains(callback), "Envoy 1.40.0 has no {callback}");
    }
    // Envoy opens modules with RTLD_LAZY: only a module bound at load
    // (`-z now`) is refused there; a lazily bound one would abort Envoy at
    // the first call of a missing callback (docs/native-module.md).
    let dynamic = Command::new("readelf")
        .arg("-d")
        .arg(&module)
        .output()
        .expect("readelf (binutils)");
    let dynamic = String::from_utf8_lossy(&dynamic.stdout);
    assert!(
        dynamic
            .lines()
            .any(|l| l.contains("(FLAGS)") && l.contains("BIND_NOW")),
        "{} is not linked with -z now:\n{dynamic}",
        module.display()
    );
    let exported = dynamic_symbols(&module, "--defined-only");
    let required = [
        "on_program_init",
        "on_http_filter_config_new",
        "on_http_filter_config_destroy",
        "on_http_filter_new",
        "on_http_filter_destroy",
        "on_http_filter_request_headers",
        "on_http_filter_request_body",
        "on_http_filter_request_trailers",
        "on_http_filter_response_headers",
        "on_http_filter_response_body",
        "on_http_filter_response_trailers",
        "on_http_filter_stream_complete",
        "on_http_filter_http_callout_done",
        "on_http_filter_http_stream_headers",
        "on_http_filter_http_stream_data",
        "on_http_filter_http_stream_trailers",
        "on_http_filter_http_stream_complete",
        "on_http_filter_http_stream_reset",
        "on_http_filter_scheduled",
        "on_http_filter_downstream_above_write_buffer_high_watermark",
        "on_http_filter_downstream_below_write_buffer_low_watermark",
        // Optional for Envoy; the module publishes the watch's stats with it.
        "on_http_filter_config_scheduled",
    ];
    for hook in required {
        let symbol = format!("envoy_dynamic_module_{hook}");
        assert!(
            exported.contains(&symbol),
            "the module does not export {symbol}"
        );
    }
}

#[test]
fn envoy_warns_about_an_abi_version_it_does_not_know_and_refuses_none() {
    // What a user sees when the module's ABI version is not their Envoy's:
    // Envoy 1.40 logs a warning and loads the module anyway; only a module
    // that declares no version at all is refused.
    let config = with_test_hooks(&native_config(STATIC_TABLE, 1));
    for version in ["v0.1.0", "v0.3.0"] {
        let output =
            Envoy::validate_with_env(&config, &[("SANDBOX_ROUTER_TEST_ABI_VERSION", version)])
                .unwrap()
                .unwrap_or_else(|e| panic!("{version}: {e}"));
        assert!(
            output.contains(&format!(
                "Dynamic module ABI version {version} is deprecated. Please recompile the module against the SDK with the exact Envoy version used by the main program."
            )),
            "{output}"
        );
    }
    let refused = Envoy::validate_with_env(&config, &[("SANDBOX_ROUTER_TEST_ABI_VERSION", "null")])
        .unwrap()
        .expect_err("a module without an ABI version");
    assert!(
        refused.contains("envoy_dynamic_module_on_program_init returned null"),
        "{refused}"
    );
}

#[test]
fn a_bad_control_section_is_refused_naming_the_field() {
    for (filter_config, expected) in [
        (
            r#"{"control": {"server": "127.0.0.1:7070", "node_id": "n"}}"#,
            "control.server: must be http://HOST:PORT",
        ),
        (
            r#"{"control": {"server": "http://127.0.0.1:7070"}}"#,
            "control: missing field `node_id`",
        ),
        (
            r#"{"control": {"server": "http://127.0.0.1:7070", "node_id": "n", "token": ""}}"#,
            "control.token:",
        ),
        (
            r#"{"table": {"entries": []}, "control": {"server": "http://127.0.0.1:7070", "node_id": "n"}}"#,
            "control: not used with a static `table`",
        ),
    ] {
        // The control section as written (the test bed adds none: it has one).
        let config = native_config(filter_config, 1);
        let output = Envoy::validate(&config).unwrap().expect_err(filter_config);
        assert!(
            output.contains(&format!(
                "sandbox-router: rejected plugin configuration: {expected}"
            )),
            "{filter_config}: expected {expected:?} in\n{output}"
        );
    }
}

#[test]
fn validate_mode_starts_no_watch() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let output = Envoy::validate(&native_config("{}", port))
        .unwrap()
        .unwrap();
    assert!(
        output.contains("routing by the table the control service pushes"),
        "{output}"
    );
    listener.set_nonblocking(true).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let accepted = listener.accept();
    assert!(
        matches!(&accepted, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "validate mode connected to the control service: {accepted:?}"
    );
}

#[tokio::test]
async fn a_panic_in_a_hook_leaves_the_request_on_the_baseline_and_envoy_serving() {
    let options = SidecarOptions {
        host: Host::Native,
        module: Some(test_hooks_module()),
        // `explain` plans no panic.
        compare_with_explain: false,
        ..two_sandboxes()
    };
    let sidecar = Sidecar::start(options, |addrs| Ok(config(addrs, json!({}))))
        .await
        .unwrap();
    let sandbox = sidecar.sandboxes[0].addr().to_string();
    let before = stats(&sidecar).await;
    for _ in 0..20 {
        let reply = sidecar
            .get(
                "backend",
                &[
                    BAGGAGE_KEY_X,
                    ("x-envoy-original-dst-host", sandbox.as_bytes()),
                    ("x-sandbox-router-route", b"1"),
                    ("x-sandbox-router-test-panic", b"1"),
                ],
            )
            .await
            .unwrap();
        assert_eq!(reply.status, 200);
        assert_eq!(reply.served_by(), "backend/baseline");
        assert_eq!(
            reply.decision.as_deref(),
            Some("baseline; reason=malformed")
        );
        let received = &reply.echo.as_ref().unwrap().headers;
        assert!(
            !received.contains_key("x-envoy-original-dst-host"),
            "{received:?}"
        );
    }
    let after = stats(&sidecar).await;
    assert_eq!(
        moved(&after, &before),
        counts(&[("baseline.malformed", 20)])
    );
    // The same Envoy serves on, and routes.
    let reply = sidecar.get("backend", &[BAGGAGE_KEY_X]).await.unwrap();
    assert_eq!(reply.served_by(), "backend/feature-x");
    assert!(std::path::Path::new(&format!("/proc/{}", sidecar.envoy.pid())).exists());
    // Logged: what the hook did, and the panic's message.
    logged(&sidecar.envoy, "a panic in the request-headers hook").await;
    logged(
        &sidecar.envoy,
        "x-sandbox-router-test-panic (a test build of the module)",
    )
    .await;
}

/// Waits until Envoy's log has `text` (Envoy flushes the file every 100 ms here).
async fn logged(envoy: &Envoy, text: &str) {
    poll_until(
        &format!("{text:?} in the log"),
        Duration::from_secs(5),
        || async {
            let log = std::fs::read_to_string(envoy.log_path()).unwrap_or_default();
            log.contains(text).then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", envoy.log_tail()));
}

/// The native config (node `two-listeners`, the control service at
/// `control`) with a second listener, `second`, whose module configuration is
/// the first's changed by `edit`.
fn two_listeners(
    control: u16,
    backend: u16,
    first_filter: &str,
    edit: impl FnOnce(&mut Value),
) -> String {
    let ports = SidecarPorts {
        backend_baseline: backend,
        frontend_baseline: 1,
        control,
    };
    let config = sidecar_config_for(
        Host::Native,
        "two-listeners",
        &ports,
        first_filter,
        DEFAULT_SYNC_CONFIG,
    )
    .unwrap();
    let mut config: Value = serde_norway::from_str(&config).unwrap();
    let listeners = config["static_resources"]["listeners"]
        .as_array_mut()
        .unwrap();
    let mut second = listeners[0].clone();
    second["name"] = json!("second");
    let value = &mut second["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][0]
        ["typed_config"]["filter_config"]["value"];
    let mut module_config: Value = serde_json::from_str(value.as_str().unwrap()).unwrap();
    edit(&mut module_config);
    *value = json!(module_config.to_string());
    listeners.push(second);
    // YAML is a superset of JSON.
    config.to_string()
}

#[tokio::test]
async fn one_watch_per_envoy_process_serves_every_configuration() {
    let control = ControlService::start(&sibling_binary("sandbox-router").unwrap(), None)
        .await
        .unwrap();
    let backend = EchoService::start("backend", "baseline").await.unwrap();
    let sandbox = EchoService::start("backend", "feature-x").await.unwrap();
    // Another listener (e.g. an edge beside a sidecar), another filter
    // configuration, the same control section.
    let config = two_listeners(
        control.addr().port(),
        backend.addr().port(),
        r#"{"debug_header": true}"#,
        |second| {
            second["debug_header"] = json!(false);
            second["keys"] = json!(["sd-routing-key", "sandbox-routing-key"]);
        },
    );
    let envoy = Envoy::start(&config, 2).await.unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    poll_until("the watch connected", Duration::from_secs(10), || async {
        let stats = envoy.stats().await.ok()?;
        (stats.get("sandbox_router.sync.updates_applied") == 1).then_some(())
    })
    .await
    .unwrap();

    let (status, body) = control
        .api(
            Method::POST,
            "/v1/sandboxes",
            Some(json!({ "name": "feature-x", "forks": { "backend": [sandbox.addr().to_string()] } })),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");
    let baggage = format!(
        "sandbox-routing-key={}",
        body["routing_key"].as_str().unwrap()
    );
    for listener in ["outbound", "second"] {
        let addr = envoy.listener(listener).await.unwrap();
        poll_until(
            &format!("{listener} routes by the pushed table"),
            Duration::from_secs(10),
            || async {
                let reply = get_via(&http, addr, "backend", &[("baggage", baggage.as_bytes())])
                    .await
                    .ok()?;
                (reply.served_by() == "backend/feature-x").then_some(())
            },
        )
        .await
        .unwrap();
    }
    // One stream: the control service sees one proxy; Envoy counts one connect.
    let (_, proxies) = control.api(Method::GET, "/v1/proxies", None).await.unwrap();
    let proxies = proxies["proxies"].as_array().unwrap();
    assert_eq!(proxies.len(), 1, "{proxies:?}");
    assert_eq!(proxies[0]["node_id"], "two-listeners");
    let stats = poll_until(
        "the watch's stats published",
        Duration::from_secs(10),
        || async {
            let stats = envoy.stats().await.ok()?;
            (stats.get("sandbox_router.sync.table_version") == 1).then_some(stats)
        },
    )
    .await
    .unwrap();
    assert_eq!(stats.get("sandbox_router.sync.connects"), 1);
    assert_eq!(
        stats.get("sandbox_router.sync.updates_applied"),
        2,
        "the snapshot, then the sandbox"
    );
    assert_eq!(stats.get("sandbox_router.sync.routing_keys"), 1);
    assert_eq!(stats.get("sandbox_router.sync.disconnects"), 0);
    logged(&envoy, "sharing this Envoy's watch").await;
}

#[tokio::test]
async fn a_configuration_with_another_control_section_is_refused() {
    let config = two_listeners(1, 1, "{}", |second| {
        second["control"]["node_id"] = json!("another-node");
    });
    let refused = Envoy::start(&config, 1).await.err().expect("refused");
    assert!(
        refused.to_string().contains(
            "control: this Envoy already watches http://127.0.0.1:1 as node two-listeners; one watch per Envoy process"
        ),
        "{refused:#}"
    );
}

/// Writes `listener` as the LDS file in `dir` (atomically, as a management
/// process would).
fn write_lds(dir: &std::path::Path, listener: &Value) {
    let mut listener = listener.clone();
    listener["@type"] = json!("type.googleapis.com/envoy.config.listener.v3.Listener");
    let resources = json!({ "resources": [listener] });
    let staged = dir.join("lds.yaml.new");
    std::fs::write(&staged, resources.to_string()).unwrap();
    std::fs::rename(&staged, dir.join("lds.yaml")).unwrap();
}

#[tokio::test]
async fn an_lds_update_keeps_the_watch_and_its_table() {
    let control = ControlService::start(&sibling_binary("sandbox-router").unwrap(), None)
        .await
        .unwrap();
    let backend = EchoService::start("backend", "baseline").await.unwrap();
    let sandbox = EchoService::start("backend", "feature-x").await.unwrap();
    let ports = SidecarPorts {
        backend_baseline: backend.addr().port(),
        frontend_baseline: 1,
        control: control.addr().port(),
    };
    let config =
        sidecar_config_for(Host::Native, "lds", &ports, "{}", DEFAULT_SYNC_CONFIG).unwrap();
    // The listener from a file (LDS) instead of the static resources.
    let mut config: Value = serde_norway::from_str(&config).unwrap();
    let listener = config["static_resources"]["listeners"][0].clone();
    config["static_resources"]
        .as_object_mut()
        .unwrap()
        .remove("listeners");
    let lds = tempfile::tempdir().unwrap();
    write_lds(lds.path(), &listener);
    config["node"]["cluster"] = json!("lds");
    config["dynamic_resources"] = json!({ "lds_config": { "path_config_source": {
        "path": lds.path().join("lds.yaml"),
        "watched_directory": { "path": lds.path() } } } });
    let envoy = Envoy::start(&config.to_string(), 1).await.unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let (_, body) = control
        .api(
            Method::POST,
            "/v1/sandboxes",
            Some(json!({ "name": "feature-x", "forks": { "backend": [sandbox.addr().to_string()] } })),
        )
        .await
        .unwrap();
    let baggage = format!(
        "sandbox-routing-key={}",
        body["routing_key"].as_str().unwrap()
    );
    let served = |debug: bool| {
        let (http, envoy, baggage) = (&http, &envoy, &baggage);
        async move {
            let addr = envoy.listener("outbound").await.ok()?;
            let reply = get_via(http, addr, "backend", &[("baggage", baggage.as_bytes())])
                .await
                .ok()?;
            (reply.served_by() == "backend/feature-x" && reply.decision.is_some() == debug)
                .then_some(())
        }
    };
    poll_until(
        "routed by the pushed table",
        Duration::from_secs(10),
        || served(false),
    )
    .await
    .unwrap();

    // The same listener, a new filter configuration (debug header on), the
    // same control section: the new configuration shares the running watch.
    let mut updated = listener.clone();
    let value = &mut updated["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][0]
        ["typed_config"]["filter_config"]["value"];
    let mut module_config: Value = serde_json::from_str(value.as_str().unwrap()).unwrap();
    module_config["debug_header"] = json!(true);
    *value = json!(module_config.to_string());
    write_lds(lds.path(), &updated);
    poll_until(
        "the new configuration routes at once",
        Duration::from_secs(10),
        || served(true),
    )
    .await
    .unwrap();
    logged(&envoy, "sharing this Envoy's watch of").await;
    let stats = envoy.stats().await.unwrap();
    assert_eq!(
        stats.get("sandbox_router.sync.connects"),
        1,
        "no second stream"
    );
    let (_, proxies) = control.api(Method::GET, "/v1/proxies", None).await.unwrap();
    assert_eq!(proxies["proxies"].as_array().unwrap().len(), 1, "{proxies}");
}

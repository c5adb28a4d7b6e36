//! The control service pushing to a real Envoy: sandboxes created, changed,
//! deleted and expired through the API route (or stop routing) within a
//! deadline; route groups; the control service killed and restarted.
//!
//! Both hosts: `SANDBOX_ROUTER_HOST=native` runs every test against the
//! native module (its watch thread) instead of the Wasm filter (its
//! singleton); `make integration` runs both.

// Test code: a failed expectation should panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use testbed::{poll_until, ControlService, Host, Sidecar, SidecarOptions};

const BIN: &str = env!("CARGO_BIN_EXE_sandbox-router");
/// How long a change may take to reach Envoy before a test fails. The
/// measured time is far lower (`make bench`); this only bounds a hung test.
const DEADLINE: Duration = Duration::from_secs(10);

async fn control() -> ControlService {
    ControlService::start(Path::new(BIN), None)
        .await
        .expect("control service starts")
}

/// A sidecar on the pushed table (no `table` in the filter configuration),
/// with sandboxed `backend/feature-x` and `frontend/frontend-y` workloads.
async fn sidecar(control: &ControlService, node_id: &str) -> Sidecar {
    sidecar_with(control, node_id, None).await
}

/// [`sidecar`] with the singleton configuration `sync_config`.
async fn sidecar_with(
    control: &ControlService,
    node_id: &str,
    sync_config: Option<String>,
) -> Sidecar {
    let options = SidecarOptions {
        sandboxes: vec![
            ("backend".into(), "feature-x".into()),
            ("frontend".into(), "frontend-y".into()),
        ],
        node_id: node_id.to_owned(),
        control: Some(control.addr()),
        sync_config,
        // These tests change the table and kill the control service while
        // requests flow: the proxy and `explain` may see different versions.
        compare_with_explain: false,
        ..SidecarOptions::default()
    };
    Sidecar::start(options, |_| Ok(json!({ "debug_header": true }).to_string()))
        .await
        .expect("sidecar starts")
}

async fn create(control: &ControlService, name: &str, forks: Value) -> String {
    let (status, body) = control
        .api(
            Method::POST,
            "/v1/sandboxes",
            Some(json!({ "name": name, "forks": forks })),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");
    body["routing_key"].as_str().unwrap().to_owned()
}

fn baggage(key: &str) -> String {
    format!("sandbox-routing-key={key}")
}

/// Polls until a request for `host` carrying `key` is answered by `expected`.
async fn until_served(sidecar: &Sidecar, host: &str, key: &str, expected: &str) {
    sidecar
        .until_served(host, key, expected, DEADLINE)
        .await
        .unwrap();
}

/// Creates sandbox `feature-x` (forking `backend` to the sidecar's first
/// sandboxed workload) and waits until it routes; returns its key.
async fn feature_x(control: &ControlService, sidecar: &Sidecar) -> String {
    let key = create(
        control,
        "feature-x",
        json!({ "backend": [addr(sidecar, 0)] }),
    )
    .await;
    until_served(sidecar, "backend", &key, "backend/feature-x").await;
    key
}

/// Creates sandbox `frontend-y` (forking `frontend` to the sidecar's second
/// sandboxed workload) and waits until it routes; returns its key.
async fn frontend_y(control: &ControlService, sidecar: &Sidecar) -> String {
    let key = create(
        control,
        "frontend-y",
        json!({ "frontend": [addr(sidecar, 1)] }),
    )
    .await;
    until_served(sidecar, "frontend", &key, "frontend/frontend-y").await;
    key
}

fn addr(sidecar: &Sidecar, i: usize) -> String {
    sidecar.sandboxes[i].addr().to_string()
}

#[tokio::test]
async fn a_created_sandbox_routes_and_a_deleted_one_stops() {
    let control = control().await;
    let sidecar = sidecar(&control, "sidecar-a").await;
    let key = feature_x(&control, &sidecar).await;
    // Other services and other keys are untouched.
    let frontend = sidecar
        .get("frontend", &[("baggage", baggage(&key).as_bytes())])
        .await
        .unwrap();
    assert_eq!(frontend.served_by(), "frontend/baseline");

    // Changing the forks moves the route.
    let (status, body) = control
        .api(
            Method::PUT,
            "/v1/sandboxes/feature-x/forks",
            Some(json!({ "forks": { "frontend": [addr(&sidecar, 1)] } })),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    until_served(&sidecar, "frontend", &key, "frontend/frontend-y").await;
    until_served(&sidecar, "backend", &key, "backend/baseline").await;

    let (status, _) = control
        .api(Method::DELETE, "/v1/sandboxes/feature-x", None)
        .await
        .unwrap();
    assert_eq!(status, 200);
    until_served(&sidecar, "frontend", &key, "frontend/baseline").await;
    let reply = sidecar
        .get("frontend", &[("baggage", baggage(&key).as_bytes())])
        .await
        .unwrap();
    assert_eq!(
        reply.decision.as_deref(),
        Some("baseline; reason=unknown_key; source=baggage; service=frontend")
    );
}

#[tokio::test]
async fn an_expired_sandbox_stops_routing() {
    let control = control().await;
    let sidecar = sidecar(&control, "sidecar-b").await;
    let (status, body) = control
        .api(
            Method::POST,
            "/v1/sandboxes",
            Some(json!({ "name": "short", "forks": { "backend": [addr(&sidecar, 0)] }, "ttl_seconds": 3 })),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");
    let key = body["routing_key"].as_str().unwrap().to_owned();
    // Routed while it lives (a 3 s TTL leaves ample time to see it)...
    until_served(&sidecar, "backend", &key, "backend/feature-x").await;
    // ...and back on the baseline once the control service expired it.
    until_served(&sidecar, "backend", &key, "backend/baseline").await;
    let (status, _) = control
        .api(Method::GET, "/v1/sandboxes/short", None)
        .await
        .unwrap();
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_route_group_combines_two_sandboxes() {
    let control = control().await;
    let sidecar = sidecar(&control, "sidecar-c").await;
    let key_x = feature_x(&control, &sidecar).await;
    let key_y = create(
        &control,
        "frontend-y",
        json!({ "frontend": [addr(&sidecar, 1)] }),
    )
    .await;
    let (status, body) = control
        .api(
            Method::POST,
            "/v1/routegroups",
            Some(json!({ "name": "x-and-y", "members": ["feature-x", "frontend-y"] })),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");
    let group_key = body["routing_key"].as_str().unwrap().to_owned();
    until_served(&sidecar, "backend", &group_key, "backend/feature-x").await;
    until_served(&sidecar, "frontend", &group_key, "frontend/frontend-y").await;
    // Each member's own key still forks only its own service.
    until_served(&sidecar, "frontend", &key_x, "frontend/baseline").await;
    until_served(&sidecar, "backend", &key_y, "backend/baseline").await;

    // A member that would fork a service another member forks is refused.
    let (status, body) = control
        .api(
            Method::PUT,
            "/v1/sandboxes/frontend-y/forks",
            Some(json!({ "forks": { "backend": ["10.9.9.9:80"] } })),
        )
        .await
        .unwrap();
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["field"], "forks");

    // Deleting a member shrinks the group.
    control
        .api(Method::DELETE, "/v1/sandboxes/frontend-y", None)
        .await
        .unwrap();
    until_served(&sidecar, "frontend", &group_key, "frontend/baseline").await;
    until_served(&sidecar, "backend", &group_key, "backend/feature-x").await;
}

#[tokio::test]
async fn routing_survives_the_control_service_being_killed_and_resyncs_after() {
    let mut control = control().await;
    let sidecar = sidecar(&control, "sidecar-d").await;
    let key = feature_x(&control, &sidecar).await;

    control.kill();
    poll_until(
        "the proxy to notice the stream closed",
        DEADLINE,
        || async {
            let stats = sidecar.envoy.stats().await.ok()?;
            (stats.filter("sync.disconnects") >= 1).then_some(())
        },
    )
    .await
    .unwrap();
    // The last table keeps routing while the control service is away.
    for _ in 0..20 {
        let reply = sidecar
            .get("backend", &[("baggage", baggage(&key).as_bytes())])
            .await
            .unwrap();
        assert_eq!(reply.served_by(), "backend/feature-x");
    }

    control.restart().await.unwrap();
    // After the restart the proxy resyncs, and new changes arrive.
    frontend_y(&control, &sidecar).await;
    until_served(&sidecar, "backend", &key, "backend/feature-x").await;
}

#[tokio::test]
async fn status_shows_each_proxy_and_the_version_it_applied() {
    let control = control().await;
    let first = sidecar(&control, "proxy-one").await;
    let _second = sidecar(&control, "proxy-two").await;
    feature_x(&control, &first).await;
    let proxies = poll_until("both proxies in sync at version 1", DEADLINE, || async {
        let (_, body) = control.api(Method::GET, "/v1/proxies", None).await.ok()?;
        let proxies = body["proxies"].as_array()?.clone();
        let synced = proxies.iter().filter(|p| p["applied_version"] == 1).count();
        (synced == 2).then_some(proxies)
    })
    .await
    .unwrap();
    let mut nodes: Vec<&str> = proxies
        .iter()
        .filter_map(|p| p["node_id"].as_str())
        .collect();
    nodes.sort_unstable();
    assert_eq!(nodes, ["proxy-one", "proxy-two"]);

    let output = control.cli(&["status"]).unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    assert!(
        text.contains("Table version 1; 2 proxies connected."),
        "{text}"
    );
    assert_eq!(text.matches("in sync").count(), 2, "{text}");

    let metrics = reqwest::get(format!("{}/metrics", control.url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("sandbox_router_proxies_connected 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sandbox_router_proxies_in_sync 2"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_through_a_kill_and_restart_never_fail() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    let mut control = control().await;
    let sidecar = Arc::new(sidecar(&control, "sidecar-load").await);
    let key = feature_x(&control, &sidecar).await;

    // Four senders (half the requests with the key, half without) run while
    // the control service is killed, stays down, restarts and takes a write.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let senders: Vec<_> = (0..4)
        .map(|_| {
            let (sidecar, stop, sent, key) =
                (sidecar.clone(), stop.clone(), sent.clone(), key.clone());
            tokio::spawn(async move {
                let mut failed = Vec::new();
                // Bounded: stops by itself even if the test fails to signal it.
                for n in 0..25_000u64 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let value = baggage(&key);
                    let routed = n % 2 == 0;
                    let headers: Vec<(&str, &[u8])> = if routed {
                        vec![("baggage", value.as_bytes())]
                    } else {
                        Vec::new()
                    };
                    let expected = if routed {
                        "backend/feature-x"
                    } else {
                        "backend/baseline"
                    };
                    match sidecar.get("backend", &headers).await {
                        Ok(reply) if reply.served_by() == expected => {}
                        Ok(reply) => {
                            failed.push(format!("expected {expected}, got {}", reply.served_by()))
                        }
                        Err(err) => failed.push(err.to_string()),
                    }
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                failed
            })
        })
        .collect();
    let at_least = |n: u64| {
        let sent = sent.clone();
        async move {
            poll_until("requests to be sent", Duration::from_secs(60), move || {
                let sent = sent.clone();
                async move { (sent.load(Ordering::Relaxed) >= n).then_some(()) }
            })
            .await
        }
    };
    control.kill();
    poll_until("the proxy to notice", DEADLINE, || async {
        let stats = sidecar.envoy.stats().await.ok()?;
        (stats.filter("sync.disconnects") >= 1).then_some(())
    })
    .await
    .unwrap();
    let during_outage = sent.load(Ordering::Relaxed) + 2_000;
    at_least(during_outage).await.unwrap();
    control.restart().await.unwrap();
    frontend_y(&control, &sidecar).await;
    at_least(sent.load(Ordering::Relaxed) + 1_000)
        .await
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    let mut failed = Vec::new();
    for sender in senders {
        failed.extend(sender.await.unwrap());
    }
    let sent = sent.load(Ordering::Relaxed);
    println!(
        "kill/restart under load: {sent} requests sent, {} failed",
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{} of {sent} failed, e.g. {:?}",
        failed.len(),
        failed.first()
    );
}

#[tokio::test]
async fn bad_api_input_is_refused_with_the_field_and_writes_nothing() {
    let mut control = control().await;
    create(&control, "existing", json!({ "backend": ["10.0.0.1:80"] })).await;
    let (_, before) = control
        .api(Method::GET, "/v1/sandboxes", None)
        .await
        .unwrap();
    let cases: Vec<(Method, &str, Value, u16, &str)> = vec![
        (
            Method::POST,
            "/v1/sandboxes",
            json!({ "name": "Bad Name", "forks": { "b": ["10.0.0.1:80"] } }),
            400,
            "name",
        ),
        (
            Method::POST,
            "/v1/sandboxes",
            json!({ "name": "ok", "forks": {} }),
            400,
            "forks",
        ),
        (
            Method::POST,
            "/v1/sandboxes",
            json!({ "name": "ok", "forks": { "b": ["b:80"] } }),
            400,
            "forks.b[0]",
        ),
        (
            Method::POST,
            "/v1/sandboxes",
            json!({ "name": "ok", "forks": { "b": ["10.0.0.1:0"] } }),
            400,
            "forks.b[0]",
        ),
        (
            Method::POST,
            "/v1/sandboxes",
            json!({ "name": "ok", "forks": { "b": ["10.0.0.1:80"] }, "ttl_seconds": 0 }),
            400,
            "ttl_seconds",
        ),
        (
            Method::POST,
            "/v1/sandboxes",
            json!({ "name": "ok", "forks": { "b": ["10.0.0.1:80"] }, "colour": "red" }),
            400,
            "colour",
        ),
        (
            Method::POST,
            "/v1/sandboxes",
            json!({ "name": 5, "forks": {} }),
            400,
            "name",
        ),
        (
            Method::POST,
            "/v1/sandboxes",
            json!({ "name": "existing", "forks": { "b": ["10.0.0.1:80"] } }),
            409,
            "name",
        ),
        (
            Method::PUT,
            "/v1/sandboxes/existing/forks",
            json!({ "forks": { "B": ["10.0.0.1:80"] } }),
            400,
            "forks.B",
        ),
        (
            Method::POST,
            "/v1/routegroups",
            json!({ "name": "g", "members": ["nope"] }),
            400,
            "members[0]",
        ),
        (
            Method::POST,
            "/v1/routegroups",
            json!({ "name": "g" }),
            400,
            "members",
        ),
    ];
    for (method, path, body, status, field) in cases {
        let (got, answer) = control
            .api(method.clone(), path, Some(body.clone()))
            .await
            .unwrap();
        assert_eq!(got, status, "{method} {path} {body}: {answer}");
        assert_eq!(
            answer["error"]["field"], field,
            "{method} {path} {body}: {answer}"
        );
        assert!(
            answer["error"]["reason"]
                .as_str()
                .is_some_and(|r| !r.is_empty()),
            "{answer}"
        );
    }
    let (status, answer) = control
        .api(Method::DELETE, "/v1/sandboxes/nope", None)
        .await
        .unwrap();
    assert_eq!(status, 404, "{answer}");
    // Not JSON at all.
    let raw = reqwest::Client::new()
        .post(format!("{}/v1/sandboxes", control.url()))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 400);

    // Nothing was written, before or after a restart.
    let (_, after) = control
        .api(Method::GET, "/v1/sandboxes", None)
        .await
        .unwrap();
    assert_eq!(after, before);
    control.restart().await.unwrap();
    let (_, restarted) = control
        .api(Method::GET, "/v1/sandboxes", None)
        .await
        .unwrap();
    assert_eq!(restarted, before);
}

#[tokio::test]
async fn writes_need_the_token_when_one_is_configured() {
    let control = ControlService::start(Path::new(BIN), Some("s3cret"))
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let body = json!({ "name": "x", "forks": { "backend": ["10.0.0.1:80"] } });
    for auth in [None, Some("Bearer wrong"), Some("s3cret")] {
        let mut request = http
            .post(format!("{}/v1/sandboxes", control.url()))
            .json(&body);
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        assert_eq!(request.send().await.unwrap().status(), 401, "{auth:?}");
    }
    // Reads stay open; the right token writes.
    let list = http
        .get(format!("{}/v1/sandboxes", control.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(list.status(), 200);
    let (status, _) = control
        .api(Method::POST, "/v1/sandboxes", Some(body))
        .await
        .unwrap();
    assert_eq!(status, 201);
}

#[tokio::test]
async fn the_watch_stream_needs_the_watch_token_when_one_is_configured() {
    let control =
        ControlService::start_with_args(Path::new(BIN), None, &["--watch-token", "w4tch"])
            .await
            .unwrap();
    let sync = |token: Option<&str>| {
        let mut config = json!({ "control_cluster": "sandbox_router_control" });
        if let Some(token) = token {
            config["token"] = json!(token);
        }
        Some(config.to_string())
    };
    let with_token = sidecar_with(&control, "with-token", sync(Some("w4tch"))).await;
    let refused = [
        sidecar_with(&control, "no-token", sync(None)).await,
        sidecar_with(&control, "wrong-token", sync(Some("w4tch2"))).await,
    ];
    let key = feature_x(&control, &with_token).await;

    // Both other proxies were refused, noticed it, and have no table.
    poll_until("both proxies refused", DEADLINE, || async {
        let metrics = reqwest::get(format!("{}/metrics", control.url()))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let refusals: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("sandbox_router_watch_refused_total "))?
            .parse()
            .ok()?;
        for proxy in &refused {
            noticed_the_refusal(proxy).await?;
        }
        (refusals >= 2).then_some(())
    })
    .await
    .unwrap();
    for proxy in &refused {
        let stats = proxy.envoy.stats().await.unwrap();
        assert_eq!(stats.filter("sync.updates_applied"), 0);
        let reply = proxy
            .get("backend", &[("baggage", baggage(&key).as_bytes())])
            .await
            .unwrap();
        assert_eq!(reply.served_by(), "backend/baseline");
        assert_eq!(
            reply.decision.as_deref(),
            Some("baseline; reason=unknown_key; source=baggage; service=backend")
        );
    }
    let (_, body) = control.api(Method::GET, "/v1/proxies", None).await.unwrap();
    let nodes: Vec<&str> = body["proxies"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["node_id"].as_str())
        .collect();
    assert_eq!(nodes, ["with-token"]);
}

/// The proxy saw the control service refuse its watch stream. The Wasm
/// singleton counts the refused stream as opened and closed
/// (`sync.disconnects`); the native module's watch counts only streams the
/// control service accepted, and logs the refusal.
async fn noticed_the_refusal(proxy: &Sidecar) -> Option<()> {
    let stats = proxy.envoy.stats().await.ok()?;
    match Host::from_env().ok()? {
        Host::Wasm => (stats.filter("sync.disconnects") >= 1).then_some(()),
        Host::Native => (stats.filter("sync.connects") == 0
            && proxy
                .envoy
                .log_tail()
                .contains("the control service refused the watch"))
        .then_some(()),
    }
}

#[tokio::test]
async fn a_sigkill_during_a_stream_of_writes_loses_no_acknowledged_write() {
    let mut control = control().await;
    let url = format!("{}/v1/sandboxes", control.url());
    let acknowledged = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, String)>::new()));
    // Four writers create sandboxes as fast as they can until the service is gone.
    let writers: Vec<_> = (0..4)
        .map(|writer| {
            let (url, acknowledged) = (url.clone(), acknowledged.clone());
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                for i in 0.. {
                    let name = format!("w{writer}-{i}");
                    let endpoint = format!("10.{writer}.{}.{}:80", i / 250, i % 250 + 1);
                    let body = json!({ "name": name, "forks": { "backend": [endpoint] } });
                    match http.post(&url).json(&body).send().await {
                        Ok(response) if response.status() == 201 => {
                            acknowledged.lock().unwrap().push((name, endpoint));
                        }
                        _ => return,
                    }
                }
            })
        })
        .collect();
    poll_until("40 acknowledged writes", DEADLINE, || async {
        (acknowledged.lock().unwrap().len() >= 40).then_some(())
    })
    .await
    .unwrap();
    control.kill();
    for writer in writers {
        writer.await.unwrap();
    }
    control.restart().await.unwrap();

    let (_, list) = control
        .api(Method::GET, "/v1/sandboxes", None)
        .await
        .unwrap();
    let stored: std::collections::BTreeMap<String, Value> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap().to_owned(), s.clone()))
        .collect();
    // Every acknowledged write is there, whole.
    for (name, endpoint) in acknowledged.lock().unwrap().iter() {
        let sandbox = stored.get(name).unwrap_or_else(|| panic!("{name} lost"));
        assert_eq!(sandbox["forks"]["backend"], json!([endpoint]), "{name}");
    }
    // Nothing half-written: a write that was cut off is absent or whole, and
    // each stored write moved the version exactly once.
    for (name, sandbox) in &stored {
        assert_eq!(
            sandbox["forks"]["backend"].as_array().map(Vec::len),
            Some(1),
            "{name}"
        );
        assert_eq!(
            sandbox["routing_key"].as_str().map(str::len),
            Some(24),
            "{name}"
        );
    }
    assert_eq!(list["version"], json!(stored.len()));
}

#[tokio::test]
async fn acknowledged_writes_survive_sigkill() {
    let mut control = control().await;
    let mut keys = Vec::new();
    for i in 0..30 {
        keys.push(
            create(
                &control,
                &format!("s{i}"),
                json!({ "backend": [format!("10.0.0.{}:80", i + 1)] }),
            )
            .await,
        );
    }
    control.kill();
    control.restart().await.unwrap();
    let (_, list) = control
        .api(Method::GET, "/v1/sandboxes", None)
        .await
        .unwrap();
    let mut stored: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["routing_key"].as_str())
        .collect();
    stored.sort_unstable();
    keys.sort_unstable();
    assert_eq!(stored, keys.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(list["version"], 30);
}

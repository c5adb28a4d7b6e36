//! `sandbox-router-queue`, the decision over HTTP for consumers in other
//! languages, as a process against the real control service: it answers as
//! the library does, follows a recorded claim, counts, keeps deciding by its
//! last table while the control service is down, and answers errors with a
//! field and a reason.

// Test code: a failed expectation should panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::Method;
use sandbox_router_queue::{Consumer, Identity, NoClaims, TableSource, Verdict};
use sandbox_router_routing::Settings;
use sandbox_router_watch::WatchConfig;
use serde_json::{json, Value};
use testbed::{poll_until, ControlService};

const DEADLINE: Duration = Duration::from_secs(30);

struct Sidecar {
    child: Child,
    url: String,
    http: reqwest::Client,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sidecar {
    fn start(args: &[&str]) -> Sidecar {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sandbox-router-queue"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next().unwrap().unwrap();
        std::thread::spawn(move || for _ in lines {});
        let addr = first.strip_prefix("listening on ").unwrap().to_owned();
        Sidecar {
            child,
            url: format!("http://{addr}"),
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
        }
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.url));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn decide(&self, body: Value) -> Value {
        let (status, answer) = self.call(Method::POST, "/v1/decide", Some(body)).await;
        assert_eq!(status, 200, "{answer}");
        answer
    }
}

async fn create(control: &ControlService, path: &str, body: Value) -> String {
    let (status, body) = control.api(Method::POST, path, Some(body)).await.unwrap();
    assert_eq!(status, 201, "{body}");
    body["routing_key"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_decision_endpoint_answers_as_the_library_does() {
    let binary = testbed::sibling_binary("sandbox-router").unwrap();
    let mut control = ControlService::start(&binary, None).await.unwrap();
    let a = create(
        &control,
        "/v1/sandboxes",
        json!({"name": "worker-a", "forks": {"worker": ["127.0.0.1:9101"]}}),
    )
    .await;
    let b = create(
        &control,
        "/v1/sandboxes",
        json!({"name": "worker-b", "forks": {"worker": ["127.0.0.1:9102"]}}),
    )
    .await;
    let group = create(
        &control,
        "/v1/routegroups",
        json!({"name": "checkout", "members": ["worker-b"]}),
    )
    .await;
    let sidecar = Sidecar::start(&["--control", &control.url(), "--node-id", "queue-sidecar"]);
    let synced = poll_until("the sidecar's table", DEADLINE, || {
        let sidecar = &sidecar;
        async move {
            let (_, health) = sidecar.call(Method::GET, "/healthz", None).await;
            (health["synced"] == json!(true) && health["table_version"].as_u64() >= Some(3))
                .then_some(())
        }
    })
    .await;
    synced.unwrap();

    // The same decisions as the library's consumers, by the same table.
    let mut watch = WatchConfig::new(control.url(), "queue-library");
    watch.initial_backoff = Duration::from_millis(20);
    let source = std::sync::Arc::new(TableSource::watch_with(watch).unwrap());
    let identities = [
        Identity::baseline("worker"),
        Identity::sandboxed("worker", "worker-a"),
        Identity::sandboxed("worker", "worker-b"),
    ];
    let library: Vec<Consumer> = identities
        .iter()
        .map(|i| {
            Consumer::new(i.clone(), Settings::from_json(b"").unwrap(), source.clone()).unwrap()
        })
        .collect();
    for c in &library {
        assert!(c.wait_ready(DEADLINE));
    }
    let messages: Vec<Vec<(&str, String)>> = vec![
        vec![],
        vec![("baggage", format!("sandbox-routing-key={a}"))],
        vec![("Baggage", format!("sandbox-routing-key={b}"))],
        vec![("baggage", format!("sandbox-routing-key={group}"))],
        vec![(
            "baggage",
            "sandbox-routing-key=zzzzzzzzzzzzzzzzzzzzzzzz".to_owned(),
        )],
        vec![("baggage", "sandbox-routing-key=%zz".to_owned())],
        vec![("ot-baggage-sandbox-routing-key", a.clone())],
    ];
    for headers in &messages {
        let mut processing = 0;
        for (identity, c) in identities.iter().zip(&library) {
            let bytes = headers.iter().map(|(n, v)| (*n, v.as_bytes()));
            let expected = c.decide("m", bytes, &mut NoClaims).unwrap();
            let answer = sidecar
                .decide(
                    json!({"service": "worker", "sandbox": identity.sandbox, "headers": headers}),
                )
                .await;
            let verdict = match expected.verdict {
                Verdict::Process => {
                    processing += 1;
                    json!({"verdict": "process", "reason": null})
                }
                Verdict::Skip(reason) => json!({"verdict": "skip", "reason": reason.as_str()}),
            };
            assert_eq!(
                answer["verdict"], verdict["verdict"],
                "{headers:?} {identity:?}"
            );
            assert_eq!(
                answer["reason"], verdict["reason"],
                "{headers:?} {identity:?}"
            );
            assert_eq!(answer["owner"], json!(expected.owner.claim_text()));
            // /v1/owner gives the same owner text, for the claim.
            let (status, owner) = sidecar
                .call(
                    Method::POST,
                    "/v1/owner",
                    Some(json!({"service": "worker", "headers": headers})),
                )
                .await;
            assert_eq!(status, 200);
            assert_eq!(owner["owner"], answer["owner"]);
        }
        assert_eq!(processing, 1, "{headers:?}");
    }

    // A recorded claim decides: worker-a follows a claim for it although its
    // table says baseline (a table change in flight).
    let claim_a = sidecar
        .decide(json!({"service": "worker", "sandbox": "worker-a",
                       "headers": [["baggage", format!("sandbox-routing-key={a}")]]}))
        .await["owner"]
        .clone();
    let answer = sidecar
        .decide(
            json!({"service": "worker", "sandbox": "worker-a", "headers": [], "claimed": claim_a}),
        )
        .await;
    assert_eq!(answer["verdict"], "process");
    assert_eq!(answer["owner"], "baseline no_context");
    let answer = sidecar
        .decide(json!({"service": "worker", "headers": [], "claimed": claim_a}))
        .await;
    assert_eq!(
        (answer["verdict"].as_str(), answer["reason"].as_str()),
        (Some("skip"), Some("claimed_elsewhere"))
    );

    // Counters per consumer.
    let (_, stats) = sidecar.call(Method::GET, "/v1/stats", None).await;
    let baseline = stats
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["sandbox"].is_null())
        .unwrap();
    assert_eq!(baseline["processed"], 3, "{stats}");
    assert_eq!(baseline["skipped"]["sandboxed"], 4, "{stats}");
    assert_eq!(baseline["skipped"]["claimed_elsewhere"], 1, "{stats}");
    let worker_a = stats
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["sandbox"] == "worker-a")
        .unwrap();
    assert_eq!(worker_a["processed_by_claim"], 1, "{stats}");

    // The control service down: the last table still decides.
    control.kill();
    let answer = sidecar
        .decide(json!({"service": "worker", "sandbox": "worker-b",
                       "headers": [["baggage", format!("sandbox-routing-key={group}")]]}))
        .await;
    assert_eq!(answer["verdict"], "process");

    // Errors: a status, the field and the reason.
    let cases = [
        (json!({"service": "Worker"}), 400, "service"),
        (
            json!({"service": "worker", "sandbox": "-x"}),
            400,
            "sandbox",
        ),
        (
            json!({"service": "worker", "claimed": "someone"}),
            400,
            "claimed",
        ),
        (
            json!({"service": "worker", "headers": "baggage"}),
            400,
            "body",
        ),
        (json!({"service": "worker", "extra": 1}), 400, "body"),
        (
            json!({"service": "worker", "sandbox": "worker-z"}),
            503,
            "sandbox",
        ),
    ];
    for (body, status, field) in cases {
        let (got, answer) = sidecar
            .call(Method::POST, "/v1/decide", Some(body.clone()))
            .await;
        assert_eq!(got, status, "{body}: {answer}");
        assert_eq!(answer["error"]["field"], field, "{body}: {answer}");
        assert!(
            answer["error"]["reason"]
                .as_str()
                .is_some_and(|r| !r.is_empty()),
            "{answer}"
        );
    }
}

#[tokio::test]
async fn a_static_table_needs_no_control_service() {
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("table.json");
    std::fs::write(
        &table,
        r#"{"version": 7, "entries": [{"routing_key": "aaaaaaaaaaaaaaaaaaaaaaaa", "sandbox": "worker-a",
            "forks": [{"service": "worker", "endpoints": ["127.0.0.1:9101"]}]}]}"#,
    )
    .unwrap();
    let sidecar = Sidecar::start(&["--table", table.to_str().unwrap()]);
    let (_, health) = sidecar.call(Method::GET, "/healthz", None).await;
    assert_eq!(health, json!({"synced": true, "table_version": 7}));
    let answer = sidecar
        .decide(json!({"service": "worker", "sandbox": "worker-a",
                       "headers": [["baggage", "sandbox-routing-key=aaaaaaaaaaaaaaaaaaaaaaaa"]]}))
        .await;
    assert_eq!(answer["verdict"], "process");
    assert_eq!(answer["table_version"], 7);
    // A bad table is refused at start, naming the field.
    std::fs::write(&table, r#"{"entries": [{"routing_key": "a b"}]}"#).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sandbox-router-queue"))
        .args(["--table", table.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("table.entries[0].routing_key"), "{stderr}");
}

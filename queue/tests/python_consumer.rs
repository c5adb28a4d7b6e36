//! The Python consumer of docs/message-queues.md, run as it stands there (with
//! redis-py from `.venv`, installed by `make deps`), against a real Redis,
//! the real control service and `sandbox-router-queue`: a Python baseline
//! consumer, a Python sandboxed consumer and a Rust sandboxed consumer share
//! one stream and its claims, and each message is processed by exactly the
//! right one.

// Test code: a failed expectation should panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::Method;
use sandbox_router_queue::redis_streams::{poll_until, publish, StreamConfig, StreamConsumer};
use sandbox_router_queue::{Consumer, Identity, TableSource};
use sandbox_router_routing::Settings;
use serde_json::json;
use testbed::{ControlService, RedisBroker};

const DEADLINE: Duration = Duration::from_secs(30);

/// Who processed what: payload -> consumers.
type Ledger = Arc<Mutex<BTreeMap<String, Vec<String>>>>;

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The ```python block of docs/message-queues.md.
fn documented_consumer() -> String {
    let path = testbed::workspace_root().join("docs/message-queues.md");
    let text = std::fs::read_to_string(path).unwrap();
    let start = text.find("```python\n").expect("a ```python block") + "```python\n".len();
    let end = start + text[start..].find("```").unwrap();
    text[start..end].to_owned()
}

fn python() -> PathBuf {
    let python = testbed::workspace_root().join(".venv/bin/python");
    assert!(python.exists(), "{} (make deps)", python.display());
    python
}

/// Starts the documented consumer; its "processing ID PAYLOAD" lines go to the ledger.
fn start_python(
    script: &std::path::Path,
    sandbox: Option<&str>,
    redis: &str,
    decide: &str,
    ledger: &Ledger,
) -> Process {
    let mut command = Command::new(python());
    command
        .arg(script)
        .env("REDIS_URL", redis)
        .env("DECIDE_URL", decide)
        .env("HOSTNAME", "py-1")
        .env_remove("SANDBOX")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(sandbox) = sandbox {
        command.env("SANDBOX", sandbox);
    }
    let mut child = command.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // Ready when its group exists.
    let first = lines.next().unwrap().unwrap();
    assert!(first.starts_with("consuming as worker."), "{first}");
    let label = format!("python/{}", sandbox.unwrap_or("baseline"));
    let ledger = Arc::clone(ledger);
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("processing ") {
                let payload = rest.split_once(' ').map_or("", |(_, p)| p).to_owned();
                ledger
                    .lock()
                    .unwrap()
                    .entry(payload)
                    .or_default()
                    .push(label.clone());
            }
        }
    });
    Process(child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_python_consumer_shares_a_stream_with_a_rust_one() {
    let broker = RedisBroker::start().unwrap();
    let binary = testbed::sibling_binary("sandbox-router").unwrap();
    let control = ControlService::start(&binary, None).await.unwrap();
    let mut keys = Vec::new();
    for (name, endpoint) in [
        ("worker-a", "127.0.0.1:9101"),
        ("worker-b", "127.0.0.1:9102"),
    ] {
        let (status, body) = control
            .api(
                Method::POST,
                "/v1/sandboxes",
                Some(json!({"name": name, "forks": {"worker": [endpoint]}})),
            )
            .await
            .unwrap();
        assert_eq!(status, 201, "{body}");
        keys.push(body["routing_key"].as_str().unwrap().to_owned());
    }

    // The decision endpoint, beside the Python consumers.
    let mut sidecar = Command::new(env!("CARGO_BIN_EXE_sandbox-router-queue"))
        .args(["--listen", "127.0.0.1:0", "--control", &control.url()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let first = BufReader::new(sidecar.stdout.take().unwrap())
        .lines()
        .next()
        .unwrap()
        .unwrap();
    let sidecar = Process(sidecar);
    let decide = format!("http://{}", first.strip_prefix("listening on ").unwrap());
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    testbed::poll_until("the decision endpoint's table", DEADLINE, || {
        let (http, url) = (http.clone(), format!("{decide}/healthz"));
        async move {
            let health: serde_json::Value = http.get(url).send().await.ok()?.json().await.ok()?;
            (health["table_version"].as_u64() >= Some(2)).then_some(())
        }
    })
    .await
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("consumer.py");
    std::fs::write(&script, documented_consumer()).unwrap();
    let ledger: Ledger = Arc::default();
    let url = broker.url();
    let _baseline = start_python(&script, None, &url, &decide, &ledger);
    let _a = start_python(&script, Some("worker-a"), &url, &decide, &ledger);

    // worker-b's consumer is the Rust library's.
    let mut watch = sandbox_router_watch::WatchConfig::new(control.url(), "rust-worker-b");
    watch.initial_backoff = Duration::from_millis(20);
    let b = Arc::new(
        Consumer::new(
            Identity::sandboxed("worker", "worker-b"),
            Settings::from_json(b"").unwrap(),
            TableSource::watch_with(watch).unwrap(),
        )
        .unwrap(),
    );
    assert!(b.wait_ready(DEADLINE));
    let mut config = StreamConfig::new(broker.url(), "jobs");
    config.block = Duration::from_millis(100);
    let mut stream = StreamConsumer::connect(config, Arc::clone(&b)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let rust = {
        let (ledger, stop) = (Arc::clone(&ledger), Arc::clone(&stop));
        std::thread::spawn(move || {
            let handler = |m: &sandbox_router_queue::redis_streams::Message,
                           _: &sandbox_router_queue::Decision| {
                let payload = String::from_utf8_lossy(m.field("payload").unwrap_or_default());
                let mut ledger = ledger.lock().unwrap();
                ledger
                    .entry(payload.into_owned())
                    .or_default()
                    .push("rust/worker-b".to_owned());
                Ok::<(), std::io::Error>(())
            };
            stream.run(handler, || stop.load(Ordering::SeqCst)).unwrap();
        })
    };

    let mut con = redis::Client::open(broker.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let messages: Vec<(&str, Option<String>, &str)> = vec![
        ("m-none", None, "python/baseline"),
        ("m-a", Some(keys[0].clone()), "python/worker-a"),
        ("m-b", Some(keys[1].clone()), "rust/worker-b"),
        (
            "m-unknown",
            Some("zzzzzzzzzzzzzzzzzzzzzzzz".into()),
            "python/baseline",
        ),
        ("m-malformed", Some("%zz".into()), "python/baseline"),
        ("m-a2", Some(keys[0].clone()), "python/worker-a"),
    ];
    for (payload, key, _) in &messages {
        let baggage = key.as_ref().map(|k| format!("sandbox-routing-key={k}"));
        let mut fields: Vec<(&str, &[u8])> = vec![("payload", payload.as_bytes())];
        if let Some(baggage) = &baggage {
            fields.push(("baggage", baggage.as_bytes()));
        }
        publish(&mut con, "jobs", &fields).unwrap();
    }
    // Every message processed, and every group has read and acknowledged all.
    let done = poll_until(DEADLINE, || {
        let all = {
            let ledger = ledger.lock().unwrap();
            messages.iter().all(|(p, _, _)| ledger.contains_key(*p))
        };
        let groups = ["worker.baseline", "worker.worker-a", "worker.worker-b"];
        let read = groups.iter().all(|g| {
            let info: redis::Value = redis::cmd("XINFO")
                .arg("GROUPS")
                .arg("jobs")
                .query(&mut con)
                .unwrap();
            group_done(&info, g)
        });
        (all && read).then_some(())
    });
    assert!(done.is_some(), "{:?}", ledger.lock().unwrap());
    stop.store(true, Ordering::SeqCst);
    rust.join().unwrap();
    drop(sidecar);
    let ledger = ledger.lock().unwrap();
    for (payload, _, who) in &messages {
        assert_eq!(
            ledger.get(*payload).cloned(),
            Some(vec![(*who).to_owned()]),
            "{payload}"
        );
    }
    assert_eq!(ledger.len(), messages.len());
}

/// `XINFO GROUPS` says group `name` has delivered the last entry (lag 0) and has nothing pending.
fn group_done(info: &redis::Value, name: &str) -> bool {
    let redis::Value::Array(groups) = info else {
        return false;
    };
    groups.iter().any(|group| {
        let fields: Vec<(String, &redis::Value)> = match group {
            redis::Value::Array(flat) => flat
                .chunks(2)
                .filter_map(|pair| match pair {
                    [redis::Value::BulkString(k), v] => {
                        Some((String::from_utf8_lossy(k).into_owned(), v))
                    }
                    [redis::Value::SimpleString(k), v] => Some((k.clone(), v)),
                    _ => None,
                })
                .collect(),
            redis::Value::Map(pairs) => pairs
                .iter()
                .filter_map(|(k, v)| match k {
                    redis::Value::BulkString(k) => {
                        Some((String::from_utf8_lossy(k).into_owned(), v))
                    }
                    redis::Value::SimpleString(k) => Some((k.clone(), v)),
                    _ => None,
                })
                .collect(),
            _ => return false,
        };
        let get = |key: &str| fields.iter().find(|(k, _)| k == key).map(|(_, v)| *v);
        let named =
            matches!(get("name"), Some(redis::Value::BulkString(n)) if n == name.as_bytes());
        named
            && matches!(get("pending"), Some(redis::Value::Int(0)))
            && matches!(get("lag"), Some(redis::Value::Int(0)))
    })
}

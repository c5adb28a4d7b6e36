//! Selective consumption against a real broker (Redis, `redis-server` started
//! by the test bed) and the real control service (`sandbox-router serve`,
//! built by `cargo build -p sandbox-router-control --bins`): one baseline and
//! two sandboxed consumers of `worker`, each through its own consumer group,
//! each message processed by exactly the right one, through a consumer's crash
//! and restart and through a SIGKILL of the control service.

// Test code: a failed expectation should panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use base64::Engine as _;
use prost::Message as _;
use reqwest::Method;
use sandbox_router_proto::v1 as proto;
use sandbox_router_queue::redis_streams::{
    claim_prefix, poll_until, publish, StreamConfig, StreamConsumer, StreamError,
};
use sandbox_router_queue::{Consumer, Identity, SkipReason, TableSource};
use sandbox_router_routing::Settings;
use sandbox_router_watch::WatchConfig;
use serde_json::{json, Value};
use testbed::{ControlService, RedisBroker};

/// Bounds a hung test only; every wait polls for its condition.
const DEADLINE: Duration = Duration::from_secs(30);
const STREAM: &str = "jobs";

async fn control() -> ControlService {
    let binary = testbed::sibling_binary("sandbox-router")
        .expect("the control service binary: cargo build -p sandbox-router-control --bins");
    ControlService::start(&binary, None).await.unwrap()
}

async fn api(control: &ControlService, path: &str, body: Value) -> Value {
    let (status, body) = control.api(Method::POST, path, Some(body)).await.unwrap();
    assert_eq!(status, 201, "{path}: {body}");
    body
}

/// The sandboxes of the test, and their routing keys.
struct Keys {
    a: String,
    b: String,
    frontend: String,
    group: String,
}

/// worker-a and worker-b fork `worker`; frontend-v2 forks only `frontend`;
/// route group `checkout` combines frontend-v2 and worker-b.
async fn sandboxes(control: &ControlService) -> Keys {
    let create = |name: &str, service: &str, endpoint: &str| json!({ "name": name, "forks": { service: [endpoint] } });
    let a = api(
        control,
        "/v1/sandboxes",
        create("worker-a", "worker", "127.0.0.1:9101"),
    )
    .await;
    let b = api(
        control,
        "/v1/sandboxes",
        create("worker-b", "worker", "127.0.0.1:9102"),
    )
    .await;
    let f = api(
        control,
        "/v1/sandboxes",
        create("frontend-v2", "frontend", "127.0.0.1:9200"),
    )
    .await;
    let g = api(
        control,
        "/v1/routegroups",
        json!({ "name": "checkout", "members": ["frontend-v2", "worker-b"] }),
    )
    .await;
    let key = |v: &Value| v["routing_key"].as_str().unwrap().to_owned();
    Keys {
        a: key(&a),
        b: key(&b),
        frontend: key(&f),
        group: key(&g),
    }
}

fn overrides_for(service: &str, sandbox: &str) -> String {
    let message = proto::Overrides {
        overrides: vec![proto::Override {
            service: service.to_owned(),
            target: Some(proto::r#override::Target::Sandbox(sandbox.to_owned())),
            endpoint: String::new(),
        }],
    };
    base64::engine::general_purpose::STANDARD.encode(message.encode_to_vec())
}

/// Header names and values.
type Headers = Vec<(String, String)>;
/// A message: its name (the payload), headers, and the consumer that must process it.
type Sent = (String, Headers, &'static str);

/// One message of each kind.
fn batch(keys: &Keys, round: &str) -> Vec<Sent> {
    let baggage = |key: &str| {
        vec![(
            "baggage".to_owned(),
            format!("userId=7,sandbox-routing-key={key}"),
        )]
    };
    let cases: Vec<(&str, Headers, &'static str)> = vec![
        (
            "no-key",
            vec![(
                "traceparent".into(),
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
            )],
            "baseline",
        ),
        ("key-a", baggage(&keys.a), "worker-a"),
        ("key-b", baggage(&keys.b), "worker-b"),
        ("group-key", baggage(&keys.group), "worker-b"),
        (
            "unknown-key",
            baggage("zzzzzzzzzzzzzzzzzzzzzzzz"),
            "baseline",
        ),
        ("malformed-key", baggage("bad%zzkey"), "baseline"),
        ("other-service-key", baggage(&keys.frontend), "baseline"),
        (
            "uberctx-key-a",
            vec![("uberctx-sandbox-routing-key".into(), keys.a.clone())],
            "worker-a",
        ),
        (
            "overrides-b",
            vec![(
                "baggage".into(),
                format!("sandbox-overrides={}", overrides_for("worker", "worker-b")),
            )],
            "worker-b",
        ),
    ];
    cases
        .into_iter()
        .map(|(name, headers, who)| (format!("{round}/{name}"), headers, who))
        .collect()
}

/// Processed messages: name -> the consumers that processed it.
type Ledger = Arc<Mutex<BTreeMap<String, Vec<&'static str>>>>;

fn publish_batch(con: &mut redis::Connection, messages: &[Sent]) {
    for (name, headers, _) in messages {
        let mut fields: Vec<(&str, &[u8])> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_bytes()))
            .collect();
        fields.push(("payload", name.as_bytes()));
        publish(con, STREAM, &fields).unwrap();
    }
}

fn watch_config(control: &ControlService, node: &str) -> WatchConfig {
    let mut config = WatchConfig::new(control.url(), node);
    config.initial_backoff = Duration::from_millis(20);
    config.max_backoff = Duration::from_millis(200);
    config
}

fn consumer(control: &ControlService, label: &'static str) -> Arc<Consumer> {
    let identity = match label {
        "baseline" => Identity::baseline("worker"),
        sandbox => Identity::sandboxed("worker", sandbox),
    };
    let source = TableSource::watch_with(watch_config(control, &format!("queue-{label}"))).unwrap();
    let consumer = Consumer::new(identity, Settings::from_json(b"").unwrap(), source).unwrap();
    assert!(consumer.wait_ready(DEADLINE), "{label} never got its table");
    Arc::new(consumer)
}

#[derive(Debug, thiserror::Error)]
#[error("simulated crash before the acknowledgement")]
struct Crash;

/// Runs a consumer in a thread until `stop`, recording what it processes.
/// `crash_on`: the handler fails on this message (the consumer then stops,
/// as a crashed process would, leaving it unacknowledged).
fn run(
    broker: &RedisBroker,
    consumer: Arc<Consumer>,
    label: &'static str,
    ledger: Ledger,
    stop: Arc<AtomicBool>,
    crash_on: Option<String>,
) -> JoinHandle<Result<(), String>> {
    let mut config = StreamConfig::new(broker.url(), STREAM);
    config.consumer_name = format!("{label}-1");
    config.block = Duration::from_millis(100);
    let mut stream = StreamConsumer::connect(config, consumer).unwrap();
    std::thread::spawn(move || {
        let handler = |message: &sandbox_router_queue::redis_streams::Message,
                       _: &sandbox_router_queue::Decision| {
            let name =
                String::from_utf8_lossy(message.field("payload").unwrap_or_default()).into_owned();
            if crash_on.as_deref() == Some(name.as_str()) {
                return Err(Crash);
            }
            ledger.lock().unwrap().entry(name).or_default().push(label);
            Ok(())
        };
        match stream.run(handler, || stop.load(Ordering::SeqCst)) {
            Ok(()) => Ok(()),
            Err(StreamError::Handler { .. }) => Err(String::from("crashed")),
            Err(e) => Err(e.to_string()),
        }
    })
}

fn pending(con: &mut redis::Connection, group: &str) -> i64 {
    let summary: redis::Value = redis::cmd("XPENDING")
        .arg(STREAM)
        .arg(group)
        .query(con)
        .unwrap();
    match summary {
        redis::Value::Array(items) => match items.first() {
            Some(redis::Value::Int(n)) => *n,
            other => panic!("XPENDING: {other:?}"),
        },
        other => panic!("XPENDING: {other:?}"),
    }
}

fn wait_processed(ledger: &Ledger, expected: &[Sent]) {
    let done = poll_until(DEADLINE, || {
        let ledger = ledger.lock().unwrap();
        expected
            .iter()
            .all(|(name, _, _)| ledger.contains_key(name))
            .then_some(())
    });
    if done.is_none() {
        panic!("not all processed: {:?}", ledger.lock().unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_is_processed_by_exactly_the_right_consumer_through_a_restart_and_a_control_outage(
) {
    let broker = RedisBroker::start().unwrap();
    let mut control = control().await;
    let keys = sandboxes(&control).await;
    let mut con = redis::Client::open(broker.url())
        .unwrap()
        .get_connection()
        .unwrap();

    let ledger: Ledger = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let baseline = consumer(&control, "baseline");
    let a = consumer(&control, "worker-a");
    let b = consumer(&control, "worker-b");
    let first = batch(&keys, "1");
    let crash = String::from("1/key-a");
    let threads = vec![
        run(
            &broker,
            Arc::clone(&baseline),
            "baseline",
            Arc::clone(&ledger),
            Arc::clone(&stop),
            None,
        ),
        run(
            &broker,
            Arc::clone(&b),
            "worker-b",
            Arc::clone(&ledger),
            Arc::clone(&stop),
            None,
        ),
    ];
    let crashing = run(
        &broker,
        Arc::clone(&a),
        "worker-a",
        Arc::clone(&ledger),
        Arc::clone(&stop),
        Some(crash.clone()),
    );

    // Round 1: worker-a's consumer crashes on its first message, before acknowledging it.
    publish_batch(&mut con, &first);
    assert_eq!(crashing.join().unwrap(), Err(String::from("crashed")));
    drop(a);
    // Round 2 is published while worker-a's consumer is down.
    let second = batch(&keys, "2");
    publish_batch(&mut con, &second);
    let others: Vec<_> = first
        .iter()
        .chain(&second)
        .filter(|m| m.2 != "worker-a")
        .cloned()
        .collect();
    wait_processed(&ledger, &others);
    assert!(!ledger.lock().unwrap().contains_key(&crash));

    // Restarted (a new process: new watch, same group and consumer name), it
    // reads its pending message first, then what came while it was down.
    let a = consumer(&control, "worker-a");
    let mut threads = threads;
    threads.push(run(
        &broker,
        Arc::clone(&a),
        "worker-a",
        Arc::clone(&ledger),
        Arc::clone(&stop),
        None,
    ));
    let all: Vec<_> = first.iter().chain(&second).cloned().collect();
    wait_processed(&ledger, &all);

    // Round 3 while the control service is down: the last-known-good table decides.
    control.kill();
    let third = batch(&keys, "3");
    publish_batch(&mut con, &third);
    let all: Vec<_> = all.into_iter().chain(third).collect();
    wait_processed(&ledger, &all);

    // Every consumer has read and acknowledged everything; none took more.
    let total = all.len() as u64;
    let settled = poll_until(DEADLINE, || {
        let read = |c: &Consumer| {
            let s = c.stats().snapshot();
            s.processed + s.skipped.values().sum::<u64>()
        };
        let groups_done = ["worker.baseline", "worker.worker-a", "worker.worker-b"]
            .iter()
            .all(|g| pending(&mut con, g) == 0);
        (groups_done && read(&baseline) == total && read(&b) == total).then_some(())
    });
    assert!(settled.is_some(), "a consumer did not read everything");
    stop.store(true, Ordering::SeqCst);
    for thread in threads {
        assert_eq!(thread.join().unwrap(), Ok(()));
    }
    let ledger = ledger.lock().unwrap();
    for (name, _, who) in &all {
        assert_eq!(
            ledger.get(name).map(Vec::as_slice),
            Some(&[*who][..]),
            "{name}"
        );
    }
    assert_eq!(ledger.len(), all.len());

    // Counters: the baseline's (one instance all along) add up exactly.
    let expected = |who: &str| all.iter().filter(|m| m.2 == who).count() as u64;
    let s = baseline.stats().snapshot();
    assert_eq!(s.processed, expected("baseline"));
    assert_eq!(
        s.skipped["sandboxed"],
        expected("worker-a") + expected("worker-b")
    );
    let s = b.stats().snapshot();
    assert_eq!(s.processed, expected("worker-b"));
    assert_eq!(s.skipped["baseline"], expected("baseline"));
    assert_eq!(s.skipped["other_sandbox"], expected("worker-a"));
    assert_eq!(s.skipped["claimed_elsewhere"], 0);
    // The restarted worker-a read rounds 1 (from its crash on) to 3.
    let s = a.stats().snapshot();
    assert_eq!(s.processed, expected("worker-a"));
    assert_eq!(b.stats().skipped(SkipReason::ClaimedElsewhere), 0);

    // Every decision was claimed once, and the claims agree with who processed.
    let claims: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", claim_prefix(STREAM, "worker")))
        .query(&mut con)
        .unwrap();
    assert_eq!(claims.len(), all.len());
}

/// A sandbox created while messages are in flight: the baseline's consumer
/// still has the table without it, the sandbox's consumer the new one. Both
/// would take the sandbox's messages by their own tables; the claims in Redis
/// give each message to exactly one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_whose_tables_differ_still_process_each_message_once() {
    let broker = RedisBroker::start().unwrap();
    let key = "xxxxxxxxxxxxxxxxxxxxxxxx";
    let old = r#"{"version": 1, "entries": []}"#;
    let new = format!(
        r#"{{"version": 2, "entries": [{{"routing_key": "{key}", "sandbox": "worker-x", "forks": [{{"service": "worker", "endpoints": ["127.0.0.1:9109"]}}]}}]}}"#
    );
    let make = |identity: Identity, table: &str| {
        let source = TableSource::from_json(table.as_bytes()).unwrap();
        Arc::new(Consumer::new(identity, Settings::from_json(b"").unwrap(), source).unwrap())
    };
    let baseline = make(Identity::baseline("worker"), old);
    let x = make(Identity::sandboxed("worker", "worker-x"), &new);
    let ledger: Ledger = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let threads = [
        run(
            &broker,
            Arc::clone(&baseline),
            "baseline",
            Arc::clone(&ledger),
            Arc::clone(&stop),
            None,
        ),
        run(
            &broker,
            Arc::clone(&x),
            "worker-x",
            Arc::clone(&ledger),
            Arc::clone(&stop),
            None,
        ),
    ];
    let mut con = redis::Client::open(broker.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let messages: Vec<_> = (0..40)
        .map(|i| {
            let headers = vec![("baggage".to_owned(), format!("sandbox-routing-key={key}"))];
            (format!("m{i}"), headers, "either")
        })
        .collect();
    publish_batch(&mut con, &messages);
    wait_processed(&ledger, &messages);
    let read_all = poll_until(DEADLINE, || {
        [&baseline, &x]
            .iter()
            .all(|c| {
                let s = c.stats().snapshot();
                s.processed + s.skipped.values().sum::<u64>() == messages.len() as u64
            })
            .then_some(())
    });
    assert!(read_all.is_some());
    stop.store(true, Ordering::SeqCst);
    for thread in threads {
        assert_eq!(thread.join().unwrap(), Ok(()));
    }
    let ledger = ledger.lock().unwrap();
    for (name, _, _) in &messages {
        assert_eq!(
            ledger.get(name).map(Vec::len),
            Some(1),
            "{name}: {ledger:?}"
        );
    }
    let (b, s) = (baseline.stats().snapshot(), x.stats().snapshot());
    assert_eq!(b.processed + s.processed, messages.len() as u64);
    // Whoever lost a race followed the first decision.
    assert_eq!(b.skipped["claimed_elsewhere"], s.processed);
    assert_eq!(s.skipped["claimed_elsewhere"], b.processed);
}

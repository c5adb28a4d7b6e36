//! The watch against the real control service (`sandbox-router serve`, built
//! by `cargo build -p sandbox-router-control --bins`): the snapshot, deltas,
//! the acknowledged version in `sandbox-router status`, SIGKILL and restart
//! on the same store and port, the watch token, readers under load, stop.

// Test code: a failed expectation should panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Method;
use sandbox_router_routing::{ForkLookup, RouteLookup};
use sandbox_router_watch::{Watch, WatchConfig};
use serde_json::{json, Value};
use testbed::{poll_until, ControlService};

/// Bounds a hung test only; the watch is much faster.
const DEADLINE: Duration = Duration::from_secs(15);

fn binary() -> PathBuf {
    testbed::sibling_binary("sandbox-router")
        .expect("the control service binary: cargo build -p sandbox-router-control --bins")
}

async fn control() -> ControlService {
    ControlService::start(&binary(), None).await.unwrap()
}

/// Fast reconnects, so the tests do not wait on the default 5 s maximum.
fn config(control: &ControlService, node_id: &str) -> WatchConfig {
    let mut config = WatchConfig::new(control.url(), node_id);
    config.initial_backoff = Duration::from_millis(20);
    config.max_backoff = Duration::from_millis(200);
    config
}

/// Creates sandbox `name` forking `backend` to `endpoint`; returns its
/// routing key and the table version the write made.
async fn create(control: &ControlService, name: &str, endpoint: &str) -> (String, u64) {
    let (status, body) = control
        .api(
            Method::POST,
            "/v1/sandboxes",
            Some(json!({ "name": name, "forks": { "backend": [endpoint] } })),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");
    (
        body["routing_key"].as_str().unwrap().to_owned(),
        body["version"].as_u64().unwrap(),
    )
}

async fn delete(control: &ControlService, name: &str) -> u64 {
    let (status, body) = control
        .api(Method::DELETE, &format!("/v1/sandboxes/{name}"), None)
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    body["version"].as_u64().unwrap()
}

/// Polls `check` (every 20 ms) until it holds, or fails after [`DEADLINE`].
async fn until(what: &str, check: impl Fn() -> bool) {
    poll_until(what, DEADLINE, || {
        let ok = check();
        async move { ok.then_some(()) }
    })
    .await
    .unwrap();
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn routes_to(watch: &Watch, key: &str, endpoint: &str) -> bool {
    let expected = ForkLookup::Endpoints(vec![addr(endpoint)].into());
    watch.table().fork(key, "backend") == expected
        && watch.lookup().fork(key, "backend") == expected
}

fn unknown(watch: &Watch, key: &str) -> bool {
    watch.table().fork(key, "backend") == ForkLookup::UnknownKey
        && watch.lookup().fork(key, "backend") == ForkLookup::UnknownKey
}

/// `sandbox-router --output json status`.
fn cli_status(control: &ControlService) -> Value {
    let out = control.cli(&["--output", "json", "status"]).unwrap();
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The proxy `node_id` as `sandbox-router status` lists it, if connected.
fn listed(control: &ControlService, node_id: &str) -> Option<Value> {
    cli_status(control)["proxies"]
        .as_array()?
        .iter()
        .find(|p| p["node_id"] == node_id)
        .cloned()
}

/// One counter from the control service's `/metrics`.
async fn metric(control: &ControlService, name: &str) -> u64 {
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let text = http
        .get(format!("{}/metrics", control.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

#[tokio::test]
async fn snapshot_then_deltas_acknowledged_in_status() {
    let control = control().await;
    let (early, v1) = create(&control, "early", "10.0.0.1:8080").await;
    let watch = Watch::start(config(&control, "watch-test-node")).unwrap();
    // What the host would publish from each callback: (connected, version).
    let published = Arc::new(Mutex::new(Vec::new()));
    watch.set_notify(Box::new({
        let (reader, published) = (watch.reader(), Arc::clone(&published));
        move || {
            let status = reader.status();
            published
                .lock()
                .unwrap()
                .push((status.connected, status.version));
        }
    }));

    // The initial snapshot holds what existed before the watch started.
    until("the snapshot", || watch.status().version == v1).await;
    assert!(routes_to(&watch, &early, "10.0.0.1:8080"));
    let table = watch.table();
    assert_eq!(table.version(), v1);
    assert_eq!(
        table.routing_key_of("early").as_deref(),
        Some(early.as_str())
    );
    assert!(table.is_registered("backend", addr("10.0.0.1:8080")));

    // A created sandbox arrives as a delta.
    let (late, v2) = create(&control, "late", "10.0.0.2:8080").await;
    until("the created sandbox", || {
        routes_to(&watch, &late, "10.0.0.2:8080")
    })
    .await;
    assert_eq!(watch.table().version(), v2);

    // A deleted one leaves: a delta with the key removed.
    let v3 = delete(&control, "early").await;
    until("the deleted sandbox gone", || unknown(&watch, &early)).await;
    let table = watch.table();
    assert_eq!(table.version(), v3);
    assert_eq!(table.routing_key_of("early"), None);
    assert!(!table.is_registered("backend", addr("10.0.0.1:8080")));
    assert!(routes_to(&watch, &late, "10.0.0.2:8080"));

    let status = watch.status();
    assert!(status.connected);
    assert_eq!(status.version, v3);
    assert_eq!(status.routing_keys, 1);
    assert_eq!(status.connects, 1);
    assert_eq!(status.disconnects, 0);
    assert_eq!(status.updates_applied, 3, "a snapshot and two deltas");
    assert_eq!(status.update_errors, 0);
    // Deltas, not snapshots: one snapshot was ever sent.
    assert_eq!(
        metric(&control, "sandbox_router_snapshots_sent_total").await,
        1
    );
    // A callback after each applied update sees it in place (the two deltas
    // came after `set_notify`; the connect and the snapshot most likely too).
    let published = published.lock().unwrap().clone();
    assert!(
        published.ends_with(&[(true, v2), (true, v3)]),
        "{published:?}"
    );

    // The control service has the acknowledgement: `sandbox-router status`.
    let start = Instant::now();
    let proxy = loop {
        match listed(&control, "watch-test-node") {
            Some(p) if p["applied_version"] == v3 => break p,
            other => assert!(start.elapsed() < DEADLINE, "not acknowledged: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(proxy["error"], "");
    let human = control.cli(&["status"]).unwrap();
    let human = String::from_utf8_lossy(&human.stdout);
    let line = human
        .lines()
        .find(|l| l.starts_with("watch-test-node"))
        .unwrap_or_else(|| panic!("node not listed:\n{human}"));
    assert!(line.ends_with("in sync"), "{line}");
}

#[tokio::test]
async fn the_table_survives_a_sigkill_and_resyncs_on_restart() {
    let mut control = control().await;
    let (a, _) = create(&control, "a", "10.0.0.1:8080").await;
    let (b, v) = create(&control, "b", "10.0.0.2:8080").await;
    let watch = Watch::start(config(&control, "survivor")).unwrap();
    until("the snapshot", || watch.status().version == v).await;

    control.kill();
    until("disconnected", || !watch.status().connected).await;
    // Reconnecting fails (nothing listens) and the table stays.
    until("a failed reconnect", || {
        let s = watch.status();
        s.disconnects == 1
            && s.last_error
                .as_deref()
                .is_some_and(|e| e.starts_with("cannot connect"))
    })
    .await;
    let status = watch.status();
    assert!(!status.connected);
    assert_eq!((status.version, status.routing_keys), (v, 2));
    assert!(routes_to(&watch, &a, "10.0.0.1:8080"));
    assert!(routes_to(&watch, &b, "10.0.0.2:8080"));

    // Changes made while away (by another control service on the same
    // store, on another port the watch does not know).
    let elsewhere = ControlService::start_with_store(&binary(), control.db(), None)
        .await
        .unwrap();
    let (c, _) = create(&elsewhere, "c", "10.0.0.3:8080").await;
    let v_away = delete(&elsewhere, "a").await;
    drop(elsewhere);
    assert!(
        routes_to(&watch, &a, "10.0.0.1:8080"),
        "not connected to it"
    );

    // Back on the same port and store: reconnects and resyncs.
    control.restart().await.unwrap();
    until("resynced", || watch.status().version == v_away).await;
    assert!(unknown(&watch, &a));
    assert!(routes_to(&watch, &b, "10.0.0.2:8080"));
    assert!(routes_to(&watch, &c, "10.0.0.3:8080"));
    let status = watch.status();
    assert!(status.connected);
    assert_eq!(status.connects, 2);
    assert_eq!(status.routing_keys, 2);
    assert_eq!(status.update_errors, 0);
    assert_eq!(status.last_error, None);

    // And deltas flow again.
    let (d, v_new) = create(&control, "d", "10.0.0.4:8080").await;
    until("a new write", || routes_to(&watch, &d, "10.0.0.4:8080")).await;
    assert_eq!(watch.status().version, v_new);
}

#[tokio::test]
async fn a_wrong_watch_token_is_refused() {
    let control = ControlService::start_with_args(&binary(), None, &["--watch-token", "s3cret"])
        .await
        .unwrap();
    let (key, v) = create(&control, "a", "10.0.0.1:8080").await;

    let mut wrong = config(&control, "intruder");
    wrong.token = Some("guessed".into());
    let intruder = Watch::start(wrong).unwrap();
    let anonymous = Watch::start(config(&control, "anonymous")).unwrap();
    // Several refused attempts each, as the control service counts them.
    poll_until("refused attempts", DEADLINE, || async {
        (metric(&control, "sandbox_router_watch_refused_total").await >= 6).then_some(())
    })
    .await
    .unwrap();
    for watch in [&intruder, &anonymous] {
        let status = watch.status();
        assert!(!status.connected);
        assert_eq!((status.connects, status.updates_applied), (0, 0));
        assert_eq!((status.version, status.routing_keys), (0, 0));
        assert!(watch.table().is_empty() && watch.lookup().is_empty());
        assert!(unknown(watch, &key));
        let error = status.last_error.unwrap();
        assert!(error.contains("Unauthenticated"), "{error}");
    }
    assert!(listed(&control, "intruder").is_none());
    assert!(listed(&control, "anonymous").is_none());

    // The right token works.
    let mut right = config(&control, "trusted");
    right.token = Some("s3cret".into());
    let trusted = Watch::start(right).unwrap();
    until("the snapshot", || trusted.status().version == v).await;
    assert!(routes_to(&trusted, &key, "10.0.0.1:8080"));
}

#[tokio::test]
async fn readers_never_block_while_updates_flow() {
    const READERS: usize = 4;
    const UPDATES: usize = 200;
    let control = control().await;
    let watch = Watch::start(config(&control, "busy")).unwrap();
    until("connected", || watch.status().connected).await;

    let reads = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    // While the watch thread is inside its callback (right after a swap),
    // readers must go on reading: they never wait for it.
    let stalls = Arc::new(AtomicU64::new(0));
    let callbacks = Arc::new(AtomicU64::new(0));
    watch.set_notify(Box::new({
        let (reads, stalls, callbacks) = (reads.clone(), stalls.clone(), callbacks.clone());
        let done = done.clone();
        move || {
            callbacks.fetch_add(1, Ordering::SeqCst);
            let (start, at) = (Instant::now(), reads.load(Ordering::SeqCst));
            while reads.load(Ordering::SeqCst) < at + 50 && !done.load(Ordering::SeqCst) {
                if start.elapsed() > Duration::from_secs(2) {
                    stalls.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                std::thread::yield_now();
            }
        }
    }));
    let readers: Vec<_> = (0..READERS)
        .map(|_| {
            let (reader, reads, done) = (watch.reader(), reads.clone(), done.clone());
            std::thread::spawn(move || {
                let (mut slowest, mut slow, mut last_version, mut own) =
                    (Duration::ZERO, 0u64, 0, 0u64);
                while !done.load(Ordering::SeqCst) {
                    let start = Instant::now();
                    let table = reader.table();
                    let lookup = reader.lookup();
                    let _ = table.fork("key", "backend");
                    let in_place = reader.with_lookup(|t| t.version());
                    let took = start.elapsed();
                    slowest = slowest.max(took);
                    slow += u64::from(took > Duration::from_millis(1));
                    // Versions only move forward, in every form.
                    assert!(table.version() >= last_version);
                    assert!(lookup.version() >= last_version);
                    assert!(in_place >= lookup.version());
                    last_version = table.version().min(lookup.version());
                    reads.fetch_add(1, Ordering::SeqCst);
                    own += 1;
                }
                (own, slow, slowest)
            })
        })
        .collect();

    let mut last = 0;
    for i in 0..UPDATES {
        last = create(
            &control,
            &format!("s{i}"),
            &format!("10.0.{}.{}:80", i / 200, i % 200 + 1),
        )
        .await
        .1;
    }
    until("every update", || watch.status().version == last).await;
    done.store(true, Ordering::SeqCst);
    for reader in readers {
        let (own, slow, slowest) = reader.join().unwrap();
        assert!(own > 1000, "a reader made only {own} reads");
        // A read is a few atomic operations. On a loaded 2-core machine (4
        // readers, the watch thread, the control service, builds) a thread
        // is sometimes descheduled mid-read: rare, and never for long.
        assert!(slow * 1000 <= own, "{slow} of {own} reads took over 1 ms");
        assert!(slowest < Duration::from_secs(1), "a read took {slowest:?}");
    }
    let status = watch.status();
    assert_eq!(status.routing_keys, UPDATES);
    assert_eq!(status.update_errors, 0);
    assert!(callbacks.load(Ordering::SeqCst) >= 2);
    assert_eq!(
        stalls.load(Ordering::SeqCst),
        0,
        "readers stopped while the watch thread worked"
    );
}

#[tokio::test]
async fn a_replaced_table_is_freed_by_the_watch_thread_not_by_its_last_reader() {
    let control = control().await;
    let (_, v1) = create(&control, "a", "10.0.0.1:8080").await;
    let watch = Watch::start(config(&control, "tidy")).unwrap();
    until("the snapshot", || watch.status().version == v1).await;
    // What a worker holds mid-request while the next version comes in.
    let (table, lookup) = (watch.table(), watch.lookup());
    let (_, v2) = create(&control, "b", "10.0.0.2:8080").await;
    until("the next version", || watch.status().version == v2).await;
    // The watch still holds the replaced version: dropping ours is not the
    // last reference, so this thread frees nothing...
    assert!(Arc::strong_count(&table) >= 2 && Arc::strong_count(&lookup) >= 2);
    let weak = (Arc::downgrade(&table), Arc::downgrade(&lookup));
    drop((table, lookup));
    // ...and the watch thread frees it soon after (no leak).
    until("the replaced version freed", || {
        weak.0.upgrade().is_none() && weak.1.upgrade().is_none()
    })
    .await;
}

#[tokio::test]
async fn lookup_only_keeps_both_forms_right() {
    let control = control().await;
    let watch = Watch::start_lookup_only(config(&control, "lean")).unwrap();
    let (a, v1) = create(&control, "a", "10.0.0.1:8080").await;
    until("the sandbox", || watch.lookup().version() == v1).await;
    // Compiled on demand, then the same table until the next update.
    let first = watch.table();
    assert_eq!(first.version(), v1);
    assert!(Arc::ptr_eq(&first, &watch.table()));
    assert!(routes_to(&watch, &a, "10.0.0.1:8080"));
    let v2 = delete(&control, "a").await;
    until("the delete", || watch.lookup().version() == v2).await;
    assert!(unknown(&watch, &a));
    assert_eq!(watch.table().version(), v2);
}

#[tokio::test]
async fn stop_disconnects_and_readers_keep_the_last_table() {
    let control = control().await;
    let (key, v) = create(&control, "a", "10.0.0.1:8080").await;
    let watch = Watch::start(config(&control, "leaving")).unwrap();
    until("the snapshot", || watch.status().version == v).await;
    poll_until("listed", DEADLINE, || async {
        listed(&control, "leaving").map(|_| ())
    })
    .await
    .unwrap();
    let reader = watch.reader();
    let start = Instant::now();
    watch.stop();
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "stop took {:?}",
        start.elapsed()
    );
    poll_until("no longer listed", DEADLINE, || async {
        listed(&control, "leaving").is_none().then_some(())
    })
    .await
    .unwrap();
    assert!(!reader.status().connected);
    assert_eq!(
        reader.table().fork(&key, "backend"),
        ForkLookup::Endpoints(vec![addr("10.0.0.1:8080")].into())
    );
}

#[test]
fn configurations_that_can_never_work_are_refused_at_start() {
    let refused = |config: WatchConfig| {
        Watch::start(config).err().map(|e| e.kind()) == Some(std::io::ErrorKind::InvalidInput)
    };
    assert!(refused(WatchConfig::new("https://127.0.0.1:7070", "n")));
    assert!(refused(WatchConfig::new("127.0.0.1:7070", "n")));
    let mut bad_token = WatchConfig::new("http://127.0.0.1:7070", "n");
    bad_token.token = Some("line\nbreak".into());
    assert!(refused(bad_token));
    let mut zero = WatchConfig::new("http://127.0.0.1:7070", "n");
    zero.initial_backoff = Duration::ZERO;
    assert!(refused(zero));
    let mut inverted = WatchConfig::new("http://127.0.0.1:7070", "n");
    inverted.max_backoff = Duration::from_millis(10);
    assert!(refused(inverted));
}

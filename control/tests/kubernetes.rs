//! Kubernetes mode against a mock of the Kubernetes API server
//! (`kubernetes/mock.rs`): no API server can run on these machines. The
//! controller is the real one, talking through a real `kube::Client` whose
//! transport is the mock; the mock starts from recorded API responses
//! (`kubernetes/fixtures/`) and the tests change pods and resources as the
//! cluster would. Assertions are on what reaches the proxies (the model and
//! the deltas of the real `Control`), on the statuses the controller writes
//! back, and on the requests it makes.
//!
//! Also here: the checked-in CRDs equal the generated ones, the examples
//! validate against their schema and keep the labelling rule, the RBAC
//! rules cover every call the controller made, and the CLI's Kubernetes
//! flags.

// Test code: a failed expectation should panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "kubernetes/mock.rs"]
mod mock;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mock::{Kind, MockApiServer};
use sandbox_router_control::kubernetes::{self, reconcile};
use sandbox_router_control::{ApiError, Control};
use sandbox_router_proto::v1::{table_update::Kind as UpdateKind, TableDelta, TableUpdate};
use serde_json::{json, Value};
use tokio::sync::{broadcast, oneshot};

const BIN: &str = env!("CARGO_BIN_EXE_sandbox-router");
/// Bounds a hung test only; the controller reacts in milliseconds.
const DEADLINE: Duration = Duration::from_secs(10);

fn fixtures() -> MockApiServer {
    MockApiServer::with_fixtures(&[
        (
            Kind::Sandbox,
            include_str!("kubernetes/fixtures/sandboxes.json"),
        ),
        (
            Kind::RouteGroup,
            include_str!("kubernetes/fixtures/routegroups.json"),
        ),
        (Kind::Pod, include_str!("kubernetes/fixtures/pods.json")),
    ])
}

/// Starts the controller on `server`; returns once the first table is in.
async fn start(server: &MockApiServer, namespace: Option<&str>) -> Arc<Control> {
    let control = Control::external();
    start_with(server, namespace, Arc::clone(&control)).await;
    control
}

async fn start_with(server: &MockApiServer, namespace: Option<&str>, control: Arc<Control>) {
    let (ready, synced) = oneshot::channel();
    tokio::spawn(kubernetes::run(
        server.client(),
        namespace.map(str::to_owned),
        Arc::clone(&control),
        ready,
    ));
    tokio::time::timeout(DEADLINE, synced)
        .await
        .expect("the first table within the deadline")
        .expect("the controller runs");
}

/// Polls `f` until it gives a value.
async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = tokio::time::Instant::now();
    loop {
        if let Some(value) = f() {
            return value;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The forks of `key` in the table the proxies get; `None`: not in it.
fn forks(control: &Control, key: &str) -> Option<BTreeMap<String, Vec<String>>> {
    control.read(|m, _| {
        m.entry(key).map(|e| {
            e.forks
                .into_iter()
                .map(|f| (f.service, f.endpoints))
                .collect()
        })
    })
}

fn keys(control: &Control) -> Vec<String> {
    control.read(|m, v| {
        let mut keys: Vec<String> = m
            .table(v)
            .entries
            .into_iter()
            .map(|e| e.routing_key)
            .collect();
        keys.sort();
        keys
    })
}

fn endpoints(pairs: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
    pairs
        .iter()
        .map(|(s, e)| ((*s).to_owned(), e.iter().map(|x| (*x).to_owned()).collect()))
        .collect()
}

/// The Routed condition of a resource as stored: (status, reason, message).
fn routed(
    server: &MockApiServer,
    kind: Kind,
    ns: &str,
    name: &str,
) -> Option<(String, String, String)> {
    let object = server.get(kind, ns, name)?;
    let c = object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Routed")?
        .clone();
    Some((
        c["status"].as_str()?.to_owned(),
        c["reason"].as_str()?.to_owned(),
        c["message"].as_str()?.to_owned(),
    ))
}

/// Waits until the resource's Routed condition has `status` and `reason`; returns its message.
async fn until_condition(
    server: &MockApiServer,
    kind: Kind,
    ns: &str,
    name: &str,
    status: &str,
    reason: &str,
) -> String {
    eventually(&format!("{kind:?} {ns}/{name} {status}/{reason}"), || {
        routed(server, kind, ns, name)
            .filter(|(s, r, _)| s == status && r == reason)
            .map(|(_, _, m)| m)
    })
    .await
}

/// The routing key stored in the resource's status.
async fn stored_key(server: &MockApiServer, kind: Kind, ns: &str, name: &str) -> String {
    until_condition(server, kind, ns, name, "True", "Routed").await;
    server.get(kind, ns, name).unwrap()["status"]["routingKey"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The next delta on `updates`, checked to follow `version`.
async fn next_delta(
    updates: &mut broadcast::Receiver<Arc<TableUpdate>>,
    version: &mut u64,
) -> TableDelta {
    let update = tokio::time::timeout(DEADLINE, updates.recv())
        .await
        .expect("an update within the deadline")
        .expect("the update channel is open");
    let Some(UpdateKind::Delta(delta)) = update.kind.clone() else {
        panic!("expected a delta, got {update:?}");
    };
    assert_eq!(delta.base_version, *version, "deltas follow each other");
    assert_eq!(update.version, *version + 1);
    *version = update.version;
    delta
}

/// Waits for the delta that upserts `key` with `expected` forks (skipping
/// deltas about other keys); returns it.
async fn delta_upserting(
    updates: &mut broadcast::Receiver<Arc<TableUpdate>>,
    version: &mut u64,
    key: &str,
    expected: &BTreeMap<String, Vec<String>>,
) -> TableDelta {
    loop {
        let delta = next_delta(updates, version).await;
        let hit = delta
            .upserts
            .iter()
            .find(|e| e.routing_key == key)
            .map(|e| {
                e.forks
                    .iter()
                    .map(|f| (f.service.clone(), f.endpoints.clone()))
                    .collect::<BTreeMap<_, _>>()
            });
        if hit.as_ref() == Some(expected) {
            return delta;
        }
    }
}

fn pod(name: &str) -> Value {
    let list: Value = serde_json::from_str(include_str!("kubernetes/fixtures/pods.json")).unwrap();
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["metadata"]["name"] == name)
        .unwrap()
        .clone()
}

fn sandbox(ns: &str, name: &str) -> Value {
    let list: Value =
        serde_json::from_str(include_str!("kubernetes/fixtures/sandboxes.json")).unwrap();
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["metadata"]["name"] == name && p["metadata"]["namespace"] == ns)
        .unwrap()
        .clone()
}

/// `pod` with its Ready condition (and the container's) set to `ready`.
fn with_ready(mut pod: Value, ready: bool) -> Value {
    let status = if ready { "True" } else { "False" };
    for c in pod["status"]["conditions"].as_array_mut().unwrap() {
        if c["type"] == "Ready" || c["type"] == "ContainersReady" {
            c["status"] = json!(status);
        }
    }
    pod["status"]["containerStatuses"][0]["ready"] = json!(ready);
    pod
}

const FEATURE_X_READY: &str = "backend-feature-x-7c9d5b6f4-x2k8p";
/// Carries a stale routing-key annotation and another one in the fixture.
const FEATURE_X_UNREADY: &str = "backend-feature-x-7c9d5b6f4-q7w3n";
/// Labelled for feature-x but also sandbox-router.io/baseline.
const BASELINE_COPY: &str = "backend-copy-5f8e7d6c9-m4n5b";
/// Carries frontend-y's key already in the fixture.
const FRONTEND_Y_POD: &str = "backend-frontend-y-6d5c4b3a2-z9y8x";

/// The routing-key annotation of pod shop/`name` as stored.
fn pod_key(server: &MockApiServer, name: &str) -> Option<String> {
    server.get(Kind::Pod, "shop", name)?["metadata"]["annotations"]
        [reconcile::ROUTING_KEY_ANNOTATION]
        .as_str()
        .map(str::to_owned)
}

/// Waits until pod shop/`name` carries `key` (`None`: no routing-key annotation).
async fn until_pod_key(server: &MockApiServer, name: &str, key: Option<&str>) {
    eventually(&format!("pod {name} annotated {key:?}"), || {
        (pod_key(server, name).as_deref() == key).then_some(())
    })
    .await;
}

/// The PATCHes of pod shop/`name`, in order: the value each set (`None`: removed).
fn pod_patches(server: &MockApiServer, name: &str) -> Vec<Option<String>> {
    server
        .patches()
        .into_iter()
        .filter(|p| p.namespace == "shop" && p.name == name)
        .map(|p| {
            p.body["metadata"]["annotations"][reconcile::ROUTING_KEY_ANNOTATION]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

/// Returns once every reconciliation the controller began before the call
/// is over (pod writes included): it creates Sandbox `barrier-N` and waits
/// for its status, which only a pass begun after the call can write, and
/// passes run one at a time.
async fn barrier(server: &MockApiServer, n: u32) {
    let mut sandbox = sandbox("shop", "backend-alt");
    sandbox["metadata"] = json!({ "name": format!("barrier-{n}"), "namespace": "barrier" });
    sandbox["spec"] = json!({
        "routingKey": format!("barrier-{n}-key"),
        "forks": [{ "service": "barrier", "endpoints": ["10.20.0.99:80"] }],
    });
    server.apply(Kind::Sandbox, sandbox);
    until_condition(
        server,
        Kind::Sandbox,
        "barrier",
        &format!("barrier-{n}"),
        "True",
        "Routed",
    )
    .await;
}

#[tokio::test]
async fn selector_forks_resolve_to_ready_pod_ips_and_minted_keys_are_stored() {
    let server = fixtures();
    let control = start(&server, None).await;

    // feature-x had no key: the controller minted one and stored it in the
    // status; it routes once stored.
    let key = stored_key(&server, Kind::Sandbox, "shop", "feature-x").await;
    assert_eq!(key.len(), 24, "{key}");
    assert!(key
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));

    // Of the pods labelled for feature-x with app=backend: the Ready one;
    // not the unready one, not the one carrying the baseline label, and not
    // frontend-y's pod with the same app label.
    let expected = endpoints(&[("backend", &["10.244.1.17:8080"])]);
    let got = eventually("feature-x in the table", || forks(&control, &key)).await;
    assert_eq!(got, expected);
    let status = server.get(Kind::Sandbox, "shop", "feature-x").unwrap()["status"].clone();
    assert_eq!(
        status["endpoints"],
        json!({ "backend": ["10.244.1.17:8080"] })
    );
    assert_eq!(status["observedGeneration"], json!(1));
    let (_, _, message) = routed(&server, Kind::Sandbox, "shop", "feature-x").unwrap();
    assert!(
        message.contains("backend-copy-5f8e7d6c9-m4n5b carries sandbox-router.io/baseline"),
        "{message}"
    );

    // A key stored before (a restart of the control service) is kept, and
    // an unchanged status is not rewritten.
    assert_eq!(
        forks(&control, "q8j2k4m6n8p0r2t4v6x8z0b2"),
        Some(endpoints(&[("payments", &["10.20.0.40:9090"])]))
    );
    assert!(
        !server
            .status_writes()
            .iter()
            .any(|w| w["metadata"]["name"] == "payments-z"),
        "payments-z's status was already right"
    );

    // Only the Sandboxes' pods are listed and watched, never the baseline's.
    let pod_calls: Vec<String> = server
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("GET ") && r.contains("/pods"))
        .collect();
    assert!(!pod_calls.is_empty());
    assert!(
        pod_calls
            .iter()
            .all(|r| r.contains("labelSelector=sandbox-router.io%2Fsandbox")),
        "{pod_calls:?}"
    );
}

#[tokio::test]
async fn each_sandboxed_pod_carries_its_sandboxs_routing_key_for_the_downward_api() {
    let server = fixtures();
    let _control = start(&server, None).await;
    let key = stored_key(&server, Kind::Sandbox, "shop", "feature-x").await;

    // The minted key, once stored, on every pod labelled for feature-x,
    // Ready or not; the unready one had a stale key, which is replaced.
    until_pod_key(&server, FEATURE_X_READY, Some(&key)).await;
    until_pod_key(&server, FEATURE_X_UNREADY, Some(&key)).await;
    barrier(&server, 1).await;

    // Each write is a JSON merge patch of that one annotation, by our field
    // manager: the pods' other annotations stay.
    let patches = server.patches();
    for patch in &patches {
        assert_eq!(patch.kind, Kind::Pod, "{patch:?}");
        assert_eq!(patch.content_type, "application/merge-patch+json");
        assert_eq!(patch.field_manager.as_deref(), Some("sandbox-router"));
        let value = &patch.body["metadata"]["annotations"][reconcile::ROUTING_KEY_ANNOTATION];
        assert!(value.is_string() || value.is_null(), "{patch:?}");
        assert_eq!(
            patch.body,
            json!({ "metadata": { "annotations": { reconcile::ROUTING_KEY_ANNOTATION: value } } }),
        );
    }
    assert_eq!(
        server.get(Kind::Pod, "shop", FEATURE_X_UNREADY).unwrap()["metadata"]["annotations"]
            ["prometheus.io/scrape"],
        "true"
    );
    // The ready pod had none: one write. The unready one's stale key went
    // while feature-x had none stored yet, then its key came.
    assert_eq!(pod_patches(&server, FEATURE_X_READY), [Some(key.clone())]);
    assert_eq!(
        pod_patches(&server, FEATURE_X_UNREADY).last(),
        Some(&Some(key.clone()))
    );
    // A pod that carries its key already is not written (frontend-y's fixed
    // key); a pod labelled sandbox-router.io/baseline never is.
    assert_eq!(pod_patches(&server, FRONTEND_Y_POD), []);
    assert_eq!(
        pod_key(&server, FRONTEND_Y_POD).as_deref(),
        Some("frontend-y-review")
    );
    assert_eq!(pod_patches(&server, BASELINE_COPY), []);
    assert_eq!(pod_key(&server, BASELINE_COPY), None);

    // Steady state: more passes (the barrier's own) write nothing.
    barrier(&server, 2).await;
    assert_eq!(server.patches().len(), patches.len());
}

#[tokio::test]
async fn a_new_key_is_rewritten_on_the_pods_and_a_key_no_longer_held_is_removed() {
    let server = fixtures();
    let control = start(&server, None).await;
    let minted = stored_key(&server, Kind::Sandbox, "shop", "feature-x").await;
    until_pod_key(&server, FEATURE_X_READY, Some(&minted)).await;

    // spec.routingKey edited: the pods get the new key.
    let mut pinned = server.get(Kind::Sandbox, "shop", "feature-x").unwrap();
    pinned["spec"]["routingKey"] = json!("feature-x-pinned");
    server.apply(Kind::Sandbox, pinned);
    until_pod_key(&server, FEATURE_X_READY, Some("feature-x-pinned")).await;
    until_pod_key(&server, FEATURE_X_UNREADY, Some("feature-x-pinned")).await;
    assert!(forks(&control, "feature-x-pinned").is_some());
    assert_eq!(forks(&control, &minted), None);

    // A Sandbox refused for taking frontend-y's key: a pod of its own that
    // says that key (a copied manifest) loses it, so it never builds URLs
    // that reach frontend-y.
    let mut thief = sandbox("shop", "backend-alt");
    thief["metadata"]["name"] = json!("thief");
    thief["metadata"]["uid"] = Value::Null;
    thief["metadata"]["creationTimestamp"] = json!("2026-01-11T00:00:00Z");
    thief["spec"] = json!({ "routingKey": "frontend-y-review", "forks": [{ "service": "cart", "endpoints": ["10.20.0.60:80"] }] });
    server.apply(Kind::Sandbox, thief);
    until_condition(&server, Kind::Sandbox, "shop", "thief", "False", "Conflict").await;
    let mut thief_pod = pod(FRONTEND_Y_POD);
    thief_pod["metadata"]["name"] = json!("cart-thief-1");
    thief_pod["metadata"]["uid"] = Value::Null;
    thief_pod["metadata"]["labels"] =
        json!({ "app": "cart", "sandbox-router.io/sandbox": "thief" });
    server.apply(Kind::Pod, thief_pod);
    until_pod_key(&server, "cart-thief-1", None).await;
    assert_eq!(pod_patches(&server, "cart-thief-1"), [None]);

    // Sandbox deleted: its pods' key goes, their other annotations stay.
    server.remove(Kind::Sandbox, "shop", "frontend-y");
    until_pod_key(&server, FRONTEND_Y_POD, None).await;
    assert_eq!(
        server.get(Kind::Pod, "shop", FRONTEND_Y_POD).unwrap()["metadata"]["annotations"],
        json!({ "kubectl.kubernetes.io/restartedAt": "2026-01-10T08:57:30Z" })
    );
}

#[tokio::test]
async fn an_annotation_is_written_once_though_its_watch_event_lags() {
    let server = fixtures();
    // The pods' watch events lag behind the writes: the controller's cache
    // still shows the pods without their key while other changes come in.
    server.hold_events(Kind::Pod);
    let _control = start(&server, None).await;
    let key = stored_key(&server, Kind::Sandbox, "shop", "feature-x").await;
    until_pod_key(&server, FEATURE_X_READY, Some(&key)).await;
    barrier(&server, 1).await;
    barrier(&server, 2).await;
    assert_eq!(pod_patches(&server, FEATURE_X_READY), [Some(key.clone())]);
    // The events arrive: still nothing more to write.
    server.release_events();
    barrier(&server, 3).await;
    assert_eq!(pod_patches(&server, FEATURE_X_READY), [Some(key)]);
}

#[tokio::test]
async fn a_refused_pod_annotation_is_retried_and_never_stops_the_table() {
    let server = fixtures();
    // As with a ClusterRole from before this feature: no patch on pods.
    server.forbid_patches(true);
    let control = start(&server, None).await;
    let key = stored_key(&server, Kind::Sandbox, "shop", "feature-x").await;
    // The table is the same: feature-x routes by its key.
    eventually("feature-x routed", || forks(&control, &key)).await;
    eventually("a refused annotation of feature-x's pod", || {
        pod_patches(&server, FEATURE_X_READY)
            .contains(&Some(key.clone()))
            .then_some(())
    })
    .await;
    assert_eq!(pod_key(&server, FEATURE_X_READY), None);

    // Granted again: the next pass writes it (the retry timer's, at the
    // latest, when nothing else changes in the cluster).
    let attempts = server.patches().len();
    server.forbid_patches(false);
    until_pod_key(&server, FEATURE_X_READY, Some(&key)).await;
    until_pod_key(&server, FEATURE_X_UNREADY, Some(&key)).await;
    assert!(server.patches().len() > attempts);
}

#[tokio::test]
async fn the_first_table_comes_from_complete_lists() {
    let server = fixtures();
    let control = Control::external();
    let (snapshot, mut updates) = control.subscribe();
    assert_eq!(snapshot.version, 0);
    start_with(&server, None, Arc::clone(&control)).await;
    // Version 1 is the first model, made once all three kinds were listed
    // and the keys minted for resources without one were stored: it already
    // has every group and every Sandbox, feature-x's minted key included,
    // and never had the clash group (feature-x, older, wins over it).
    let mut version = 0;
    let first = next_delta(&mut updates, &mut version).await;
    let feature_x = server.get(Kind::Sandbox, "shop", "feature-x").unwrap()["status"]["routingKey"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut keys: Vec<&str> = first
        .upserts
        .iter()
        .map(|e| e.routing_key.as_str())
        .collect();
    keys.sort();
    let mut expected = vec![
        "backend-alt-review",
        "checkout-review",
        "frontend-y-review",
        "q8j2k4m6n8p0r2t4v6x8z0b2",
        feature_x.as_str(),
    ];
    expected.sort();
    assert_eq!(keys, expected);
    assert!(first.removed_keys.is_empty());
}

#[tokio::test]
async fn pod_changes_move_the_endpoints_and_reach_the_proxies_as_deltas() {
    let server = fixtures();
    let control = start(&server, None).await;
    let key = stored_key(&server, Kind::Sandbox, "shop", "feature-x").await;
    eventually("feature-x routed", || forks(&control, &key)).await;
    let (snapshot, mut updates) = control.subscribe();
    let mut version = snapshot.version;

    // The pod's IP changes.
    let mut moved = pod(FEATURE_X_READY);
    moved["status"]["podIP"] = json!("10.244.1.99");
    moved["status"]["podIPs"] = json!([{ "ip": "10.244.1.99" }]);
    server.apply(Kind::Pod, moved.clone());
    let delta = delta_upserting(
        &mut updates,
        &mut version,
        &key,
        &endpoints(&[("backend", &["10.244.1.99:8080"])]),
    )
    .await;
    // The group selecting feature-x changes with it, in the same delta.
    let group = delta
        .upserts
        .iter()
        .find(|e| e.routing_key == "checkout-review")
        .expect("the checkout group is upserted too");
    assert!(group
        .forks
        .iter()
        .any(|f| f.service == "backend" && f.endpoints == ["10.244.1.99:8080"]));
    assert!(delta.removed_keys.is_empty());

    // The second pod becomes Ready: both are endpoints.
    server.apply(Kind::Pod, with_ready(pod(FEATURE_X_UNREADY), true));
    delta_upserting(
        &mut updates,
        &mut version,
        &key,
        &endpoints(&[("backend", &["10.244.1.99:8080", "10.244.2.9:8080"])]),
    )
    .await;

    // Both become unready: no endpoint is left, so the key leaves the table
    // (its requests stay on the baseline) and the status says why.
    server.apply(Kind::Pod, with_ready(moved.clone(), false));
    delta_upserting(
        &mut updates,
        &mut version,
        &key,
        &endpoints(&[("backend", &["10.244.2.9:8080"])]),
    )
    .await;
    server.apply(Kind::Pod, with_ready(pod(FEATURE_X_UNREADY), false));
    let delta = loop {
        let delta = next_delta(&mut updates, &mut version).await;
        if delta.removed_keys.contains(&key) {
            break delta;
        }
    };
    assert!(delta.upserts.iter().all(|e| e.routing_key != key));
    assert_eq!(forks(&control, &key), None);
    let message = until_condition(
        &server,
        Kind::Sandbox,
        "shop",
        "feature-x",
        "False",
        "NoReadyPods",
    )
    .await;
    assert!(message.contains("no Ready pod"), "{message}");
    // The key stays stored: when a pod is Ready again, the same key routes.
    server.apply(Kind::Pod, with_ready(moved, true));
    delta_upserting(
        &mut updates,
        &mut version,
        &key,
        &endpoints(&[("backend", &["10.244.1.99:8080"])]),
    )
    .await;

    // A pod that is terminating is no endpoint, even while still Ready.
    let mut terminating = with_ready(pod(FEATURE_X_READY), true);
    terminating["status"]["podIP"] = json!("10.244.1.99");
    terminating["metadata"]["deletionTimestamp"] = json!("2026-01-10T10:00:00Z");
    server.apply(Kind::Pod, terminating);
    loop {
        let delta = next_delta(&mut updates, &mut version).await;
        if delta.removed_keys.contains(&key) {
            break;
        }
    }
    assert_eq!(forks(&control, &key), None);
}

#[tokio::test]
async fn deleting_a_sandbox_or_group_removes_its_key() {
    let server = fixtures();
    let control = start(&server, None).await;
    let (snapshot, mut updates) = control.subscribe();
    let mut version = snapshot.version;
    assert!(forks(&control, "frontend-y-review").is_some());

    server.remove(Kind::Sandbox, "shop", "frontend-y");
    let delta = loop {
        let delta = next_delta(&mut updates, &mut version).await;
        if delta.removed_keys.contains(&"frontend-y-review".to_owned()) {
            break delta;
        }
    };
    // The group it was in loses its frontend fork in the same delta.
    let group = delta
        .upserts
        .iter()
        .find(|e| e.routing_key == "checkout-review")
        .expect("the group is upserted");
    assert!(group.forks.iter().all(|f| f.service != "frontend"));
    assert_eq!(forks(&control, "frontend-y-review"), None);

    server.remove(Kind::RouteGroup, "shop", "checkout");
    loop {
        let delta = next_delta(&mut updates, &mut version).await;
        if delta.removed_keys.contains(&"checkout-review".to_owned()) {
            break;
        }
    }
    assert_eq!(forks(&control, "checkout-review"), None);
}

#[tokio::test]
async fn invalid_and_conflicting_resources_are_refused_and_never_break_the_rest() {
    let server = fixtures();
    let control = start(&server, None).await;
    let feature_x = stored_key(&server, Kind::Sandbox, "shop", "feature-x").await;

    // An endpoint that is not IP:PORT: the model's own validation, by field.
    let message =
        until_condition(&server, Kind::Sandbox, "shop", "broken", "False", "Invalid").await;
    assert!(
        message.starts_with("forks.backend[0]: must be IP:PORT"),
        "{message}"
    );
    // A name another namespace's Sandbox had first (names are one namespace).
    let message = until_condition(
        &server,
        Kind::Sandbox,
        "other-team",
        "feature-x",
        "False",
        "Conflict",
    )
    .await;
    assert!(
        message.contains("is already sandbox shop/feature-x"),
        "{message}"
    );
    // A group whose members both fork backend: refused, naming both.
    let message = until_condition(
        &server,
        Kind::RouteGroup,
        "shop",
        "clash",
        "False",
        "Conflict",
    )
    .await;
    assert!(
        message.contains("\"backend\"")
            && message.contains("feature-x")
            && message.contains("backend-alt"),
        "{message}"
    );
    // The rest routes: the checkout group combines feature-x and frontend-y.
    until_condition(
        &server,
        Kind::RouteGroup,
        "shop",
        "checkout",
        "True",
        "Routed",
    )
    .await;
    let group = server.get(Kind::RouteGroup, "shop", "checkout").unwrap();
    assert_eq!(
        group["status"]["members"],
        json!(["feature-x", "frontend-y"])
    );
    assert_eq!(
        forks(&control, "checkout-review"),
        Some(endpoints(&[
            ("backend", &["10.244.1.17:8080"]),
            ("frontend", &["10.20.0.15:8080"]),
        ]))
    );
    let mut expected = vec![
        "backend-alt-review".to_owned(),
        "checkout-review".to_owned(),
        "frontend-y-review".to_owned(),
        "q8j2k4m6n8p0r2t4v6x8z0b2".to_owned(),
        feature_x.clone(),
    ];
    expected.sort();
    assert_eq!(keys(&control), expected);

    // A second Sandbox claiming frontend-y's key is refused; frontend-y keeps it.
    let mut thief = sandbox("shop", "backend-alt");
    thief["metadata"]["name"] = json!("thief");
    thief["metadata"]["uid"] = Value::Null;
    thief["metadata"]["creationTimestamp"] = json!("2026-01-11T00:00:00Z");
    thief["spec"] = json!({ "routingKey": "frontend-y-review", "forks": [{ "service": "cart", "endpoints": ["10.20.0.60:80"] }] });
    server.apply(Kind::Sandbox, thief);
    let message =
        until_condition(&server, Kind::Sandbox, "shop", "thief", "False", "Conflict").await;
    assert!(
        message.contains("already the key of sandbox shop/frontend-y"),
        "{message}"
    );
    assert_eq!(
        forks(&control, "frontend-y-review"),
        Some(endpoints(&[("frontend", &["10.20.0.15:8080"])]))
    );

    // A new Sandbox the checkout group's selector picks up, forking backend
    // again: refused (as the API refuses that write); the group keeps routing.
    let mut late = sandbox("shop", "backend-alt");
    late["metadata"]["name"] = json!("feature-z");
    late["metadata"]["uid"] = Value::Null;
    late["metadata"]["labels"] = json!({ "team": "checkout" });
    late["metadata"]["creationTimestamp"] = json!("2026-01-11T00:00:00Z");
    late["spec"] = json!({ "routingKey": "feature-z-review", "forks": [{ "service": "backend", "endpoints": ["10.20.0.80:8080"] }] });
    server.apply(Kind::Sandbox, late);
    let message = until_condition(
        &server,
        Kind::Sandbox,
        "shop",
        "feature-z",
        "False",
        "Conflict",
    )
    .await;
    assert!(
        message.contains("route group \"checkout\" would fork service \"backend\" twice"),
        "{message}"
    );
    assert_eq!(forks(&control, "feature-z-review"), None);
    assert_eq!(
        forks(&control, "checkout-review").unwrap()["backend"],
        ["10.244.1.17:8080"]
    );

    // A fork with both endpoints and a selector, and one with neither.
    let mut both = sandbox("shop", "broken");
    both["metadata"]["name"] = json!("both");
    both["metadata"]["uid"] = Value::Null;
    both["spec"] = json!({ "forks": [{ "service": "cart", "endpoints": ["10.0.0.1:80"], "selector": { "matchLabels": { "app": "cart" } }, "port": 80 }] });
    server.apply(Kind::Sandbox, both);
    let message = until_condition(&server, Kind::Sandbox, "shop", "both", "False", "Invalid").await;
    assert_eq!(
        message,
        "spec.forks[0]: give endpoints, or selector and port"
    );

    // Fixing the broken one makes it route; nothing else changes.
    let before = keys(&control);
    let mut fixed = sandbox("shop", "broken");
    fixed["spec"]["forks"][0]["endpoints"] = json!(["10.20.0.31:8080"]);
    server.apply(Kind::Sandbox, fixed);
    let key = stored_key(&server, Kind::Sandbox, "shop", "broken").await;
    assert_eq!(
        forks(&control, &key),
        Some(endpoints(&[("backend", &["10.20.0.31:8080"])]))
    );
    let mut after = keys(&control);
    after.retain(|k| *k != key);
    assert_eq!(after, before);
    assert_eq!(
        server.get(Kind::Sandbox, "shop", "broken").unwrap()["status"]["observedGeneration"],
        json!(2)
    );
}

#[tokio::test]
async fn a_sandbox_past_its_ttl_is_deleted_and_leaves_the_table() {
    let server = fixtures();
    // Long expired when the controller starts: deleted, never routed.
    let mut old = sandbox("shop", "backend-alt");
    old["metadata"]["name"] = json!("old");
    old["metadata"]["uid"] = json!("11111111-2222-4333-8444-555555555555");
    old["metadata"]["creationTimestamp"] = json!("2020-01-01T00:00:00Z");
    old["spec"] = json!({ "routingKey": "old-review", "ttlSeconds": 60, "forks": [{ "service": "cart", "endpoints": ["10.20.0.70:80"] }] });
    server.apply(Kind::Sandbox, old);
    // Expiring two seconds after the start.
    let now = k8s_openapi::jiff::Timestamp::now();
    let created = now - k8s_openapi::jiff::SignedDuration::from_secs(58);
    let mut soon = sandbox("shop", "backend-alt");
    soon["metadata"]["name"] = json!("soon");
    soon["metadata"]["uid"] = json!("66666666-7777-4888-8999-000000000000");
    soon["metadata"]["creationTimestamp"] = json!(created
        .round(k8s_openapi::jiff::Unit::Second)
        .unwrap()
        .to_string());
    soon["spec"] = json!({ "routingKey": "soon-review", "ttlSeconds": 60, "forks": [{ "service": "cart", "endpoints": ["10.20.0.71:80"] }] });
    server.apply(Kind::Sandbox, soon);

    let control = start(&server, None).await;
    assert_eq!(forks(&control, "old-review"), None);
    eventually("old deleted", || {
        server
            .get(Kind::Sandbox, "shop", "old")
            .is_none()
            .then_some(())
    })
    .await;
    assert!(forks(&control, "soon-review").is_some());
    let (snapshot, mut updates) = control.subscribe();
    let mut version = snapshot.version;
    loop {
        let delta = next_delta(&mut updates, &mut version).await;
        if delta.removed_keys.contains(&"soon-review".to_owned()) {
            break;
        }
    }
    eventually("soon deleted", || {
        server
            .get(Kind::Sandbox, "shop", "soon")
            .is_none()
            .then_some(())
    })
    .await;
    // Each delete named the object's uid, so a Sandbox re-created under the
    // same name in the meantime would not have been deleted.
    let deletes: Vec<String> = server
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("DELETE"))
        .collect();
    assert_eq!(deletes.len(), 2, "{deletes:?}");
    assert_eq!(
        control
            .counters
            .expired_sandboxes
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
}

#[tokio::test]
async fn one_namespace_is_watched_with_namespaced_calls() {
    let server = fixtures();
    let control = start(&server, Some("other-team")).await;
    // Alone in its namespace, other-team/feature-x has no name conflict.
    let key = stored_key(&server, Kind::Sandbox, "other-team", "feature-x").await;
    eventually("other-team/feature-x routed", || forks(&control, &key)).await;
    assert_eq!(keys(&control), [key]);
    let requests = server.requests();
    assert!(
        requests
            .iter()
            .filter(|r| r.starts_with("GET"))
            .all(|r| r.contains("/namespaces/other-team/")),
        "{requests:?}"
    );
    assert_eq!(routed(&server, Kind::Sandbox, "shop", "feature-x"), None);
}

#[tokio::test]
async fn an_expired_watch_is_relisted_and_changes_keep_coming() {
    let server = fixtures();
    let control = start(&server, None).await;
    let key = stored_key(&server, Kind::Sandbox, "shop", "feature-x").await;
    // The API server ends the watches, and answers the pods' next watch
    // with 410 Gone: kube's watcher lists again and watches from there.
    server.expire_next_watch(Kind::Pod);
    server.close_watches();
    let mut moved = pod(FEATURE_X_READY);
    moved["status"]["podIP"] = json!("10.244.1.123");
    server.apply(Kind::Pod, moved);
    let expected = endpoints(&[("backend", &["10.244.1.123:8080"])]);
    eventually("the change after the relist", || {
        (forks(&control, &key).as_ref() == Some(&expected)).then_some(())
    })
    .await;
    let pod_lists = server
        .requests()
        .into_iter()
        .filter(|r| r.contains("/pods?") && !r.contains("watch=true"))
        .count();
    assert!(pod_lists >= 2, "the pods were listed again");
}

#[tokio::test]
async fn the_api_is_read_only_and_reads_and_the_watch_stream_work() {
    use sandbox_router_control::grpc::routing_table_service_client::RoutingTableServiceClient;
    use sandbox_router_proto::v1::WatchRequest;

    let server = fixtures();
    let control = start(&server, None).await;
    let feature_x = stored_key(&server, Kind::Sandbox, "shop", "feature-x").await;
    eventually("feature-x routed", || forks(&control, &feature_x)).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let serving = tokio::spawn(sandbox_router_control::serve(
        listener,
        Arc::clone(&control),
        sandbox_router_control::ServeOptions::default(),
        async {
            let _ = stopped.await;
        },
    ));
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let base = format!("http://{addr}");

    // Every write is refused, well-formed or not, before its body is read.
    for (method, path, body) in [
        (
            reqwest::Method::POST,
            "/v1/sandboxes",
            json!({ "name": "x", "forks": { "b": ["10.0.0.1:80"] } }),
        ),
        (
            reqwest::Method::PUT,
            "/v1/sandboxes/feature-x/forks",
            json!("not even a body"),
        ),
        (
            reqwest::Method::DELETE,
            "/v1/sandboxes/feature-x",
            Value::Null,
        ),
        (
            reqwest::Method::POST,
            "/v1/routegroups",
            json!({ "name": "g", "members": ["feature-x"] }),
        ),
        (
            reqwest::Method::DELETE,
            "/v1/routegroups/checkout",
            Value::Null,
        ),
    ] {
        let response = http
            .request(method.clone(), format!("{base}{path}"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 405, "{method} {path}");
        assert_eq!(response.headers()["allow"], "GET, HEAD");
        let body: Value = response.json().await.unwrap();
        let reason = body["error"]["reason"].as_str().unwrap();
        assert!(
            reason.contains("edit Sandbox and RouteGroup resources"),
            "{reason}"
        );
        assert!(reason.contains("kubectl"), "{reason}");
    }
    // The library refuses too, whoever calls it.
    let refused = control.delete_sandbox("feature-x");
    assert!(matches!(refused, Err(ApiError::ReadOnly(_))), "{refused:?}");
    assert!(forks(&control, &feature_x).is_some());

    // Reads show what the cluster says.
    let list: Value = http
        .get(format!("{base}/v1/sandboxes"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["backend-alt", "feature-x", "frontend-y", "payments-z"]
    );
    let sandbox: Value = http
        .get(format!("{base}/v1/sandboxes/feature-x"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(sandbox["routing_key"], json!(feature_x));
    assert_eq!(sandbox["labels"]["sandbox-router.io/namespace"], "shop");
    let table: Value = http
        .get(format!("{base}/v1/table"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(table["entries"].as_array().unwrap().len(), 5);
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("sandbox_router_rejected_writes_total 6"),
        "{metrics}"
    );

    // A proxy's watch stream: the snapshot, then a pod change as a delta.
    let mut client = RoutingTableServiceClient::connect(base.clone())
        .await
        .unwrap();
    let (hello, requests) = tokio::sync::mpsc::channel(4);
    hello
        .send(WatchRequest {
            node_id: "proxy-1".into(),
            ..WatchRequest::default()
        })
        .await
        .unwrap();
    let mut stream = client
        .watch(tokio_stream::wrappers::ReceiverStream::new(requests))
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    let Some(UpdateKind::Snapshot(snapshot)) = first.kind else {
        panic!("a snapshot first, got {first:?}");
    };
    assert!(snapshot.entries.iter().any(|e| e.routing_key == feature_x));
    let mut moved = pod(FEATURE_X_READY);
    moved["status"]["podIP"] = json!("10.244.1.77");
    server.apply(Kind::Pod, moved);
    let update = tokio::time::timeout(DEADLINE, stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let Some(UpdateKind::Delta(delta)) = update.kind else {
        panic!("a delta, got {update:?}");
    };
    assert_eq!(delta.base_version, first.version);
    let entry = delta
        .upserts
        .iter()
        .find(|e| e.routing_key == feature_x)
        .unwrap();
    assert_eq!(entry.forks[0].endpoints, ["10.244.1.77:8080"]);
    drop(hello);
    let _ = stop.send(());
    let _ = serving.await;
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(workspace_root().join(path)).unwrap()
}

#[test]
fn the_checked_in_crds_are_what_the_code_generates() {
    let generated = kubernetes::crds_yaml().unwrap();
    assert!(
        read("envoy-config/kubernetes/crds.yaml") == generated,
        "envoy-config/kubernetes/crds.yaml differs from the CRDs of control/src/kubernetes/crd.rs; run\n  \
         cargo run -q -p sandbox-router-control -- crds > envoy-config/kubernetes/crds.yaml"
    );
    // And it reads back as the same two CRDs.
    let docs: Vec<Value> = serde_saphyr::from_str_multiple(&generated).unwrap();
    let names: Vec<&str> = docs
        .iter()
        .map(|d| d["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "sandboxes.sandbox-router.io",
            "routegroups.sandbox-router.io"
        ]
    );
    for doc in &docs {
        let version = &doc["spec"]["versions"][0];
        assert_eq!(version["name"], "v1alpha1");
        // The key is written through the status subresource.
        assert_eq!(version["subresources"]["status"], json!({}));
    }
}

/// The openAPIV3Schema of the generated CRD for `kind`.
fn schema(kind: &str) -> Value {
    let docs: Vec<Value> =
        serde_saphyr::from_str_multiple(&kubernetes::crds_yaml().unwrap()).unwrap();
    docs.into_iter()
        .find(|d| d["spec"]["names"]["kind"] == kind)
        .map(|d| d["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone())
        .unwrap()
}

fn examples() -> Vec<Value> {
    serde_saphyr::from_str_multiple(&read("envoy-config/kubernetes/examples.yaml")).unwrap()
}

#[test]
fn the_examples_validate_against_the_crd_schema() {
    let docs = examples();
    let ours: Vec<&Value> = docs
        .iter()
        .filter(|d| d["apiVersion"] == "sandbox-router.io/v1alpha1")
        .collect();
    assert_eq!(ours.len(), 3);
    for doc in &ours {
        let kind = doc["kind"].as_str().unwrap();
        let validator = jsonschema::validator_for(&schema(kind)).unwrap();
        let errors: Vec<String> = validator.iter_errors(doc).map(|e| e.to_string()).collect();
        assert!(
            errors.is_empty(),
            "{kind} {}: {errors:?}",
            doc["metadata"]["name"]
        );
        // And the Rust types read them.
        match kind {
            "Sandbox" => {
                drop(serde_json::from_value::<kubernetes::Sandbox>((*doc).clone()).unwrap())
            }
            "RouteGroup" => {
                drop(serde_json::from_value::<kubernetes::RouteGroup>((*doc).clone()).unwrap())
            }
            other => panic!("unexpected kind {other}"),
        }
    }
    // The schema does refuse what it should: a port out of range, a key
    // with a space, no forks.
    let sandbox = ours.iter().find(|d| d["kind"] == "Sandbox").unwrap();
    let validator = jsonschema::validator_for(&schema("Sandbox")).unwrap();
    for (path, value) in [
        ("/spec/forks/0/port", json!(70000)),
        ("/spec/routingKey", json!("has space")),
        ("/spec/forks", json!([])),
        ("/spec/ttlSeconds", json!(0)),
    ] {
        let mut bad = (*sandbox).clone();
        let (parent, field) = path.rsplit_once('/').unwrap();
        bad.pointer_mut(parent).unwrap()[field] = value;
        assert!(!validator.is_valid(&bad), "{path} should be refused");
    }
}

#[test]
fn the_examples_keep_sandboxed_pods_out_of_the_baseline_service() {
    let docs = examples();
    let find = |kind: &str, name: &str| -> Value {
        docs.iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .cloned()
            .unwrap()
    };
    let labels =
        |v: &Value| -> BTreeMap<String, String> { serde_json::from_value(v.clone()).unwrap() };
    let service = labels(&find("Service", "backend")["spec"]["selector"]);
    let baseline = labels(&find("Deployment", "backend")["spec"]["template"]["metadata"]["labels"]);
    let sandboxed =
        labels(&find("Deployment", "backend-feature-x")["spec"]["template"]["metadata"]["labels"]);
    let selects = |selector: &BTreeMap<String, String>, pod: &BTreeMap<String, String>| {
        selector.iter().all(|(k, v)| pod.get(k) == Some(v))
    };
    assert!(
        selects(&service, &baseline),
        "the Service selects the baseline pods"
    );
    assert!(
        !selects(&service, &sandboxed),
        "the Service never selects the sandboxed pods"
    );
    assert_eq!(
        service.get(reconcile::BASELINE_LABEL).map(String::as_str),
        Some("true")
    );
    assert!(!sandboxed.contains_key(reconcile::BASELINE_LABEL));

    // The Sandbox's selector fork picks the sandboxed pods (and only those).
    let sandbox: kubernetes::Sandbox =
        serde_json::from_value(find("Sandbox", "feature-x")).unwrap();
    let name = sandbox.metadata.name.clone().unwrap();
    assert_eq!(sandboxed.get(reconcile::SANDBOX_LABEL), Some(&name));
    let fork = sandbox.spec.forks[0].selector.clone().unwrap();
    assert!(selects(&fork.match_labels, &sandboxed));

    // Run through the reconciler as Ready pods: the sandboxed pod is the
    // endpoint; a baseline pod is never picked, even with the same app label.
    let pod = |name: &str,
               labels: &BTreeMap<String, String>,
               ip: &str|
     -> Arc<k8s_openapi::api::core::v1::Pod> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": { "name": name, "namespace": "demo", "labels": labels },
                "status": {
                    "phase": "Running", "podIP": ip,
                    "conditions": [{ "type": "Ready", "status": "True" }],
                },
            }))
            .unwrap(),
        )
    };
    let mut with_key = sandbox.clone();
    with_key.status = Some(kubernetes::crd::SandboxStatus {
        routing_key: Some("examplekey".into()),
        ..Default::default()
    });
    let plan = reconcile::plan(
        &[Arc::new(with_key)],
        &[],
        &[
            pod("backend-1", &baseline, "10.1.0.1"),
            pod("backend-feature-x-1", &sandboxed, "10.1.0.2"),
        ],
        0,
    );
    let entry = plan.model.entry("examplekey").unwrap();
    assert_eq!(entry.forks[0].endpoints, ["10.1.0.2:8080"]);
}

#[test]
fn the_example_sandboxed_pod_reads_its_own_key_through_a_downward_api_volume() {
    let docs = examples();
    let deployment = docs
        .iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "backend-feature-x")
        .unwrap();
    let pod = &deployment["spec"]["template"]["spec"];
    // A downward API volume with the annotation the controller writes (and
    // the pod's own Sandbox label)...
    let items_of = |volume: &Value| -> BTreeMap<String, String> {
        volume["downwardAPI"]["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|item| {
                (
                    item["path"].as_str().unwrap().to_owned(),
                    item["fieldRef"]["fieldPath"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| !items_of(v).is_empty())
        .expect("a downwardAPI volume");
    assert_eq!(
        items_of(volume),
        BTreeMap::from([
            (
                "routing-key".to_owned(),
                format!(
                    "metadata.annotations['{}']",
                    reconcile::ROUTING_KEY_ANNOTATION
                )
            ),
            (
                "sandbox".to_owned(),
                format!("metadata.labels['{}']", reconcile::SANDBOX_LABEL)
            ),
        ])
    );
    // ...mounted whole (a subPath mount never sees the update) where the
    // comment says, and no env var instead (fixed at container start).
    let container = &pod["containers"][0];
    let mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == volume["name"])
        .expect("the volume is mounted");
    assert!(mount.get("subPath").is_none(), "{mount}");
    let path = mount["mountPath"].as_str().unwrap();
    let text = read("envoy-config/kubernetes/examples.yaml");
    assert!(
        text.contains(&format!("#   {path}/routing-key\n")),
        "the comment names the file"
    );
    assert!(
        !container
            .to_string()
            .contains(reconcile::ROUTING_KEY_ANNOTATION),
        "no env var reads the key: {container}"
    );
}

#[tokio::test]
async fn the_rbac_rules_cover_every_call_the_controller_makes() {
    // Drive the controller through minting, status writes and a TTL delete,
    // then check every request it made against the shipped ClusterRole.
    let server = fixtures();
    let mut expired = sandbox("shop", "backend-alt");
    expired["metadata"]["name"] = json!("expired");
    expired["metadata"]["uid"] = json!("abababab-2222-4333-8444-555555555555");
    expired["metadata"]["creationTimestamp"] = json!("2020-01-01T00:00:00Z");
    expired["spec"] = json!({ "ttlSeconds": 60, "forks": [{ "service": "cart", "endpoints": ["10.20.0.70:80"] }] });
    server.apply(Kind::Sandbox, expired);
    let _control = start(&server, None).await;
    let key = stored_key(&server, Kind::Sandbox, "shop", "feature-x").await;
    until_pod_key(&server, FEATURE_X_READY, Some(&key)).await;
    until_condition(
        &server,
        Kind::RouteGroup,
        "shop",
        "clash",
        "False",
        "Conflict",
    )
    .await;
    eventually("the expired one deleted", || {
        server
            .get(Kind::Sandbox, "shop", "expired")
            .is_none()
            .then_some(())
    })
    .await;

    let docs: Vec<Value> =
        serde_saphyr::from_str_multiple(&read("envoy-config/kubernetes/control-service.yaml"))
            .unwrap();
    let role = docs.iter().find(|d| d["kind"] == "ClusterRole").unwrap();
    let allowed = |group: &str, resource: &str, verb: &str| {
        role["rules"].as_array().unwrap().iter().any(|rule| {
            let has = |field: &str, value: &str| {
                rule[field].as_array().unwrap().iter().any(|v| v == value)
            };
            has("apiGroups", group) && has("resources", resource) && has("verbs", verb)
        })
    };
    let mut seen = std::collections::BTreeSet::new();
    for request in server.requests() {
        let (method, target) = request.split_once(' ').unwrap();
        let path = target.split('?').next().unwrap();
        let (group, rest) = match path.strip_prefix("/apis/sandbox-router.io/v1alpha1/") {
            Some(rest) => ("sandbox-router.io", rest),
            None => ("", path.strip_prefix("/api/v1/").unwrap()),
        };
        let parts: Vec<&str> = rest.split('/').collect();
        let parts = if parts[0] == "namespaces" {
            &parts[2..]
        } else {
            &parts[..]
        };
        let resource = match parts {
            [plural, _, sub] => format!("{plural}/{sub}"),
            [plural, ..] => (*plural).to_owned(),
            [] => panic!("{request}"),
        };
        let verb = match method {
            "GET" if target.contains("watch=true") => "watch",
            "GET" if parts.len() == 1 => "list",
            "GET" => "get",
            "PUT" => "update",
            "PATCH" => "patch",
            "DELETE" => "delete",
            other => panic!("unexpected {other}"),
        };
        assert!(
            allowed(group, &resource, verb),
            "{request}: {verb} {group}/{resource} is not granted"
        );
        seen.insert(format!("{verb} {resource}"));
    }
    for call in [
        "list sandboxes",
        "watch sandboxes",
        "list routegroups",
        "watch routegroups",
        "list pods",
        "watch pods",
        "patch pods",
        "update sandboxes/status",
        "update routegroups/status",
        "delete sandboxes",
    ] {
        assert!(seen.contains(call), "the run made no {call:?}: {seen:?}");
    }
}

#[test]
fn serve_kubernetes_without_a_cluster_fails_clearly() {
    let home = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(BIN)
        .args(["serve", "--kubernetes", "--listen", "127.0.0.1:0"])
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .env("HOME", home.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--kubernetes: no Kubernetes API to use"),
        "{stderr}"
    );

    // --namespace only means something with --kubernetes.
    let output = std::process::Command::new(BIN)
        .args(["serve", "--namespace", "shop"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));

    // `sandbox-router crds` prints the checked-in file.
    let output = std::process::Command::new(BIN)
        .arg("crds")
        .output()
        .unwrap();
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        read("envoy-config/kubernetes/crds.yaml")
    );
}

#[test]
fn serve_kubernetes_with_an_unreachable_api_server_says_so_and_keeps_trying() {
    use std::io::{BufRead, BufReader};

    // A kubeconfig naming an HTTPS API server on a port nobody listens on:
    // the real client (rustls, ring) is built, every list fails, and the
    // service logs it and retries instead of failing or serving an empty table.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("config");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: test\n\
             clusters:\n- name: test\n  cluster:\n    server: https://127.0.0.1:{port}\n    insecure-skip-tls-verify: true\n\
             users:\n- name: test\n  user:\n    token: not-a-real-token\n\
             contexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n    namespace: shop\n"
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(BIN)
        .args(["serve", "--kubernetes", "--listen", "127.0.0.1:0"])
        .env("KUBECONFIG", &kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    // The shape the test bed parses: "... on http://IP:PORT (...".
    assert!(
        first.starts_with("sandbox-router control service on http://127.0.0.1:")
            && first
                .contains(" (Kubernetes mode: Sandbox and RouteGroup resources in all namespaces;"),
        "{first}"
    );
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        line.starts_with("sandbox-router: kubernetes: watching ") && line.contains("retrying"),
        "{line}"
    );
}

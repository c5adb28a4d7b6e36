//! The controller: watches Sandboxes, RouteGroups and the Sandboxes' Pods,
//! and after every change recomputes the whole model ([`super::reconcile`])
//! and hands it to [`Control::replace_model`], which pushes the difference
//! to every proxy as one delta, exactly as an API write would.
//!
//! Then it writes what changed in the resources' statuses (a minted routing
//! key, the Routed condition, the resolved endpoints), puts each Sandbox's
//! routing key on its pods (annotation [`ROUTING_KEY_ANNOTATION`], for a
//! downward API volume) and deletes Sandboxes past their TTL. API errors are
//! logged and retried; none of them stops the table the proxies hold.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{self, BoxStream};
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::crd::{Condition, RouteGroup, Sandbox};
use super::reconcile::{self, ROUTING_KEY_ANNOTATION, SANDBOX_LABEL};
use crate::control::{now_ms, Control};

/// How soon a failed status write, pod annotation or delete is tried again.
const RETRY: Duration = Duration::from_secs(5);
/// The field manager of the pod annotation (the pods' managedFields name it).
const FIELD_MANAGER: &str = "sandbox-router";

/// A pod annotation written whose watch event has not reached the cache yet:
/// (namespace, name) -> (the resourceVersion the pod had, the key written).
/// While the cache still shows that resourceVersion, the write is not
/// repeated; any newer version of the pod is judged afresh.
type InFlight = BTreeMap<(String, String), (Option<String>, Option<String>)>;

/// One watch stream's news: the store changed, or the watch failed (and is
/// retried with backoff by kube's watcher).
enum Signal {
    Changed,
    Failed(&'static str, watcher::Error),
}

/// Runs the controller until the watch streams end (they do not, in
/// practice: errors are retried). `ready` is sent once the first model,
/// from complete lists of all three kinds, is in `control`: serve proxies
/// only after that, or they would get an empty table and drop their routes.
/// `namespace`: watch one namespace; `None`: all.
pub async fn run(
    client: Client,
    namespace: Option<String>,
    control: Arc<Control>,
    ready: oneshot::Sender<()>,
) {
    let ns = namespace.as_deref();
    let (sandboxes, sandbox_stream) = watch::<Sandbox>(&client, ns, None, "Sandbox", |_| ());
    let (groups, group_stream) = watch::<RouteGroup>(&client, ns, None, "RouteGroup", |_| ());
    // Only the Sandboxes' pods: the baseline's are never listed. Only their
    // labels, status and routing-key annotation are read, so the cache keeps
    // nothing else.
    let (pods, pod_stream) = watch::<Pod>(&client, ns, Some(SANDBOX_LABEL), "Pod", |pod| {
        pod.spec = None;
        pod.metadata.managed_fields = None;
        if let Some(annotations) = &mut pod.metadata.annotations {
            annotations.retain(|k, _| k == ROUTING_KEY_ANNOTATION);
        }
    });
    let mut signals = stream::select_all([sandbox_stream, group_stream, pod_stream]);
    let mut ready = Some(ready);
    let mut wake: Option<Instant> = None;
    let mut store_failed = false;
    let mut in_flight = InFlight::new();
    loop {
        let timer = async {
            match wake {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            signal = signals.next() => match signal {
                Some(signal) => log(signal),
                None => return,
            },
            () = timer => {}
        }
        // Take everything already waiting, then reconcile once.
        while let Some(Some(signal)) = signals.next().now_or_never() {
            log(signal);
        }
        let synced = [is_ready(&sandboxes), is_ready(&groups), is_ready(&pods)];
        if synced.contains(&false) {
            continue;
        }
        let now = now_ms();
        let plan = reconcile::plan(&sandboxes.state(), &groups.state(), &pods.state(), now);
        // The first table waits for minted keys to be stored (one watch
        // round trip), so no proxy sees a table without those resources
        // and, next, with them. Not when storing failed: no waiting forever.
        let hold = ready.is_some() && plan.minting > 0 && !store_failed;
        if !hold {
            control.replace_model(plan.model);
            if let Some(ready) = ready.take() {
                let _ = ready.send(());
            }
        }
        let mut failed = false;
        for (sandbox, status) in plan.sandbox_statuses {
            log_refusal(&*sandbox, "Sandbox", &status.conditions);
            let mut object = (*sandbox).clone();
            object.status = Some(status);
            failed |= !write_status(&client, &object, "Sandbox").await;
        }
        for (group, status) in plan.group_statuses {
            log_refusal(&*group, "RouteGroup", &status.conditions);
            let mut object = (*group).clone();
            object.status = Some(status);
            failed |= !write_status(&client, &object, "RouteGroup").await;
        }
        for sandbox in plan.expired {
            match delete_expired(&client, &sandbox).await {
                Some(true) => {
                    control
                        .counters
                        .expired_sandboxes
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Some(false) => {}
                None => failed = true,
            }
        }
        let expiry = plan
            .next_expiry_ms
            .map(|at| Instant::now() + Duration::from_millis(at.saturating_sub(now_ms())));
        store_failed |= failed;
        // After that: the first table does not wait for pod annotations.
        failed |= !annotate_pods(&client, plan.pod_keys, &mut in_flight).await;
        let retry = failed.then(|| Instant::now() + RETRY);
        wake = match (expiry, retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
}

/// A reflector store of `K` and the stream that fills it.
fn watch<K>(
    client: &Client,
    namespace: Option<&str>,
    label: Option<&str>,
    kind: &'static str,
    trim: fn(&mut K),
) -> (Store<K>, BoxStream<'static, Signal>)
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static,
{
    let api: Api<K> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let mut config = watcher::Config::default();
    if let Some(label) = label {
        config = config.labels(label);
    }
    let (store, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, config).default_backoff().modify(trim))
        .map(move |event| match event {
            Ok(_) => Signal::Changed,
            Err(err) => Signal::Failed(kind, err),
        })
        .boxed();
    (store, stream)
}

fn is_ready<K>(store: &Store<K>) -> bool
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    matches!(store.wait_until_ready().now_or_never(), Some(Ok(())))
}

fn log(signal: Signal) {
    if let Signal::Failed(kind, err) = signal {
        let hint = match &err {
            watcher::Error::InitialListFailed(kube::Error::Api(status))
            | watcher::Error::WatchStartFailed(kube::Error::Api(status))
                if status.code == 404 && kind != "Pod" =>
            {
                " (are the CRDs installed? `sandbox-router crds | kubectl apply -f -`)"
            }
            watcher::Error::InitialListFailed(kube::Error::Api(status))
            | watcher::Error::WatchStartFailed(kube::Error::Api(status))
                if status.code == 403 =>
            {
                " (the control service's ServiceAccount needs get/list/watch on it)"
            }
            _ => "",
        };
        eprintln!("sandbox-router: kubernetes: watching {kind}: {err}{hint}; retrying");
    }
}

/// Says once (when its status changes to it) why a resource is not routed.
fn log_refusal<K: Resource>(object: &K, kind: &str, conditions: &[Condition]) {
    for c in conditions {
        if c.status == "False" && c.reason != reconcile::MINTING {
            eprintln!(
                "sandbox-router: kubernetes: {kind} {}/{} is not routed: {}: {}",
                object.meta().namespace.as_deref().unwrap_or_default(),
                object.meta().name.as_deref().unwrap_or_default(),
                c.reason,
                c.message
            );
        }
    }
}

/// Replaces the status; the object's resourceVersion makes it conditional,
/// so of two writers (say, two replicas minting a key) only one wins and
/// the other sees its key on the next watch event.
async fn write_status<K>(client: &Client, object: &K, kind: &str) -> bool
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Serialize
        + Debug,
{
    let name = object.name_any();
    let namespace = object.namespace().unwrap_or_default();
    let api: Api<K> = Api::namespaced(client.clone(), &namespace);
    match api
        .replace_status(&name, &PostParams::default(), object)
        .await
    {
        Ok(_) => true,
        // Changed since we read it: its watch event brings the news and a new try.
        Err(kube::Error::Api(status)) if status.code == 409 => true,
        // Deleted meanwhile: nothing to write.
        Err(kube::Error::Api(status)) if status.code == 404 => true,
        Err(err) => {
            eprintln!(
                "sandbox-router: kubernetes: writing the status of {kind} {namespace}/{name}: {err}; retrying in {}s",
                RETRY.as_secs()
            );
            false
        }
    }
}

/// Brings each pod's routing-key annotation to its Sandbox's key. False if
/// a write failed (the next reconcile, at the latest after [`RETRY`], tries
/// again).
async fn annotate_pods(
    client: &Client,
    pod_keys: Vec<(Arc<Pod>, Option<String>)>,
    in_flight: &mut InFlight,
) -> bool {
    let mut ok = true;
    let mut written = InFlight::new();
    for (pod, key) in pod_keys {
        let id = (pod.namespace().unwrap_or_default(), pod.name_any());
        let version = (pod.resource_version(), key);
        // Written already, its watch event still on its way: not again.
        let pending = in_flight.get(&id) == Some(&version);
        if pending || annotate(client, &pod, version.1.as_deref()).await {
            written.insert(id, version);
        } else {
            ok = false;
        }
    }
    *in_flight = written;
    ok
}

/// Sets (or, with `None`, removes) a pod's routing-key annotation with a JSON
/// merge patch of that one annotation: the pod's other annotations, labels
/// and spec are not sent. A patch needs no resourceVersion: it is the same
/// whatever the pod holds, and the pod's next watch event shows the result.
async fn annotate(client: &Client, pod: &Pod, key: Option<&str>) -> bool {
    let name = pod.name_any();
    let namespace = pod.namespace().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let patch =
        serde_json::json!({ "metadata": { "annotations": { ROUTING_KEY_ANNOTATION: key } } });
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    match api.patch(&name, &params, &Patch::Merge(&patch)).await {
        Ok(_) => true,
        // Deleted meanwhile: nothing to write.
        Err(kube::Error::Api(status)) if status.code == 404 => true,
        Err(err) => {
            let hint = match &err {
                kube::Error::Api(status) if status.code == 403 => {
                    " (the control service's ServiceAccount needs patch on pods)"
                }
                _ => "",
            };
            eprintln!(
                "sandbox-router: kubernetes: writing {ROUTING_KEY_ANNOTATION} on pod {namespace}/{name}: {err}{hint}; retrying in {}s",
                RETRY.as_secs()
            );
            false
        }
    }
}

/// Deletes a Sandbox past its TTL, only if it is still the same object.
/// `Some(true)`: deleted; `Some(false)`: gone or replaced already; `None`: failed.
async fn delete_expired(client: &Client, sandbox: &Sandbox) -> Option<bool> {
    let name = sandbox.name_any();
    let namespace = sandbox.namespace().unwrap_or_default();
    let api: Api<Sandbox> = Api::namespaced(client.clone(), &namespace);
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: sandbox.uid(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(&name, &params).await {
        Ok(_) => {
            eprintln!(
                "sandbox-router: kubernetes: deleted Sandbox {namespace}/{name}: its TTL ran out"
            );
            Some(true)
        }
        Err(kube::Error::Api(status)) if matches!(status.code, 404 | 409) => Some(false),
        Err(err) => {
            eprintln!(
                "sandbox-router: kubernetes: deleting expired Sandbox {namespace}/{name}: {err}; retrying in {}s",
                RETRY.as_secs()
            );
            None
        }
    }
}

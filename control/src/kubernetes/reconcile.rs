//! From what the cluster holds (Sandboxes, RouteGroups, Pods) to the model
//! the proxies get, the statuses to write, the pod annotations to change
//! and the Sandboxes to delete. Pure: no API calls, so every rule is
//! unit-tested without an API server.
//!
//! The model is built with [`Model`]'s own writes, so its validation and
//! conflict rules are the SQLite mode's. There is no write order to go by,
//! so resources are admitted by age, oldest first, both kinds together: of
//! two that conflict (a name, a key, a service forked twice in a group) the
//! younger is refused, as the API refuses the later write. A refused
//! resource is left out of the table, its status says why, and it never
//! stops the others. Listed group members younger than their group join it
//! afterwards, oldest first, unless they would fork a service twice.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use sandbox_router_routing::key::is_valid_routing_key;

use super::crd::{Condition, ForkSpec, RouteGroup, RouteGroupStatus, Sandbox, SandboxStatus};
use crate::control::mint_key;
use crate::error::ApiError;
use crate::model::{Model, NewRouteGroup, NewSandbox, MAX_TTL_SECONDS};

/// A pod is a fork endpoint only if it carries this label with the
/// Sandbox's name (and the fork's selector labels). The Pod watch selects on
/// it, so the control service never lists the baseline's pods.
pub const SANDBOX_LABEL: &str = "sandbox-router.io/sandbox";
/// The label baseline Services select on. A pod carrying it may get normal
/// traffic, so it is never a fork endpoint.
pub const BASELINE_LABEL: &str = "sandbox-router.io/baseline";
/// Put on every Sandbox in the model and into every RouteGroup selector, so
/// a group only ever selects Sandboxes of its own namespace.
pub const NAMESPACE_LABEL: &str = "sandbox-router.io/namespace";
/// The annotation the controller keeps on each pod of a Sandbox (labelled
/// [`SANDBOX_LABEL`]): the routing key that Sandbox holds, so the workload
/// can read its own key through a downward API volume (webhook URLs).
pub const ROUTING_KEY_ANNOTATION: &str = "sandbox-router.io/routing-key";
/// The condition type in every status.
pub const ROUTED: &str = "Routed";
/// The Routed=False reason while a minted key is being stored.
pub const MINTING: &str = "MintingKey";
/// Most endpoints one fork has (the model's limit); more Ready pods are cut.
const MAX_ENDPOINTS: usize = 64;

/// The outcome of one reconciliation.
#[derive(Debug, Default)]
pub struct Plan {
    pub model: Model,
    /// Sandboxes whose status differs from what they hold: the object as
    /// read (its resourceVersion guards the write) and the new status.
    pub sandbox_statuses: Vec<(Arc<Sandbox>, SandboxStatus)>,
    pub group_statuses: Vec<(Arc<RouteGroup>, RouteGroupStatus)>,
    /// Sandboxes past their TTL, to delete. They are out of the model already.
    pub expired: Vec<Arc<Sandbox>>,
    /// When the next Sandbox in the model expires (Unix ms).
    pub next_expiry_ms: Option<u64>,
    /// Resources whose freshly minted key is not stored yet (they route
    /// once it is).
    pub minting: usize,
    /// Pods whose [`ROUTING_KEY_ANNOTATION`] differs from the key their
    /// Sandbox holds: the pod as read and the key to write (`None`: remove
    /// the annotation, the Sandbox holds no key). Pods already right are
    /// not listed, so a steady state writes nothing.
    pub pod_keys: Vec<(Arc<Pod>, Option<String>)>,
}

/// Why a resource is or is not in the table.
struct Verdict {
    routed: bool,
    reason: &'static str,
    message: String,
}

impl Verdict {
    fn routed(message: String) -> Self {
        Verdict {
            routed: true,
            reason: "Routed",
            message,
        }
    }

    fn not(reason: &'static str, message: impl Into<String>) -> Self {
        Verdict {
            routed: false,
            reason,
            message: message.into(),
        }
    }

    fn refused(err: &ApiError) -> Self {
        let reason = match err {
            ApiError::Conflict { .. } => "Conflict",
            _ => "Invalid",
        };
        Verdict::not(reason, err.to_string())
    }
}

/// A resource, the key its status shows, and what became of it.
type Judged<'a, K, V> = (&'a Arc<K>, Option<String>, V);

/// Forks with their endpoints, and notes on what was left out.
type Resolved = (BTreeMap<String, Vec<String>>, Vec<String>);

/// Where a routing key or a name is taken, for messages: "sandbox ns/name".
type Holders = BTreeMap<String, String>;

pub fn plan(
    sandboxes: &[Arc<Sandbox>],
    groups: &[Arc<RouteGroup>],
    all_pods: &[Arc<Pod>],
    now_ms: u64,
) -> Plan {
    let mut plan = Plan::default();
    let mut claims = Claims {
        // Every key any resource names, so a minted key is new to all of them.
        mentioned: sandboxes
            .iter()
            .flat_map(|s| [s.spec.routing_key.clone(), stored_key(&s.status)])
            .chain(
                groups
                    .iter()
                    .flat_map(|g| [g.spec.routing_key.clone(), stored_group_key(&g.status)]),
            )
            .flatten()
            .collect(),
        names: Holders::new(),
        keys: Holders::new(),
    };
    let pods = PodIndex::new(all_pods);
    // (namespace, Sandbox name) -> the routing key the Sandbox holds: its
    // own, stored (or fixed by spec.routingKey), claimed by no older
    // resource. Whether it routes right now (Ready pods) does not matter.
    let mut held: BTreeMap<(&str, &str), String> = BTreeMap::new();
    // Only the labels some group selects on reach the model: a Sandbox is
    // never refused for labels other tools put on it.
    let selected_keys: BTreeSet<&str> = groups
        .iter()
        .filter_map(|g| g.spec.selector.as_ref())
        .flat_map(|s| s.match_labels.keys().map(String::as_str))
        .collect();

    let mut sandbox_verdicts: Vec<Judged<'_, Sandbox, Verdict>> = Vec::new();
    let mut group_verdicts: Vec<Judged<'_, RouteGroup, Result<Admitted, Verdict>>> = Vec::new();
    for item in oldest_first(sandboxes, groups) {
        match item {
            Item::Sandbox(sandbox) => {
                let meta = &sandbox.metadata;
                let (Some(name), namespace) =
                    (&meta.name, meta.namespace.as_deref().unwrap_or_default())
                else {
                    continue;
                };
                let created_ms = created_ms(meta, now_ms);
                if expired(sandbox.spec.ttl_seconds, created_ms, now_ms) {
                    plan.expired.push(Arc::clone(sandbox));
                    continue;
                }
                let claim = claims.claim(
                    &format!("sandbox {namespace}/{name}"),
                    name,
                    sandbox.spec.routing_key.as_deref(),
                    sandbox
                        .status
                        .as_ref()
                        .and_then(|s| s.routing_key.as_deref()),
                );
                if let Ok(key) = &claim.key {
                    held.insert((namespace, name.as_str()), key.clone());
                }
                let verdict = match claim.key {
                    Err(verdict) => verdict,
                    Ok(key) => AdmitSandbox {
                        model: &mut plan.model,
                        pods: &pods,
                        selected_keys: &selected_keys,
                    }
                    .sandbox(sandbox, name, namespace, key, created_ms),
                };
                sandbox_verdicts.push((sandbox, claim.status_key, verdict));
            }
            Item::Group(group) => {
                let meta = &group.metadata;
                let (Some(name), namespace) =
                    (&meta.name, meta.namespace.as_deref().unwrap_or_default())
                else {
                    continue;
                };
                let claim = claims.claim(
                    &format!("route group {namespace}/{name}"),
                    name,
                    group.spec.routing_key.as_deref(),
                    group.status.as_ref().and_then(|s| s.routing_key.as_deref()),
                );
                let admitted = claim.key.and_then(|key| {
                    admit_group(
                        &mut plan.model,
                        group,
                        name,
                        namespace,
                        key,
                        created_ms(meta, now_ms),
                    )
                });
                group_verdicts.push((group, claim.status_key, admitted));
            }
        }
    }
    // Listed members younger than their group were not there when it was
    // admitted: they join now, unless that would fork a service twice, in
    // which case the group keeps routing without them.
    for (group, _, admitted) in &mut group_verdicts {
        if let Ok(admitted) = admitted {
            admitted.add_late_members(&mut plan.model, group);
        }
    }

    plan.minting = sandbox_verdicts
        .iter()
        .map(|(_, _, v)| v)
        .chain(
            group_verdicts
                .iter()
                .filter_map(|(_, _, a)| a.as_ref().err()),
        )
        .filter(|v| v.reason == MINTING)
        .count();
    for (sandbox, key, verdict) in sandbox_verdicts {
        let old = sandbox.status.clone().unwrap_or_default();
        let endpoints = match (&verdict.routed, sandbox.metadata.name.as_deref()) {
            (true, Some(name)) => plan
                .model
                .sandbox(name)
                .map(|s| s.forks.clone())
                .unwrap_or_default(),
            _ => BTreeMap::new(),
        };
        let status = SandboxStatus {
            routing_key: key,
            endpoints,
            conditions: vec![condition(&old.conditions, verdict, now_ms)],
            observed_generation: sandbox.metadata.generation,
        };
        if !same_status(&old.conditions, &status.conditions)
            || (&old.routing_key, &old.endpoints, old.observed_generation)
                != (
                    &status.routing_key,
                    &status.endpoints,
                    status.observed_generation,
                )
        {
            plan.sandbox_statuses.push((Arc::clone(sandbox), status));
        }
    }
    for (group, key, admitted) in group_verdicts {
        let old = group.status.clone().unwrap_or_default();
        let name = group.metadata.name.as_deref().unwrap_or_default();
        let (members, verdict) = match admitted {
            Ok(admitted) => (
                plan.model.group_members(name),
                admitted.verdict(&plan.model, name),
            ),
            Err(verdict) => (Vec::new(), verdict),
        };
        let status = RouteGroupStatus {
            routing_key: key,
            members,
            conditions: vec![condition(&old.conditions, verdict, now_ms)],
            observed_generation: group.metadata.generation,
        };
        if !same_status(&old.conditions, &status.conditions)
            || (&old.routing_key, &old.members, old.observed_generation)
                != (
                    &status.routing_key,
                    &status.members,
                    status.observed_generation,
                )
        {
            plan.group_statuses.push((Arc::clone(group), status));
        }
    }
    plan.next_expiry_ms = plan.model.next_expiry_ms();
    plan.pod_keys = pod_keys(all_pods, &held);
    plan
}

/// The pods whose routing-key annotation is not the key their Sandbox
/// holds. Never a pod carrying [`BASELINE_LABEL`] (it may serve normal
/// traffic, and it is not the Sandbox's to write on), nor one terminating.
fn pod_keys(
    pods: &[Arc<Pod>],
    held: &BTreeMap<(&str, &str), String>,
) -> Vec<(Arc<Pod>, Option<String>)> {
    pods.iter()
        .filter_map(|pod| {
            let meta = &pod.metadata;
            let labels = meta.labels.as_ref()?;
            let sandbox = labels.get(SANDBOX_LABEL)?;
            if labels.contains_key(BASELINE_LABEL) || meta.deletion_timestamp.is_some() {
                return None;
            }
            let namespace = meta.namespace.as_deref().unwrap_or_default();
            let want = held.get(&(namespace, sandbox.as_str()));
            let has = meta
                .annotations
                .as_ref()
                .and_then(|a| a.get(ROUTING_KEY_ANNOTATION));
            (want != has).then(|| (Arc::clone(pod), want.cloned()))
        })
        .collect()
}

/// True when a TTL is set, valid, and over.
fn expired(ttl_seconds: Option<i64>, created_ms: u64, now_ms: u64) -> bool {
    ttl_seconds
        .and_then(|ttl| u64::try_from(ttl).ok())
        .filter(|ttl| (1..=MAX_TTL_SECONDS).contains(ttl))
        .is_some_and(|ttl| created_ms.saturating_add(ttl.saturating_mul(1000)) <= now_ms)
}

fn stored_key(status: &Option<SandboxStatus>) -> Option<String> {
    status.as_ref().and_then(|s| s.routing_key.clone())
}

fn stored_group_key(status: &Option<RouteGroupStatus>) -> Option<String> {
    status.as_ref().and_then(|s| s.routing_key.clone())
}

/// Names and routing keys, handed out oldest resource first. An older
/// resource keeps its name and key whether it routes or not, so a newer one
/// never flips between routed and refused as an older one breaks or heals.
struct Claims {
    mentioned: BTreeSet<String>,
    names: Holders,
    keys: Holders,
}

/// A resource's claim: its key, stored in the cluster, to route by; or why not.
struct Claim {
    key: Result<String, Verdict>,
    /// What status.routingKey should say.
    status_key: Option<String>,
}

impl Claims {
    fn claim(&mut self, me: &str, name: &str, spec: Option<&str>, stored: Option<&str>) -> Claim {
        let refuse = |verdict: Verdict| Claim {
            key: Err(verdict),
            status_key: spec.or(stored).map(str::to_owned),
        };
        if let Some(holder) = self.names.get(name) {
            return refuse(Verdict::not(
                "Conflict",
                format!(
                    "metadata.name: {name:?} is already {holder} (names are one namespace across the namespaces watched, since an Override names them)"
                ),
            ));
        }
        self.names.insert(name.to_owned(), me.to_owned());
        // A status key edited into something else is replaced, not trusted.
        let stored = stored.filter(|k| is_valid_routing_key(k.as_bytes()));
        let key = match (spec, stored) {
            (Some(key), _) if !is_valid_routing_key(key.as_bytes()) => {
                return refuse(Verdict::not(
                    "Invalid",
                    "spec.routingKey: must be 1-64 of A-Z a-z 0-9 - _",
                ))
            }
            (Some(key), _) | (None, Some(key)) => key.to_owned(),
            (None, None) => match mint_key(|k| self.mentioned.contains(k)) {
                Ok(key) => {
                    self.mentioned.insert(key.clone());
                    self.keys.insert(key.clone(), me.to_owned());
                    return Claim {
                        key: Err(Verdict::not(
                            MINTING,
                            "routing key minted; routing starts once it is stored in this status",
                        )),
                        status_key: Some(key),
                    };
                }
                Err(err) => return refuse(Verdict::not("Invalid", err.to_string())),
            },
        };
        if let Some(holder) = self.keys.get(&key) {
            return refuse(Verdict::not(
                "Conflict",
                format!("routingKey: already the key of {holder}"),
            ));
        }
        self.keys.insert(key.clone(), me.to_owned());
        Claim {
            status_key: Some(key.clone()),
            key: Ok(key),
        }
    }
}

/// Admits Sandboxes into the model.
struct AdmitSandbox<'a> {
    model: &'a mut Model,
    pods: &'a PodIndex<'a>,
    selected_keys: &'a BTreeSet<&'a str>,
}

impl AdmitSandbox<'_> {
    fn sandbox(
        &mut self,
        sandbox: &Sandbox,
        name: &str,
        namespace: &str,
        key: String,
        created_ms: u64,
    ) -> Verdict {
        let (forks, notes) = match self.forks(&sandbox.spec.forks, name, namespace) {
            Ok(resolved) => resolved,
            Err(verdict) => return verdict,
        };
        if forks.is_empty() {
            return Verdict::not("NoReadyPods", notes.join("; "));
        }
        let mut labels: BTreeMap<String, String> = sandbox
            .metadata
            .labels
            .iter()
            .flatten()
            .filter(|(k, v)| self.selected_keys.contains(k.as_str()) && !v.is_empty())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        labels.insert(NAMESPACE_LABEL.to_owned(), namespace.to_owned());
        let new = NewSandbox {
            name: name.to_owned(),
            forks,
            labels,
            // A negative TTL becomes 0, which the model refuses as it should.
            ttl_seconds: sandbox
                .spec
                .ttl_seconds
                .map(|ttl| u64::try_from(ttl).unwrap_or(0)),
        };
        match self.model.create_sandbox(new, key, created_ms) {
            Ok(_) => {
                let mut message: Vec<String> = self
                    .model
                    .sandbox(name)
                    .map(|s| {
                        s.forks
                            .iter()
                            .map(|(svc, e)| format!("{svc}: {}", e.join(", ")))
                            .collect()
                    })
                    .unwrap_or_default();
                message.extend(notes);
                Verdict::routed(message.join("; "))
            }
            Err(err) => Verdict::refused(&err),
        }
    }

    /// The forks with their endpoints (selector forks resolved to Ready pods;
    /// those with none left out), and notes on what was left out and why.
    fn forks(&self, specs: &[ForkSpec], name: &str, namespace: &str) -> Result<Resolved, Verdict> {
        let mut forks = BTreeMap::new();
        let mut notes = Vec::new();
        for (i, fork) in specs.iter().enumerate() {
            let field = format!("spec.forks[{i}]");
            if specs.iter().take(i).any(|f| f.service == fork.service) {
                return Err(Verdict::not(
                    "Invalid",
                    format!("{field}.service: {:?} is forked twice", fork.service),
                ));
            }
            let endpoints = match (&fork.selector, fork.endpoints.is_empty()) {
                (None, false) if fork.port.is_none() => fork.endpoints.clone(),
                (Some(selector), true) => {
                    let port = fork
                        .port
                        .and_then(|p| u16::try_from(p).ok())
                        .filter(|p| *p != 0)
                        .ok_or_else(|| {
                            Verdict::not(
                                "Invalid",
                                format!(
                                    "{field}.port: a selector fork needs the pods' port, 1-65535"
                                ),
                            )
                        })?;
                    if selector.match_labels.is_empty() {
                        return Err(Verdict::not(
                            "Invalid",
                            format!("{field}.selector.matchLabels: name at least one label"),
                        ));
                    }
                    let (endpoints, mut why) =
                        self.pods
                            .endpoints(namespace, name, &selector.match_labels, port);
                    if endpoints.is_empty() {
                        why.insert(
                            0,
                            format!(
                                "{}: no Ready pod with {SANDBOX_LABEL}={name} matches the selector, so its requests stay on the baseline",
                                fork.service
                            ),
                        );
                    }
                    notes.extend(why);
                    endpoints
                }
                _ => {
                    return Err(Verdict::not(
                        "Invalid",
                        format!("{field}: give endpoints, or selector and port"),
                    ))
                }
            };
            if !endpoints.is_empty() {
                forks.insert(fork.service.clone(), endpoints);
            }
        }
        Ok((forks, notes))
    }
}

/// A route group that claimed its name and key, and what its status says.
struct Admitted {
    namespace: String,
    key: String,
    created_ms: u64,
    /// False while every listed member is absent (and there is no selector):
    /// the model wants a member, so the group waits for the late pass.
    in_model: bool,
    /// Listed members in the model.
    members: Vec<String>,
    selector: BTreeMap<String, String>,
    /// Listed members that are not (yet) routed Sandboxes of the namespace.
    absent: Vec<String>,
    /// Why a listed member could not join late.
    notes: Vec<String>,
}

impl Admitted {
    fn add_late_members(&mut self, model: &mut Model, group: &RouteGroup) {
        let name = group.metadata.name.as_deref().unwrap_or_default();
        let (late, absent): (Vec<String>, Vec<String>) = std::mem::take(&mut self.absent)
            .into_iter()
            .partition(|m| in_namespace(model, m, &self.namespace));
        self.absent = absent;
        // Oldest first, as everywhere: of two that clash, the older joins.
        let mut late: Vec<(u64, String)> = late
            .into_iter()
            .map(|m| (model.sandbox(&m).map_or(0, |s| s.created_at_ms), m))
            .collect();
        late.sort();
        for (_, member) in late {
            let mut members = self.members.clone();
            members.push(member.clone());
            let joined = if self.in_model {
                let update = NewRouteGroup {
                    name: String::new(),
                    members: members.clone(),
                    selector: self.selector.clone(),
                };
                model.update_group(name, update)
            } else {
                let new = NewRouteGroup {
                    name: name.to_owned(),
                    members: members.clone(),
                    selector: self.selector.clone(),
                };
                model.create_group(new, self.key.clone(), self.created_ms)
            };
            match joined {
                Ok(_) => {
                    self.in_model = true;
                    self.members = members;
                }
                Err(err) => self.notes.push(format!("{member} left out: {err}")),
            }
        }
    }

    fn verdict(self, model: &Model, name: &str) -> Verdict {
        let mut notes: Vec<String> = Vec::new();
        if !self.absent.is_empty() {
            notes.push(format!(
                "not a routed Sandbox of namespace {}: {}",
                self.namespace,
                self.absent.join(", ")
            ));
        }
        notes.extend(self.notes);
        if !self.in_model {
            notes.insert(0, "no member is routed".to_owned());
            return Verdict::not("NoMembers", notes.join("; "));
        }
        notes.insert(
            0,
            format!("combines {}", model.group_members(name).join(", ")),
        );
        Verdict::routed(notes.join("; "))
    }
}

fn in_namespace(model: &Model, sandbox: &str, namespace: &str) -> bool {
    model
        .sandbox(sandbox)
        .is_some_and(|s| s.labels.get(NAMESPACE_LABEL).map(String::as_str) == Some(namespace))
}

fn admit_group(
    model: &mut Model,
    group: &RouteGroup,
    name: &str,
    namespace: &str,
    key: String,
    created_ms: u64,
) -> Result<Admitted, Verdict> {
    let mut members: Vec<String> = Vec::new();
    let mut absent: Vec<String> = Vec::new();
    for member in &group.spec.members {
        // Only Sandboxes of the group's own namespace that are routed.
        if members.contains(member) || absent.contains(member) {
            continue;
        }
        if in_namespace(model, member, namespace) {
            members.push(member.clone());
        } else {
            absent.push(member.clone());
        }
    }
    let selector: BTreeMap<String, String> = match &group.spec.selector {
        None => BTreeMap::new(),
        Some(s) => {
            let mut labels = s.match_labels.clone();
            labels.insert(NAMESPACE_LABEL.to_owned(), namespace.to_owned());
            labels
        }
    };
    if group.spec.members.is_empty() && selector.is_empty() {
        return Err(Verdict::not(
            "Invalid",
            "spec: list members, or give a selector, or both",
        ));
    }
    let in_model = !(members.is_empty() && selector.is_empty());
    if in_model {
        let new = NewRouteGroup {
            name: name.to_owned(),
            members: members.clone(),
            selector: selector.clone(),
        };
        model
            .create_group(new, key.clone(), created_ms)
            .map_err(|err| Verdict::refused(&err))?;
    }
    Ok(Admitted {
        namespace: namespace.to_owned(),
        key,
        created_ms,
        in_model,
        members,
        selector,
        absent,
        notes: Vec::new(),
    })
}

/// Pods by (namespace, value of the sandbox label).
struct PodIndex<'a> {
    by_sandbox: BTreeMap<(&'a str, &'a str), Vec<&'a Pod>>,
}

impl<'a> PodIndex<'a> {
    fn new(pods: &'a [Arc<Pod>]) -> Self {
        let mut by_sandbox: BTreeMap<(&str, &str), Vec<&Pod>> = BTreeMap::new();
        for pod in pods {
            let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
            if let Some(sandbox) = pod
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SANDBOX_LABEL))
            {
                by_sandbox
                    .entry((namespace, sandbox.as_str()))
                    .or_default()
                    .push(pod);
            }
        }
        PodIndex { by_sandbox }
    }

    /// The endpoints of the Ready pods of `sandbox` that match `selector`,
    /// sorted, and notes on pods left out.
    fn endpoints(
        &self,
        namespace: &str,
        sandbox: &str,
        selector: &BTreeMap<String, String>,
        port: u16,
    ) -> (Vec<String>, Vec<String>) {
        let mut addrs: BTreeSet<SocketAddr> = BTreeSet::new();
        let mut notes = Vec::new();
        let pods = self
            .by_sandbox
            .get(&(namespace, sandbox))
            .map(Vec::as_slice)
            .unwrap_or_default();
        for pod in pods {
            let labels = pod.metadata.labels.as_ref();
            let matches = selector
                .iter()
                .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v));
            if !matches {
                continue;
            }
            if labels.is_some_and(|l| l.contains_key(BASELINE_LABEL)) {
                notes.push(format!(
                    "pod {} carries {BASELINE_LABEL}, so the baseline Service may send it normal traffic: not used (take the label off the sandboxed workload)",
                    pod.metadata.name.as_deref().unwrap_or_default()
                ));
                continue;
            }
            if let Some(ip) = ready_ip(pod) {
                addrs.insert(SocketAddr::new(ip, port));
            }
        }
        if addrs.len() > MAX_ENDPOINTS {
            notes.push(format!(
                "{} Ready pods match; the first {MAX_ENDPOINTS} by address are used",
                addrs.len()
            ));
        }
        let endpoints = addrs
            .iter()
            .take(MAX_ENDPOINTS)
            .map(SocketAddr::to_string)
            .collect();
        (endpoints, notes)
    }
}

/// The pod's IP if it can take requests: Running, Ready, not terminating.
fn ready_ip(pod: &Pod) -> Option<IpAddr> {
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() != Some("Running") {
        return None;
    }
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    if !ready {
        return None;
    }
    status.pod_ip.as_deref()?.parse().ok()
}

enum Item<'a> {
    Sandbox(&'a Arc<Sandbox>),
    Group(&'a Arc<RouteGroup>),
}

/// Live resources of both kinds, oldest first (at the same second, Sandboxes
/// before groups, then by namespace and name). Admitting them in this order
/// settles conflicts as the API does: the resource that would break an older
/// one is refused, whichever kind it is.
fn oldest_first<'a>(sandboxes: &'a [Arc<Sandbox>], groups: &'a [Arc<RouteGroup>]) -> Vec<Item<'a>> {
    let live = |meta: &ObjectMeta| meta.deletion_timestamp.is_none();
    let mut items: Vec<(SortKey, Item<'a>)> = sandboxes
        .iter()
        .filter(|s| live(&s.metadata))
        .map(|s| (sort_key(&s.metadata, 0), Item::Sandbox(s)))
        .chain(
            groups
                .iter()
                .filter(|g| live(&g.metadata))
                .map(|g| (sort_key(&g.metadata, 1), Item::Group(g))),
        )
        .collect();
    items.sort_by(|a, b| a.0.cmp(&b.0));
    items.into_iter().map(|(_, item)| item).collect()
}

type SortKey = (Option<i64>, u8, Option<String>, Option<String>);

fn sort_key(meta: &ObjectMeta, kind: u8) -> SortKey {
    (
        meta.creation_timestamp.as_ref().map(|t| t.0.as_second()),
        kind,
        meta.namespace.clone(),
        meta.name.clone(),
    )
}

fn created_ms(meta: &ObjectMeta, now_ms: u64) -> u64 {
    meta.creation_timestamp
        .as_ref()
        .and_then(|t| u64::try_from(t.0.as_millisecond()).ok())
        .unwrap_or(now_ms)
}

/// The Routed condition, keeping its transition time while its status holds.
fn condition(old: &[Condition], verdict: Verdict, now_ms: u64) -> Condition {
    let status = if verdict.routed { "True" } else { "False" };
    let since = old
        .iter()
        .find(|c| c.type_ == ROUTED && c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| timestamp(now_ms));
    Condition {
        type_: ROUTED.to_owned(),
        status: status.to_owned(),
        reason: verdict.reason.to_owned(),
        message: verdict.message,
        last_transition_time: Some(since),
    }
}

/// Conditions equal but for their transition times.
fn same_status(old: &[Condition], new: &[Condition]) -> bool {
    let strip = |c: &[Condition]| -> Vec<Condition> {
        c.iter()
            .map(|c| Condition {
                last_transition_time: None,
                ..c.clone()
            })
            .collect()
    };
    strip(old) == strip(new)
}

/// RFC 3339 in seconds, as Kubernetes writes times.
fn timestamp(now_ms: u64) -> String {
    let seconds = i64::try_from(now_ms / 1000).unwrap_or(0);
    k8s_openapi::jiff::Timestamp::from_second(seconds)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sandbox(
        name: &str,
        created: &str,
        key: &str,
        labels: serde_json::Value,
        forks: serde_json::Value,
    ) -> Arc<Sandbox> {
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "sandbox-router.io/v1alpha1", "kind": "Sandbox",
                "metadata": { "name": name, "namespace": "ns", "creationTimestamp": created, "labels": labels, "generation": 1 },
                "spec": { "routingKey": key, "forks": forks },
            }))
            .unwrap(),
        )
    }

    fn group(name: &str, created: &str, spec: serde_json::Value) -> Arc<RouteGroup> {
        let mut spec = spec;
        spec["routingKey"] = json!(format!("{name}-key"));
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "sandbox-router.io/v1alpha1", "kind": "RouteGroup",
                "metadata": { "name": name, "namespace": "ns", "creationTimestamp": created, "generation": 1 },
                "spec": spec,
            }))
            .unwrap(),
        )
    }

    fn pod(name: &str, ip: &str, labels: serde_json::Value, ready: bool) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": { "name": name, "namespace": "ns", "labels": labels },
                "status": {
                    "phase": "Running", "podIP": ip,
                    "conditions": [{ "type": "Ready", "status": if ready { "True" } else { "False" } }],
                },
            }))
            .unwrap(),
        )
    }

    fn fork(service: &str, endpoint: &str) -> serde_json::Value {
        json!([{ "service": service, "endpoints": [endpoint] }])
    }

    /// (reason, message) of a resource's new status in the plan.
    fn sandbox_verdict(plan: &Plan, name: &str) -> (String, String) {
        let (_, status) = plan
            .sandbox_statuses
            .iter()
            .find(|(s, _)| s.metadata.name.as_deref() == Some(name))
            .unwrap();
        (
            status.conditions[0].reason.clone(),
            status.conditions[0].message.clone(),
        )
    }

    fn group_verdict(plan: &Plan, name: &str) -> (String, String) {
        let (_, status) = plan
            .group_statuses
            .iter()
            .find(|(g, _)| g.metadata.name.as_deref() == Some(name))
            .unwrap();
        (
            status.conditions[0].reason.clone(),
            status.conditions[0].message.clone(),
        )
    }

    const T1: &str = "2026-01-10T09:00:00Z";
    const T2: &str = "2026-01-10T09:01:00Z";
    const T3: &str = "2026-01-10T09:02:00Z";

    #[test]
    fn conflicts_are_settled_by_age_whatever_the_kind() {
        // An older group: the younger Sandbox its selector picks up is
        // refused, as the API refuses that write; the group keeps routing.
        let a = sandbox(
            "a",
            T1,
            "ka",
            json!({ "team": "x" }),
            fork("backend", "10.0.0.1:80"),
        );
        let g = group(
            "g",
            T2,
            json!({ "selector": { "matchLabels": { "team": "x" } } }),
        );
        let b = sandbox(
            "b",
            T3,
            "kb",
            json!({ "team": "x" }),
            fork("backend", "10.0.0.2:80"),
        );
        let plan = super::plan(&[b.clone(), a.clone()], std::slice::from_ref(&g), &[], 0);
        let (reason, message) = sandbox_verdict(&plan, "b");
        assert_eq!(reason, "Conflict");
        assert!(
            message.contains("would fork service \"backend\" twice"),
            "{message}"
        );
        assert!(plan.model.entry("kb").is_none());
        assert_eq!(
            plan.model.entry("g-key").unwrap().forks[0].endpoints,
            ["10.0.0.1:80"]
        );

        // A younger group over two older Sandboxes that clash: the group is refused.
        let g = group(
            "g",
            T3,
            json!({ "selector": { "matchLabels": { "team": "x" } } }),
        );
        let b = sandbox(
            "b",
            T2,
            "kb",
            json!({ "team": "x" }),
            fork("backend", "10.0.0.2:80"),
        );
        let plan = super::plan(&[a, b], &[g], &[], 0);
        assert_eq!(group_verdict(&plan, "g").0, "Conflict");
        assert!(plan.model.entry("ka").is_some() && plan.model.entry("kb").is_some());
        assert!(plan.model.entry("g-key").is_none());
    }

    #[test]
    fn listed_members_younger_than_their_group_join_unless_they_clash() {
        let g = group("g", T1, json!({ "members": ["a", "b", "gone"] }));
        let a = sandbox("a", T2, "ka", json!({}), fork("backend", "10.0.0.1:80"));
        let b = sandbox("b", T3, "kb", json!({}), fork("backend", "10.0.0.2:80"));
        let plan = super::plan(&[a, b], &[g], &[], 0);
        let (reason, message) = group_verdict(&plan, "g");
        assert_eq!(reason, "Routed");
        assert!(message.starts_with("combines a;"), "{message}");
        assert!(message.contains("gone"), "{message}");
        assert!(message.contains("b left out"), "{message}");
        assert_eq!(plan.model.group_members("g"), ["a"]);
        // Nobody there yet: not routed, and says so.
        let g = group("g", T1, json!({ "members": ["gone"] }));
        let plan = super::plan(&[], &[g], &[], 0);
        assert_eq!(group_verdict(&plan, "g").0, "NoMembers");
    }

    #[test]
    fn an_older_resource_keeps_its_name_and_key_even_while_invalid() {
        let broken = sandbox("x", T1, "k1", json!({}), fork("backend", "not-an-ip:80"));
        let newer = sandbox("x", T2, "k2", json!({}), fork("backend", "10.0.0.1:80"));
        let mut newer = (*newer).clone();
        newer.metadata.namespace = Some("other".into());
        let thief = sandbox("y", T3, "k1", json!({}), fork("backend", "10.0.0.1:80"));
        let plan = super::plan(&[Arc::new(newer), broken, thief], &[], &[], 0);
        assert_eq!(sandbox_verdict(&plan, "y").0, "Conflict");
        assert!(plan.model.sandboxes().next().is_none());
        let named: Vec<(String, String)> = plan
            .sandbox_statuses
            .iter()
            .map(|(s, st)| {
                (
                    s.metadata.namespace.clone().unwrap(),
                    st.conditions[0].reason.clone(),
                )
            })
            .collect();
        assert!(named.contains(&("ns".into(), "Invalid".into())));
        assert!(named.contains(&("other".into(), "Conflict".into())));
    }

    #[test]
    fn selector_forks_take_ready_unmarked_pods_of_their_own_sandbox() {
        let s = sandbox(
            "s",
            T1,
            "ks",
            json!({}),
            json!([{ "service": "backend", "selector": { "matchLabels": { "app": "backend" } }, "port": 8080 }]),
        );
        let mine = json!({ "app": "backend", SANDBOX_LABEL: "s" });
        let pods = [
            pod("ready", "10.0.0.2", mine.clone(), true),
            pod("v6", "fd00::7", mine.clone(), true),
            pod("unready", "10.0.0.3", mine.clone(), false),
            pod(
                "baseline-copy",
                "10.0.0.4",
                json!({ "app": "backend", SANDBOX_LABEL: "s", BASELINE_LABEL: "true" }),
                true,
            ),
            pod(
                "other-sandbox",
                "10.0.0.5",
                json!({ "app": "backend", SANDBOX_LABEL: "t" }),
                true,
            ),
            pod(
                "other-app",
                "10.0.0.6",
                json!({ "app": "frontend", SANDBOX_LABEL: "s" }),
                true,
            ),
        ];
        let plan = super::plan(std::slice::from_ref(&s), &[], &pods, 0);
        assert_eq!(
            plan.model.entry("ks").unwrap().forks[0].endpoints,
            ["10.0.0.2:8080", "[fd00::7]:8080"]
        );
        let (_, message) = sandbox_verdict(&plan, "s");
        assert!(message.contains("baseline-copy carries"), "{message}");

        // More Ready pods than a fork may have: the first 64 by address.
        let many: Vec<Arc<Pod>> = (0..70)
            .map(|i| pod(&format!("p{i}"), &format!("10.1.0.{i}"), mine.clone(), true))
            .collect();
        let plan = plan_of(&s, &many);
        assert_eq!(plan.model.entry("ks").unwrap().forks[0].endpoints.len(), 64);
        assert!(sandbox_verdict(&plan, "s")
            .1
            .contains("70 Ready pods match"));

        // None Ready: out of the table, and the status says why.
        let plan = plan_of(&s, &[]);
        assert!(plan.model.entry("ks").is_none());
        assert_eq!(sandbox_verdict(&plan, "s").0, "NoReadyPods");
    }

    fn plan_of(s: &Arc<Sandbox>, pods: &[Arc<Pod>]) -> Plan {
        super::plan(std::slice::from_ref(s), &[], pods, 0)
    }

    #[test]
    fn a_resource_without_a_key_gets_one_minted_and_routes_once_it_is_stored() {
        let mut s =
            (*sandbox("s", T1, "unused", json!({}), fork("backend", "10.0.0.1:80"))).clone();
        s.spec.routing_key = None;
        let first = super::plan(&[Arc::new(s.clone())], &[], &[], 0);
        assert_eq!(first.minting, 1);
        assert!(first.model.sandboxes().next().is_none());
        let (_, status) = &first.sandbox_statuses[0];
        let key = status.routing_key.clone().unwrap();
        assert_eq!(key.len(), 24);
        assert_eq!(status.conditions[0].reason, MINTING);
        // Stored (what the status write does): routed by that key, and
        // the next plan writes only the new condition.
        s.status = Some(status.clone());
        let second = super::plan(&[Arc::new(s.clone())], &[], &[], 0);
        assert_eq!(second.minting, 0);
        assert!(second.model.entry(&key).is_some());
        assert_eq!(
            second.sandbox_statuses[0].1.routing_key.as_deref(),
            Some(key.as_str())
        );
        // Once the status says so, nothing more to write.
        s.status = Some(second.sandbox_statuses[0].1.clone());
        assert!(super::plan(&[Arc::new(s)], &[], &[], 0)
            .sandbox_statuses
            .is_empty());
    }

    #[test]
    fn a_sandbox_past_its_ttl_is_to_delete_and_out_of_the_model() {
        let mut s = (*sandbox("s", T1, "ks", json!({}), fork("backend", "10.0.0.1:80"))).clone();
        s.spec.ttl_seconds = Some(60);
        let created = created_ms(&s.metadata, 0);
        let s = Arc::new(s);
        let live = super::plan(std::slice::from_ref(&s), &[], &[], created + 59_000);
        assert_eq!(live.next_expiry_ms, Some(created + 60_000));
        assert!(live.model.entry("ks").is_some());
        let gone = super::plan(&[s], &[], &[], created + 60_000);
        assert_eq!(gone.expired.len(), 1);
        assert!(gone.model.entry("ks").is_none());
    }

    /// `pod(...)` with annotations and, optionally, a deletionTimestamp.
    fn annotated(pod: &Arc<Pod>, annotations: serde_json::Value, terminating: bool) -> Arc<Pod> {
        let mut pod = (**pod).clone();
        pod.metadata.annotations = serde_json::from_value(annotations).unwrap();
        if terminating {
            pod.metadata.deletion_timestamp = serde_json::from_value(json!(T3)).unwrap();
        }
        Arc::new(pod)
    }

    /// (pod name, key to write) of a plan's pod annotations.
    fn pod_writes(plan: &Plan) -> Vec<(String, Option<String>)> {
        let mut writes: Vec<(String, Option<String>)> = plan
            .pod_keys
            .iter()
            .map(|(p, k)| (p.metadata.name.clone().unwrap(), k.clone()))
            .collect();
        writes.sort();
        writes
    }

    #[test]
    fn the_pods_of_a_sandbox_are_annotated_with_the_key_it_holds() {
        let s = sandbox(
            "s",
            T1,
            "ks",
            json!({}),
            json!([{ "service": "backend", "selector": { "matchLabels": { "app": "backend" } }, "port": 8080 }]),
        );
        let mine = json!({ "app": "backend", SANDBOX_LABEL: "s" });
        let unready = pod("unready", "10.0.0.3", mine.clone(), false);
        let pods = [
            // Every pod of the Sandbox, Ready or not, selected by a fork or not.
            pod("ready", "10.0.0.2", mine.clone(), true),
            unready.clone(),
            pod(
                "worker",
                "10.0.0.7",
                json!({ "app": "worker", SANDBOX_LABEL: "s" }),
                true,
            ),
            // Right already: no write.
            annotated(
                &pod("right", "10.0.0.8", mine.clone(), true),
                json!({ ROUTING_KEY_ANNOTATION: "ks", "other": "kept" }),
                false,
            ),
            // Wrong: rewritten.
            annotated(
                &pod("stale", "10.0.0.9", mine.clone(), true),
                json!({ ROUTING_KEY_ANNOTATION: "old" }),
                false,
            ),
            // Never: a baseline-labelled pod, a terminating one.
            pod(
                "baseline-copy",
                "10.0.0.4",
                json!({ "app": "backend", SANDBOX_LABEL: "s", BASELINE_LABEL: "true" }),
                true,
            ),
            annotated(
                &pod("leaving", "10.0.0.10", mine.clone(), true),
                json!({}),
                true,
            ),
            // A Sandbox that does not exist: nothing to write, a stale key to remove.
            pod("orphan", "10.0.0.5", json!({ SANDBOX_LABEL: "t" }), true),
            annotated(
                &pod(
                    "orphan-stale",
                    "10.0.0.6",
                    json!({ SANDBOX_LABEL: "t" }),
                    true,
                ),
                json!({ ROUTING_KEY_ANNOTATION: "kt" }),
                false,
            ),
        ];
        let plan = super::plan(std::slice::from_ref(&s), &[], &pods, 0);
        let ks = Some("ks".to_owned());
        assert_eq!(
            pod_writes(&plan),
            [
                ("orphan-stale".to_owned(), None),
                ("ready".to_owned(), ks.clone()),
                ("stale".to_owned(), ks.clone()),
                ("unready".to_owned(), ks.clone()),
                ("worker".to_owned(), ks.clone()),
            ]
        );

        // A Sandbox with no Ready pod holds its key all the same.
        let plan = plan_of(&s, std::slice::from_ref(&unready));
        assert_eq!(sandbox_verdict(&plan, "s").0, "NoReadyPods");
        assert_eq!(pod_writes(&plan), [("unready".to_owned(), ks)]);

        // Another namespace's pod of the same name is not this Sandbox's.
        let mut elsewhere = (*pod("elsewhere", "10.0.0.11", mine, true)).clone();
        elsewhere.metadata.namespace = Some("other".into());
        let plan = plan_of(&s, &[Arc::new(elsewhere)]);
        assert!(plan.pod_keys.is_empty());
    }

    #[test]
    fn a_pod_gets_no_key_its_sandbox_does_not_hold() {
        let on = |name: &str, key: &str| {
            annotated(
                &pod(name, "10.0.0.2", json!({ SANDBOX_LABEL: name }), true),
                json!({ ROUTING_KEY_ANNOTATION: key }),
                false,
            )
        };
        // Minting: not stored yet, so not on the pods yet.
        let mut minting =
            (*sandbox("minting", T1, "unused", json!({}), fork("a", "10.0.0.1:80"))).clone();
        minting.spec.routing_key = None;
        let plan = super::plan(
            &[Arc::new(minting.clone())],
            &[],
            &[pod(
                "minting",
                "10.0.0.2",
                json!({ SANDBOX_LABEL: "minting" }),
                true,
            )],
            0,
        );
        assert_eq!(plan.minting, 1);
        assert!(plan.pod_keys.is_empty());
        // Stored: on the pods.
        minting.status = Some(plan.sandbox_statuses[0].1.clone());
        let key = minting.status.as_ref().unwrap().routing_key.clone();
        let plan = super::plan(
            &[Arc::new(minting)],
            &[],
            &[pod(
                "minting",
                "10.0.0.2",
                json!({ SANDBOX_LABEL: "minting" }),
                true,
            )],
            0,
        );
        assert_eq!(pod_writes(&plan), [("minting".to_owned(), key)]);

        // A key an older Sandbox holds: taken off the younger one's pods,
        // which must not send the older one's requests.
        let older = sandbox("older", T1, "shared", json!({}), fork("a", "10.0.0.1:80"));
        let thief = sandbox("thief", T2, "shared", json!({}), fork("b", "10.0.0.1:80"));
        let plan = super::plan(
            &[thief, older],
            &[],
            &[on("thief", "shared"), on("older", "shared")],
            0,
        );
        assert_eq!(sandbox_verdict(&plan, "thief").0, "Conflict");
        assert_eq!(pod_writes(&plan), [("thief".to_owned(), None)]);

        // An invalid spec.routingKey, and a Sandbox past its TTL: no key.
        let invalid = sandbox(
            "invalid",
            T1,
            "has space",
            json!({}),
            fork("a", "10.0.0.1:80"),
        );
        let mut expired =
            (*sandbox("expired", T1, "ke", json!({}), fork("a", "10.0.0.1:80"))).clone();
        expired.spec.ttl_seconds = Some(1);
        let plan = super::plan(
            &[invalid, Arc::new(expired)],
            &[],
            &[on("invalid", "has space"), on("expired", "ke")],
            u64::MAX / 2,
        );
        assert_eq!(
            pod_writes(&plan),
            [("expired".to_owned(), None), ("invalid".to_owned(), None)]
        );
    }
}

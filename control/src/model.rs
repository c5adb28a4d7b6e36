//! Sandboxes and route groups, validated, and the routing table they make.
//!
//! Pure and in memory: the store persists it, the service serialises writes.
//! Every write either fails with nothing changed, or changes the model and
//! reports which routing keys changed, so updates to proxies stay incremental.

use std::collections::{BTreeMap, BTreeSet};

use sandbox_router_proto::v1 as proto;
use sandbox_router_routing::table::{is_valid_service_name, parse_endpoint};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// Length of a generated routing key: 24 characters of `a-z0-9` (~124 bits).
pub const ROUTING_KEY_LEN: usize = 24;
/// Longest TTL accepted: 90 days.
pub const MAX_TTL_SECONDS: u64 = 90 * 24 * 3600;
const MAX_FORKS: usize = 64;
const MAX_ENDPOINTS: usize = 64;
const MAX_LABELS: usize = 32;
const MAX_MEMBERS: usize = 64;

/// A sandbox: a routing key and the services it forks to offloaded workloads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sandbox {
    pub name: String,
    pub routing_key: String,
    /// service -> endpoints (`IP:PORT`, canonical form).
    pub forks: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Unix time (ms) at which the sandbox is deleted; `None`: never.
    #[serde(default)]
    pub expires_at_ms: Option<u64>,
    pub created_at_ms: u64,
}

/// A route group: its own routing key, combining the forks of several
/// sandboxes (listed by name and/or selected by labels). No two members may
/// fork the same service: such writes are rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteGroup {
    pub name: String,
    pub routing_key: String,
    #[serde(default)]
    pub members: Vec<String>,
    /// Sandboxes whose labels include all of these are members too.
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    pub created_at_ms: u64,
}

/// `POST /v1/sandboxes`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSandbox {
    pub name: String,
    pub forks: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
}

/// `POST /v1/routegroups`, and the body of `PUT /v1/routegroups/{name}` (without `name`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewRouteGroup {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub members: Vec<String>,
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
}

/// What a write changed, by routing key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Change {
    pub upserted: BTreeSet<String>,
    pub removed: BTreeSet<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Model {
    sandboxes: BTreeMap<String, Sandbox>,
    groups: BTreeMap<String, RouteGroup>,
    /// routing key -> its owner, so lookups by key stay O(log n) with many sandboxes.
    keys: BTreeMap<String, Owner>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Owner {
    Sandbox(String),
    Group(String),
}

impl Model {
    pub fn new(
        sandboxes: impl IntoIterator<Item = Sandbox>,
        groups: impl IntoIterator<Item = RouteGroup>,
    ) -> Self {
        let mut model = Model::default();
        for sandbox in sandboxes {
            model.put_sandbox(sandbox);
        }
        for group in groups {
            model.put_group(group);
        }
        model
    }

    fn put_sandbox(&mut self, sandbox: Sandbox) {
        self.keys.insert(
            sandbox.routing_key.clone(),
            Owner::Sandbox(sandbox.name.clone()),
        );
        self.sandboxes.insert(sandbox.name.clone(), sandbox);
    }

    fn take_sandbox(&mut self, name: &str) -> Option<Sandbox> {
        let sandbox = self.sandboxes.remove(name)?;
        self.keys.remove(&sandbox.routing_key);
        Some(sandbox)
    }

    fn put_group(&mut self, group: RouteGroup) {
        self.keys
            .insert(group.routing_key.clone(), Owner::Group(group.name.clone()));
        self.groups.insert(group.name.clone(), group);
    }

    fn take_group(&mut self, name: &str) -> Option<RouteGroup> {
        let group = self.groups.remove(name)?;
        self.keys.remove(&group.routing_key);
        Some(group)
    }

    pub fn sandboxes(&self) -> impl Iterator<Item = &Sandbox> {
        self.sandboxes.values()
    }

    pub fn groups(&self) -> impl Iterator<Item = &RouteGroup> {
        self.groups.values()
    }

    pub fn sandbox(&self, name: &str) -> Option<&Sandbox> {
        self.sandboxes.get(name)
    }

    pub fn group(&self, name: &str) -> Option<&RouteGroup> {
        self.groups.get(name)
    }

    pub fn key_in_use(&self, key: &str) -> bool {
        self.keys.contains_key(key)
    }

    /// The earliest expiry of any sandbox.
    pub fn next_expiry_ms(&self) -> Option<u64> {
        self.sandboxes
            .values()
            .filter_map(|s| s.expires_at_ms)
            .min()
    }

    pub fn create_sandbox(
        &mut self,
        new: NewSandbox,
        routing_key: String,
        now_ms: u64,
    ) -> Result<Change, ApiError> {
        check_name("name", &new.name)?;
        self.check_name_free(&new.name)?;
        let forks = check_forks(&new.forks)?;
        check_labels(&new.labels)?;
        let expires_at_ms = match new.ttl_seconds {
            None => None,
            Some(ttl) if ttl == 0 || ttl > MAX_TTL_SECONDS => {
                return Err(ApiError::invalid(
                    "ttl_seconds",
                    "must be between 1 and 7776000 (90 days)",
                ))
            }
            Some(ttl) => Some(now_ms.saturating_add(ttl.saturating_mul(1000))),
        };
        let sandbox = Sandbox {
            name: new.name,
            routing_key,
            forks,
            labels: new.labels,
            expires_at_ms,
            created_at_ms: now_ms,
        };
        self.with_sandbox(sandbox)
    }

    pub fn set_forks(
        &mut self,
        name: &str,
        forks: &BTreeMap<String, Vec<String>>,
    ) -> Result<Change, ApiError> {
        let mut sandbox = self
            .sandboxes
            .get(name)
            .cloned()
            .ok_or_else(|| ApiError::not_found("sandbox", name))?;
        sandbox.forks = check_forks(forks)?;
        self.with_sandbox(sandbox)
    }

    /// Inserts or replaces a sandbox after checking every route group that
    /// would contain it still has one fork per service.
    fn with_sandbox(&mut self, sandbox: Sandbox) -> Result<Change, ApiError> {
        let groups: Vec<&RouteGroup> = self
            .groups
            .values()
            .filter(|g| g.includes(&sandbox))
            .collect();
        for group in &groups {
            self.group_forks(group, Some(&sandbox))?;
        }
        let mut change = Change::default();
        change.upserted.insert(sandbox.routing_key.clone());
        change
            .upserted
            .extend(groups.iter().map(|g| g.routing_key.clone()));
        self.put_sandbox(sandbox);
        Ok(change)
    }

    pub fn delete_sandbox(&mut self, name: &str) -> Result<Change, ApiError> {
        let sandbox = self
            .take_sandbox(name)
            .ok_or_else(|| ApiError::not_found("sandbox", name))?;
        let mut change = Change::default();
        change.removed.insert(sandbox.routing_key.clone());
        change.upserted.extend(
            self.groups
                .values()
                .filter(|g| g.includes(&sandbox))
                .map(|g| g.routing_key.clone()),
        );
        Ok(change)
    }

    /// Deletes every sandbox expired at `now_ms`; returns their names.
    pub fn expire(&mut self, now_ms: u64) -> (Vec<String>, Change) {
        let expired: Vec<String> = self
            .sandboxes
            .values()
            .filter(|s| s.expires_at_ms.is_some_and(|at| at <= now_ms))
            .map(|s| s.name.clone())
            .collect();
        let mut change = Change::default();
        for name in &expired {
            if let Ok(c) = self.delete_sandbox(name) {
                change.upserted.extend(c.upserted);
                change.removed.extend(c.removed);
            }
        }
        change.upserted.retain(|k| !change.removed.contains(k));
        (expired, change)
    }

    pub fn create_group(
        &mut self,
        new: NewRouteGroup,
        routing_key: String,
        now_ms: u64,
    ) -> Result<Change, ApiError> {
        check_name("name", &new.name)?;
        self.check_name_free(&new.name)?;
        let group = RouteGroup {
            name: new.name,
            routing_key,
            members: new.members,
            selector: new.selector,
            created_at_ms: now_ms,
        };
        self.with_group(group)
    }

    pub fn update_group(&mut self, name: &str, update: NewRouteGroup) -> Result<Change, ApiError> {
        let mut group = self
            .groups
            .get(name)
            .cloned()
            .ok_or_else(|| ApiError::not_found("route group", name))?;
        if !update.name.is_empty() && update.name != name {
            return Err(ApiError::invalid("name", "a route group cannot be renamed"));
        }
        group.members = update.members;
        group.selector = update.selector;
        self.with_group(group)
    }

    fn with_group(&mut self, group: RouteGroup) -> Result<Change, ApiError> {
        if group.members.is_empty() && group.selector.is_empty() {
            return Err(ApiError::invalid(
                "members",
                "list members, or give a selector, or both",
            ));
        }
        if group.members.len() > MAX_MEMBERS {
            return Err(ApiError::invalid("members", "at most 64 members"));
        }
        for (i, member) in group.members.iter().enumerate() {
            if !self.sandboxes.contains_key(member) {
                return Err(ApiError::invalid(
                    format!("members[{i}]"),
                    format!("no sandbox named {member:?}"),
                ));
            }
            if group.members.iter().take(i).any(|m| m == member) {
                return Err(ApiError::invalid(format!("members[{i}]"), "listed twice"));
            }
        }
        check_labels_at("selector", &group.selector)?;
        self.group_forks(&group, None)?;
        let mut change = Change::default();
        change.upserted.insert(group.routing_key.clone());
        self.put_group(group);
        Ok(change)
    }

    pub fn delete_group(&mut self, name: &str) -> Result<Change, ApiError> {
        let group = self
            .take_group(name)
            .ok_or_else(|| ApiError::not_found("route group", name))?;
        let mut change = Change::default();
        change.removed.insert(group.routing_key);
        Ok(change)
    }

    fn check_name_free(&self, name: &str) -> Result<(), ApiError> {
        // One namespace: an Override may name either kind by name.
        if self.sandboxes.contains_key(name) || self.groups.contains_key(name) {
            return Err(ApiError::conflict(
                "name",
                format!("{name:?} is already a sandbox or route group"),
            ));
        }
        Ok(())
    }

    /// The group's members, in order: listed members, then selected ones by name.
    /// `candidate` stands in for the stored sandbox of the same name (a write being checked).
    fn members<'a>(
        &'a self,
        group: &RouteGroup,
        candidate: Option<&'a Sandbox>,
    ) -> Vec<&'a Sandbox> {
        let lookup = |name: &str| match candidate {
            Some(c) if c.name == name => Some(c),
            _ => self.sandboxes.get(name),
        };
        let mut members: Vec<&Sandbox> = group.members.iter().filter_map(|m| lookup(m)).collect();
        if !group.selector.is_empty() {
            let mut names: BTreeSet<&str> = self.sandboxes.keys().map(String::as_str).collect();
            if let Some(c) = candidate {
                names.insert(&c.name);
            }
            for name in names {
                if let Some(s) = lookup(name) {
                    if group.includes(s) && !members.iter().any(|m| m.name == s.name) {
                        members.push(s);
                    }
                }
            }
        }
        members
    }

    /// A group's combined forks; an error names the two members that both fork a service.
    fn group_forks<'a>(
        &'a self,
        group: &RouteGroup,
        candidate: Option<&'a Sandbox>,
    ) -> Result<BTreeMap<&'a str, (&'a str, &'a [String])>, ApiError> {
        let mut forks: BTreeMap<&str, (&str, &[String])> = BTreeMap::new();
        for member in self.members(group, candidate) {
            for (service, endpoints) in &member.forks {
                if let Some((other, _)) = forks.insert(service, (&member.name, endpoints)) {
                    return Err(ApiError::conflict(
                        "forks",
                        format!(
                            "route group {:?} would fork service {service:?} twice (sandboxes {other:?} and {:?})",
                            group.name, member.name
                        ),
                    ));
                }
            }
        }
        Ok(forks)
    }

    /// The names of a route group's members as they are now (listed ones
    /// that exist, then selected ones).
    pub fn group_members(&self, name: &str) -> Vec<String> {
        self.groups
            .get(name)
            .map(|g| {
                self.members(g, None)
                    .iter()
                    .map(|s| s.name.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The table entry of `routing_key`, if it exists.
    pub fn entry(&self, routing_key: &str) -> Option<proto::TableEntry> {
        match self.keys.get(routing_key)? {
            Owner::Sandbox(name) => {
                let s = self.sandboxes.get(name)?;
                Some(entry(
                    &s.routing_key,
                    &s.name,
                    s.forks.iter().map(|(k, v)| (k.as_str(), v.as_slice())),
                ))
            }
            Owner::Group(name) => {
                let group = self.groups.get(name)?;
                let forks = self.group_forks(group, None).unwrap_or_default();
                Some(entry(
                    &group.routing_key,
                    &group.name,
                    forks.iter().map(|(s, (_, e))| (*s, *e)),
                ))
            }
        }
    }

    /// The whole routing table at `version`.
    pub fn table(&self, version: u64) -> proto::RoutingTable {
        let keys = self
            .sandboxes
            .values()
            .map(|s| s.routing_key.as_str())
            .chain(self.groups.values().map(|g| g.routing_key.as_str()));
        proto::RoutingTable {
            version,
            entries: keys.filter_map(|k| self.entry(k)).collect(),
        }
    }
}

impl RouteGroup {
    fn includes(&self, sandbox: &Sandbox) -> bool {
        self.members.contains(&sandbox.name)
            || (!self.selector.is_empty()
                && self
                    .selector
                    .iter()
                    .all(|(k, v)| sandbox.labels.get(k) == Some(v)))
    }
}

fn entry<'a>(
    key: &str,
    name: &str,
    forks: impl Iterator<Item = (&'a str, &'a [String])>,
) -> proto::TableEntry {
    proto::TableEntry {
        routing_key: key.to_owned(),
        sandbox: name.to_owned(),
        forks: forks
            .map(|(service, endpoints)| proto::Fork {
                service: service.to_owned(),
                endpoints: endpoints.to_vec(),
            })
            .collect(),
    }
}

/// Sandbox and route group names are DNS labels (RFC 1123).
fn check_name(field: &str, name: &str) -> Result<(), ApiError> {
    if sandbox_router_routing::key::is_valid_sandbox_name(name) {
        Ok(())
    } else {
        Err(ApiError::invalid(
            field,
            "must be a DNS label: 1-63 of a-z 0-9 '-', starting and ending with a letter or digit",
        ))
    }
}

/// Validates forks and returns them with endpoints in canonical `IP:PORT` form.
fn check_forks(
    forks: &BTreeMap<String, Vec<String>>,
) -> Result<BTreeMap<String, Vec<String>>, ApiError> {
    if forks.is_empty() {
        return Err(ApiError::invalid("forks", "fork at least one service"));
    }
    if forks.len() > MAX_FORKS {
        return Err(ApiError::invalid("forks", "at most 64 services"));
    }
    let mut out = BTreeMap::new();
    for (service, endpoints) in forks {
        if !is_valid_service_name(service) {
            return Err(ApiError::invalid(
                format!("forks.{service}"),
                "service must be lowercase letters, digits, '-', '.', '_' (at most 253)",
            ));
        }
        if endpoints.is_empty() || endpoints.len() > MAX_ENDPOINTS {
            return Err(ApiError::invalid(
                format!("forks.{service}"),
                "list 1 to 64 endpoints IP:PORT",
            ));
        }
        let mut canonical: Vec<String> = Vec::with_capacity(endpoints.len());
        for (i, endpoint) in endpoints.iter().enumerate() {
            let addr = parse_endpoint(endpoint)
                .map_err(|why| ApiError::invalid(format!("forks.{service}[{i}]"), why))?;
            let text = addr.to_string();
            if !canonical.contains(&text) {
                canonical.push(text);
            }
        }
        out.insert(service.clone(), canonical);
    }
    Ok(out)
}

fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), ApiError> {
    check_labels_at("labels", labels)
}

/// Labels follow Kubernetes' shape: keys and values of `A-Z a-z 0-9 - _ . /`, at most 63 (keys 253).
fn check_labels_at(field: &str, labels: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if labels.len() > MAX_LABELS {
        return Err(ApiError::invalid(field, "at most 32 labels"));
    }
    let ok = |s: &str, max: usize| {
        !s.is_empty()
            && s.len() <= max
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
    };
    for (k, v) in labels {
        if !ok(k, 253) || !ok(v, 63) {
            return Err(ApiError::invalid(
                format!("{field}.{k}"),
                "keys and values must be 1-63 (keys 253) of A-Z a-z 0-9 - _ . /",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forks(pairs: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        pairs
            .iter()
            .map(|(s, e)| ((*s).to_owned(), e.iter().map(|x| (*x).to_owned()).collect()))
            .collect()
    }

    fn new_sandbox(name: &str, f: &[(&str, &[&str])], labels: &[(&str, &str)]) -> NewSandbox {
        NewSandbox {
            name: name.into(),
            forks: forks(f),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            ttl_seconds: None,
        }
    }

    fn group(name: &str, members: &[&str], selector: &[(&str, &str)]) -> NewRouteGroup {
        NewRouteGroup {
            name: name.into(),
            members: members.iter().map(|m| (*m).into()).collect(),
            selector: selector
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
        }
    }

    #[test]
    fn sandbox_lifecycle_reports_changed_keys() {
        let mut m = Model::default();
        let c = m
            .create_sandbox(
                new_sandbox("a", &[("backend", &["10.0.0.1:80"])], &[]),
                "ka".into(),
                1,
            )
            .unwrap();
        assert_eq!(c.upserted, ["ka".to_owned()].into());
        assert_eq!(
            m.entry("ka").unwrap().forks[0].endpoints,
            vec!["10.0.0.1:80"]
        );
        let c = m
            .set_forks("a", &forks(&[("users", &["[::1]:81"])]))
            .unwrap();
        assert_eq!(c.upserted, ["ka".to_owned()].into());
        assert_eq!(m.entry("ka").unwrap().forks[0].service, "users");
        let c = m.delete_sandbox("a").unwrap();
        assert_eq!(c.removed, ["ka".to_owned()].into());
        assert_eq!(m.entry("ka"), None);
    }

    #[test]
    fn invalid_input_names_the_field_and_changes_nothing() {
        let mut m = Model::default();
        let cases = [
            (
                new_sandbox("Bad_Name", &[("b", &["10.0.0.1:80"])], &[]),
                "name",
            ),
            (new_sandbox("ok", &[], &[]), "forks"),
            (
                new_sandbox("ok", &[("Backend", &["10.0.0.1:80"])], &[]),
                "forks.Backend",
            ),
            (
                new_sandbox("ok", &[("b", &["backend:80"])], &[]),
                "forks.b[0]",
            ),
            (new_sandbox("ok", &[("b", &[])], &[]), "forks.b"),
            (
                new_sandbox("ok", &[("b", &["10.0.0.1:80"])], &[("k", "bad value")]),
                "labels.k",
            ),
        ];
        for (new, field) in cases {
            let err = m.create_sandbox(new, "k".into(), 1).unwrap_err();
            assert_eq!(err.field(), Some(field), "{err:?}");
        }
        let mut ttl = new_sandbox("ok", &[("b", &["10.0.0.1:80"])], &[]);
        ttl.ttl_seconds = Some(0);
        assert_eq!(
            m.create_sandbox(ttl, "k".into(), 1).unwrap_err().field(),
            Some("ttl_seconds")
        );
        assert_eq!(m, Model::default());
    }

    #[test]
    fn route_group_combines_sandboxes_and_rejects_conflicts() {
        let mut m = Model::default();
        m.create_sandbox(
            new_sandbox("fe", &[("frontend", &["10.0.0.1:80"])], &[("team", "x")]),
            "kfe".into(),
            1,
        )
        .unwrap();
        m.create_sandbox(
            new_sandbox("be", &[("backend", &["10.0.0.2:80"])], &[]),
            "kbe".into(),
            1,
        )
        .unwrap();
        m.create_group(
            group("both", &["fe", "be"], &[("team", "x")]),
            "kg".into(),
            1,
        )
        .unwrap();
        let e = m.entry("kg").unwrap();
        let services: Vec<&str> = e.forks.iter().map(|f| f.service.as_str()).collect();
        assert_eq!(services, ["backend", "frontend"]);

        // A third sandbox forking backend cannot join by label...
        m.create_sandbox(
            new_sandbox("be2", &[("backend", &["10.0.0.3:80"])], &[("team", "x")]),
            "kbe2".into(),
            1,
        )
        .unwrap_err();
        // ...nor can a member start forking a service another member forks.
        let before = m.clone();
        let err = m
            .set_forks("fe", &forks(&[("backend", &["10.0.0.9:80"])]))
            .unwrap_err();
        assert!(err.to_string().contains("\"fe\""), "{err}");
        assert_eq!(m, before);
        let err = m
            .create_group(group("dup", &["be", "be"], &[]), "kd".into(), 1)
            .unwrap_err();
        assert_eq!(err.field(), Some("members[1]"));
        let err = m
            .create_group(group("missing", &["nope"], &[]), "kd".into(), 1)
            .unwrap_err();
        assert_eq!(err.field(), Some("members[0]"));
    }

    #[test]
    fn selector_groups_follow_labels_and_deletes_update_groups() {
        let mut m = Model::default();
        m.create_group(group("team-x", &[], &[("team", "x")]), "kg".into(), 1)
            .unwrap();
        assert!(m.entry("kg").unwrap().forks.is_empty());
        let c = m
            .create_sandbox(
                new_sandbox("fe", &[("frontend", &["10.0.0.1:80"])], &[("team", "x")]),
                "kfe".into(),
                1,
            )
            .unwrap();
        assert_eq!(c.upserted, ["kfe".to_owned(), "kg".to_owned()].into());
        assert_eq!(m.entry("kg").unwrap().forks.len(), 1);
        let c = m.delete_sandbox("fe").unwrap();
        assert_eq!(c.upserted, ["kg".to_owned()].into());
        assert!(m.entry("kg").unwrap().forks.is_empty());
    }

    #[test]
    fn many_sandboxes_stay_indexed_by_key() {
        let mut m = Model::default();
        for i in 0..20_000u32 {
            let endpoint = format!("10.{}.{}.1:80", i / 250, i % 250);
            let new = new_sandbox(&format!("s{i}"), &[("backend", &[endpoint.as_str()])], &[]);
            m.create_sandbox(new, format!("k{i}"), 1).unwrap();
        }
        assert!(m.key_in_use("k19999"));
        assert_eq!(m.entry("k12345").unwrap().sandbox, "s12345");
        assert_eq!(m.table(1).entries.len(), 20_000);
        m.delete_sandbox("s12345").unwrap();
        assert!(!m.key_in_use("k12345"));
        assert_eq!(m.entry("k12345"), None);
    }

    #[test]
    fn names_are_one_namespace_and_expiry_deletes() {
        let mut m = Model::default();
        let mut s = new_sandbox("a", &[("b", &["10.0.0.1:80"])], &[]);
        s.ttl_seconds = Some(10);
        m.create_sandbox(s, "ka".into(), 1_000).unwrap();
        assert_eq!(m.next_expiry_ms(), Some(11_000));
        let err = m
            .create_group(group("a", &["a"], &[]), "kg".into(), 1)
            .unwrap_err();
        assert!(matches!(err, ApiError::Conflict { .. }));
        assert_eq!(m.expire(10_999).0, Vec::<String>::new());
        let (expired, change) = m.expire(11_000);
        assert_eq!(expired, ["a"]);
        assert_eq!(change.removed, ["ka".to_owned()].into());
        assert!(m.sandbox("a").is_none());
    }
}

//! The singleton's side of the push: its settings, and [`PushedTable`], which
//! turns each update from the control service into the shared-data writes
//! that make the HTTP filters route by it.
//!
//! An update is validated whole before anything is written; a bad one is
//! refused and the last good table stays in place.

use std::collections::{BTreeMap, BTreeSet};

use prost::Message;
use sandbox_router_proto::v1::{self as proto, table_update::Kind};
use serde::Deserialize;

use crate::error::ConfigError;
use crate::shared::{key_entry, sandbox_entry, service_entry, INDEX_KEY, PREFIX, VERSION_KEY};
use crate::table::{check_entry, parse_endpoint, ParsedForks, RoutingTable};

/// Root id of the singleton WasmService in Envoy's bootstrap.
pub const SYNC_ROOT_ID: &str = "sandbox_router_sync";
/// gRPC service and method the singleton calls.
pub const WATCH_SERVICE: &str = "sandbox_router.v1.RoutingTableService";
pub const WATCH_METHOD: &str = "Watch";

/// The singleton's plugin configuration (JSON).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncSettings {
    /// Envoy cluster of the control service (HTTP/2).
    #[serde(default = "default_cluster")]
    pub control_cluster: String,
    /// Name shown by `sandbox-router status`; default: Envoy's node id.
    #[serde(default)]
    pub node_id: String,
    /// Bearer token sent on the watch stream, if the control service requires one.
    #[serde(default)]
    pub token: String,
    /// Reconnect backoff: starts here, doubles up to `max_backoff_ms`.
    #[serde(default = "default_initial_backoff")]
    pub initial_backoff_ms: u64,
    #[serde(default = "default_max_backoff")]
    pub max_backoff_ms: u64,
}

fn default_cluster() -> String {
    "sandbox_router_control".to_owned()
}
fn default_initial_backoff() -> u64 {
    100
}
fn default_max_backoff() -> u64 {
    5000
}

impl SyncSettings {
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        let bytes = if bytes.iter().all(u8::is_ascii_whitespace) {
            &b"{}"[..]
        } else {
            bytes
        };
        let settings: SyncSettings = crate::error::parse_json(bytes, "configuration")?;
        if settings.control_cluster.is_empty() {
            return Err(ConfigError::new(
                "control_cluster",
                "must name an Envoy cluster",
            ));
        }
        if settings.initial_backoff_ms == 0 || settings.max_backoff_ms < settings.initial_backoff_ms
        {
            return Err(ConfigError::new(
                "max_backoff_ms",
                "backoff must be positive and max_backoff_ms >= initial_backoff_ms",
            ));
        }
        Ok(settings)
    }
}

/// Exponential reconnect backoff.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial_ms: u64,
    max_ms: u64,
    next_ms: u64,
}

impl Backoff {
    pub fn new(initial_ms: u64, max_ms: u64) -> Self {
        Backoff {
            initial_ms,
            max_ms,
            next_ms: initial_ms,
        }
    }

    /// The wait before the next attempt; doubles each call up to the maximum.
    pub fn next_delay_ms(&mut self) -> u64 {
        let delay = self.next_ms;
        self.next_ms = self.next_ms.saturating_mul(2).min(self.max_ms);
        delay
    }

    /// After a healthy connection.
    pub fn reset(&mut self) {
        self.next_ms = self.initial_ms;
    }
}

/// One shared-data write: an empty value clears the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedWrite {
    pub key: String,
    pub value: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error("update is not a TableUpdate protobuf")]
    Undecodable,
    #[error("update carries neither snapshot nor delta")]
    Empty,
    #[error("delta applies to version {base}, this proxy holds {held}")]
    WrongBase { base: u64, held: u64 },
    #[error("{0}")]
    Invalid(ConfigError),
}

/// The table the singleton holds, and what it has written to shared data.
#[derive(Debug, Clone, Default)]
pub struct PushedTable {
    version: u64,
    /// Whether a snapshot was applied in this VM's life (deltas need one).
    synced: bool,
    entries: BTreeMap<String, proto::TableEntry>,
    /// sandbox name -> routing key.
    names: BTreeMap<String, String>,
    /// service -> routing keys forking it.
    by_service: BTreeMap<String, BTreeSet<String>>,
    /// Shared-data keys currently holding a value (for clearing later).
    written: BTreeSet<String>,
}

impl PushedTable {
    /// Starts from the index a previous singleton VM left in shared data, so
    /// the first snapshot can clear keys it no longer holds.
    pub fn resume(index: Option<&[u8]>) -> Self {
        let written = index
            .map(|bytes| {
                String::from_utf8_lossy(bytes)
                    .lines()
                    .filter(|k| k.starts_with(PREFIX))
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        PushedTable {
            written,
            ..PushedTable::default()
        }
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Applies one `TableUpdate` (protobuf bytes) and returns the writes that
    /// publish it. On error nothing changes.
    pub fn apply(&mut self, message: &[u8]) -> Result<Vec<SharedWrite>, ApplyError> {
        let update = proto::TableUpdate::decode(message).map_err(|_| ApplyError::Undecodable)?;
        let mut writes = match update.kind {
            Some(Kind::Snapshot(table)) => self.apply_snapshot(table)?,
            Some(Kind::Delta(delta)) => self.apply_delta(delta)?,
            None => return Err(ApplyError::Empty),
        };
        self.version = update.version;
        self.synced = true;
        // Last: the version says the whole update is in place.
        writes.push(SharedWrite {
            key: VERSION_KEY.to_owned(),
            value: update.version.to_string().into_bytes(),
        });
        Ok(writes)
    }

    /// Replaces everything: every value is written, and whatever was written
    /// before and is not part of the new table is cleared.
    fn apply_snapshot(
        &mut self,
        table: proto::RoutingTable,
    ) -> Result<Vec<SharedWrite>, ApplyError> {
        // The same validation as a configured table.
        RoutingTable::compile(&table, "snapshot").map_err(ApplyError::Invalid)?;
        self.entries.clear();
        self.names.clear();
        self.by_service.clear();
        for entry in table.entries {
            let entry = without_repeated_endpoints(entry);
            self.index(&entry);
            self.entries.insert(entry.routing_key.clone(), entry);
        }
        let keys: Vec<String> = self.entries.keys().cloned().collect();
        let names: Vec<String> = self.names.keys().cloned().collect();
        let services: Vec<String> = self.by_service.keys().cloned().collect();
        let mut writes = self.values_of(keys.iter(), names.iter(), services.iter());
        let wanted: BTreeSet<&String> = writes.iter().map(|w| &w.key).collect();
        // `written` still holds the previous keys, so `track` sees them
        // cleared and rewrites the index, also when the new table is empty.
        let stale: Vec<SharedWrite> = self
            .written
            .iter()
            .filter(|k| !wanted.contains(k))
            .map(|k| SharedWrite {
                key: k.clone(),
                value: Vec::new(),
            })
            .collect();
        writes.extend(stale);
        self.track(&mut writes);
        Ok(writes)
    }

    /// Changes only what the delta touches: its routing keys, their sandbox
    /// names, and the services they fork (before and after).
    fn apply_delta(&mut self, delta: proto::TableDelta) -> Result<Vec<SharedWrite>, ApplyError> {
        check_delta(&delta, self.synced, self.version, |name| {
            self.names.get(name).map(String::as_str)
        })?;
        let touched: BTreeSet<&str> = touched_keys(&delta).collect();
        // Validated: now change the table.
        let mut keys = BTreeSet::new();
        let mut names = BTreeSet::new();
        let mut services = BTreeSet::new();
        for key in &touched {
            if let Some(old) = self.entries.remove(*key) {
                self.unindex(&old);
                names.insert(old.sandbox.clone());
                services.extend(old.forks.iter().map(|f| f.service.clone()));
            }
            keys.insert((*key).to_owned());
        }
        for entry in delta.upserts {
            let entry = without_repeated_endpoints(entry);
            self.index(&entry);
            names.insert(entry.sandbox.clone());
            services.extend(entry.forks.iter().map(|f| f.service.clone()));
            self.entries.insert(entry.routing_key.clone(), entry);
        }
        names.remove("");
        let mut writes = self.values_of(keys.iter(), names.iter(), services.iter());
        self.track(&mut writes);
        Ok(writes)
    }

    fn index(&mut self, entry: &proto::TableEntry) {
        if !entry.sandbox.is_empty() {
            self.names
                .insert(entry.sandbox.clone(), entry.routing_key.clone());
        }
        for fork in &entry.forks {
            self.by_service
                .entry(fork.service.clone())
                .or_default()
                .insert(entry.routing_key.clone());
        }
    }

    fn unindex(&mut self, entry: &proto::TableEntry) {
        if self.names.get(&entry.sandbox) == Some(&entry.routing_key) {
            self.names.remove(&entry.sandbox);
        }
        for fork in &entry.forks {
            if let Some(keys) = self.by_service.get_mut(&fork.service) {
                keys.remove(&entry.routing_key);
                if keys.is_empty() {
                    self.by_service.remove(&fork.service);
                }
            }
        }
    }

    /// Current shared-data values (empty: absent) of these keys, names and services.
    fn values_of<'a>(
        &self,
        keys: impl Iterator<Item = &'a String>,
        names: impl Iterator<Item = &'a String>,
        services: impl Iterator<Item = &'a String>,
    ) -> Vec<SharedWrite> {
        let mut writes = Vec::new();
        for key in keys {
            let value = self
                .entries
                .get(key)
                .map(Message::encode_to_vec)
                .unwrap_or_default();
            writes.push(SharedWrite {
                key: key_entry(key),
                value,
            });
        }
        for name in names {
            let value = self
                .names
                .get(name)
                .map(|k| k.clone().into_bytes())
                .unwrap_or_default();
            writes.push(SharedWrite {
                key: sandbox_entry(name),
                value,
            });
        }
        for service in services {
            let endpoints: BTreeSet<&str> = self
                .by_service
                .get(service)
                .into_iter()
                .flatten()
                .filter_map(|k| self.entries.get(k))
                .flat_map(|e| e.forks.iter().filter(|f| &f.service == service))
                .flat_map(|f| f.endpoints.iter().map(String::as_str))
                .collect();
            let value = if endpoints.is_empty() {
                Vec::new()
            } else {
                proto::Fork {
                    service: service.clone(),
                    endpoints: endpoints.into_iter().map(str::to_owned).collect(),
                }
                .encode_to_vec()
            };
            writes.push(SharedWrite {
                key: service_entry(service),
                value,
            });
        }
        writes
    }

    /// Records which shared-data keys hold a value; rewrites the index when that set changes.
    fn track(&mut self, writes: &mut Vec<SharedWrite>) {
        let before = self.written.len();
        let mut changed = false;
        for write in writes.iter() {
            changed |= if write.value.is_empty() {
                self.written.remove(&write.key)
            } else {
                self.written.insert(write.key.clone())
            };
        }
        if changed || before != self.written.len() {
            let index: Vec<&str> = self.written.iter().map(String::as_str).collect();
            writes.push(SharedWrite {
                key: INDEX_KEY.to_owned(),
                value: index.join("\n").into_bytes(),
            });
        }
    }
}

/// Drops an endpoint a fork lists again (maybe written differently, as
/// `[fd00::1]:80` and `[fd00:0::1]:80`), as `RoutingTable::compile` does, so
/// a pushed table round-robins over a fork exactly as a configured one.
fn without_repeated_endpoints(mut entry: proto::TableEntry) -> proto::TableEntry {
    for fork in &mut entry.forks {
        let mut seen = Vec::with_capacity(fork.endpoints.len());
        fork.endpoints.retain(|text| match parse_endpoint(text) {
            Ok(addr) if !seen.contains(&addr) => {
                seen.push(addr);
                true
            }
            _ => false,
        });
    }
    entry
}

/// The rules every holder of a pushed table (this singleton, the native
/// module's watch) applies to a delta before changing anything: it applies
/// only on top of the version held, after a snapshot; each upsert is
/// validated as a configured table's entry; a routing key is upserted at most
/// once; a sandbox name is not taken from a routing key the delta leaves
/// alone. `owner_of` answers which routing key holds a sandbox name now.
///
/// Returns each upsert's forks as parsed (in order), for a holder that
/// keeps the parsed endpoints.
pub fn check_delta<'d, 't>(
    delta: &'d proto::TableDelta,
    synced: bool,
    version: u64,
    owner_of: impl Fn(&str) -> Option<&'t str>,
) -> Result<Vec<ParsedForks<'d>>, ApplyError> {
    if !synced || delta.base_version != version {
        return Err(ApplyError::WrongBase {
            base: delta.base_version,
            held: version,
        });
    }
    let touched: BTreeSet<&str> = touched_keys(delta).collect();
    let mut new_names = BTreeSet::new();
    let mut upserted = BTreeSet::new();
    let mut parsed = Vec::with_capacity(delta.upserts.len());
    for (i, entry) in delta.upserts.iter().enumerate() {
        // Each upsert checked as a table of its own (the field path says so).
        let at = format!("delta.upserts[{i}]");
        parsed.push(check_entry(entry, &at, 0, |_| false, |_| false).map_err(ApplyError::Invalid)?);
        // Twice in one delta is ambiguous; applied in turn, the first copy's
        // sandbox name would stay indexed to the key.
        if !upserted.insert(entry.routing_key.as_str()) {
            return Err(ApplyError::Invalid(ConfigError::new(
                format!("{at}.routing_key"),
                "routing key upserted twice in one delta",
            )));
        }
        if entry.sandbox.is_empty() {
            continue;
        }
        let taken_elsewhere =
            owner_of(&entry.sandbox).is_some_and(|owner| !touched.contains(owner));
        if taken_elsewhere || !new_names.insert(entry.sandbox.as_str()) {
            return Err(ApplyError::Invalid(ConfigError::new(
                format!("{at}.sandbox"),
                "sandbox name already used by another routing key",
            )));
        }
    }
    Ok(parsed)
}

/// Every routing key a delta removes or upserts.
pub fn touched_keys(delta: &proto::TableDelta) -> impl Iterator<Item = &str> {
    delta
        .removed_keys
        .iter()
        .map(String::as_str)
        .chain(delta.upserts.iter().map(|e| e.routing_key.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::{SharedStore, SharedTable};
    use crate::table::{ForkLookup, RouteLookup};
    use std::cell::RefCell;
    use std::collections::HashMap;

    #[derive(Default)]
    struct Memory(RefCell<HashMap<String, Vec<u8>>>);

    impl SharedStore for &Memory {
        fn get(&self, key: &str) -> Option<Vec<u8>> {
            self.0.borrow().get(key).cloned()
        }
    }

    impl Memory {
        /// Applies `update` to `table` and writes the result, as the singleton does.
        fn publish(&self, table: &mut PushedTable, update: &[u8]) {
            for w in table.apply(update).unwrap() {
                self.0.borrow_mut().insert(w.key, w.value);
            }
        }
    }

    fn entry(key: &str, name: &str, service: &str, endpoint: &str) -> proto::TableEntry {
        proto::TableEntry {
            routing_key: key.into(),
            sandbox: name.into(),
            forks: vec![proto::Fork {
                service: service.into(),
                endpoints: vec![endpoint.into()],
            }],
        }
    }

    fn snapshot(version: u64, entries: Vec<proto::TableEntry>) -> Vec<u8> {
        proto::TableUpdate {
            version,
            kind: Some(Kind::Snapshot(proto::RoutingTable { version, entries })),
        }
        .encode_to_vec()
    }

    fn delta(
        version: u64,
        base: u64,
        upserts: Vec<proto::TableEntry>,
        removed: &[&str],
    ) -> Vec<u8> {
        proto::TableUpdate {
            version,
            kind: Some(Kind::Delta(proto::TableDelta {
                base_version: base,
                upserts,
                removed_keys: removed.iter().map(|k| (*k).to_owned()).collect(),
            })),
        }
        .encode_to_vec()
    }

    fn addr(s: &str) -> std::net::SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn snapshot_then_deltas_route_through_shared_data() {
        let memory = Memory::default();
        let mut table = PushedTable::default();
        memory.publish(
            &mut table,
            &snapshot(1, vec![entry("ka", "a", "backend", "10.0.0.1:80")]),
        );
        let lookup = SharedTable::new(&memory);
        assert_eq!(
            lookup.fork("ka", "backend"),
            ForkLookup::Endpoints(vec![addr("10.0.0.1:80")].into())
        );
        assert_eq!(lookup.routing_key_of("a").as_deref(), Some("ka"));
        assert!(lookup.is_registered("backend", addr("10.0.0.1:80")));

        memory.publish(
            &mut table,
            &delta(
                2,
                1,
                vec![entry("kb", "b", "users", "10.0.0.2:80")],
                &["ka"],
            ),
        );
        assert_eq!(lookup.fork("ka", "backend"), ForkLookup::UnknownKey);
        assert_eq!(lookup.routing_key_of("a"), None);
        assert!(!lookup.is_registered("backend", addr("10.0.0.1:80")));
        assert_eq!(
            lookup.fork("kb", "users"),
            ForkLookup::Endpoints(vec![addr("10.0.0.2:80")].into())
        );
        assert_eq!(lookup.fork("kb", "backend"), ForkLookup::NoFork);
        assert_eq!((&memory).get(VERSION_KEY), Some(b"2".to_vec()));
    }

    #[test]
    fn bad_updates_change_nothing() {
        let memory = Memory::default();
        let mut table = PushedTable::default();
        // A delta before any snapshot, or on another base, is refused.
        assert_eq!(
            table.apply(&delta(2, 1, vec![], &[])),
            Err(ApplyError::WrongBase { base: 1, held: 0 })
        );
        memory.publish(
            &mut table,
            &snapshot(1, vec![entry("ka", "a", "backend", "10.0.0.1:80")]),
        );
        assert!(matches!(
            table.apply(&delta(3, 2, vec![], &[])),
            Err(ApplyError::WrongBase { .. })
        ));
        assert_eq!(table.apply(b"\xff\xff"), Err(ApplyError::Undecodable));
        let bad = delta(2, 1, vec![entry("kb", "b", "backend", "backend:80")], &[]);
        assert!(matches!(table.apply(&bad), Err(ApplyError::Invalid(_))));
        let dup_name = delta(2, 1, vec![entry("kb", "a", "users", "10.0.0.2:80")], &[]);
        assert!(matches!(
            table.apply(&dup_name),
            Err(ApplyError::Invalid(_))
        ));
        assert_eq!(table.version(), 1);
        assert_eq!(
            SharedTable::new(&memory).fork("ka", "backend"),
            ForkLookup::Endpoints(vec![addr("10.0.0.1:80")].into())
        );
    }

    #[test]
    fn a_reloaded_singleton_clears_what_the_new_snapshot_lacks() {
        let memory = Memory::default();
        let mut first = PushedTable::default();
        memory.publish(
            &mut first,
            &snapshot(5, vec![entry("ka", "a", "backend", "10.0.0.1:80")]),
        );
        // A new VM starts from the index only.
        let mut second = PushedTable::resume((&memory).get(INDEX_KEY).as_deref());
        memory.publish(
            &mut second,
            &snapshot(6, vec![entry("kb", "b", "users", "10.0.0.2:80")]),
        );
        let lookup = SharedTable::new(&memory);
        assert_eq!(lookup.fork("ka", "backend"), ForkLookup::UnknownKey);
        assert_eq!(lookup.routing_key_of("a"), None);
        assert!(!lookup.is_registered("backend", addr("10.0.0.1:80")));
        assert_eq!(
            lookup.fork("kb", "users"),
            ForkLookup::Endpoints(vec![addr("10.0.0.2:80")].into())
        );
    }

    #[test]
    fn an_empty_snapshot_empties_the_index() {
        // Found by fuzz/table_ops: the index kept listing the cleared keys.
        let memory = Memory::default();
        let mut table = PushedTable::default();
        memory.publish(
            &mut table,
            &snapshot(1, vec![entry("ka", "a", "backend", "10.0.0.1:80")]),
        );
        memory.publish(&mut table, &snapshot(2, vec![]));
        assert_eq!((&memory).get(INDEX_KEY), Some(Vec::new()));
        assert_eq!(
            (&memory).get("sandbox_router.key.ka"),
            Some(Vec::new()),
            "cleared"
        );
    }

    #[test]
    fn a_fork_listing_an_endpoint_twice_round_robins_like_a_configured_table() {
        // Found by fuzz/table_ops: shared data kept both copies, so the
        // pushed table sent twice the share to a repeated endpoint.
        let mut twice = entry("ka", "a", "backend", "[fd00::1]:80");
        twice.forks[0].endpoints = vec![
            "[fd00::1]:80".into(),
            "10.0.0.2:80".into(),
            "[fd00:0::1]:80".into(),
        ];
        let once = ForkLookup::Endpoints(vec![addr("[fd00::1]:80"), addr("10.0.0.2:80")].into());
        let configured = proto::RoutingTable {
            version: 1,
            entries: vec![twice.clone()],
        };
        let configured = RoutingTable::compile(&configured, "t").unwrap();
        assert_eq!(configured.fork("ka", "backend"), once);

        let memory = Memory::default();
        let mut table = PushedTable::default();
        memory.publish(&mut table, &snapshot(1, vec![twice.clone()]));
        assert_eq!(SharedTable::new(&memory).fork("ka", "backend"), once);
        twice.routing_key = "kb".into();
        twice.sandbox = "b".into();
        memory.publish(&mut table, &delta(2, 1, vec![twice], &[]));
        assert_eq!(SharedTable::new(&memory).fork("kb", "backend"), once);
    }

    #[test]
    fn a_delta_upserting_a_key_twice_is_refused() {
        // Found by fuzz/table_ops: accepted, it left sandbox name "a"
        // pointing at "ka", whose entry now names sandbox "b".
        let memory = Memory::default();
        let mut table = PushedTable::default();
        memory.publish(&mut table, &snapshot(1, vec![]));
        let twice = delta(
            2,
            1,
            vec![
                entry("ka", "a", "backend", "10.0.0.1:80"),
                entry("ka", "b", "users", "10.0.0.2:80"),
            ],
            &[],
        );
        let Err(ApplyError::Invalid(e)) = table.apply(&twice) else {
            panic!("accepted");
        };
        assert_eq!(e.field, "delta.upserts[1].routing_key");
        assert_eq!(table.version(), 1);
        assert_eq!(SharedTable::new(&memory).routing_key_of("a"), None);
    }

    #[test]
    fn a_delta_writes_only_what_it_touches() {
        let mut table = PushedTable::default();
        table
            .apply(&snapshot(
                1,
                vec![
                    entry("ka", "a", "backend", "10.0.0.1:80"),
                    entry("kb", "b", "users", "10.0.0.2:80"),
                ],
            ))
            .unwrap();
        let writes = table
            .apply(&delta(
                2,
                1,
                vec![entry("kb", "b", "users", "10.0.0.3:80")],
                &[],
            ))
            .unwrap();
        let keys: Vec<&str> = writes.iter().map(|w| w.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "sandbox_router.key.kb",
                "sandbox_router.sandbox.b",
                "sandbox_router.service.users",
                VERSION_KEY
            ]
        );
    }

    #[test]
    fn backoff_doubles_to_its_maximum_and_resets() {
        let mut b = Backoff::new(100, 500);
        let delays: Vec<u64> = (0..5).map(|_| b.next_delay_ms()).collect();
        assert_eq!(delays, [100, 200, 400, 500, 500]);
        b.reset();
        assert_eq!(b.next_delay_ms(), 100);
    }

    #[test]
    fn sync_settings() {
        let s = SyncSettings::from_json(b"").unwrap();
        assert_eq!(s.control_cluster, "sandbox_router_control");
        assert_eq!(
            SyncSettings::from_json(br#"{"control_clustr": "x"}"#)
                .unwrap_err()
                .field,
            "control_clustr"
        );
        assert_eq!(
            SyncSettings::from_json(br#"{"initial_backoff_ms": 10, "max_backoff_ms": 5}"#)
                .unwrap_err()
                .field,
            "max_backoff_ms"
        );
    }
}

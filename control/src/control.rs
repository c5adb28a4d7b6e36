//! The control service's core: the model, its store, the table version, and
//! the fan-out of table updates to watching proxies.
//!
//! Writes are serialised by one lock: validate and apply to the model, commit
//! to the store (the write is acknowledged only after that), bump the
//! version, and broadcast a delta holding exactly the changed routing keys.
//!
//! In Kubernetes mode the cluster owns the state: there is no store, API
//! writes are refused, and the controller replaces the whole model
//! ([`Control::replace_model`]), broadcast as a delta like any write.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use sandbox_router_proto::v1::{self as proto, table_update::Kind};
use serde::Serialize;
use tokio::sync::broadcast;

use crate::error::ApiError;
use crate::model::{
    Change, Model, NewRouteGroup, NewSandbox, RouteGroup, Sandbox, ROUTING_KEY_LEN,
};
use crate::store::{Row, Store};

/// Updates buffered per watcher before it must resync from a snapshot.
const UPDATE_BUFFER: usize = 1024;

/// Why a write is refused when the model is owned elsewhere (Kubernetes mode).
pub const READ_ONLY: &str = "in Kubernetes mode this API is read-only: edit Sandbox and RouteGroup resources (sandbox-router.io/v1alpha1) with kubectl";

pub struct Control {
    state: Mutex<State>,
    updates: broadcast::Sender<Arc<proto::TableUpdate>>,
    proxies: Mutex<BTreeMap<u64, ProxyStatus>>,
    next_proxy: AtomicU64,
    pub counters: Counters,
}

struct State {
    model: Model,
    /// `None`: the model is owned elsewhere (Kubernetes mode) and only ever
    /// replaced whole.
    store: Option<Store>,
    version: u64,
}

/// Counters for `/metrics`.
#[derive(Default)]
pub struct Counters {
    pub writes: AtomicU64,
    pub rejected_writes: AtomicU64,
    pub expired_sandboxes: AtomicU64,
    pub updates_sent: AtomicU64,
    pub snapshots_sent: AtomicU64,
    /// Watch streams refused for a missing or wrong watch token.
    pub watch_refused: AtomicU64,
}

/// One connected proxy, as `sandbox-router status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ProxyStatus {
    pub node_id: String,
    pub peer: String,
    pub connected_at_ms: u64,
    /// Last version sent on the stream.
    pub sent_version: u64,
    /// Last version the proxy says it applied.
    pub applied_version: u64,
    /// The proxy's last error applying an update, if any.
    pub error: String,
}

/// What a successful write returns.
#[derive(Debug, Clone, Serialize)]
pub struct Written<T> {
    pub version: u64,
    #[serde(flatten)]
    pub value: T,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Control {
    pub fn open(path: &Path) -> Result<Arc<Self>, ApiError> {
        Self::with_store(Store::open(path).map_err(internal)?)
    }

    pub fn in_memory() -> Result<Arc<Self>, ApiError> {
        Self::with_store(Store::in_memory().map_err(internal)?)
    }

    /// A control service whose model comes from outside (the Kubernetes
    /// controller): no store, API writes refused, versions from 0.
    pub fn external() -> Arc<Self> {
        Self::with_state(State {
            model: Model::default(),
            store: None,
            version: 0,
        })
    }

    fn with_store(store: Store) -> Result<Arc<Self>, ApiError> {
        let (model, version) = store.load().map_err(internal)?;
        Ok(Self::with_state(State {
            model,
            store: Some(store),
            version,
        }))
    }

    fn with_state(state: State) -> Arc<Self> {
        let (updates, _) = broadcast::channel(UPDATE_BUFFER);
        Arc::new(Control {
            state: Mutex::new(state),
            updates,
            proxies: Mutex::new(BTreeMap::new()),
            next_proxy: AtomicU64::new(1),
            counters: Counters::default(),
        })
    }

    /// True when the model is owned elsewhere and API writes are refused.
    pub fn is_external(&self) -> bool {
        self.lock().store.is_none()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the model half-written
        // (writes mutate only after validation); keep serving.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn version(&self) -> u64 {
        self.lock().version
    }

    /// Reads the model under the lock.
    pub fn read<T>(&self, f: impl FnOnce(&Model, u64) -> T) -> T {
        let state = self.lock();
        f(&state.model, state.version)
    }

    /// The full table and a receiver for every update after it, atomically.
    pub fn subscribe(
        &self,
    ) -> (
        proto::TableUpdate,
        broadcast::Receiver<Arc<proto::TableUpdate>>,
    ) {
        let state = self.lock();
        let snapshot = proto::TableUpdate {
            version: state.version,
            kind: Some(Kind::Snapshot(state.model.table(state.version))),
        };
        (snapshot, self.updates.subscribe())
    }

    pub fn create_sandbox(&self, new: NewSandbox) -> Result<Written<Sandbox>, ApiError> {
        let name = new.name.clone();
        self.write(|model| {
            let key = fresh_key(model)?;
            let change = model.create_sandbox(new, key, now_ms())?;
            Ok((change, sandbox_rows(model, &name)))
        })
        .and_then(|version| self.sandbox_written(version, &name))
    }

    pub fn set_forks(
        &self,
        name: &str,
        forks: &BTreeMap<String, Vec<String>>,
    ) -> Result<Written<Sandbox>, ApiError> {
        self.write(|model| {
            let change = model.set_forks(name, forks)?;
            Ok((change, sandbox_rows(model, name)))
        })
        .and_then(|version| self.sandbox_written(version, name))
    }

    pub fn delete_sandbox(&self, name: &str) -> Result<u64, ApiError> {
        self.write(|model| {
            let change = model.delete_sandbox(name)?;
            Ok((change, vec![RowOwned::DeleteSandbox(name.to_owned())]))
        })
    }

    pub fn create_group(&self, new: NewRouteGroup) -> Result<Written<RouteGroup>, ApiError> {
        let name = new.name.clone();
        self.write(|model| {
            let key = fresh_key(model)?;
            let change = model.create_group(new, key, now_ms())?;
            Ok((change, group_rows(model, &name)))
        })
        .and_then(|version| self.group_written(version, &name))
    }

    pub fn update_group(
        &self,
        name: &str,
        update: NewRouteGroup,
    ) -> Result<Written<RouteGroup>, ApiError> {
        self.write(|model| {
            let change = model.update_group(name, update)?;
            Ok((change, group_rows(model, name)))
        })
        .and_then(|version| self.group_written(version, name))
    }

    pub fn delete_group(&self, name: &str) -> Result<u64, ApiError> {
        self.write(|model| {
            let change = model.delete_group(name)?;
            Ok((change, vec![RowOwned::DeleteGroup(name.to_owned())]))
        })
    }

    /// Deletes expired sandboxes; returns how many. An external owner
    /// expires its own (the Kubernetes controller deletes the resource).
    pub fn expire(&self, now_ms: u64) -> Result<usize, ApiError> {
        let mut count = 0;
        let next = self.read(|m, _| m.next_expiry_ms());
        if self.is_external() || next.is_none_or(|at| at > now_ms) {
            return Ok(0);
        }
        self.write(|model| {
            let (expired, change) = model.expire(now_ms);
            count = expired.len();
            Ok((
                change,
                expired.into_iter().map(RowOwned::DeleteSandbox).collect(),
            ))
        })?;
        self.counters
            .expired_sandboxes
            .fetch_add(count as u64, Ordering::Relaxed);
        Ok(count)
    }

    fn sandbox_written(&self, version: u64, name: &str) -> Result<Written<Sandbox>, ApiError> {
        let value = self
            .read(|m, _| m.sandbox(name).cloned())
            .ok_or_else(|| ApiError::not_found("sandbox", name))?;
        Ok(Written { version, value })
    }

    fn group_written(&self, version: u64, name: &str) -> Result<Written<RouteGroup>, ApiError> {
        let value = self
            .read(|m, _| m.group(name).cloned())
            .ok_or_else(|| ApiError::not_found("route group", name))?;
        Ok(Written { version, value })
    }

    /// Runs one write: `apply` changes a copy of nothing but the model (and
    /// fails with the model untouched), the rows are committed, then the
    /// version is bumped and the delta broadcast. Returns the new version.
    fn write(
        &self,
        apply: impl FnOnce(&mut Model) -> Result<(Change, Vec<RowOwned>), ApiError>,
    ) -> Result<u64, ApiError> {
        let mut state = self.lock();
        if state.store.is_none() {
            self.counters
                .rejected_writes
                .fetch_add(1, Ordering::Relaxed);
            return Err(ApiError::ReadOnly(READ_ONLY.to_owned()));
        }
        let (change, rows) = match apply(&mut state.model) {
            Ok(done) => done,
            Err(err) => {
                self.counters
                    .rejected_writes
                    .fetch_add(1, Ordering::Relaxed);
                return Err(err);
            }
        };
        if change.upserted.is_empty() && change.removed.is_empty() {
            return Ok(state.version);
        }
        let version = state.version + 1;
        let borrowed: Vec<Row<'_>> = rows.iter().map(RowOwned::as_row).collect();
        let committed = match state.store.as_mut() {
            Some(store) => store.commit(version, &borrowed),
            None => Ok(()),
        };
        if let Err(err) = committed {
            // Not acknowledged: put the model back as the store has it.
            if let Some(Ok((model, stored_version))) = state.store.as_ref().map(Store::load) {
                state.model = model;
                state.version = stored_version;
            }
            return Err(internal(err));
        }
        let upserts = change
            .upserted
            .iter()
            .filter_map(|k| state.model.entry(k))
            .collect();
        self.counters.writes.fetch_add(1, Ordering::Relaxed);
        Ok(self.publish(&mut state, upserts, change.removed.into_iter().collect()))
    }

    /// Replaces the whole model (Kubernetes mode: the controller recomputes
    /// it from the cluster) and broadcasts exactly the routing keys whose
    /// entries differ, as one delta. Returns the version now current, which
    /// is unchanged when the new model makes the same table.
    pub fn replace_model(&self, model: Model) -> u64 {
        let mut state = self.lock();
        let before: BTreeMap<String, proto::TableEntry> = state
            .model
            .table(0)
            .entries
            .into_iter()
            .map(|e| (e.routing_key.clone(), e))
            .collect();
        let after = model.table(0).entries;
        let removed: Vec<String> = before
            .keys()
            .filter(|k| !model.key_in_use(k))
            .cloned()
            .collect();
        let upserts: Vec<proto::TableEntry> = after
            .into_iter()
            .filter(|e| before.get(&e.routing_key) != Some(e))
            .collect();
        // The model (names, labels, expiry) is replaced even when the table
        // is not, so API reads always show what the cluster says.
        state.model = model;
        if upserts.is_empty() && removed.is_empty() {
            return state.version;
        }
        self.publish(&mut state, upserts, removed)
    }

    /// Bumps the version and broadcasts the delta to every watcher.
    fn publish(
        &self,
        state: &mut State,
        upserts: Vec<proto::TableEntry>,
        removed_keys: Vec<String>,
    ) -> u64 {
        let version = state.version + 1;
        state.version = version;
        // No receivers is fine: nobody is watching yet.
        let _ = self.updates.send(Arc::new(proto::TableUpdate {
            version,
            kind: Some(Kind::Delta(proto::TableDelta {
                base_version: version - 1,
                upserts,
                removed_keys,
            })),
        }));
        version
    }

    pub fn proxy_connected(&self, node_id: String, peer: String) -> u64 {
        let id = self.next_proxy.fetch_add(1, Ordering::Relaxed);
        let status = ProxyStatus {
            node_id,
            peer,
            connected_at_ms: now_ms(),
            sent_version: 0,
            applied_version: 0,
            error: String::new(),
        };
        self.proxies_lock().insert(id, status);
        id
    }

    pub fn proxy_update(&self, id: u64, f: impl FnOnce(&mut ProxyStatus)) {
        if let Some(status) = self.proxies_lock().get_mut(&id) {
            f(status);
        }
    }

    pub fn proxy_disconnected(&self, id: u64) {
        self.proxies_lock().remove(&id);
    }

    pub fn proxies(&self) -> Vec<ProxyStatus> {
        self.proxies_lock().values().cloned().collect()
    }

    fn proxies_lock(&self) -> MutexGuard<'_, BTreeMap<u64, ProxyStatus>> {
        self.proxies
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Row changes owned, so they can be computed under the write closure.
enum RowOwned {
    PutSandbox(Sandbox),
    DeleteSandbox(String),
    PutGroup(RouteGroup),
    DeleteGroup(String),
}

impl RowOwned {
    fn as_row(&self) -> Row<'_> {
        match self {
            RowOwned::PutSandbox(s) => Row::PutSandbox(s),
            RowOwned::DeleteSandbox(n) => Row::DeleteSandbox(n),
            RowOwned::PutGroup(g) => Row::PutGroup(g),
            RowOwned::DeleteGroup(n) => Row::DeleteGroup(n),
        }
    }
}

fn sandbox_rows(model: &Model, name: &str) -> Vec<RowOwned> {
    model
        .sandbox(name)
        .cloned()
        .map(RowOwned::PutSandbox)
        .into_iter()
        .collect()
}

fn group_rows(model: &Model, name: &str) -> Vec<RowOwned> {
    model
        .group(name)
        .cloned()
        .map(RowOwned::PutGroup)
        .into_iter()
        .collect()
}

fn fresh_key(model: &Model) -> Result<String, ApiError> {
    mint_key(|key| model.key_in_use(key))
}

/// A new routing key: 24 random characters of `a-z0-9` (~124 bits), for
/// which `in_use` is false.
pub fn mint_key(in_use: impl Fn(&str) -> bool) -> Result<String, ApiError> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    for _ in 0..8 {
        let mut key = String::with_capacity(ROUTING_KEY_LEN);
        while key.len() < ROUTING_KEY_LEN {
            let mut bytes = [0u8; 32];
            getrandom::fill(&mut bytes)
                .map_err(|e| ApiError::Internal(format!("no randomness: {e}")))?;
            // 252 = 7 * 36: rejecting bytes above it keeps every character equally likely.
            for b in bytes.iter().filter(|b| **b < 252) {
                if key.len() < ROUTING_KEY_LEN {
                    key.push(char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]));
                }
            }
        }
        if !in_use(&key) {
            return Ok(key);
        }
    }
    Err(ApiError::Internal(
        "could not draw an unused routing key".into(),
    ))
}

fn internal(err: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(err.to_string())
}

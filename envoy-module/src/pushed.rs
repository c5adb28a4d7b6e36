//! The pushed routing table: one watch of the control service per Envoy
//! process (`sandbox-router-watch`: a background thread holding the gRPC
//! Watch stream, with the Wasm singleton's guarantees: each update validated
//! whole, last-known-good while the control service is away, reconnect with
//! backoff, the applied version acknowledged, the watch token).
//!
//! Why a thread of the module's own and not a bootstrap dynamic module: it
//! needs no second piece of Envoy configuration (a bootstrap extension must
//! be in the static bootstrap and be told the same server), starts with the
//! first filter configuration that asks for it, and serves every later one
//! (an edge and a sidecar listener, an LDS update) from the same table.
//!
//! Every worker reads the table without a lock (an atomically swapped,
//! immutable table), and only for a request with routing context. The ABI
//! promises a configuration's stat updates from Envoy's own threads (a
//! scheduled hook), not from a thread of the module's, so the watch's stats
//! (`sync.*`) are published on Envoy's main thread: the watch calls back
//! after every change, which commits each configuration's scheduler, whose
//! hook adds what changed since the last publication.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use sandbox_router_watch::{Watch, WatchConfig, WatchStatus};

use crate::config::ControlSpec;
use crate::ffi::{log, ConfigInit, ConfigMetrics, Level, Scheduler};
use crate::metrics::SyncIds;

/// The table a reader sees now.
pub type Snapshot = sandbox_router_watch::Table;

/// A worker's handle on the process's pushed table (Clone + Send + Sync).
#[derive(Clone)]
pub struct TableReader(Option<sandbox_router_watch::TableReader>);

impl TableReader {
    /// A reader of an empty table, as in validate mode (no watch runs).
    #[cfg(test)]
    pub fn empty() -> Self {
        TableReader(None)
    }

    /// The table now (lock-free).
    pub fn current(&self) -> Arc<Snapshot> {
        match &self.0 {
            Some(reader) => reader.lookup(),
            None => Arc::clone(EMPTY.get_or_init(Default::default)),
        }
    }
}

static EMPTY: OnceLock<Arc<Snapshot>> = OnceLock::new();

/// The process's watch, started by the first configuration that asks for it.
static PROCESS: Mutex<Option<Arc<ProcessWatch>>> = Mutex::new(None);
static NEXT_SUBSCRIBER: AtomicU64 = AtomicU64::new(1);

struct ProcessWatch {
    /// The `control` section it was started with; every later one must equal it.
    control: ControlSpec,
    watch: Watch,
    /// The schedulers of the configurations that use it (committed on every change).
    subscribers: Arc<Mutex<Vec<(u64, Scheduler)>>>,
    /// The counts last added to Envoy's counters (shared by every configuration).
    published: Mutex<WatchStatus>,
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these leaves consistent data: go on.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One configuration's use of the process's watch.
pub struct Subscription {
    id: u64,
    /// `None` in validate mode.
    process: Option<Arc<ProcessWatch>>,
    sync: SyncIds,
}

/// Joins the process's watch (starting it, if this is the first
/// configuration that asks). Err: the reason, naming the field.
pub fn subscribe(
    control: &ControlSpec,
    init: &mut ConfigInit,
    sync: SyncIds,
) -> Result<Subscription, String> {
    let id = NEXT_SUBSCRIBER.fetch_add(1, Ordering::Relaxed);
    if init.is_validation_mode() {
        return Ok(Subscription {
            id,
            process: None,
            sync,
        });
    }
    let process = {
        let mut process = locked(&PROCESS);
        match &*process {
            Some(running) if running.control == *control => {
                log(
                    Level::Info,
                    &format!(
                        "sandbox-router: sharing this Envoy's watch of {} (node {})",
                        control.server, control.node_id
                    ),
                );
                Arc::clone(running)
            }
            Some(running) => {
                return Err(format!(
                    "control: this Envoy already watches {} as node {}; one watch per Envoy process, so every configuration must give the same control section (restart Envoy to change it)",
                    running.control.server, running.control.node_id
                ))
            }
            None => {
                let started = Arc::new(start(control)?);
                *process = Some(Arc::clone(&started));
                started
            }
        }
    };
    if let Some(scheduler) = init.scheduler() {
        // Publish once now (e.g. a configuration after an LDS update).
        scheduler.commit(0);
        locked(&process.subscribers).push((id, scheduler));
    }
    Ok(Subscription {
        id,
        process: Some(process),
        sync,
    })
}

fn start(control: &ControlSpec) -> Result<ProcessWatch, String> {
    let config = WatchConfig {
        server: control.server.clone(),
        node_id: control.node_id.clone(),
        token: control.token.clone(),
        initial_backoff: control.initial_backoff(),
        max_backoff: control.max_backoff(),
    };
    // Lookup-only: an update costs what it changes, whatever the table's size.
    let watch = Watch::start_lookup_only(config)
        .map_err(|err| format!("control: cannot start the watch: {err}"))?;
    let subscribers: Arc<Mutex<Vec<(u64, Scheduler)>>> = Arc::default();
    let notified = Arc::clone(&subscribers);
    watch.set_notify(Box::new(move || {
        for (_, scheduler) in locked(&notified).iter() {
            scheduler.commit(0);
        }
    }));
    log(
        Level::Info,
        &format!(
            "sandbox-router: watching the control service at {} as node {} (one watch per Envoy process)",
            control.server, control.node_id
        ),
    );
    Ok(ProcessWatch {
        control: control.clone(),
        watch,
        subscribers,
        published: Mutex::new(WatchStatus::default()),
    })
}

impl Subscription {
    pub fn reader(&self) -> TableReader {
        TableReader(self.process.as_ref().map(|p| p.watch.reader()))
    }

    /// On Envoy's main thread: adds to the `sync.*` counters what the watch
    /// counted since the last publication (by any configuration: the
    /// counters are the process's), sets the gauges, logs what happened.
    pub fn publish(&self, metrics: &ConfigMetrics) {
        let Some(process) = &self.process else {
            return;
        };
        let now = process.watch.status();
        let mut published = locked(&process.published);
        let ids = &self.sync;
        for (id, before, after) in [
            (ids.connects, published.connects, now.connects),
            (ids.disconnects, published.disconnects, now.disconnects),
            (
                ids.updates_applied,
                published.updates_applied,
                now.updates_applied,
            ),
            (
                ids.update_errors,
                published.update_errors,
                now.update_errors,
            ),
        ] {
            if after > before {
                metrics.add_counter(id, after - before);
            }
        }
        metrics.set_gauge(ids.table_version, now.version);
        metrics.set_gauge(ids.routing_keys, now.routing_keys as u64);
        if now.disconnects > published.disconnects {
            log(
                Level::Warn,
                &format!(
                    "sandbox-router: watch stream lost ({}); keeping table version {}",
                    now.last_error.as_deref().unwrap_or("closed"),
                    now.version
                ),
            );
        }
        if now.update_errors > published.update_errors {
            log(
                Level::Error,
                &format!(
                    "sandbox-router: refused an update, keeping table version {}: {}",
                    now.version,
                    now.last_error.as_deref().unwrap_or("invalid")
                ),
            );
        }
        *published = now;
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(process) = &self.process {
            // The scheduler is deleted here, on the main thread, under the
            // lock the watch thread commits under.
            locked(&process.subscribers).retain(|(id, _)| *id != self.id);
        }
    }
}

//! The client side of the control service's gRPC `Watch` stream, holding the
//! routing table in process memory: for a native host (an Envoy dynamic
//! module, a message-queue consumer) what the Wasm singleton is for the
//! proxy-wasm filter, without Envoy and without proxy-wasm.
//!
//! [`Watch::start`] runs one background thread (its own current-thread tokio
//! runtime) that holds one stream, applies every update whole or not at all,
//! swaps the new table in atomically, acknowledges the version it applied,
//! and reconnects with exponential backoff. Any thread reads the table
//! without a lock: [`Watch::table`] (a compiled [`RoutingTable`]) or
//! [`Watch::lookup`] (a [`Table`], the same answers, cheap to update).
//!
//! ```no_run
//! use sandbox_router_routing::RouteLookup;
//! use sandbox_router_watch::{Watch, WatchConfig};
//!
//! let watch = Watch::start(WatchConfig::new("http://127.0.0.1:7070", "my-node"))?;
//! let reader = watch.reader(); // Clone + Send + Sync: give one to each worker
//! let _answer = reader.table().fork("routing-key", "backend");
//! # Ok::<(), std::io::Error>(())
//! ```

#![forbid(unsafe_code)]
#![deny(clippy::indexing_slicing)]

mod client;
mod codec;
pub mod table;
mod wire;

use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use sandbox_router_routing::RoutingTable;

pub use table::Table;

/// How long stopping waits for the runtime's blocking tasks (a name lookup).
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(1);

/// Where and how to watch.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    /// The control service, e.g. "http://127.0.0.1:7070" (plain HTTP/2, h2c).
    pub server: String,
    /// Shown by `sandbox-router status` (WatchRequest.node_id).
    pub node_id: String,
    /// Bearer token for the watch stream (`serve --watch-token`), if any.
    pub token: Option<String>,
    /// First reconnect delay; doubles on every failed attempt.
    pub initial_backoff: Duration,
    /// Longest reconnect delay.
    pub max_backoff: Duration,
}

impl WatchConfig {
    /// No token; backoff from 100 ms to 5 s (as the Wasm singleton).
    pub fn new(server: impl Into<String>, node_id: impl Into<String>) -> Self {
        WatchConfig {
            server: server.into(),
            node_id: node_id.into(),
            token: None,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// What the watch is doing, for stats and logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchStatus {
    /// A stream is open (the control service accepted it).
    pub connected: bool,
    /// Version of the table held (0: none yet).
    pub version: u64,
    /// Routing keys in the table held.
    pub routing_keys: usize,
    /// Streams opened.
    pub connects: u64,
    /// Open streams lost (or dropped to resync).
    pub disconnects: u64,
    /// Updates applied (snapshots and deltas).
    pub updates_applied: u64,
    /// Updates refused (invalid, or a delta out of step).
    pub update_errors: u64,
    /// Why the last connection attempt failed, the stream ended or an
    /// update was refused; cleared when a stream opens.
    pub last_error: Option<String>,
}

/// Handle to a background thread (its own current-thread tokio runtime) that
/// holds one Watch stream, reconnects with backoff, validates every update
/// whole, swaps in the new table atomically, and acknowledges the applied
/// version (WatchRequest.applied_version; WatchRequest.error on a refused one).
///
/// Dropping it stops the thread (see [`Watch::stop`]).
pub struct Watch {
    shared: Arc<Shared>,
    stop: tokio::sync::watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl Watch {
    /// Starts watching. Fails only on a configuration that can never work
    /// (a server that is not an `http://` URI, a token that cannot be a
    /// header value, a zero or inverted backoff) or when the thread cannot
    /// start; an unreachable server is retried for as long as the watch runs.
    ///
    /// [`Watch::table`] is kept compiled for every applied version, which
    /// costs O(table) on the watch thread per update: nothing much for a
    /// small table, a few hundred ms at 100,000 keys. Readers never wait for
    /// it; the next update's propagation does (see
    /// [`Watch::start_lookup_only`]).
    pub fn start(config: WatchConfig) -> io::Result<Watch> {
        Watch::spawn(config, true)
    }

    /// Like [`Watch::start`], for a host that reads through [`Watch::lookup`]:
    /// an update costs only what it changes (a one-key delta on a
    /// 100,000-key table: about 3 µs, against hundreds of ms to compile a
    /// [`RoutingTable`] of it), and [`Watch::table`] is compiled on
    /// the calling thread at its first call after each update (O(table);
    /// cached for the others).
    pub fn start_lookup_only(config: WatchConfig) -> io::Result<Watch> {
        Watch::spawn(config, false)
    }

    fn spawn(config: WatchConfig, compiled: bool) -> io::Result<Watch> {
        let settings = client::Settings::new(config)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let shared = Arc::new(Shared::new(compiled));
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let thread = std::thread::Builder::new()
            .name("sandbox-router-watch".to_owned())
            .spawn({
                let shared = Arc::clone(&shared);
                move || {
                    runtime.block_on(client::run(settings, Arc::clone(&shared), stopped));
                    shared.connected.store(false, Ordering::SeqCst);
                    // Not forever on a name lookup still running.
                    runtime.shutdown_timeout(SHUTDOWN_TIMEOUT);
                }
            })?;
        Ok(Watch {
            shared,
            stop,
            thread: Some(thread),
        })
    }

    /// The table now. Lock-free (arc_swap): safe and cheap on any thread, per request.
    pub fn table(&self) -> Arc<RoutingTable> {
        self.shared.table()
    }

    /// The table now, as a [`Table`] (the same answers as [`Watch::table`]).
    /// Lock-free; always current, whichever way the watch was started.
    pub fn lookup(&self) -> Arc<Table> {
        self.shared.lookup()
    }

    /// A cheap shared reader for other threads (Clone + Send + Sync) with the same `table()`.
    pub fn reader(&self) -> TableReader {
        TableReader {
            shared: Arc::clone(&self.shared),
        }
    }

    pub fn status(&self) -> WatchStatus {
        self.shared.status()
    }

    /// Called (on the watch thread) after every applied update or connection
    /// change; for a host that must publish stats on its own thread (e.g.
    /// Envoy's scheduler). Replaces the previous one. A panic in it is caught.
    pub fn set_notify(&self, f: Box<dyn Fn() + Send + Sync>) {
        self.shared.notify.store(Some(Arc::new(f)));
    }

    /// Stops the thread and joins it (also on Drop). The stream is dropped,
    /// which the control service sees as the proxy disconnecting.
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take() {
            // Dropped from its own notify callback: it ends by itself.
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

/// A reader of the watch's table for another thread: Clone + Send + Sync.
/// Outlives the [`Watch`] harmlessly (it then keeps the last table).
#[derive(Clone)]
pub struct TableReader {
    shared: Arc<Shared>,
}

impl TableReader {
    /// Same as [`Watch::table`].
    pub fn table(&self) -> Arc<RoutingTable> {
        self.shared.table()
    }

    /// Same as [`Watch::lookup`].
    pub fn lookup(&self) -> Arc<Table> {
        self.shared.lookup()
    }

    /// Runs `f` on the current [`Table`] without touching its reference
    /// count (no shared cache line written): the cheapest per-request read.
    pub fn with_lookup<R>(&self, f: impl FnOnce(&Table) -> R) -> R {
        f(&self.shared.current.load().lookup)
    }

    pub fn status(&self) -> WatchStatus {
        self.shared.status()
    }
}

/// What the watch thread and every reader share.
pub(crate) struct Shared {
    current: ArcSwap<Current>,
    /// Whether [`Current::compiled`] is kept for every version.
    keep_compiled: bool,
    /// Lookup-only mode: the last [`RoutingTable`] compiled for a reader.
    compiled_cache: ArcSwapOption<Compiled>,
    connected: AtomicBool,
    connects: AtomicU64,
    disconnects: AtomicU64,
    updates_applied: AtomicU64,
    update_errors: AtomicU64,
    last_error: ArcSwapOption<String>,
    notify: ArcSwapOption<Box<dyn Fn() + Send + Sync>>,
    /// Replaced versions still held by readers (freed on the watch thread).
    retired: Mutex<Vec<client::Retired>>,
}

/// One applied version, in both forms, swapped in as one.
pub(crate) struct Current {
    lookup: Arc<Table>,
    compiled: Option<Arc<RoutingTable>>,
}

pub(crate) struct Compiled {
    of: Arc<Table>,
    table: Arc<RoutingTable>,
}

impl Shared {
    fn new(keep_compiled: bool) -> Self {
        Shared {
            current: ArcSwap::from_pointee(Current {
                lookup: Arc::new(Table::default()),
                compiled: keep_compiled.then(|| Arc::new(RoutingTable::default())),
            }),
            keep_compiled,
            compiled_cache: ArcSwapOption::empty(),
            connected: AtomicBool::new(false),
            connects: AtomicU64::new(0),
            disconnects: AtomicU64::new(0),
            updates_applied: AtomicU64::new(0),
            update_errors: AtomicU64::new(0),
            last_error: ArcSwapOption::empty(),
            notify: ArcSwapOption::empty(),
            retired: Mutex::new(Vec::new()),
        }
    }

    fn table(&self) -> Arc<RoutingTable> {
        let current = self.current.load();
        if let Some(compiled) = &current.compiled {
            return Arc::clone(compiled);
        }
        if let Some(cached) = self.compiled_cache.load().as_ref() {
            if Arc::ptr_eq(&cached.of, &current.lookup) {
                return Arc::clone(&cached.table);
            }
        }
        let table = match current.lookup.to_routing_table() {
            Ok(table) => Arc::new(table),
            Err(err) => {
                // Every entry was validated on the way in: not expected.
                log::error!("sandbox-router watch: cannot compile the table held: {err}");
                Arc::new(RoutingTable::default())
            }
        };
        let replaced = self.compiled_cache.swap(Some(Arc::new(Compiled {
            of: Arc::clone(&current.lookup),
            table: Arc::clone(&table),
        })));
        if let Some(replaced) = replaced {
            // Freed by the watch thread, like a replaced version.
            self.retire(&Current {
                lookup: Arc::clone(&replaced.of),
                compiled: Some(Arc::clone(&replaced.table)),
            });
        }
        table
    }

    fn lookup(&self) -> Arc<Table> {
        Arc::clone(&self.current.load().lookup)
    }

    fn status(&self) -> WatchStatus {
        let current = self.current.load();
        WatchStatus {
            connected: self.connected.load(Ordering::SeqCst),
            version: current.lookup.version(),
            routing_keys: current.lookup.len(),
            connects: self.connects.load(Ordering::SeqCst),
            disconnects: self.disconnects.load(Ordering::SeqCst),
            updates_applied: self.updates_applied.load(Ordering::SeqCst),
            update_errors: self.update_errors.load(Ordering::SeqCst),
            last_error: self.last_error.load_full().map(|e| (*e).clone()),
        }
    }

    /// Runs the host's callback, if any (on the watch thread).
    fn notify(&self) {
        if let Some(f) = self.notify.load_full() {
            if catch_unwind(AssertUnwindSafe(|| f())).is_err() {
                log::error!("sandbox-router watch: the notify callback panicked");
            }
        }
    }
}

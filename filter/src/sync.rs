//! The singleton (bootstrap `WasmService`, one per Envoy process): holds one
//! gRPC watch stream to the control service, writes each update into shared
//! data for the HTTP filters of every worker, acknowledges it, and reconnects
//! with backoff. While the control service is away the last table stays in
//! shared data and keeps routing.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MetricType, Status};
use sandbox_router_proto::v1::WatchRequest;
use sandbox_router_proto::Message;
use sandbox_router_routing::shared::INDEX_KEY;
use sandbox_router_routing::sync::{
    ApplyError, Backoff, PushedTable, SyncSettings, WATCH_METHOD, WATCH_SERVICE,
};

/// How often the singleton checks whether it must reconnect.
const TICK: Duration = Duration::from_millis(50);

pub struct SyncRoot {
    settings: SyncSettings,
    node_id: String,
    table: PushedTable,
    stream: Option<u32>,
    backoff: Backoff,
    /// Unix ms at which to (re)connect, when no stream is open.
    connect_at_ms: u64,
    metrics: Option<SyncMetrics>,
}

impl SyncRoot {
    pub fn new(settings: SyncSettings) -> Self {
        let node_id = if settings.node_id.is_empty() {
            // `xds.node` is the current attribute name; `node` the older one.
            [vec!["xds", "node", "id"], vec!["node", "id"]]
                .into_iter()
                .find_map(|path| {
                    let id = hostcalls::get_property(path).ok().flatten()?;
                    Some(String::from_utf8_lossy(&id).into_owned()).filter(|id| !id.is_empty())
                })
                .unwrap_or_else(|| "envoy".to_owned())
        } else {
            settings.node_id.clone()
        };
        // A reloaded singleton VM finds what its predecessor wrote.
        let index = hostcalls::get_shared_data(INDEX_KEY)
            .ok()
            .and_then(|(value, _)| value);
        let backoff = Backoff::new(settings.initial_backoff_ms, settings.max_backoff_ms);
        SyncRoot {
            settings,
            node_id,
            table: PushedTable::resume(index.as_deref()),
            stream: None,
            backoff,
            connect_at_ms: 0,
            metrics: SyncMetrics::define().ok(),
        }
    }

    /// Takes a new configuration (the stream is reopened with it).
    pub fn reconfigure(&mut self, settings: SyncSettings) {
        self.backoff = Backoff::new(settings.initial_backoff_ms, settings.max_backoff_ms);
        self.settings = settings;
        if let Some(token) = self.stream.take() {
            let _ = hostcalls::cancel_grpc_stream(token);
        }
        self.connect_at_ms = 0;
    }

    pub fn start(&self) {
        let _ = hostcalls::set_tick_period(TICK);
        log::info!(
            "sandbox-router sync: node {} watching the control service via cluster {}",
            self.node_id,
            self.settings.control_cluster
        );
    }

    pub fn on_tick(&mut self) {
        if self.stream.is_none() && now_ms() >= self.connect_at_ms {
            self.connect();
        }
    }

    fn connect(&mut self) {
        let bearer = format!("Bearer {}", self.settings.token);
        let metadata: Vec<(&str, &[u8])> = if self.settings.token.is_empty() {
            Vec::new()
        } else {
            vec![("authorization", bearer.as_bytes())]
        };
        match hostcalls::open_grpc_stream(
            &self.settings.control_cluster,
            WATCH_SERVICE,
            WATCH_METHOD,
            metadata,
        ) {
            Ok(token) => {
                self.stream = Some(token);
                self.count(|m| m.connects);
                self.send(WatchRequest {
                    node_id: self.node_id.clone(),
                    applied_version: self.table.version(),
                    error: String::new(),
                });
            }
            Err(status) => {
                log::warn!("sandbox-router sync: cannot open the watch stream: {status:?}");
                self.retry_later();
            }
        }
    }

    fn send(&mut self, request: WatchRequest) {
        let Some(token) = self.stream else { return };
        if hostcalls::send_grpc_stream_message(token, Some(&request.encode_to_vec()), false)
            .is_err()
        {
            // The stream is gone; its close callback (or the next tick) reconnects.
            let _ = hostcalls::cancel_grpc_stream(token);
            self.stream = None;
            self.retry_later();
        }
    }

    pub fn on_message(&mut self, token: u32, size: usize) {
        if self.stream != Some(token) {
            return;
        }
        let message = hostcalls::get_buffer(BufferType::GrpcReceiveBuffer, 0, size)
            .ok()
            .flatten()
            .unwrap_or_default();
        match self.table.apply(&message) {
            Ok(writes) => {
                let mut failed = 0;
                for write in &writes {
                    if hostcalls::set_shared_data(&write.key, Some(&write.value), None).is_err() {
                        failed += 1;
                    }
                }
                if failed > 0 {
                    log::error!("sandbox-router sync: {failed} shared-data writes failed");
                    self.count(|m| m.update_errors);
                }
                self.backoff.reset();
                self.count(|m| m.updates_applied);
                if let Some(m) = &self.metrics {
                    let _ = hostcalls::record_metric(m.table_version, self.table.version());
                    let _ = hostcalls::record_metric(m.routing_keys, self.table.len() as u64);
                }
                self.send(WatchRequest {
                    node_id: String::new(),
                    applied_version: self.table.version(),
                    error: String::new(),
                });
            }
            Err(err @ ApplyError::WrongBase { .. }) => {
                // Out of step: start over from a snapshot.
                log::warn!("sandbox-router sync: {err}; resyncing");
                self.count(|m| m.update_errors);
                if let Some(token) = self.stream.take() {
                    let _ = hostcalls::cancel_grpc_stream(token);
                }
                self.connect_at_ms = 0;
            }
            Err(err) => {
                log::error!(
                    "sandbox-router sync: refused an update, keeping table version {}: {err}",
                    self.table.version()
                );
                self.count(|m| m.update_errors);
                self.send(WatchRequest {
                    node_id: String::new(),
                    applied_version: self.table.version(),
                    error: err.to_string(),
                });
            }
        }
    }

    pub fn on_close(&mut self, token: u32, status: u32) {
        if self.stream != Some(token) {
            return;
        }
        self.stream = None;
        self.count(|m| m.disconnects);
        log::warn!(
            "sandbox-router sync: watch stream closed (grpc status {status}); keeping table version {}",
            self.table.version()
        );
        self.retry_later();
    }

    fn retry_later(&mut self) {
        self.connect_at_ms = now_ms().saturating_add(self.backoff.next_delay_ms());
    }

    fn count(&self, which: impl FnOnce(&SyncMetrics) -> u32) {
        if let Some(m) = &self.metrics {
            let _ = hostcalls::increment_metric(which(m), 1);
        }
    }
}

/// The singleton's metrics (`wasmcustom.sandbox_router.sync.*`).
struct SyncMetrics {
    connects: u32,
    disconnects: u32,
    updates_applied: u32,
    update_errors: u32,
    table_version: u32,
    routing_keys: u32,
}

impl SyncMetrics {
    fn define() -> Result<Self, Status> {
        let define = |kind, name: &str| {
            hostcalls::define_metric(kind, &format!("sandbox_router.sync.{name}"))
        };
        Ok(SyncMetrics {
            connects: define(MetricType::Counter, "connects")?,
            disconnects: define(MetricType::Counter, "disconnects")?,
            updates_applied: define(MetricType::Counter, "updates_applied")?,
            update_errors: define(MetricType::Counter, "update_errors")?,
            table_version: define(MetricType::Gauge, "table_version")?,
            routing_keys: define(MetricType::Gauge, "routing_keys")?,
        })
    }
}

fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

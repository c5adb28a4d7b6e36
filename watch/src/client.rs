//! The watch thread: connect, say hello, apply and acknowledge updates,
//! reconnect with backoff. Mirrors the Wasm singleton (`filter/src/sync.rs`).

use std::any::Any;
use std::io;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_util::FutureExt;
use sandbox_router_proto::v1::WatchRequest;
use sandbox_router_routing::sync::{ApplyError, Backoff};
use sandbox_router_routing::RoutingTable;
use tokio::sync::watch;
use tokio_stream::wrappers::WatchStream;
use tokio_stream::Stream;
use tonic::client::Grpc;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::Endpoint;
use tonic::{Status, Streaming};

use crate::codec::{watch_path, Received, WatchCodec};
use crate::{Current, Shared, Table, WatchConfig};

/// Largest update accepted. A snapshot of 100,000 routing keys, one fork
/// each, is about 7 MB (watch/README.md); tonic's default limit (4 MiB)
/// would refuse it.
const MAX_MESSAGE: usize = 256 * 1024 * 1024;
/// TCP connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The stream's response headers (the server answers once it read the hello).
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 pings, so a control service that vanished without closing the
/// connection (host down, partition) is noticed.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most updates already received that are applied before the table is swapped in.
const MAX_BATCH: usize = 256;
/// How often replaced tables that no reader holds any more are freed.
const SWEEP_INTERVAL: Duration = Duration::from_millis(250);

/// [`WatchConfig`], checked.
pub(crate) struct Settings {
    server: String,
    node_id: String,
    endpoint: Endpoint,
    authorization: Option<AsciiMetadataValue>,
    initial_backoff_ms: u64,
    max_backoff_ms: u64,
}

impl Settings {
    pub(crate) fn new(config: WatchConfig) -> io::Result<Settings> {
        let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidInput, what);
        if !config.server.starts_with("http://") {
            return Err(invalid(format!(
                "server {:?}: must be an http:// URI (plain HTTP/2)",
                config.server
            )));
        }
        let endpoint = Endpoint::from_shared(config.server.clone())
            .map_err(|e| invalid(format!("server {:?}: {e}", config.server)))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        let authorization = config
            .token
            .as_deref()
            .map(|token| {
                AsciiMetadataValue::try_from(format!("Bearer {token}"))
                    .map_err(|_| invalid("token: must be visible ASCII".to_owned()))
            })
            .transpose()?;
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let (initial_backoff_ms, max_backoff_ms) =
            (ms(config.initial_backoff), ms(config.max_backoff));
        if initial_backoff_ms == 0 || max_backoff_ms < initial_backoff_ms {
            return Err(invalid(
                "backoff: initial_backoff must be at least 1 ms and max_backoff >= initial_backoff"
                    .to_owned(),
            ));
        }
        Ok(Settings {
            server: config.server,
            node_id: config.node_id,
            endpoint,
            authorization,
            initial_backoff_ms,
            max_backoff_ms,
        })
    }
}

/// How a stream ended.
enum Ended {
    /// Out of step (a delta on another version): reconnect now for a snapshot.
    Resync,
    /// Could not connect, was refused, or lost the stream: back off.
    Failed,
}

/// The watch thread's loop, until `stop` says so.
pub(crate) async fn run(settings: Settings, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut backoff = Backoff::new(settings.initial_backoff_ms, settings.max_backoff_ms);
    log::info!(
        "sandbox-router watch: node {} watching {}",
        settings.node_id,
        settings.server
    );
    tokio::spawn({
        let shared = Arc::clone(&shared);
        async move {
            let mut tick = tokio::time::interval(SWEEP_INTERVAL);
            loop {
                tick.tick().await;
                shared.sweep();
            }
        }
    });
    loop {
        // A panic in a stream's handling (a bug: ours, or in tonic, h2 or
        // prost) must not end the watch for the life of the process: the
        // stream is dropped as if it failed, the table held stays, and the
        // watch reconnects after the backoff.
        let session = AssertUnwindSafe(session(&settings, &shared, &mut backoff)).catch_unwind();
        let ended = tokio::select! {
            biased;
            _ = stop.wait_for(|stopped| *stopped) => return,
            ended = session => ended.unwrap_or_else(|panic| panicked(&shared, &*panic)),
        };
        let delay = match ended {
            Ended::Resync => Duration::ZERO,
            Ended::Failed => Duration::from_millis(backoff.next_delay_ms()),
        };
        tokio::select! {
            biased;
            _ = stop.wait_for(|stopped| *stopped) => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// One stream, from connect to its end.
async fn session(settings: &Settings, shared: &Shared, backoff: &mut Backoff) -> Ended {
    let channel = match settings.endpoint.connect().await {
        Ok(channel) => channel,
        Err(err) => {
            return failed(
                shared,
                format!("cannot connect to {}: {}", settings.server, chain(&err)),
            )
        }
    };
    let mut client = Grpc::new(channel).max_decoding_message_size(MAX_MESSAGE);
    // The server reads the hello before it answers: it goes first. Then the
    // latest acknowledgement only: sending never waits for the server to
    // read, and the last one (what the control service shows) always goes.
    let hello = WatchRequest {
        node_id: settings.node_id.clone(),
        applied_version: shared.current.load().lookup.version(),
        error: String::new(),
    };
    let (acks, outbound) = watch::channel(hello);
    let mut request = tonic::Request::new(WatchStream::new(outbound));
    if let Some(authorization) = &settings.authorization {
        request
            .metadata_mut()
            .insert("authorization", authorization.clone());
    }
    let open = async {
        client
            .ready()
            .await
            .map_err(|err| Status::unavailable(chain(&err)))?;
        client.streaming(request, watch_path(), WatchCodec).await
    };
    let mut inbound = match tokio::time::timeout(OPEN_TIMEOUT, open).await {
        Ok(Ok(response)) => response.into_inner(),
        Ok(Err(status)) => {
            return failed(
                shared,
                format!(
                    "the control service refused the watch: {}",
                    describe(&status)
                ),
            )
        }
        Err(_) => {
            return failed(
                shared,
                format!("no answer to the watch within {OPEN_TIMEOUT:?}"),
            )
        }
    };
    shared.connected.store(true, Ordering::SeqCst);
    shared.connects.fetch_add(1, Ordering::SeqCst);
    shared.last_error.store(None);
    log::info!(
        "sandbox-router watch: connected to {} (holding version {})",
        settings.server,
        shared.current.load().lookup.version()
    );
    shared.notify();

    let mut applied_any = false;
    let ended = loop {
        let first = inbound.message().await;
        let mut batch = Vec::new();
        let mut end = None;
        match first {
            Ok(Some(update)) => batch.push(update),
            other => end = Some(other),
        }
        // Whatever else has already arrived goes into the same swap.
        while end.is_none() && batch.len() < MAX_BATCH {
            match ready_now(&mut inbound) {
                None => break,
                Some(Ok(Some(update))) => batch.push(update),
                Some(other) => end = Some(other),
            }
        }
        if !batch.is_empty() {
            let outcome = apply_batch(shared, batch);
            if outcome.applied && !applied_any {
                // A stream that delivers a good update is a successful connect.
                backoff.reset();
                applied_any = true;
            }
            if let Some(reply) = outcome.reply {
                // A closed outbound side means the stream is going: the
                // inbound side reports how.
                let _ = acks.send(reply);
            }
            if outcome.resync {
                // At once after a good update; a stream that never had one
                // backs off instead of spinning.
                break if applied_any {
                    Ended::Resync
                } else {
                    Ended::Failed
                };
            }
        }
        match end {
            None => {}
            Some(Ok(None)) => {
                shared.set_error("the control service closed the stream".to_owned());
                break Ended::Failed;
            }
            Some(Err(status)) => {
                shared.set_error(format!("the watch stream failed: {}", describe(&status)));
                break Ended::Failed;
            }
            Some(Ok(Some(_))) => {}
        }
    };
    disconnected(shared);
    log::warn!(
        "sandbox-router watch: stream to {} ended ({}); keeping table version {}",
        settings.server,
        shared
            .last_error
            .load_full()
            .map(|e| (*e).clone())
            .unwrap_or_default(),
        shared.current.load().lookup.version()
    );
    shared.notify();
    ended
}

/// After a panic in [`session`]: counted and reported as a lost stream.
fn panicked(shared: &Shared, panic: &(dyn Any + Send)) -> Ended {
    let message = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("no message");
    disconnected(shared);
    let error = format!(
        "internal error: the watch stream's handling panicked ({message}); reconnecting, keeping table version {}",
        shared.current.load().lookup.version()
    );
    log::error!("sandbox-router watch: {error}");
    shared.set_error(error);
    shared.notify();
    Ended::Failed
}

/// An open stream is gone: counted once.
fn disconnected(shared: &Shared) {
    if shared.connected.swap(false, Ordering::SeqCst) {
        shared.disconnects.fetch_add(1, Ordering::SeqCst);
    }
}

fn failed(shared: &Shared, error: String) -> Ended {
    log::warn!("sandbox-router watch: {error}");
    shared.set_error(error);
    Ended::Failed
}

/// What [`apply_batch`] did.
struct Outcome {
    /// Some update was applied and swapped in.
    applied: bool,
    /// The acknowledgement to send: only the last counts (the control
    /// service shows the latest), so it replaces any before it.
    reply: Option<WatchRequest>,
    /// A delta out of step: leave the stream for a snapshot.
    resync: bool,
}

/// Applies updates in order onto the table held and swaps the result in
/// once (before any reply that names its version is sent).
///
/// A refused update changes nothing and is answered with its error; a delta
/// out of step stops the batch for a resync (as the singleton, no reply).
fn apply_batch(shared: &Shared, batch: Vec<Received>) -> Outcome {
    #[cfg(test)]
    tests::panic_if_asked();
    let held = Arc::clone(&shared.current.load().lookup);
    let mut pending: Option<Pending> = None;
    let mut outcome = Outcome {
        applied: false,
        reply: None,
        resync: false,
    };
    for update in batch {
        let base = pending.as_ref().map_or(&*held, |p| &p.table);
        let applied = base.apply_encoded(&update);
        match applied {
            Ok(table) => {
                let updates = pending.as_ref().map_or(0, |p| p.updates) + 1;
                pending = Some(Pending { table, updates });
            }
            Err(err) => {
                if let Some(p) = pending.take() {
                    outcome.applied |= publish(shared, p).is_ok();
                }
                shared.update_errors.fetch_add(1, Ordering::SeqCst);
                let version = shared.current.load().lookup.version();
                if let ApplyError::WrongBase { .. } = err {
                    log::warn!("sandbox-router watch: {err}; resyncing");
                    shared.set_error(format!("{err}; resyncing"));
                    shared.notify();
                    outcome.resync = true;
                    return outcome;
                }
                log::error!(
                    "sandbox-router watch: refused an update, keeping table version {version}: {err}"
                );
                shared.set_error(format!("refused an update: {err}"));
                outcome.reply = Some(WatchRequest {
                    node_id: String::new(),
                    applied_version: version,
                    error: err.to_string(),
                });
                shared.notify();
            }
        }
    }
    if let Some(p) = pending {
        let published = publish(shared, p);
        outcome.applied |= published.is_ok();
        outcome.reply = Some(published.unwrap_or_else(|refused| refused));
    }
    outcome
}

/// Updates applied onto the table held, not yet swapped in.
struct Pending {
    table: Table,
    updates: u64,
}

/// Swaps `pending` in (with its compiled form, when kept) and returns the
/// acknowledgement of its version; or, if it cannot be compiled, leaves the
/// table held in place and returns the refusal.
fn publish(shared: &Shared, pending: Pending) -> Result<WatchRequest, WatchRequest> {
    let version = pending.table.version();
    let compiled = if shared.keep_compiled {
        match pending.table.to_routing_table() {
            Ok(compiled) => Some(Arc::new(compiled)),
            Err(err) => {
                // Every entry was validated on the way in: not expected.
                shared.update_errors.fetch_add(1, Ordering::SeqCst);
                shared.set_error(format!("cannot compile version {version}: {err}"));
                log::error!("sandbox-router watch: cannot compile version {version}: {err}");
                shared.notify();
                return Err(WatchRequest {
                    node_id: String::new(),
                    applied_version: shared.current.load().lookup.version(),
                    error: format!("cannot compile version {version}: {err}"),
                });
            }
        }
    } else {
        None
    };
    let old = shared.current.swap(Arc::new(Current {
        lookup: Arc::new(pending.table),
        compiled,
    }));
    shared.retire(&old);
    shared
        .updates_applied
        .fetch_add(pending.updates, Ordering::SeqCst);
    shared.notify();
    Ok(WatchRequest {
        node_id: String::new(),
        applied_version: version,
        error: String::new(),
    })
}

impl Shared {
    fn set_error(&self, error: String) {
        self.last_error.store(Some(Arc::new(error)));
    }

    /// Keeps a replaced version's tables until no reader holds them, so the
    /// last reference is dropped here and a reader's thread (an Envoy
    /// worker, mid-request) never pays for freeing a whole table.
    pub(crate) fn retire(&self, old: &Current) {
        let mut retired = self.retired_lock();
        retired.push(Retired {
            lookup: Arc::clone(&old.lookup),
            compiled: old.compiled.clone(),
        });
        retired.retain(|r| !r.unheld());
    }

    fn sweep(&self) {
        self.retired_lock().retain(|r| !r.unheld());
    }

    fn retired_lock(&self) -> MutexGuard<'_, Vec<Retired>> {
        // The watch thread, and a reader only when it compiles a table
        // (lookup-only mode), which is slow anyway.
        self.retired
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A replaced version's tables.
pub(crate) struct Retired {
    lookup: Arc<Table>,
    compiled: Option<Arc<RoutingTable>>,
}

impl Retired {
    /// Nobody else holds them: they can no longer be reached, so this stays true.
    fn unheld(&self) -> bool {
        Arc::strong_count(&self.lookup) == 1
            && self
                .compiled
                .as_ref()
                .is_none_or(|c| Arc::strong_count(c) == 1)
    }
}

/// The next message if one is already here, without waiting.
fn ready_now(inbound: &mut Streaming<Received>) -> Option<Result<Option<Received>, Status>> {
    let mut context = Context::from_waker(Waker::noop());
    match Pin::new(inbound).poll_next(&mut context) {
        Poll::Pending => None,
        Poll::Ready(Some(Ok(update))) => Some(Ok(Some(update))),
        Poll::Ready(Some(Err(status))) => Some(Err(status)),
        Poll::Ready(None) => Some(Ok(None)),
    }
}

fn describe(status: &Status) -> String {
    if status.message().is_empty() {
        format!("{:?}", status.code())
    } else {
        format!("{:?}: {}", status.code(), status.message())
    }
}

/// An error with its causes (tonic's transport errors say little at the top).
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    // Test code: a failed expectation should panic.
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use reqwest::Method;
    use serde_json::json;
    use testbed::{poll_until, ControlService};

    use crate::{Watch, WatchConfig};

    /// Set by a test: the next batch's handling panics (a stand-in for a bug).
    static PANIC_ON_NEXT_BATCH: AtomicBool = AtomicBool::new(false);

    pub(super) fn panic_if_asked() {
        if PANIC_ON_NEXT_BATCH.swap(false, Ordering::SeqCst) {
            panic!("a test's stand-in for a bug while applying a batch");
        }
    }

    async fn until_applied(watch: &Watch, version: u64) {
        poll_until(
            "the watch applied the table",
            Duration::from_secs(15),
            || {
                let status = watch.status();
                async move { (status.version == version && status.connected).then_some(()) }
            },
        )
        .await
        .unwrap();
    }

    /// A panic while the stream is open (in an update's handling) ends that
    /// stream only: it is counted as a disconnect, reported, the table held
    /// stays, and the watch reconnects and applies the update.
    #[tokio::test]
    async fn a_panic_in_a_stream_is_a_lost_stream_and_the_watch_reconnects() {
        let binary = testbed::sibling_binary("sandbox-router")
            .expect("the control service binary: cargo build -p sandbox-router-control --bins");
        let control = ControlService::start(&binary, None).await.unwrap();
        let create = |name: &'static str| {
            let control = &control;
            async move {
                let (status, body) = control
                    .api(
                        Method::POST,
                        "/v1/sandboxes",
                        Some(json!({ "name": name, "forks": { "backend": ["10.0.0.7:8080"] } })),
                    )
                    .await
                    .unwrap();
                assert_eq!(status, 201, "{body}");
                body["version"].as_u64().unwrap()
            }
        };
        let first = create("feature-x").await;

        let mut config = WatchConfig::new(control.url(), "panics-once");
        config.initial_backoff = Duration::from_millis(20);
        config.max_backoff = Duration::from_millis(200);
        let watch = Watch::start_lookup_only(config).unwrap();
        let errors = Arc::new(Mutex::new(Vec::new()));
        watch.set_notify(Box::new({
            let errors = Arc::clone(&errors);
            let reader = watch.reader();
            move || {
                if let Some(error) = reader.status().last_error {
                    errors.lock().unwrap().push(error);
                }
            }
        }));

        until_applied(&watch, first).await;
        // Armed only now, with the callback in place: the next update's
        // handling panics.
        PANIC_ON_NEXT_BATCH.store(true, Ordering::SeqCst);
        let second = create("feature-y").await;
        until_applied(&watch, second).await;
        let status = watch.status();
        assert!(
            !PANIC_ON_NEXT_BATCH.load(Ordering::SeqCst),
            "the panic happened"
        );
        assert_eq!((status.connects, status.disconnects), (2, 1), "{status:?}");
        let errors = errors.lock().unwrap();
        assert!(
            errors
                .iter()
                .any(|e| e.contains("the watch stream's handling panicked")
                    && e.contains(&format!("keeping table version {first}"))),
            "{errors:?}"
        );
        watch.stop();
    }
}

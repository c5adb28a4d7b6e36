//! Selective consumption for message queues.
//!
//! Every consumer of a service, the baseline one and each sandbox's, reads
//! every message through its own consumer group. For each message this
//! library decides, from the consumer's [`Identity`] and the routing table,
//! whether this consumer processes it or skips it:
//!
//! - a sandboxed consumer of service S processes exactly the messages whose
//!   routing context (in the message's headers: `baggage`, `uberctx-*`, ...,
//!   read by the filter's own parser) forks S to its sandbox, by a key, a
//!   route group's key or Overrides;
//! - the baseline consumer of S processes every other message: no context,
//!   unknown, expired or malformed keys, keys that fork other services only.
//!
//! The decision is `routing`'s ([`consumer::owner`], the same `select` as
//! the filter's `decide`). What this crate adds: where the table comes from
//! ([`TableSource`]: the control service's Watch stream, last-known-good
//! while it is away, or a static table), the consumer's own fork remembered
//! across a delete, a first-decision-wins [`Claims`] record that keeps
//! "exactly one side" while tables differ for a moment, [`Stats`], a Redis
//! Streams consumer ([`redis_streams`]) and an HTTP decision endpoint for
//! consumers in other languages ([`http`]).
//!
//! See `docs/message-queues.md` for the rules, the race and a complete
//! consumer.

#![forbid(unsafe_code)]

pub mod http;
pub mod redis_streams;

use std::borrow::Cow;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sandbox_router_routing::consumer::{self, ForkId, Owner};
use sandbox_router_routing::key::is_valid_sandbox_name;
use sandbox_router_routing::table::is_valid_service_name;
use sandbox_router_routing::{
    BaselineReason, ConfigError, ForkLookup, RouteLookup, RoutingTable, Settings, TableSpec,
};
use sandbox_router_watch::{Table, Watch, WatchConfig};
use serde::Serialize;

pub use sandbox_router_routing::consumer::Owner as MessageOwner;

/// Who a consumer is: the service it consumes for, and its side.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    /// The service, as the table names it (e.g. `worker`).
    pub service: String,
    /// The sandbox this consumer belongs to; `None`: the baseline.
    pub sandbox: Option<String>,
}

impl Identity {
    pub fn baseline(service: impl Into<String>) -> Self {
        Identity {
            service: service.into(),
            sandbox: None,
        }
    }

    pub fn sandboxed(service: impl Into<String>, sandbox: impl Into<String>) -> Self {
        Identity {
            service: service.into(),
            sandbox: Some(sandbox.into()),
        }
    }

    /// Checks the names as the control service does; errors name the field.
    pub fn check(&self) -> Result<(), ConfigError> {
        if !is_valid_service_name(&self.service) {
            return Err(ConfigError::new(
                "service",
                "must be lowercase letters, digits, '-', '.', '_' (at most 253)",
            ));
        }
        match &self.sandbox {
            Some(name) if !is_valid_sandbox_name(name) => Err(ConfigError::new(
                "sandbox",
                "must be a sandbox name: a DNS label (1-63 of a-z 0-9 '-', starting and ending with a letter or digit)",
            )),
            _ => Ok(()),
        }
    }

    /// `worker.baseline` or `worker.worker-v2`: a consumer group name.
    pub fn group_name(&self) -> String {
        format!(
            "{}.{}",
            self.service,
            self.sandbox.as_deref().unwrap_or("baseline")
        )
    }
}

/// Process a message or skip it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Process,
    Skip(SkipReason),
}

/// Why a consumer skips a message. Each has a counter ([`Stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SkipReason {
    /// Baseline consumer: the message forks this service to a sandbox.
    Sandboxed,
    /// Sandboxed consumer: the message is the baseline's.
    Baseline,
    /// Sandboxed consumer: the message forks this service to another sandbox.
    OtherSandbox,
    /// By this consumer's table the message was its own, but another
    /// consumer decided first (by its table) that it was not: the first
    /// decision stands (a table change in flight, see [`Claims`]).
    ClaimedElsewhere,
}

impl SkipReason {
    pub const ALL: [SkipReason; 4] = [
        SkipReason::Sandboxed,
        SkipReason::Baseline,
        SkipReason::OtherSandbox,
        SkipReason::ClaimedElsewhere,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::Sandboxed => "sandboxed",
            SkipReason::Baseline => "baseline",
            SkipReason::OtherSandbox => "other_sandbox",
            SkipReason::ClaimedElsewhere => "claimed_elsewhere",
        }
    }
}

/// A consumer's counters: a fixed set, names as in [`Stats::snapshot`].
#[derive(Debug, Default)]
pub struct Stats {
    processed: AtomicU64,
    /// Processed because another consumer's first decision gave it to this
    /// one although this consumer's table did not (also in `processed`).
    processed_by_claim: AtomicU64,
    skipped: [AtomicU64; 4],
}

/// The counters at one moment, e.g. for JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StatsSnapshot {
    pub processed: u64,
    pub processed_by_claim: u64,
    /// `skipped.sandboxed`, `skipped.baseline`, `skipped.other_sandbox`,
    /// `skipped.claimed_elsewhere`.
    pub skipped: std::collections::BTreeMap<&'static str, u64>,
}

impl Stats {
    fn count(&self, verdict: Verdict, by_claim: bool) {
        match verdict {
            Verdict::Process => {
                self.processed.fetch_add(1, Ordering::Relaxed);
                if by_claim {
                    self.processed_by_claim.fetch_add(1, Ordering::Relaxed);
                }
            }
            Verdict::Skip(reason) => {
                let i = SkipReason::ALL
                    .iter()
                    .position(|r| *r == reason)
                    .unwrap_or_default();
                if let Some(counter) = self.skipped.get(i) {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    pub fn processed(&self) -> u64 {
        self.processed.load(Ordering::Relaxed)
    }

    pub fn skipped(&self, reason: SkipReason) -> u64 {
        SkipReason::ALL
            .iter()
            .position(|r| *r == reason)
            .and_then(|i| self.skipped.get(i))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            processed: self.processed(),
            processed_by_claim: self.processed_by_claim.load(Ordering::Relaxed),
            skipped: SkipReason::ALL
                .iter()
                .map(|r| (r.as_str(), self.skipped(*r)))
                .collect(),
        }
    }
}

/// Where the routing table comes from.
pub enum TableSource {
    /// A fixed table (the filter's `table` JSON).
    Static(Arc<RoutingTable>),
    /// The control service's Watch stream: held in memory, updated as it
    /// changes, and kept (last-known-good) while the control service is away.
    Watch(Watch),
}

impl TableSource {
    /// Watches the control service at `server` (`http://HOST:PORT`, its gRPC
    /// port), as `node_id` (what `sandbox-router status` shows).
    pub fn watch(server: &str, node_id: &str) -> io::Result<Self> {
        TableSource::watch_with(WatchConfig::new(server, node_id))
    }

    pub fn watch_with(config: WatchConfig) -> io::Result<Self> {
        Watch::start_lookup_only(config).map(TableSource::Watch)
    }

    /// A static table, the JSON of the filter's `table` field:
    /// `{"version": N, "entries": [{"routing_key", "sandbox", "forks": [...]}]}`.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        let spec: TableSpec = sandbox_router_routing::error::parse_json(bytes, "table")?;
        let table = RoutingTable::compile(&spec.into(), "table")?;
        Ok(TableSource::Static(Arc::new(table)))
    }

    /// The table now.
    pub fn snapshot(&self) -> Snapshot {
        match self {
            TableSource::Static(table) => Snapshot::Static(Arc::clone(table)),
            TableSource::Watch(watch) => Snapshot::Watched(watch.lookup()),
        }
    }
}

/// One version of the table, from either source.
#[derive(Debug, Clone)]
pub enum Snapshot {
    Static(Arc<RoutingTable>),
    Watched(Arc<Table>),
}

impl Snapshot {
    pub fn version(&self) -> u64 {
        match self {
            Snapshot::Static(t) => t.version(),
            Snapshot::Watched(t) => t.version(),
        }
    }

    /// A static table always; a watched one once a snapshot arrived.
    pub fn is_synced(&self) -> bool {
        match self {
            Snapshot::Static(_) => true,
            Snapshot::Watched(t) => t.is_synced(),
        }
    }
}

impl RouteLookup for Snapshot {
    fn fork(&self, routing_key: &str, service: &str) -> ForkLookup<'_> {
        match self {
            Snapshot::Static(t) => t.fork(routing_key, service),
            Snapshot::Watched(t) => t.fork(routing_key, service),
        }
    }

    fn routing_key_of(&self, sandbox: &str) -> Option<Cow<'_, str>> {
        match self {
            Snapshot::Static(t) => t.routing_key_of(sandbox),
            Snapshot::Watched(t) => t.routing_key_of(sandbox),
        }
    }

    fn is_registered(&self, service: &str, endpoint: SocketAddr) -> bool {
        match self {
            Snapshot::Static(t) => t.is_registered(service, endpoint),
            Snapshot::Watched(t) => t.is_registered(service, endpoint),
        }
    }
}

/// The first decision made about a message, shared by all consumers of a
/// service (e.g. one Redis key per message: `SET key owner NX GET`).
///
/// Consumers decide by their own copy of the table. While a sandbox is
/// created or deleted, one may hold the new version and another the old, and
/// both could take a message (or neither). Each consumer therefore records
/// its decision, as [`Owner::claim_text`], unless one is recorded already,
/// and follows the recorded one: whichever table decided first, exactly one
/// side processes the message.
pub trait Claims {
    type Error: std::error::Error + Send + Sync + 'static;
    /// Records `owner` for the message unless a decision is recorded, and
    /// returns the recorded one (`owner` itself if this call recorded it).
    fn claim(&mut self, message_id: &str, owner: &str) -> Result<String, Self::Error>;
}

/// No shared record: each consumer follows its own table. Exactly one side
/// only while all tables agree (a static table, or no changes in flight).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoClaims;

impl Claims for NoClaims {
    type Error = std::convert::Infallible;
    fn claim(&mut self, _: &str, owner: &str) -> Result<String, Self::Error> {
        Ok(owner.to_owned())
    }
}

/// What [`Consumer::decide`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    /// The owner by this consumer's table.
    pub owner: Owner,
    /// The owner recorded first (see [`Claims`]); decides the verdict.
    pub recorded: Owner,
    /// The table version this consumer decided by.
    pub table_version: u64,
}

/// Why no decision was made.
#[derive(Debug, thiserror::Error)]
pub enum DecideError<E: std::error::Error + 'static> {
    /// No table yet, or (a sandboxed consumer) the table has never had this
    /// consumer's sandbox forking its service: the consumer cannot tell its
    /// messages yet, so it must not take or skip any. Wait ([`Consumer::wait_ready`]).
    #[error("not ready: {0}")]
    NotReady(&'static str),
    /// The claim record could not be read or written.
    #[error("claim: {0}")]
    Claim(#[source] E),
}

/// Why [`Consumer::handle`] did not finish a message.
#[derive(Debug, thiserror::Error)]
pub enum HandleError<C: std::error::Error + 'static, E: std::error::Error + 'static> {
    #[error(transparent)]
    Decide(DecideError<C>),
    /// The message's processing failed; it was not counted.
    #[error("processing failed: {0}")]
    Process(#[source] E),
}

/// A consumer's decider: its identity, the routing context's configuration
/// (the filter's: key names, Overrides name, sources), a table source and
/// its counters. Cheap to share between threads (`&self` everywhere).
pub struct Consumer {
    identity: Identity,
    settings: Settings,
    source: Arc<TableSource>,
    /// The sandbox's own fork as last seen: after the sandbox is deleted,
    /// messages already claimed for it are still its own.
    own: Mutex<Option<ForkId>>,
    stats: Stats,
}

impl Consumer {
    /// `settings`: the filter configuration the producers' side uses (only
    /// its context part matters here: `keys`, `overrides_key`, `sources`);
    /// `Settings::from_json(b"")` for the defaults.
    pub fn new(
        identity: Identity,
        settings: Settings,
        source: impl Into<Arc<TableSource>>,
    ) -> Result<Self, ConfigError> {
        identity.check()?;
        Ok(Consumer {
            identity,
            settings,
            source: source.into(),
            own: Mutex::new(None),
            stats: Stats::default(),
        })
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn table(&self) -> Snapshot {
        self.source.snapshot()
    }

    /// The owner of a message with these headers by `table`. Header names in
    /// any case; values as bytes.
    pub fn owner<'a, N, I>(&self, headers: I, table: &impl RouteLookup) -> Owner
    where
        N: AsRef<str>,
        I: IntoIterator<Item = (N, &'a [u8])>,
    {
        let lowered: Vec<(String, &[u8])> = headers
            .into_iter()
            .map(|(n, v)| (n.as_ref().to_ascii_lowercase(), v))
            .collect();
        let scanned = self
            .settings
            .scan(lowered.iter().map(|(n, v)| (n.as_str(), *v)));
        let context = self.settings.context.extract(&scanned).context;
        consumer::owner(&context, &self.identity.service, table)
    }

    /// This consumer's own fork now (sandboxed), or as last seen.
    fn own_fork(&self, table: &Snapshot) -> Option<ForkId> {
        let sandbox = self.identity.sandbox.as_deref()?;
        let mut own = self.own.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(now) = consumer::own_fork(sandbox, &self.identity.service, table) {
            *own = Some(now);
        }
        own.clone()
    }

    /// Why this consumer cannot decide by `table` yet, if it cannot.
    fn not_ready(&self, table: &Snapshot) -> Option<&'static str> {
        if !table.is_synced() {
            return Some("no routing table yet");
        }
        if self.identity.sandbox.is_some() && self.own_fork(table).is_none() {
            return Some("the table has no fork of this service by this consumer's sandbox");
        }
        None
    }

    /// Whether [`Consumer::decide`] can decide now.
    pub fn is_ready(&self) -> bool {
        self.not_ready(&self.table()).is_none()
    }

    /// Polls [`Consumer::is_ready`] until `timeout`.
    pub fn wait_ready(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.is_ready() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Decides one message (counting nothing: see [`Consumer::handle`] and
    /// [`Consumer::count`]). `message_id` names the message in `claims`
    /// (unique within the stream or topic).
    pub fn decide<'a, N, I, C>(
        &self,
        message_id: &str,
        headers: I,
        claims: &mut C,
    ) -> Result<Decision, DecideError<C::Error>>
    where
        N: AsRef<str>,
        I: IntoIterator<Item = (N, &'a [u8])>,
        C: Claims,
    {
        let table = self.table();
        if let Some(why) = self.not_ready(&table) {
            return Err(DecideError::NotReady(why));
        }
        let owner = self.owner(headers, &table);
        let recorded_text = claims
            .claim(message_id, &owner.claim_text())
            .map_err(DecideError::Claim)?;
        let recorded = match Owner::from_claim_text(&recorded_text) {
            Some(recorded) => recorded,
            None => {
                // Not ours to read (written by something else): follow our table.
                log::warn!("sandbox-router queue: unreadable claim {recorded_text:?} for {message_id}; deciding by this table");
                owner.clone()
            }
        };
        Ok(self.settle(owner, recorded, &table))
    }

    /// [`Consumer::decide`], then `process` for a message to process, then
    /// the counters. A failed `process` counts nothing (the message is not
    /// done: the broker delivers it again).
    pub fn handle<'a, N, I, C, E>(
        &self,
        message_id: &str,
        headers: I,
        claims: &mut C,
        process: impl FnOnce(&Decision) -> Result<(), E>,
    ) -> Result<Decision, HandleError<C::Error, E>>
    where
        N: AsRef<str>,
        I: IntoIterator<Item = (N, &'a [u8])>,
        C: Claims,
        E: std::error::Error + 'static,
    {
        let decision = self
            .decide(message_id, headers, claims)
            .map_err(HandleError::Decide)?;
        if decision.verdict == Verdict::Process {
            process(&decision).map_err(HandleError::Process)?;
        }
        self.count(&decision);
        Ok(decision)
    }

    /// Moves the counters for a final decision.
    pub fn count(&self, decision: &Decision) {
        self.stats.count(
            decision.verdict,
            decision.owner != decision.recorded && decision.verdict == Verdict::Process,
        );
    }

    /// Why this consumer cannot decide now, if it cannot (see [`DecideError::NotReady`]).
    pub fn readiness(&self, table: &Snapshot) -> Result<(), &'static str> {
        match self.not_ready(table) {
            Some(why) => Err(why),
            None => Ok(()),
        }
    }

    /// The verdict for a message whose owner by this table is `owner` and
    /// whose first recorded decision is `recorded`. Counts nothing.
    pub fn settle(&self, owner: Owner, recorded: Owner, table: &Snapshot) -> Decision {
        let own = self.own_fork(table);
        let verdict = if recorded.is_for(own.as_ref()) {
            Verdict::Process
        } else if owner.is_for(own.as_ref()) {
            Verdict::Skip(SkipReason::ClaimedElsewhere)
        } else {
            match (&recorded, &own) {
                (Owner::Sandbox(_), None) => Verdict::Skip(SkipReason::Sandboxed),
                (Owner::Baseline(_), Some(_)) => Verdict::Skip(SkipReason::Baseline),
                _ => Verdict::Skip(SkipReason::OtherSandbox),
            }
        };
        Decision {
            verdict,
            owner,
            recorded,
            table_version: table.version(),
        }
    }
}

/// Why a message with this owner stays on the baseline, if it does.
pub fn baseline_reason(owner: &Owner) -> Option<BaselineReason> {
    match owner {
        Owner::Baseline(reason) => Some(*reason),
        Owner::Sandbox(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaa";
    const X: &str = "xxxxxxxxxxxxxxxxxxxxxxxx";

    fn table(version: u64, with_x: bool) -> TableSource {
        let x = if with_x {
            format!(
                r#",{{"routing_key": "{X}", "sandbox": "worker-x", "forks": [{{"service": "worker", "endpoints": ["127.0.0.1:9109"]}}]}}"#
            )
        } else {
            String::new()
        };
        let json = format!(
            r#"{{"version": {version}, "entries": [{{"routing_key": "{A}", "sandbox": "worker-a", "forks": [{{"service": "worker", "endpoints": ["127.0.0.1:9101"]}}]}}{x}]}}"#
        );
        TableSource::from_json(json.as_bytes()).unwrap()
    }

    fn consumer(sandbox: Option<&str>, source: TableSource) -> Consumer {
        let identity = Identity {
            service: String::from("worker"),
            sandbox: sandbox.map(str::to_owned),
        };
        Consumer::new(identity, Settings::from_json(b"").unwrap(), source).unwrap()
    }

    /// One shared record, as Redis is for the real consumers.
    #[derive(Default)]
    struct MemoryClaims(HashMap<String, String>);

    impl Claims for &mut MemoryClaims {
        type Error = std::convert::Infallible;
        fn claim(&mut self, id: &str, owner: &str) -> Result<String, Self::Error> {
            Ok(self
                .0
                .entry(id.to_owned())
                .or_insert_with(|| owner.to_owned())
                .clone())
        }
    }

    fn baggage(key: &str) -> Vec<(&'static str, Vec<u8>)> {
        vec![("Baggage", format!("sandbox-routing-key={key}").into_bytes())]
    }

    fn verdict(
        c: &Consumer,
        id: &str,
        headers: &[(&str, Vec<u8>)],
        claims: &mut MemoryClaims,
    ) -> Verdict {
        let headers = headers.iter().map(|(n, v)| (*n, v.as_slice()));
        let mut claims = claims;
        let process = |_: &Decision| Ok::<(), std::io::Error>(());
        c.handle(id, headers, &mut claims, process).unwrap().verdict
    }

    #[test]
    fn a_sandbox_created_in_flight_goes_to_whoever_decided_first() {
        // The baseline still has the old table (no worker-x), worker-x's consumer the new one.
        let baseline = consumer(None, table(1, false));
        let x = consumer(Some("worker-x"), table(2, true));
        assert!(baseline.is_ready() && x.is_ready());
        let mut claims = MemoryClaims::default();
        let msg = baggage(X);
        // The baseline decides first: it is the baseline's, x follows.
        assert_eq!(verdict(&baseline, "1", &msg, &mut claims), Verdict::Process);
        assert_eq!(
            verdict(&x, "1", &msg, &mut claims),
            Verdict::Skip(SkipReason::ClaimedElsewhere)
        );
        // x decides first: x's, the baseline follows.
        assert_eq!(verdict(&x, "2", &msg, &mut claims), Verdict::Process);
        assert_eq!(
            verdict(&baseline, "2", &msg, &mut claims),
            Verdict::Skip(SkipReason::ClaimedElsewhere)
        );
        // Without a shared record both would take it.
        let mut none = NoClaims;
        let h = || msg.iter().map(|(n, v)| (*n, v.as_slice()));
        assert_eq!(
            baseline.decide("3", h(), &mut none).unwrap().verdict,
            Verdict::Process
        );
        assert_eq!(
            x.decide("3", h(), &mut none).unwrap().verdict,
            Verdict::Process
        );
        assert_eq!(baseline.stats().processed(), 1);
        assert_eq!(x.stats().processed(), 1);
        assert_eq!(x.stats().skipped(SkipReason::ClaimedElsewhere), 1);
        assert_eq!(baseline.stats().skipped(SkipReason::ClaimedElsewhere), 1);
        assert_eq!(x.stats().snapshot().processed_by_claim, 0);
    }

    #[test]
    fn a_deleted_sandboxs_consumer_still_takes_what_was_claimed_for_it() {
        let x = consumer(Some("worker-x"), table(2, true));
        assert!(x.is_ready(), "x has seen its fork");
        let with_x = x.table();
        let without_x = table(3, false).snapshot();
        let msg_owner =
            |t: &Snapshot| x.owner(baggage(X).iter().map(|(n, v)| (*n, v.as_slice())), t);
        // Claimed for worker-x by a consumer that still had it.
        let claimed = msg_owner(&with_x);
        let d = x.settle(msg_owner(&without_x), claimed.clone(), &without_x);
        // x's table no longer has it: x remembered its fork from the last table that did.
        assert_eq!(d.verdict, Verdict::Process);
        assert_eq!(d.owner, Owner::Baseline(BaselineReason::UnknownKey));
        x.count(&d);
        assert_eq!(x.stats().snapshot().processed_by_claim, 1);
        // And the baseline, by the new table, follows the claim.
        let baseline = consumer(None, table(3, false));
        let d = baseline.settle(msg_owner(&without_x), claimed, &without_x);
        assert_eq!(d.verdict, Verdict::Skip(SkipReason::ClaimedElsewhere));
    }

    #[test]
    fn a_consumer_decides_nothing_before_it_can_tell_its_messages() {
        let ghost = consumer(Some("worker-x"), table(1, false));
        assert!(!ghost.is_ready());
        let mut claims = MemoryClaims::default();
        let mut c = &mut claims;
        let err = ghost.decide(
            "1",
            baggage(A).iter().map(|(n, v)| (*n, v.as_slice())),
            &mut c,
        );
        assert!(matches!(err, Err(DecideError::NotReady(_))));
        assert!(claims.0.is_empty(), "no claim made before ready");
        let a = consumer(Some("worker-a"), table(1, false));
        assert_eq!(verdict(&a, "1", &baggage(A), &mut claims), Verdict::Process);
        assert_eq!(
            verdict(&a, "2", &baggage("unknown"), &mut claims),
            Verdict::Skip(SkipReason::Baseline)
        );
        assert_eq!(
            verdict(&a, "3", &[], &mut claims),
            Verdict::Skip(SkipReason::Baseline)
        );
        assert_eq!(
            a.stats().snapshot(),
            StatsSnapshot {
                processed: 1,
                processed_by_claim: 0,
                skipped: [
                    ("sandboxed", 0),
                    ("baseline", 2),
                    ("other_sandbox", 0),
                    ("claimed_elsewhere", 0)
                ]
                .into_iter()
                .collect(),
            }
        );
    }

    #[test]
    fn identities_are_checked_and_name_their_group() {
        let err = |service: &str, sandbox: Option<&str>| {
            Identity {
                service: service.to_owned(),
                sandbox: sandbox.map(str::to_owned),
            }
            .check()
            .err()
            .map(|e| e.field)
        };
        assert_eq!(err("worker", None), None);
        assert_eq!(err("Worker", None).as_deref(), Some("service"));
        assert_eq!(err("worker", Some("-x")).as_deref(), Some("sandbox"));
        assert_eq!(
            Identity::sandboxed("worker", "worker-x").group_name(),
            "worker.worker-x"
        );
        assert_eq!(Identity::baseline("worker").group_name(), "worker.baseline");
    }
}

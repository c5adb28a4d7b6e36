//! Shared pieces of the fuzz targets: input framing, the fixture table every
//! routing target decides against (compiled, and published through shared
//! data as the singleton does), and oracles written apart from the code
//! under test. A failed `assert!` here is how a target reports a violation.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};

use prost::Message as _;
use sandbox_router_proto::v1::{self as proto, r#override::Target, Overrides};
use sandbox_router_routing::key::is_valid_routing_key;
use sandbox_router_routing::shared::{SharedStore, SharedTable, INDEX_KEY, PREFIX, VERSION_KEY};
use sandbox_router_routing::sync::{ApplyError, PushedTable, SharedWrite};
use sandbox_router_routing::{
    BaselineReason, Decision, ForkLookup, Outcome, RouteLookup, RoutingContext, RoutingTable,
    Settings, ORIGINAL_DST_HEADER,
};

/// Separates the messages of one `table_update` input. Four 0xff bytes never
/// occur in the protobuf encoding of a valid update (only inside a varint
/// longer than any field here).
pub const MESSAGE_SEPARATOR: &[u8] = b"\xff\xff\xff\xff";

/// Splits `data` at every occurrence of `separator`.
pub fn split_on<'a>(data: &'a [u8], separator: &[u8]) -> Vec<&'a [u8]> {
    let mut parts = Vec::new();
    let mut rest = data;
    while let Some(at) = rest.windows(separator.len()).position(|w| w == separator) {
        parts.push(&rest[..at]);
        rest = &rest[at + separator.len()..];
    }
    parts.push(rest);
    parts
}

/// Lines of `data` (split at `\n`): header lines of one kind.
pub fn lines(data: &[u8]) -> Vec<&[u8]> {
    data.split(|b| *b == b'\n').collect()
}

/// Header lines `name: value`, one per line; the name ends at the first `:`
/// after its first byte (so `:authority: backend` works), one space after
/// the colon is dropped. Lines with a non-UTF-8 name or no colon are skipped.
pub fn header_lines(data: &[u8]) -> Vec<(&str, &[u8])> {
    lines(data)
        .into_iter()
        .filter_map(|line| {
            let colon = 1 + line.get(1..)?.iter().position(|b| *b == b':')?;
            let name = std::str::from_utf8(&line[..colon]).ok()?;
            let value = &line[colon + 1..];
            Some((name, value.strip_prefix(b" ").unwrap_or(value)))
        })
        .collect()
}

/// Settings compiled once per process from `json` (the configuration of a
/// target never changes between inputs).
pub fn settings_once(cell: &'static OnceLock<Settings>, json: &[u8]) -> &'static Settings {
    cell.get_or_init(|| Settings::from_json(json).expect("target configuration"))
}

/// Shared data in memory, as the singleton writes it and the filter reads it.
#[derive(Debug, Default)]
pub struct Memory(Mutex<BTreeMap<String, Vec<u8>>>);

impl Memory {
    pub fn write(&self, writes: Vec<SharedWrite>) {
        let mut map = self.0.lock().expect("memory lock");
        for w in writes {
            map.insert(w.key, w.value);
        }
    }

    pub fn contents(&self) -> BTreeMap<String, Vec<u8>> {
        self.0.lock().expect("memory lock").clone()
    }
}

impl SharedStore for &Memory {
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.0.lock().expect("memory lock").get(key).cloned()
    }
}

/// Services the fixture knows, plus one it does not.
pub const SERVICES: [&str; 4] = ["backend", "users", "frontend", "payments"];

/// The table every routing target decides against: aliases of one service
/// forked by several keys, an IPv6 endpoint, a key without a sandbox name, a
/// fork listing one endpoint twice, the README's and the corpus's keys.
pub fn fixture_table() -> proto::RoutingTable {
    let entry = |key: &str, sandbox: &str, forks: &[(&str, &[&str])]| proto::TableEntry {
        routing_key: key.into(),
        sandbox: sandbox.into(),
        forks: forks
            .iter()
            .map(|(service, endpoints)| proto::Fork {
                service: (*service).into(),
                endpoints: endpoints.iter().map(|e| (*e).into()).collect(),
            })
            .collect(),
    };
    proto::RoutingTable {
        version: 7,
        entries: vec![
            entry(
                "k7f3q9x2m4feature",
                "feature-x",
                &[("backend", &["10.0.0.7:8080"])],
            ),
            entry(
                "abc",
                "sandbox-abc",
                &[
                    ("backend", &["10.0.0.1:8080", "10.0.0.2:8080"]),
                    ("users", &["10.0.0.3:80"]),
                ],
            ),
            entry(
                "zqgep4mzae0afgw5ifnhtxsi",
                "backend-v2",
                &[("users", &["10.0.0.4:80", "[fd00::1]:8080"])],
            ),
            entry(
                "k-1_A",
                "",
                &[("frontend", &["10.0.0.5:80", "10.0.0.5:80"])],
            ),
            entry(
                "group-key",
                "both",
                &[
                    ("backend", &["10.0.0.8:80"]),
                    ("frontend", &["10.0.0.9:80"]),
                ],
            ),
        ],
    }
}

/// The fixture table compiled, and published through shared data.
pub struct Fixture {
    pub raw: proto::RoutingTable,
    pub compiled: RoutingTable,
    pub memory: Memory,
}

pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let raw = fixture_table();
        let compiled = RoutingTable::compile(&raw, "fixture").expect("fixture compiles");
        let memory = Memory::default();
        let update = proto::TableUpdate {
            version: raw.version,
            kind: Some(proto::table_update::Kind::Snapshot(raw.clone())),
        };
        let writes = PushedTable::default()
            .apply(&update.encode_to_vec())
            .expect("fixture applies");
        memory.write(writes);
        Fixture {
            raw,
            compiled,
            memory,
        }
    })
}

/// A table that counts how often the decision consulted it.
pub struct Counted<'t, T> {
    inner: &'t T,
    calls: Cell<usize>,
}

impl<'t, T> Counted<'t, T> {
    pub fn new(inner: &'t T) -> Self {
        Counted {
            inner,
            calls: Cell::new(0),
        }
    }

    pub fn calls(&self) -> usize {
        self.calls.get()
    }
}

impl<T: RouteLookup> RouteLookup for Counted<'_, T> {
    fn fork(&self, routing_key: &str, service: &str) -> ForkLookup<'_> {
        self.calls.set(self.calls.get() + 1);
        self.inner.fork(routing_key, service)
    }

    fn routing_key_of(&self, sandbox: &str) -> Option<std::borrow::Cow<'_, str>> {
        self.calls.set(self.calls.get() + 1);
        self.inner.routing_key_of(sandbox)
    }

    fn is_registered(&self, service: &str, endpoint: SocketAddr) -> bool {
        self.calls.set(self.calls.get() + 1);
        self.inner.is_registered(service, endpoint)
    }
}

/// Routes one request against the fixture twice, by the compiled table and
/// by shared data, and checks the outcome. With `destination.from:
/// cluster_name` the cluster name offered is the request's authority.
pub fn route_and_check(settings: &Settings, headers: &[(&str, &[u8])], pick: usize) -> Outcome {
    let fx = fixture();
    let scanned = settings.scan(headers.iter().copied());
    let internal = headers
        .iter()
        .any(|(name, _)| *name == ORIGINAL_DST_HEADER || *name == settings.marker_header);
    assert_eq!(
        scanned.internal_headers, internal,
        "internal headers not flagged"
    );
    let authority = scanned.authority.map(<[u8]>::to_vec);

    let asked = Cell::new(false);
    let by_table = Counted::new(&fx.compiled);
    let cluster = || {
        asked.set(true);
        authority.clone()
    };
    let outcome = settings.route(&scanned, cluster, &by_table, pick);
    let shared = SharedTable::new(&fx.memory);
    let by_shared = Counted::new(&shared);
    let again = settings.route(&scanned, || authority.clone(), &by_shared, pick);
    assert_eq!(
        outcome, again,
        "the compiled table and shared data decide differently"
    );

    match &outcome.extracted.context {
        RoutingContext::Found { key, overrides, .. } => {
            if let Some(key) = key {
                assert!(
                    is_valid_routing_key(key.as_bytes()),
                    "bad key {key:?} found"
                );
            }
            check_decision(
                key.as_deref(),
                overrides.as_ref(),
                outcome.service.as_deref(),
                outcome.decision,
                pick,
            );
        }
        context => {
            // Without usable context: no destination, no table, no cluster name.
            let reason = match context {
                RoutingContext::None => BaselineReason::NoContext,
                _ => BaselineReason::Malformed,
            };
            assert_eq!(outcome.decision, Decision::Baseline(reason));
            assert_eq!(outcome.service, None);
            assert_eq!(by_table.calls() + by_shared.calls(), 0, "table consulted");
            assert!(!asked.get(), "cluster name asked without context");
        }
    }
    outcome
}

/// Endpoints the raw fixture registers for `service` under the entries `pick_entry` selects.
fn forks_of(
    raw: &proto::RoutingTable,
    pick_entry: impl Fn(&proto::TableEntry) -> bool,
    service: &str,
) -> Vec<SocketAddr> {
    raw.entries
        .iter()
        .filter(|e| pick_entry(e))
        .flat_map(|e| &e.forks)
        .filter(|f| f.service == service)
        .flat_map(|f| f.endpoints.iter().filter_map(|e| e.parse().ok()))
        .collect()
}

/// Checks a decision against the raw fixture: by routing key it must be
/// exactly the expected one; by an override it may only route to an endpoint
/// registered for the service (by the named sandbox or key, if any), and to
/// the very endpoint the override names, if it names one.
pub fn check_decision(
    key: Option<&str>,
    overrides: Option<&Overrides>,
    service: Option<&str>,
    decision: Decision,
    pick: usize,
) {
    let raw = &fixture().raw;
    let Some(service) = service else {
        assert_eq!(decision, Decision::Baseline(BaselineReason::NoDestination));
        return;
    };
    let entry = overrides.and_then(|o| o.overrides.iter().find(|e| e.service == service));
    let Some(entry) = entry else {
        let expected = match key {
            None => Decision::Baseline(BaselineReason::NoForkForService),
            Some(key) => match raw.entries.iter().find(|e| e.routing_key == key) {
                None => Decision::Baseline(BaselineReason::UnknownKey),
                Some(_) => {
                    let mut endpoints = forks_of(raw, |e| e.routing_key == key, service);
                    let mut seen = BTreeSet::new();
                    endpoints.retain(|e| seen.insert(*e));
                    match endpoints.get(pick % endpoints.len().max(1)) {
                        Some(e) => Decision::Route(*e),
                        None => Decision::Baseline(BaselineReason::NoForkForService),
                    }
                }
            },
        };
        assert_eq!(decision, expected, "key {key:?}, service {service}");
        return;
    };
    let Decision::Route(addr) = decision else {
        return;
    };
    let allowed = match &entry.target {
        Some(Target::Sandbox(name)) => {
            forks_of(raw, |e| !name.is_empty() && e.sandbox == *name, service)
        }
        Some(Target::RoutingKey(key)) => forks_of(raw, |e| e.routing_key == *key, service),
        None => forks_of(raw, |_| true, service),
    };
    assert!(
        allowed.contains(&addr),
        "routed {service} to {addr}, not registered for {:?}",
        entry.target
    );
    if !entry.endpoint.is_empty() {
        assert_eq!(
            entry.endpoint.parse::<SocketAddr>().ok(),
            Some(addr),
            "routed elsewhere than the override's endpoint"
        );
    }
}

/// Applies pushed updates as the singleton does, and checks after each one
/// what the HTTP filters would read from shared data against a model of the
/// table kept here.
#[derive(Debug, Default)]
pub struct SyncCheck {
    table: PushedTable,
    memory: Memory,
    /// What the last accepted updates say: routing key -> entry.
    model: BTreeMap<String, proto::TableEntry>,
    version: u64,
    /// A snapshot was accepted since the (re)start of the singleton.
    synced: bool,
    keys: BTreeSet<String>,
    names: BTreeSet<String>,
    services: BTreeSet<String>,
    endpoints: BTreeSet<SocketAddr>,
}

impl SyncCheck {
    pub fn new() -> Self {
        SyncCheck::default()
    }

    /// The version the singleton holds.
    pub fn version(&self) -> u64 {
        self.table.version()
    }

    /// A new singleton VM: it starts from the index in shared data, which
    /// still holds the last table.
    pub fn reload(&mut self) {
        let index = (&self.memory).get(INDEX_KEY);
        self.table = PushedTable::resume(index.as_deref());
        self.synced = false;
    }

    /// Applies one `TableUpdate` message and checks the result.
    pub fn apply(&mut self, message: &[u8]) {
        let decoded = proto::TableUpdate::decode(message);
        if let Ok(update) = &decoded {
            self.note_names(update);
        }
        let before = format!("{:?}", self.table);
        match self.table.apply(message) {
            Err(error) => {
                assert_eq!(
                    format!("{:?}", self.table),
                    before,
                    "a refused update ({error}) changed the table"
                );
                self.check_refusal(&error, decoded.ok());
            }
            Ok(writes) => {
                let update = decoded.expect("an accepted update decodes");
                let mut written = BTreeSet::new();
                for w in &writes {
                    assert!(w.key.starts_with(PREFIX), "write outside the prefix");
                    assert!(written.insert(&w.key), "{} written twice", w.key);
                }
                self.memory.write(writes);
                self.accept(update);
                self.check_view();
            }
        }
    }

    fn note_names(&mut self, update: &proto::TableUpdate) {
        let mut note = |entry: &proto::TableEntry| {
            self.keys.insert(entry.routing_key.clone());
            self.names.insert(entry.sandbox.clone());
            for fork in &entry.forks {
                self.services.insert(fork.service.clone());
                self.endpoints.extend(
                    fork.endpoints
                        .iter()
                        .filter_map(|e| e.parse::<SocketAddr>().ok()),
                );
            }
        };
        match &update.kind {
            Some(proto::table_update::Kind::Snapshot(t)) => t.entries.iter().for_each(&mut note),
            Some(proto::table_update::Kind::Delta(d)) => {
                d.upserts.iter().for_each(&mut note);
                self.keys.extend(d.removed_keys.iter().cloned());
            }
            None => {}
        }
    }

    /// The model after `delta`, whatever its validity.
    fn with_delta(&self, delta: &proto::TableDelta) -> BTreeMap<String, proto::TableEntry> {
        let mut model = self.model.clone();
        for key in &delta.removed_keys {
            model.remove(key);
        }
        for entry in &delta.upserts {
            model.insert(entry.routing_key.clone(), entry.clone());
        }
        model
    }

    fn check_refusal(&self, error: &ApplyError, update: Option<proto::TableUpdate>) {
        use proto::table_update::Kind;
        let Some(update) = update else {
            assert_eq!(*error, ApplyError::Undecodable);
            return;
        };
        match (error, &update.kind) {
            (ApplyError::Empty, None) => {}
            (ApplyError::WrongBase { base, held }, Some(Kind::Delta(delta))) => {
                assert_eq!((*base, *held), (delta.base_version, self.version()));
                assert!(!self.synced || delta.base_version != self.version());
            }
            (ApplyError::Invalid(_), Some(Kind::Snapshot(table))) => {
                assert!(
                    RoutingTable::compile(table, "snapshot").is_err(),
                    "a valid snapshot was refused: {error}"
                );
            }
            (ApplyError::Invalid(_), Some(Kind::Delta(delta))) => {
                // Refused: the result would be invalid, or the delta names a key twice.
                let result = table_of(self.version, &self.with_delta(delta));
                let keys: BTreeSet<&str> = delta
                    .upserts
                    .iter()
                    .map(|e| e.routing_key.as_str())
                    .collect();
                assert!(
                    RoutingTable::compile(&result, "model").is_err()
                        || keys.len() != delta.upserts.len(),
                    "a valid delta was refused: {error}"
                );
            }
            (error, kind) => panic!("refusal {error:?} does not fit the update {kind:?}"),
        }
    }

    fn accept(&mut self, update: proto::TableUpdate) {
        use proto::table_update::Kind;
        match update.kind {
            Some(Kind::Snapshot(table)) => {
                self.model = table
                    .entries
                    .into_iter()
                    .map(|e| (e.routing_key.clone(), e))
                    .collect();
            }
            Some(Kind::Delta(delta)) => {
                assert!(self.synced, "a delta accepted before any snapshot");
                let keys: BTreeSet<&str> = delta
                    .upserts
                    .iter()
                    .map(|e| e.routing_key.as_str())
                    .collect();
                assert_eq!(
                    keys.len(),
                    delta.upserts.len(),
                    "a delta naming a routing key twice was accepted"
                );
                self.model = self.with_delta(&delta);
            }
            None => panic!("an update without a kind was accepted"),
        }
        self.version = update.version;
        self.synced = true;
    }

    /// What the filters read from shared data is exactly the model.
    fn check_view(&self) {
        let compiled = RoutingTable::compile(&table_of(self.version, &self.model), "model")
            .expect("an accepted update leaves a valid table");
        let store = self.memory.contents();
        let version = self.version.to_string().into_bytes();
        assert_eq!(store.get(VERSION_KEY), Some(&version), "version entry");

        // Every present entry belongs to the model, and says what the model says.
        let present: BTreeMap<&str, &Vec<u8>> = store
            .iter()
            .filter(|(k, v)| !v.is_empty() && *k != VERSION_KEY && *k != INDEX_KEY)
            .map(|(k, v)| (k.as_str(), v))
            .collect();
        for (key, value) in &present {
            let rest = key.strip_prefix(PREFIX).expect("prefixed key");
            if let Some(routing_key) = rest.strip_prefix("key.") {
                let entry = proto::TableEntry::decode(value.as_slice()).expect("entry decodes");
                let modelled = self.model.get(routing_key).map(without_repeats);
                assert_eq!(Some(entry), modelled, "stale {key}");
            } else if let Some(name) = rest.strip_prefix("sandbox.") {
                let owner = self.model.values().find(|e| e.sandbox == name);
                assert_eq!(
                    owner.map(|e| e.routing_key.as_bytes()),
                    Some(value.as_slice()),
                    "stale {key}"
                );
            } else if let Some(service) = rest.strip_prefix("service.") {
                let fork = proto::Fork::decode(value.as_slice()).expect("fork decodes");
                assert_eq!(fork.service, service);
                let stored: BTreeSet<SocketAddr> = fork
                    .endpoints
                    .iter()
                    .filter_map(|e| e.parse().ok())
                    .collect();
                let modelled: BTreeSet<SocketAddr> = self
                    .model
                    .values()
                    .flat_map(|e| &e.forks)
                    .filter(|f| f.service == service)
                    .flat_map(|f| f.endpoints.iter().filter_map(|e| e.parse().ok()))
                    .collect();
                assert_eq!(stored, modelled, "registered endpoints of {service}");
            } else {
                panic!("unexpected shared-data key {key}");
            }
        }
        // The index lists exactly the present entries (a reloaded singleton
        // clears by it).
        let index = store.get(INDEX_KEY).cloned().unwrap_or_default();
        let index = String::from_utf8(index).expect("index is text");
        let listed: BTreeSet<&str> = index.lines().collect();
        let expected: BTreeSet<&str> = present.keys().copied().collect();
        assert_eq!(listed, expected, "index");

        // Lookups through shared data agree with the compiled model.
        let shared = SharedTable::new(&self.memory);
        let mut keys = self.keys.clone();
        keys.extend(self.model.keys().cloned());
        let mut services = self.services.clone();
        services.insert("unknown-service".into());
        for key in &keys {
            for service in &services {
                assert_eq!(
                    shared.fork(key, service),
                    compiled.fork(key, service),
                    "fork({key:?}, {service:?})"
                );
            }
        }
        for name in &self.names {
            assert_eq!(
                shared.routing_key_of(name),
                compiled.routing_key_of(name),
                "routing_key_of({name:?})"
            );
        }
        for service in &services {
            for endpoint in &self.endpoints {
                assert_eq!(
                    shared.is_registered(service, *endpoint),
                    compiled.is_registered(service, *endpoint),
                    "is_registered({service:?}, {endpoint})"
                );
            }
        }
    }
}

/// The entry with every endpoint a fork lists again (by address) dropped,
/// as the compiled table holds it.
fn without_repeats(entry: &proto::TableEntry) -> proto::TableEntry {
    let mut entry = entry.clone();
    for fork in &mut entry.forks {
        let mut seen = BTreeSet::new();
        fork.endpoints
            .retain(|e| e.parse::<SocketAddr>().is_ok_and(|addr| seen.insert(addr)));
    }
    entry
}

fn table_of(version: u64, model: &BTreeMap<String, proto::TableEntry>) -> proto::RoutingTable {
    proto::RoutingTable {
        version,
        entries: model.values().cloned().collect(),
    }
}

//! The per-request work, in safe Rust over [`RequestHost`] (Envoy's callbacks
//! in `ffi.rs`, a fake map in the unit tests): read the request's headers in
//! place, call `Settings::plan`, apply its edits, count. The same steps as the
//! proxy-wasm filter's `filter/src/request.rs`.
//!
//! Why the whole list and not the few names the plan can need
//! (`Settings::header_names`): Envoy answers a by-name `get_header` with a
//! lower-cased copy of the name and a linear search of its map, about 1,050
//! instructions a name (11,511 for the 11 names); one `get_headers` call
//! hands over pointers to every header for 884 in all (`make
//! bench-instructions`, variants `module-get-headers` and
//! `module-get-all-headers`, a request of about ten headers). Neither copies
//! a value.

use std::cell::OnceCell;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use sandbox_router_routing::{
    Counter, Decision, ForkLookup, HeaderEdit, RequestFacts, RouteLookup, RoutingTable, Settings,
    ORIGINAL_DST_HEADER,
};

use crate::pushed::{Snapshot, TableReader};

/// What the module asks of Envoy while it handles one request's headers.
/// Values borrow from the host (Envoy's header map): `&self` readers end
/// before a `&mut self` setter can run, so no value outlives a change of the map.
pub trait RequestHost {
    /// Room for the host's list of a request's headers, on the caller's
    /// stack: filled once per request, read in place by the iterator.
    type HeaderBuffer: Default;
    /// Every request header, `(name, value)` with lowercase names, in map
    /// order (every value of a repeated name), borrowed from the host's map:
    /// nothing is copied.
    fn request_headers<'h>(
        &'h self,
        buffer: &'h mut Self::HeaderBuffer,
    ) -> impl Iterator<Item = (&'h [u8], &'h [u8])> + 'h;
    /// The downstream address (`IP:PORT`).
    fn source_address(&self) -> Option<Vec<u8>>;
    /// The cluster of the route Envoy chose.
    fn cluster_name(&self) -> Option<Vec<u8>>;
    /// Replaces every value of `name`; `None` removes the header. False if
    /// the host refused.
    fn set_request_header(&mut self, name: &str, value: Option<&[u8]>) -> bool;
    /// Makes Envoy choose the route again, from the edited headers.
    fn clear_route_cache(&mut self);
    /// Moves counter `id` (an id [`crate::metrics`] defined) by one.
    fn increment_counter(&mut self, id: usize);
}

/// Where a configuration's table comes from.
pub enum Table {
    /// `table` in the configuration (`Settings::table`).
    Static,
    /// The table the process's watch keeps (`crate::pushed`).
    Pushed(TableReader),
}

/// One filter configuration (one `config_new`), shared by every worker.
pub struct FilterConfig {
    pub settings: Settings,
    pub table: Table,
    /// Envoy's counter ids, indexed like `Counter::ALL`.
    pub counters: [usize; Counter::ALL.len()],
    /// Round-robin position among a fork's endpoints.
    next_endpoint: AtomicUsize,
}

impl FilterConfig {
    pub fn new(settings: Settings, table: Table, counters: [usize; Counter::ALL.len()]) -> Self {
        FilterConfig {
            settings,
            table,
            counters,
            next_endpoint: AtomicUsize::new(0),
        }
    }

    fn count(&self, host: &mut impl RequestHost, counter: Counter) {
        if let Some(id) = self.counters.get(counter.index()) {
            host.increment_counter(*id);
        }
    }
}

/// Test builds only (`test-hooks`): a request carrying this header panics in
/// the request-headers hook.
#[cfg(any(test, feature = "test-hooks"))]
pub const TEST_PANIC_HEADER: &str = "x-sandbox-router-test-panic";

/// Handles one request's headers; returns the debug header's value when
/// `debug_header` is on. A request without routing context allocates nothing
/// here (a unit test counts).
pub fn on_request_headers<H: RequestHost>(config: &FilterConfig, host: &mut H) -> Option<String> {
    let settings = &config.settings;
    let pick = config.next_endpoint.load(Ordering::Relaxed);
    let mut plan = {
        let reader: &H = host;
        let mut buffer = H::HeaderBuffer::default();
        let headers = reader.request_headers(&mut buffer);
        #[cfg(any(test, feature = "test-hooks"))]
        let headers = headers.inspect(|(name, _)| {
            #[allow(clippy::panic)]
            if *name == TEST_PANIC_HEADER.as_bytes() {
                panic!("{TEST_PANIC_HEADER} (a test build of the module)");
            }
        });
        let scanned = settings.scan(headers);
        let facts = Facts(reader);
        match &config.table {
            Table::Static => match &settings.table {
                Some(table) => settings.plan(&scanned, &facts, table, pick),
                None => settings.plan(&scanned, &facts, &RoutingTable::default(), pick),
            },
            Table::Pushed(reader) => settings.plan(&scanned, &facts, &Lazy::new(reader), pick),
        }
    };
    // Every borrow of the header map has ended: the plan owns what it needs.
    let failed = plan.edits.iter().filter(|edit| !apply(host, edit)).count();
    if let Decision::Route(_) = plan.outcome.decision {
        config.next_endpoint.fetch_add(1, Ordering::Relaxed);
        if failed > 0 {
            // Without both headers Envoy takes the baseline route: say so.
            let undo = plan.abandon_route(settings);
            apply(host, &undo);
        }
    }
    if !plan.edits.is_empty() {
        // Envoy chose the route before this filter ran, maybe by a marker the
        // client sent; the edited headers choose it now.
        host.clear_route_cache();
    }
    for counter in plan.counters.iter() {
        config.count(host, counter);
    }
    plan.debug
}

/// After a panic in the request-headers hook: nothing of the plan is applied
/// (some of it may have been), and the request stays on the baseline. The
/// internal headers are removed (a client's, or a half-applied route), and at
/// an edge every header that can carry routing context (the untrusted context
/// may not have been removed). Counted as `baseline.malformed`.
pub fn fail_safe<H: RequestHost>(config: &FilterConfig, host: &mut H) -> Option<String> {
    let settings = &config.settings;
    host.set_request_header(ORIGINAL_DST_HEADER, None);
    host.set_request_header(&settings.marker_header, None);
    if settings.edge.is_some() {
        for name in settings.header_names() {
            if !name.starts_with(':') {
                host.set_request_header(name, None);
            }
        }
    }
    host.clear_route_cache();
    config.count(
        host,
        Counter::Baseline(sandbox_router_routing::BaselineReason::Malformed),
    );
    settings
        .debug_header
        .then(|| "baseline; reason=malformed".to_owned())
}

fn apply(host: &mut impl RequestHost, edit: &HeaderEdit) -> bool {
    match edit {
        HeaderEdit::Remove(name) => host.set_request_header(name, None),
        // The plan never replaces a value with an empty one (Envoy would
        // remove the header instead).
        HeaderEdit::Replace(name, value) => host.set_request_header(name, Some(value)),
    }
}

/// The facts the plan may ask for (each only when it needs it).
struct Facts<'h, H>(&'h H);

impl<H: RequestHost> RequestFacts for Facts<'_, H> {
    fn source_address(&self) -> Option<Vec<u8>> {
        self.0.source_address()
    }

    fn cluster_name(&self) -> Option<Vec<u8>> {
        self.0.cluster_name()
    }
}

/// The pushed table, loaded on the plan's first lookup: a request without
/// routing context never touches it.
struct Lazy<'r> {
    reader: &'r TableReader,
    table: OnceCell<Arc<Snapshot>>,
}

impl<'r> Lazy<'r> {
    fn new(reader: &'r TableReader) -> Self {
        Lazy {
            reader,
            table: OnceCell::new(),
        }
    }

    fn get(&self) -> &Snapshot {
        self.table.get_or_init(|| self.reader.current())
    }
}

impl RouteLookup for Lazy<'_> {
    fn fork(&self, routing_key: &str, service: &str) -> ForkLookup<'_> {
        self.get().fork(routing_key, service)
    }

    fn routing_key_of(&self, sandbox: &str) -> Option<std::borrow::Cow<'_, str>> {
        self.get().routing_key_of(sandbox)
    }

    fn is_registered(&self, service: &str, endpoint: SocketAddr) -> bool {
        self.get().is_registered(service, endpoint)
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::config;

    /// A header map as Envoy keeps it, and what the module did to it.
    #[derive(Default)]
    pub struct FakeHost {
        pub headers: Vec<(String, Vec<u8>)>,
        pub source: Option<&'static str>,
        pub cluster: Option<&'static str>,
        pub counted: Vec<usize>,
        pub route_cleared: bool,
        pub refuse: Option<&'static str>,
    }

    impl FakeHost {
        pub fn with(headers: &[(&str, &str)]) -> Self {
            FakeHost {
                headers: headers
                    .iter()
                    .map(|(n, v)| ((*n).to_owned(), v.as_bytes().to_vec()))
                    .collect(),
                ..FakeHost::default()
            }
        }

        pub fn values(&self, name: &str) -> Vec<String> {
            self.headers
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                .collect()
        }
    }

    impl RequestHost for FakeHost {
        type HeaderBuffer = ();
        fn request_headers<'h>(
            &'h self,
            _: &'h mut (),
        ) -> impl Iterator<Item = (&'h [u8], &'h [u8])> + 'h {
            self.headers
                .iter()
                .map(|(n, v)| (n.as_bytes(), v.as_slice()))
        }
        fn source_address(&self) -> Option<Vec<u8>> {
            self.source.map(|s| s.as_bytes().to_vec())
        }
        fn cluster_name(&self) -> Option<Vec<u8>> {
            self.cluster.map(|s| s.as_bytes().to_vec())
        }
        fn set_request_header(&mut self, name: &str, value: Option<&[u8]>) -> bool {
            if self.refuse == Some(name) {
                return false;
            }
            self.headers.retain(|(n, _)| n != name);
            if let Some(value) = value.filter(|v| !v.is_empty()) {
                self.headers.push((name.to_owned(), value.to_vec()));
            }
            true
        }
        fn clear_route_cache(&mut self) {
            self.route_cleared = true;
        }
        fn increment_counter(&mut self, id: usize) {
            self.counted.push(id);
        }
    }

    const KEY: &str = "key-feature-x";

    pub fn config_with(extra: &str) -> FilterConfig {
        let json = format!(
            r#"{{"debug_header": true, "table": {{"version": 3, "entries": [
                {{"routing_key": "{KEY}", "sandbox": "feature-x",
                  "forks": [{{"service": "backend", "endpoints": ["10.0.0.7:8080", "10.0.0.8:8080"]}}]}}]}}{extra}}}"#
        );
        let parsed = config::parse(json.as_bytes()).unwrap();
        // Counter ids as Envoy hands them out: 1, 2, ...
        let mut ids = [0; Counter::ALL.len()];
        for (i, id) in ids.iter_mut().enumerate() {
            *id = i + 1;
        }
        FilterConfig::new(parsed.settings, Table::Static, ids)
    }

    fn counted(config: &FilterConfig, host: &FakeHost) -> Vec<&'static str> {
        host.counted
            .iter()
            .filter_map(|id| Counter::ALL.get(id - 1))
            .inspect(|c| assert_eq!(config.counters[c.index()], c.index() + 1))
            .map(|c| c.name())
            .collect()
    }

    #[test]
    fn routes_by_the_plan_and_applies_its_edits() {
        let config = config_with("");
        let baggage = format!("a=1,sandbox-routing-key={KEY}");
        let mut host = FakeHost::with(&[(":authority", "backend"), ("baggage", &baggage)]);
        let debug = on_request_headers(&config, &mut host);
        assert_eq!(host.values(ORIGINAL_DST_HEADER), ["10.0.0.7:8080"]);
        assert_eq!(host.values("x-sandbox-router-route"), ["1"]);
        assert!(host.route_cleared);
        assert_eq!(counted(&config, &host), ["routed"]);
        assert_eq!(
            debug.as_deref(),
            Some("routed; source=baggage; service=backend; endpoint=10.0.0.7:8080")
        );
        // The next request takes the fork's next endpoint.
        let mut host = FakeHost::with(&[(":authority", "backend"), ("baggage", &baggage)]);
        on_request_headers(&config, &mut host);
        assert_eq!(host.values(ORIGINAL_DST_HEADER), ["10.0.0.8:8080"]);
    }

    #[test]
    fn every_value_of_a_repeated_header_is_read() {
        let config = config_with("");
        let mut host = FakeHost::with(&[
            (":authority", "backend"),
            ("baggage", "a=1"),
            ("baggage", "b=2"),
            ("baggage", &format!("sandbox-routing-key={KEY}")),
        ]);
        on_request_headers(&config, &mut host);
        assert_eq!(counted(&config, &host), ["routed"]);
        // Two values of one name in one source: ambiguous.
        let mut host = FakeHost::with(&[
            (":authority", "backend"),
            ("baggage", &format!("sandbox-routing-key={KEY}")),
            ("baggage", "sandbox-routing-key=other"),
        ]);
        on_request_headers(&config, &mut host);
        assert_eq!(counted(&config, &host), ["baseline.malformed"]);
    }

    #[test]
    fn the_same_plan_as_the_whole_map_gives() {
        // What the Wasm filter computes from the whole header map.
        let config = config_with(r#", "sources": ["query", "baggage"], "query": {"remove": true}"#);
        let path = format!("/hook?sandbox-routing-key={KEY}&b=2");
        let headers = [
            (":authority", "backend"),
            (":path", path.as_str()),
            ("user-agent", "x"),
            ("x-sandbox-router-route", "1"),
            ("baggage", "userId=alice"),
        ];
        let whole = {
            let s = &config.settings;
            let scanned = s.scan(headers.iter().map(|(n, v)| (*n, v.as_bytes())));
            s.plan(&scanned, &(), s.table.as_ref().unwrap(), 0)
        };
        let mut host = FakeHost::with(&headers);
        let debug = on_request_headers(&config, &mut host);
        assert_eq!(debug, whole.debug);
        assert_eq!(
            counted(&config, &host),
            whole.counters.iter().map(Counter::name).collect::<Vec<_>>()
        );
        assert_eq!(host.values(":path"), ["/hook?b=2"]);
        assert_eq!(
            host.values("baggage"),
            [format!("sandbox-routing-key={KEY},userId=alice")]
        );
        assert_eq!(host.values("user-agent"), ["x"]);
    }

    #[test]
    fn a_refused_edit_abandons_the_route() {
        let config = config_with("");
        let baggage = format!("sandbox-routing-key={KEY}");
        let mut host = FakeHost::with(&[(":authority", "backend"), ("baggage", &baggage)]);
        host.refuse = Some(ORIGINAL_DST_HEADER);
        let debug = on_request_headers(&config, &mut host);
        assert!(host.values("x-sandbox-router-route").is_empty());
        assert_eq!(counted(&config, &host), ["baseline.malformed"]);
        assert_eq!(
            debug.as_deref(),
            Some("baseline; reason=malformed; source=baggage; service=backend")
        );
    }

    #[test]
    fn client_sent_internal_headers_are_removed() {
        let config = config_with("");
        let mut host = FakeHost::with(&[
            (":authority", "backend"),
            (ORIGINAL_DST_HEADER, "169.254.169.254:80"),
            ("x-sandbox-router-route", "1"),
        ]);
        on_request_headers(&config, &mut host);
        assert!(host.values(ORIGINAL_DST_HEADER).is_empty());
        assert!(host.values("x-sandbox-router-route").is_empty());
        assert!(host.route_cleared);
        assert_eq!(
            counted(&config, &host),
            ["baseline.no_context", "internal_headers_removed"]
        );
    }

    #[test]
    fn the_fail_safe_leaves_the_request_on_the_baseline() {
        let config = config_with("");
        let mut host = FakeHost::with(&[
            (":authority", "backend"),
            ("baggage", &format!("sandbox-routing-key={KEY}")),
            (ORIGINAL_DST_HEADER, "10.0.0.7:8080"),
            ("x-sandbox-router-route", "1"),
        ]);
        let debug = fail_safe(&config, &mut host);
        assert!(host.values(ORIGINAL_DST_HEADER).is_empty());
        assert!(host.values("x-sandbox-router-route").is_empty());
        // A sidecar passes the context on.
        assert_eq!(host.values("baggage").len(), 1);
        assert_eq!(counted(&config, &host), ["baseline.malformed"]);
        assert_eq!(debug.as_deref(), Some("baseline; reason=malformed"));
        // An edge removes it: it may be an untrusted client's.
        let edge = config_with(r#", "edge": {}"#);
        let mut host = FakeHost::with(&[
            (":authority", "backend"),
            ("baggage", &format!("sandbox-routing-key={KEY}")),
            ("uberctx-sandbox-routing-key", KEY),
        ]);
        fail_safe(&edge, &mut host);
        assert!(host.values("baggage").is_empty());
        assert!(host.values("uberctx-sandbox-routing-key").is_empty());
        assert_eq!(host.values(":authority"), ["backend"]);
    }

    #[test]
    fn the_test_header_panics_only_in_test_builds() {
        let config = config_with("");
        let mut host = FakeHost::with(&[(":authority", "backend"), (TEST_PANIC_HEADER, "1")]);
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            on_request_headers(&config, &mut host)
        }));
        assert!(caught.is_err());
    }

    #[test]
    fn the_pushed_table_is_read_only_for_a_request_with_context() {
        let static_config = config_with("");
        let pushed = FilterConfig::new(
            static_config.settings.clone(),
            Table::Pushed(TableReader::empty()),
            static_config.counters,
        );
        let mut host = FakeHost::with(&[(":authority", "backend"), ("user-agent", "curl/8")]);
        on_request_headers(&pushed, &mut host);
        assert_eq!(counted(&pushed, &host), ["baseline.no_context"]);
        let baggage = format!("sandbox-routing-key={KEY}");
        let mut host = FakeHost::with(&[(":authority", "backend"), ("baggage", &baggage)]);
        on_request_headers(&pushed, &mut host);
        assert_eq!(counted(&pushed, &host), ["baseline.unknown_key"]);
    }
}

//! The routing table: routing key -> { service -> endpoints }.
//!
//! Every source of a table (the plugin configuration now, the control
//! service's push later) produces a [`proto::RoutingTable`]; [`RoutingTable::compile`]
//! validates it and builds the indexes the decision reads. The decision sees
//! only the [`RouteLookup`] trait, so a table kept elsewhere (e.g. in
//! proxy-wasm shared data, read one key at a time) plugs in unchanged.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use sandbox_router_proto::v1 as proto;
use serde::Deserialize;

use crate::error::ConfigError;
use crate::key::is_valid_routing_key;

/// What the table says about one (routing key, service) pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForkLookup<'a> {
    /// No sandbox has this routing key.
    UnknownKey,
    /// The key exists but does not fork this service.
    NoFork,
    /// The key forks this service to these endpoints (never empty).
    Endpoints(Cow<'a, [SocketAddr]>),
}

/// Read access the routing decision needs.
pub trait RouteLookup {
    fn fork(&self, routing_key: &str, service: &str) -> ForkLookup<'_>;
    /// The routing key of the sandbox (or route group) named `sandbox`.
    fn routing_key_of(&self, sandbox: &str) -> Option<Cow<'_, str>>;
    /// True when some sandbox forks `service` to `endpoint`.
    fn is_registered(&self, service: &str, endpoint: SocketAddr) -> bool;
}

/// A validated, indexed routing table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutingTable {
    version: u64,
    by_key: HashMap<String, KeyEntry>,
    key_by_sandbox: HashMap<String, String>,
    /// Every endpoint any sandbox registers, per service.
    registered: HashMap<String, HashSet<SocketAddr>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct KeyEntry {
    forks: HashMap<String, Vec<SocketAddr>>,
}

impl RoutingTable {
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Number of routing keys.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Validates and indexes a table. Errors name the offending field as a
    /// path from `field_prefix` (e.g. `table.entries[2].forks[0].endpoints[1]`).
    pub fn compile(table: &proto::RoutingTable, field_prefix: &str) -> Result<Self, ConfigError> {
        let mut compiled = RoutingTable {
            version: table.version,
            ..RoutingTable::default()
        };
        for (i, entry) in table.entries.iter().enumerate() {
            let forks = check_entry(
                entry,
                field_prefix,
                i,
                |key| compiled.by_key.contains_key(key),
                |name| compiled.key_by_sandbox.contains_key(name),
            )?;
            if !entry.sandbox.is_empty() {
                compiled
                    .key_by_sandbox
                    .insert(entry.sandbox.clone(), entry.routing_key.clone());
            }
            let mut key_entry = KeyEntry::default();
            for (service, endpoints) in forks {
                compiled
                    .registered
                    .entry(service.to_owned())
                    .or_default()
                    .extend(endpoints.iter().copied());
                key_entry.forks.insert(service.to_owned(), endpoints);
            }
            compiled.by_key.insert(entry.routing_key.clone(), key_entry);
        }
        Ok(compiled)
    }
}

/// An entry's forks as [`check_entry`] parsed them: (service, endpoints), in
/// the entry's order; endpoints never empty, repeats dropped.
pub type ParsedForks<'a> = Vec<(&'a str, Vec<SocketAddr>)>;

/// The rules of a table for its `index`th entry: what
/// [`RoutingTable::compile`] checks of each entry, for a holder that builds
/// its own index (the native watch) and should not compile a second copy
/// just to validate. `key_taken` and `name_taken` say whether an earlier
/// entry holds this routing key or sandbox name. Errors name the field as
/// `{field_prefix}.entries[{index}]...`.
pub fn check_entry<'e>(
    entry: &'e proto::TableEntry,
    field_prefix: &str,
    index: usize,
    key_taken: impl FnOnce(&str) -> bool,
    name_taken: impl FnOnce(&str) -> bool,
) -> Result<ParsedForks<'e>, ConfigError> {
    // Paths are formatted only on error: a snapshot checks 100,000s.
    let at = |field: &str| format!("{field_prefix}.entries[{index}]{field}");
    if !is_valid_routing_key(entry.routing_key.as_bytes()) {
        return Err(ConfigError::new(
            at(".routing_key"),
            "must be 1-64 characters of A-Z a-z 0-9 - _",
        ));
    }
    if key_taken(&entry.routing_key) {
        return Err(ConfigError::new(
            at(".routing_key"),
            "duplicate routing key",
        ));
    }
    if !entry.sandbox.is_empty() {
        if !is_valid_service_name(&entry.sandbox) {
            return Err(ConfigError::new(
                at(".sandbox"),
                "must be lowercase letters, digits, '-', '.', '_' (at most 253)",
            ));
        }
        if name_taken(&entry.sandbox) {
            return Err(ConfigError::new(at(".sandbox"), "duplicate sandbox name"));
        }
    }
    let mut forks: ParsedForks<'e> = Vec::with_capacity(entry.forks.len());
    for (j, fork) in entry.forks.iter().enumerate() {
        let at = |field: &str| at(&format!(".forks[{j}]{field}"));
        if !is_valid_service_name(&fork.service) {
            return Err(ConfigError::new(
                at(".service"),
                "must be lowercase letters, digits, '-', '.', '_' (at most 253)",
            ));
        }
        if fork.endpoints.is_empty() {
            return Err(ConfigError::new(
                at(".endpoints"),
                "must list at least one IP:PORT",
            ));
        }
        let mut endpoints = Vec::with_capacity(fork.endpoints.len());
        for (k, endpoint) in fork.endpoints.iter().enumerate() {
            let addr = parse_endpoint(endpoint)
                .map_err(|why| ConfigError::new(at(&format!(".endpoints[{k}]")), why))?;
            if !endpoints.contains(&addr) {
                endpoints.push(addr);
            }
        }
        if forks.iter().any(|(service, _)| *service == fork.service) {
            return Err(ConfigError::new(
                at(".service"),
                "service forked twice by the same routing key",
            ));
        }
        forks.push((&fork.service, endpoints));
    }
    Ok(forks)
}

impl RouteLookup for RoutingTable {
    fn fork(&self, routing_key: &str, service: &str) -> ForkLookup<'_> {
        let Some(entry) = self.by_key.get(routing_key) else {
            return ForkLookup::UnknownKey;
        };
        match entry.forks.get(service) {
            Some(endpoints) => ForkLookup::Endpoints(Cow::Borrowed(endpoints)),
            None => ForkLookup::NoFork,
        }
    }

    fn routing_key_of(&self, sandbox: &str) -> Option<Cow<'_, str>> {
        self.key_by_sandbox
            .get(sandbox)
            .map(|k| Cow::Borrowed(k.as_str()))
    }

    fn is_registered(&self, service: &str, endpoint: SocketAddr) -> bool {
        self.registered
            .get(service)
            .is_some_and(|endpoints| endpoints.contains(&endpoint))
    }
}

/// A service (or sandbox) name as the table and the decision compare them:
/// what a DNS name or an Envoy cluster name is made of, lowercase, starting
/// and ending with a letter or digit.
pub fn is_valid_service_name(name: &str) -> bool {
    let alnum = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    alnum(name.as_bytes().first())
        && alnum(name.as_bytes().last())
        && name.len() <= 253
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.' | b'_')
        })
}

/// An endpoint is a literal `IP:PORT` (`[v6]:PORT` for IPv6): Envoy's
/// ORIGINAL_DST cluster takes no names. Port 0 and unspecified addresses are refused.
pub fn parse_endpoint(text: &str) -> Result<SocketAddr, &'static str> {
    let addr: SocketAddr = text
        .parse()
        .map_err(|_| "must be IP:PORT (a literal address, [v6]:PORT for IPv6)")?;
    if addr.port() == 0 {
        return Err("port must not be 0");
    }
    if addr.ip().is_unspecified() || addr.ip().is_multicast() {
        return Err("address must be a unicast host address");
    }
    Ok(addr)
}

/// The JSON form of a table in the plugin configuration; same shape as the
/// protobuf `RoutingTable`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableSpec {
    #[serde(default)]
    pub version: u64,
    #[serde(default)]
    pub entries: Vec<EntrySpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntrySpec {
    pub routing_key: String,
    #[serde(default)]
    pub sandbox: String,
    #[serde(default)]
    pub forks: Vec<ForkSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForkSpec {
    pub service: String,
    pub endpoints: Vec<String>,
}

impl From<TableSpec> for proto::RoutingTable {
    fn from(spec: TableSpec) -> Self {
        proto::RoutingTable {
            version: spec.version,
            entries: spec
                .entries
                .into_iter()
                .map(|e| proto::TableEntry {
                    routing_key: e.routing_key,
                    sandbox: e.sandbox,
                    forks: e
                        .forks
                        .into_iter()
                        .map(|f| proto::Fork {
                            service: f.service,
                            endpoints: f.endpoints,
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(entries: Vec<proto::TableEntry>) -> proto::RoutingTable {
        proto::RoutingTable {
            version: 3,
            entries,
        }
    }

    fn entry(key: &str, sandbox: &str, forks: &[(&str, &[&str])]) -> proto::TableEntry {
        proto::TableEntry {
            routing_key: key.into(),
            sandbox: sandbox.into(),
            forks: forks
                .iter()
                .map(|(service, endpoints)| proto::Fork {
                    service: (*service).into(),
                    endpoints: endpoints.iter().map(|e| (*e).into()).collect(),
                })
                .collect(),
        }
    }

    fn sock(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn lookups() {
        let t = RoutingTable::compile(
            &table(vec![
                entry(
                    "key-a",
                    "feature-a",
                    &[("backend", &["10.0.0.1:80", "10.0.0.2:80"])],
                ),
                entry("key-b", "", &[("users", &["[fd00::1]:8080"])]),
            ]),
            "table",
        )
        .unwrap();
        assert_eq!(t.version(), 3);
        assert_eq!(t.len(), 2);
        assert_eq!(
            t.fork("key-a", "backend"),
            ForkLookup::Endpoints(Cow::Owned(vec![sock("10.0.0.1:80"), sock("10.0.0.2:80")]))
        );
        assert_eq!(t.fork("key-a", "users"), ForkLookup::NoFork);
        assert_eq!(t.fork("key-c", "users"), ForkLookup::UnknownKey);
        assert_eq!(t.routing_key_of("feature-a").as_deref(), Some("key-a"));
        assert_eq!(t.routing_key_of("nope"), None);
        assert!(t.is_registered("users", sock("[fd00::1]:8080")));
        assert!(!t.is_registered("backend", sock("[fd00::1]:8080")));
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (entry("bad key", "", &[]), "table.entries[0].routing_key"),
            (entry("k", "Bad", &[]), "table.entries[0].sandbox"),
            (
                entry("k", "", &[("Backend", &["10.0.0.1:80"])]),
                "table.entries[0].forks[0].service",
            ),
            (
                entry("k", "", &[("b", &[])]),
                "table.entries[0].forks[0].endpoints",
            ),
            (
                entry("k", "", &[("b", &["10.0.0.1:80", "backend:80"])]),
                "table.entries[0].forks[0].endpoints[1]",
            ),
            (
                entry("k", "", &[("b", &["10.0.0.1:0"])]),
                "table.entries[0].forks[0].endpoints[0]",
            ),
            (
                entry("k", "", &[("b", &["0.0.0.0:80"])]),
                "table.entries[0].forks[0].endpoints[0]",
            ),
            (
                entry("k", "", &[("b", &["10.0.0.1:80"]), ("b", &["10.0.0.2:80"])]),
                "table.entries[0].forks[1].service",
            ),
        ];
        for (e, field) in cases {
            let err = RoutingTable::compile(&table(vec![e]), "table").unwrap_err();
            assert_eq!(err.field, field, "{err}");
        }
        let dup_key = table(vec![entry("k", "", &[]), entry("k", "", &[])]);
        assert_eq!(
            RoutingTable::compile(&dup_key, "t").unwrap_err().field,
            "t.entries[1].routing_key"
        );
        let dup_name = table(vec![entry("k1", "s", &[]), entry("k2", "s", &[])]);
        assert_eq!(
            RoutingTable::compile(&dup_name, "t").unwrap_err().field,
            "t.entries[1].sandbox"
        );
    }
}

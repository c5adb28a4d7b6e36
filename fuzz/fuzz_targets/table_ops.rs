//! Structured sequences of table updates (`arbitrary`): snapshots and deltas
//! drawn mostly from small pools of keys, names, services and endpoints, so
//! most updates are valid and overlap, with a delta's base usually the held
//! version; plus restarts and raw bytes. Each is encoded with prost and goes
//! through the same `PushedTable::apply` and checks as `table_update`, which
//! reaches far fewer valid updates from raw bytes.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use prost::Message as _;
use sandbox_router_fuzz::SyncCheck;
use sandbox_router_proto::v1::{self as proto, table_update::Kind};

const KEYS: [&str; 4] = ["ka", "kb", "kc", "k7f3q9x2m4feature"];
const NAMES: [&str; 4] = ["", "sandbox-a", "sandbox-b", "group"];
const SERVICES: [&str; 3] = ["backend", "users", "frontend"];
const ENDPOINTS: [&str; 6] = [
    "10.0.0.1:80",
    "10.0.0.2:80",
    "[fd00::1]:8080",
    "[fd00:0::1]:8080", // the same address as above, written differently
    "backend:80",       // invalid: a name
    "10.0.0.1:0",       // invalid: port 0
];

#[derive(Debug, Arbitrary)]
enum Op {
    Snapshot {
        version: u8,
        entries: Vec<Entry>,
    },
    Delta {
        version: u8,
        base: Option<u8>,
        upserts: Vec<Entry>,
        removed: Vec<Text>,
    },
    Reload,
    Raw(Vec<u8>),
}

#[derive(Debug, Arbitrary)]
struct Entry {
    key: Text,
    sandbox: Text,
    forks: Vec<(Text, Vec<Text>)>,
}

/// A pool index, or any string.
#[derive(Debug, Arbitrary)]
enum Text {
    Pool(u8),
    Any(String),
}

impl Text {
    fn from(&self, pool: &[&str]) -> String {
        match self {
            Text::Pool(i) => pool[usize::from(*i) % pool.len()].to_owned(),
            Text::Any(s) => s.clone(),
        }
    }
}

impl Entry {
    fn proto(&self) -> proto::TableEntry {
        proto::TableEntry {
            routing_key: self.key.from(&KEYS),
            sandbox: self.sandbox.from(&NAMES),
            forks: self
                .forks
                .iter()
                .map(|(service, endpoints)| proto::Fork {
                    service: service.from(&SERVICES),
                    endpoints: endpoints.iter().map(|e| e.from(&ENDPOINTS)).collect(),
                })
                .collect(),
        }
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let mut check = SyncCheck::new();
    for op in &ops {
        let kind = match op {
            Op::Reload => {
                check.reload();
                continue;
            }
            Op::Raw(bytes) => {
                check.apply(bytes);
                continue;
            }
            Op::Snapshot { version, entries } => (
                version,
                Kind::Snapshot(proto::RoutingTable {
                    version: u64::from(*version),
                    entries: entries.iter().map(Entry::proto).collect(),
                }),
            ),
            Op::Delta {
                version,
                base,
                upserts,
                removed,
            } => (
                version,
                Kind::Delta(proto::TableDelta {
                    base_version: base.map_or(check.version(), u64::from),
                    upserts: upserts.iter().map(Entry::proto).collect(),
                    removed_keys: removed.iter().map(|k| k.from(&KEYS)).collect(),
                }),
            ),
        };
        let update = proto::TableUpdate {
            version: u64::from(*kind.0),
            kind: Some(kind.1),
        };
        check.apply(&update.encode_to_vec());
    }
});

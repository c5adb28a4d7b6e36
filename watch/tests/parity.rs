//! Differential property test: [`Table`] accepts and refuses exactly what the
//! Wasm singleton's [`PushedTable`] does (the same `ApplyError`), and then
//! answers every lookup exactly as the filter reading the singleton's shared
//! data does, and as a [`RoutingTable`] compiled from the same entries. The
//! table an update was applied to never changes.

// Test code: a failed expectation should panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;

use proptest::prelude::*;
use sandbox_router_proto::v1::{self as proto, table_update::Kind};
use sandbox_router_proto::Message;
use sandbox_router_routing::shared::{SharedStore, SharedTable};
use sandbox_router_routing::sync::PushedTable;
use sandbox_router_routing::{RouteLookup, RoutingTable};
use sandbox_router_watch::Table;

const KEYS: [&str; 5] = ["k0", "k1", "k2", "k3", "bad key"];
const NAMES: [&str; 5] = ["", "n0", "n1", "n2", "Bad"];
const SERVICES: [&str; 4] = ["s0", "s1", "s2", "Bad"];
/// Two spellings of one address, and one that is not IP:PORT.
const ENDPOINTS: [&str; 5] = [
    "10.0.0.1:80",
    "10.0.0.2:80",
    "[fd00::1]:80",
    "[fd00:0::1]:80",
    "bad:80",
];

/// Shared data, as the proxy holds it.
#[derive(Default)]
struct Memory(RefCell<HashMap<String, Vec<u8>>>);

impl SharedStore for &Memory {
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.0.borrow().get(key).cloned()
    }
}

/// An index into a list whose last item is invalid: picked one time in ten.
fn pick(len: usize) -> impl Strategy<Value = usize> {
    prop_oneof![9 => 0..len - 1, 1 => Just(len - 1)]
}

fn entry() -> impl Strategy<Value = proto::TableEntry> {
    let fork = (
        pick(SERVICES.len()),
        prop::collection::vec(pick(ENDPOINTS.len()), 0..3),
    )
        .prop_map(|(s, eps)| proto::Fork {
            service: SERVICES[s].to_owned(),
            endpoints: eps.into_iter().map(|e| ENDPOINTS[e].to_owned()).collect(),
        });
    (
        pick(KEYS.len()),
        0..NAMES.len(),
        prop::collection::vec(fork, 0..3),
    )
        .prop_map(|(k, n, forks)| proto::TableEntry {
            routing_key: KEYS[k].to_owned(),
            sandbox: NAMES[n].to_owned(),
            forks,
        })
}

#[derive(Debug, Clone)]
enum Step {
    Snapshot(Vec<proto::TableEntry>),
    /// `base_offset`: 0 is the version held; others are out of step.
    Delta {
        base_offset: u64,
        upserts: Vec<proto::TableEntry>,
        removed: Vec<usize>,
    },
    Empty,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        2 => prop::collection::vec(entry(), 0..5).prop_map(Step::Snapshot),
        8 => (
            prop_oneof![9 => Just(0u64), 1 => 1..3u64],
            prop::collection::vec(entry(), 0..3),
            prop::collection::vec(0..KEYS.len(), 0..3),
        )
            .prop_map(|(base_offset, upserts, removed)| Step::Delta {
                base_offset,
                upserts,
                removed,
            }),
        1 => Just(Step::Empty),
    ]
}

fn update(step: Step, version: u64, held: u64) -> proto::TableUpdate {
    let kind = match step {
        Step::Snapshot(entries) => Some(Kind::Snapshot(proto::RoutingTable { version, entries })),
        Step::Delta {
            base_offset,
            upserts,
            removed,
        } => Some(Kind::Delta(proto::TableDelta {
            base_version: held + base_offset,
            upserts,
            removed_keys: removed.into_iter().map(|k| KEYS[k].to_owned()).collect(),
        })),
        Step::Empty => None,
    };
    proto::TableUpdate { version, kind }
}

/// Every lookup over the universe, as `table` answers it.
fn answers(table: &impl RouteLookup) -> Vec<String> {
    let mut out = Vec::new();
    for key in KEYS {
        for service in SERVICES {
            out.push(format!("{key}/{service}: {:?}", table.fork(key, service)));
        }
    }
    for name in NAMES {
        out.push(format!("{name}: {:?}", table.routing_key_of(name)));
    }
    for service in SERVICES {
        for endpoint in &ENDPOINTS[..4] {
            let endpoint: SocketAddr = endpoint.parse().unwrap();
            out.push(format!(
                "{service} {endpoint}: {}",
                table.is_registered(service, endpoint)
            ));
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn table_agrees_with_the_wasm_singleton(steps in prop::collection::vec(step(), 1..24)) {
        let memory = Memory::default();
        let mut pushed = PushedTable::default();
        let mut table = Table::default();
        for (i, step) in steps.into_iter().enumerate() {
            let update = update(step, i as u64 + 1, table.version());
            let singleton = pushed.apply(&update.encode_to_vec());
            let before = table.to_proto();
            let before_answers = answers(&table);
            let ours = table.apply(&update);
            // The table applied to is never changed.
            prop_assert_eq!(table.to_proto(), before);
            prop_assert_eq!(answers(&table), before_answers);
            match (singleton, ours) {
                (Ok(writes), Ok(applied)) => {
                    for w in writes {
                        memory.0.borrow_mut().insert(w.key, w.value);
                    }
                    table = applied.table;
                    if let Some(compiled) = applied.compiled {
                        prop_assert_eq!(answers(&compiled), answers(&table));
                    }
                }
                (Err(expected), Err(got)) => prop_assert_eq!(expected, got),
                (singleton, ours) => prop_assert!(
                    false,
                    "singleton {:?}, watch {:?}",
                    singleton.map(|_| ()),
                    ours.map(|_| ())
                ),
            }
            prop_assert_eq!(table.version(), pushed.version());
            prop_assert_eq!(table.len(), pushed.len());
            let shared = answers(&SharedTable::new(&memory));
            prop_assert_eq!(&answers(&table), &shared);
            let compiled: RoutingTable = table.to_routing_table().unwrap();
            prop_assert_eq!(&answers(&compiled), &shared);
        }
    }
}

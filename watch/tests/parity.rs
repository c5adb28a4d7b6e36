//! Differential property test: [`Table`] accepts and refuses exactly what the
//! Wasm singleton's [`PushedTable`] does (the same `ApplyError`), and then
//! answers every lookup exactly as the filter reading the singleton's shared
//! data does, and as a [`RoutingTable`] compiled from the same entries. The
//! table an update was applied to never changes. [`Table::apply_encoded`]
//! (a snapshot decoded entry by entry) agrees with decoding the update whole,
//! also for encodings the control service never writes (a snapshot split
//! over several fields, unknown fields, a oneof member replaced, damaged
//! bytes).

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
            // As the watch applies it (still encoded), and decoded first.
            let ours = table.apply_encoded(&update.encode_to_vec());
            let decoded = table.apply(&update);
            match (&ours, &decoded) {
                (Ok(ours), Ok(decoded)) => {
                    prop_assert_eq!(ours.to_proto(), decoded.to_proto());
                    prop_assert_eq!(answers(ours), answers(decoded));
                }
                (Err(ours), Err(decoded)) => prop_assert_eq!(ours, decoded),
                _ => prop_assert!(false, "encoded {:?}, decoded {:?}", ours.is_ok(), decoded.is_ok()),
            }
            // The table applied to is never changed.
            prop_assert_eq!(table.to_proto(), before);
            prop_assert_eq!(answers(&table), before_answers);
            match (singleton, ours) {
                (Ok(writes), Ok(applied)) => {
                    for w in writes {
                        memory.0.borrow_mut().insert(w.key, w.value);
                    }
                    table = applied;
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

/// One top-level field of a hand-written `TableUpdate` encoding.
#[derive(Debug, Clone)]
enum Field {
    Version(u64),
    Snapshot(Vec<proto::TableEntry>),
    Delta(Vec<proto::TableEntry>),
    /// A field number the message does not have.
    Unknown(u64),
}

fn field() -> impl Strategy<Value = Field> {
    prop_oneof![
        1 => (0..4u64).prop_map(Field::Version),
        3 => prop::collection::vec(entry(), 0..4).prop_map(Field::Snapshot),
        1 => prop::collection::vec(entry(), 0..2).prop_map(Field::Delta),
        1 => (0..300u64).prop_map(Field::Unknown),
    ]
}

fn encode(fields: &[Field]) -> Vec<u8> {
    use prost::encoding::{encode_key, encode_varint, WireType};
    let mut out = Vec::new();
    let message = |tag: u32, body: Vec<u8>, out: &mut Vec<u8>| {
        encode_key(tag, WireType::LengthDelimited, out);
        encode_varint(body.len() as u64, out);
        out.extend(body);
    };
    for field in fields {
        match field {
            Field::Version(v) => {
                encode_key(1, WireType::Varint, &mut out);
                encode_varint(*v, &mut out);
            }
            Field::Snapshot(entries) => {
                let table = proto::RoutingTable {
                    version: 7,
                    entries: entries.clone(),
                };
                message(2, table.encode_to_vec(), &mut out);
            }
            Field::Delta(upserts) => {
                let delta = proto::TableDelta {
                    base_version: 1,
                    upserts: upserts.clone(),
                    removed_keys: vec![KEYS[0].to_owned()],
                };
                message(3, delta.encode_to_vec(), &mut out);
            }
            Field::Unknown(v) => {
                encode_key(9, WireType::Varint, &mut out);
                encode_varint(*v, &mut out);
            }
        }
    }
    out
}

/// What the watch does with `bytes`, as the singleton would read them:
/// decoded whole, then applied.
fn reference(base: &Table, bytes: &[u8]) -> Option<Result<Table, String>> {
    let update = proto::TableUpdate::decode(bytes).ok()?;
    Some(base.apply(&update).map_err(|e| e.to_string()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn an_update_decoded_entry_by_entry_is_the_update_decoded_whole(
        fields in prop::collection::vec(field(), 0..5),
        damage in prop::option::weighted(0.3, (any::<prop::sample::Index>(), any::<u8>(), any::<bool>())),
    ) {
        // A base at version 1 for the deltas.
        let base = Table::default()
            .apply(&update(Step::Snapshot(vec![]), 1, 0))
            .unwrap();
        let mut bytes = encode(&fields);
        if let (Some((at, byte, truncate)), false) = (damage, bytes.is_empty()) {
            let at = at.index(bytes.len());
            if truncate {
                bytes.truncate(at);
            } else {
                bytes[at] = byte;
            }
        }
        let ours = base.apply_encoded(&bytes).map_err(|e| e.to_string());
        match (reference(&base, &bytes), ours) {
            (Some(Ok(expected)), Ok(got)) => {
                prop_assert_eq!(got.version(), expected.version());
                prop_assert_eq!(got.to_proto(), expected.to_proto());
                prop_assert_eq!(answers(&got), answers(&expected));
            }
            (Some(Err(expected)), Err(got)) => prop_assert_eq!(got, expected),
            // Undecodable: refused, maybe as invalid (an entry before the
            // damage was checked first).
            (None, got) => prop_assert!(got.is_err(), "undecodable bytes accepted"),
            (expected, got) => prop_assert!(
                false,
                "whole {:?}, entry by entry {:?}",
                expected.map(|r| r.map(|t| t.to_proto())),
                got.map(|t| t.to_proto())
            ),
        }
    }
}

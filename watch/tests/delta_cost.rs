//! Micro-measure: what one update costs the watch thread on a 100,000-key
//! table. Ignored by default (a figure, not a check); run it optimised:
//!
//! ```sh
//! cargo test --release -p sandbox-router-watch --test delta_cost -- --ignored --nocapture
//! ```
//!
//! The figures are recorded in README.md ("What an update costs").

// Test code: a failed expectation should panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

mod common;

use common::{entry, snapshot};
use sandbox_router_proto::v1::{table_update::Kind, TableDelta, TableUpdate};
use sandbox_router_proto::Message;
use sandbox_router_routing::{ForkLookup, RouteLookup, RoutingTable as Compiled};
use sandbox_router_watch::Table;

const KEYS: usize = 100_000;
const DELTAS: usize = 1_000;

fn summary(mut samples: Vec<Duration>) -> String {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    format!(
        "p50 {:?}, p99 {:?}, max {:?}",
        at(0.5),
        at(0.99),
        samples[samples.len() - 1]
    )
}

#[test]
#[ignore = "a measurement: run with --release -- --ignored --nocapture"]
fn one_key_delta_on_a_100k_key_table() {
    let snapshot = snapshot(KEYS);
    println!(
        "snapshot of {KEYS} keys: {} bytes encoded",
        snapshot.encoded_len()
    );
    let Some(Kind::Snapshot(whole)) = &snapshot.kind else {
        unreachable!()
    };
    let start = Instant::now();
    Compiled::compile(whole, "snapshot").unwrap();
    println!(
        "RoutingTable::compile of the snapshot alone: {:?}",
        start.elapsed()
    );
    let encoded = snapshot.encode_to_vec();
    let start = Instant::now();
    let mut table = Table::default().apply_encoded(&encoded).unwrap();
    println!(
        "snapshot applied as the watch does (decoded, validated and indexed entry by entry): {:?}",
        start.elapsed()
    );

    // Alternately add a new key and remove it again: each a one-key delta.
    let mut apply = Vec::with_capacity(DELTAS);
    for n in 0..DELTAS {
        let version = table.version();
        let (upserts, removed_keys) = if n % 2 == 0 {
            (vec![entry(KEYS + n)], Vec::new())
        } else {
            (Vec::new(), vec![entry(KEYS + n - 1).routing_key])
        };
        let update = TableUpdate {
            version: version + 1,
            kind: Some(Kind::Delta(TableDelta {
                base_version: version,
                upserts,
                removed_keys,
            })),
        };
        let start = Instant::now();
        let next = Table::apply(&table, &update).unwrap();
        apply.push(start.elapsed());
        // The previous version stays intact for readers that hold it.
        assert_eq!(
            table.len() + usize::from(n % 2 == 0),
            next.len() + usize::from(n % 2 == 1)
        );
        table = next;
    }
    assert_eq!(table.len(), KEYS);
    println!(
        "one-key delta, Table::apply (Watch::lookup): {}",
        summary(apply)
    );

    let (mut compile, mut free) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let start = Instant::now();
        let compiled = table.to_routing_table().unwrap();
        compile.push(start.elapsed());
        assert_eq!(compiled.len(), KEYS);
        let start = Instant::now();
        drop(compiled);
        free.push(start.elapsed());
    }
    println!(
        "compiling the RoutingTable for Watch::table (Watch::start, per update): {}",
        summary(compile)
    );
    println!(
        "freeing that RoutingTable (what the last holder pays): {}",
        summary(free)
    );

    // A lookup, for scale.
    let key = entry(KEYS / 2).routing_key;
    let start = Instant::now();
    let mut hits = 0;
    for _ in 0..1_000_000 {
        if let ForkLookup::Endpoints(_) = table.fork(std::hint::black_box(&key), "backend") {
            hits += 1;
        }
    }
    assert_eq!(hits, 1_000_000);
    println!("Table::fork: {:?} per lookup", start.elapsed() / 1_000_000);
}

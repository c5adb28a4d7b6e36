//! Micro-benchmarks of the routing core, natively (the filter runs the same
//! code compiled to Wasm, typically a small factor slower under V8):
//! header scan + context extraction per format, x-ot-span-context decoding,
//! and the decision against small and large tables, static and shared-data.

// Benchmark code: a failed set-up may panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::cell::RefCell;
use std::collections::HashMap;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use sandbox_router_proto::v1 as proto;
use sandbox_router_routing::mint::{self, Carried};
use sandbox_router_routing::shared::{SharedStore, SharedTable};
use sandbox_router_routing::sync::PushedTable;
use sandbox_router_routing::{RoutingTable, Settings, Source};

/// A typical mesh request's headers, plus `extra`.
fn request(extra: &[(String, String)]) -> Vec<(String, Vec<u8>)> {
    let mut headers: Vec<(String, Vec<u8>)> = [
        (":authority", "backend:8080"),
        (":path", "/api/v1/items?limit=10"),
        (":method", "GET"),
        (":scheme", "http"),
        ("user-agent", "Go-http-client/1.1"),
        ("accept", "application/json"),
        ("x-request-id", "6f1c2a9e-8d0e-4b1a-9f1e-2c3d4e5f6a7b"),
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
    ]
    .iter()
    .map(|(n, v)| ((*n).to_owned(), v.as_bytes().to_vec()))
    .collect();
    headers.extend(
        extra
            .iter()
            .map(|(n, v)| (n.clone(), v.as_bytes().to_vec())),
    );
    headers
}

fn table(size: usize) -> proto::RoutingTable {
    proto::RoutingTable {
        version: 1,
        entries: (0..size)
            .map(|i| proto::TableEntry {
                routing_key: format!("benchkey{i:016}"),
                sandbox: format!("bench-{i}"),
                forks: vec![proto::Fork {
                    service: "backend".into(),
                    endpoints: vec![format!(
                        "10.{}.{}.{}:8080",
                        i / 65536 % 256,
                        i / 256 % 256,
                        i % 256
                    )],
                }],
            })
            .collect(),
    }
}

/// An in-memory stand-in for proxy-wasm shared data (a copy per read, as the host does).
#[derive(Default)]
struct Memory(RefCell<HashMap<String, Vec<u8>>>);

impl SharedStore for &Memory {
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.0.borrow().get(key).cloned()
    }
}

fn shared(size: usize) -> Memory {
    let memory = Memory::default();
    let mut pushed = PushedTable::default();
    let update = proto::TableUpdate {
        version: 1,
        kind: Some(proto::table_update::Kind::Snapshot(table(size))),
    };
    let writes = pushed
        .apply(&prost::Message::encode_to_vec(&update))
        .unwrap_or_default();
    for w in writes {
        memory.0.borrow_mut().insert(w.key, w.value);
    }
    memory
}

fn context(c: &mut Criterion) {
    let settings = Settings::from_json(b"").unwrap_or_else(|e| panic!("{e}"));
    let key = "benchkey0000000000000005";
    let mut group = c.benchmark_group("scan+extract");
    let none = request(&[]);
    group.bench_function("no context", |b| {
        b.iter(|| {
            let scanned = settings.scan(none.iter().map(|(n, v)| (n.as_str(), v.as_slice())));
            black_box(settings.context.extract(&scanned))
        })
    });
    for format in Source::DEFAULT_ORDER {
        let headers = request(&mint::headers(
            format,
            &Carried::default_names(Some(key), None),
        ));
        group.bench_function(BenchmarkId::new("key in", format.as_str()), |b| {
            b.iter(|| {
                let scanned =
                    settings.scan(headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())));
                black_box(settings.context.extract(&scanned))
            })
        });
    }
    let members: Vec<String> = (0..60).map(|i| format!("member{i}=value{i}")).collect();
    let big = request(&[(
        "baggage".into(),
        format!("{},sandbox-routing-key={key}", members.join(",")),
    )]);
    group.bench_function("key after 60 baggage members", |b| {
        b.iter(|| {
            let scanned = settings.scan(big.iter().map(|(n, v)| (n.as_str(), v.as_slice())));
            black_box(settings.context.extract(&scanned))
        })
    });
    group.finish();
}

fn decision(c: &mut Criterion) {
    let settings = Settings::from_json(b"").unwrap_or_else(|e| panic!("{e}"));
    let mut group = c.benchmark_group("route (scan, extract, decide)");
    for size in [10usize, 10_000, 100_000] {
        let key = format!("benchkey{:016}", size / 2);
        let headers = request(&[("baggage".into(), format!("sandbox-routing-key={key}"))]);
        let static_table =
            RoutingTable::compile(&table(size), "table").unwrap_or_else(|e| panic!("{e}"));
        group.bench_function(BenchmarkId::new("static table", size), |b| {
            b.iter(|| {
                let scanned =
                    settings.scan(headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())));
                black_box(settings.route(&scanned, || None, &static_table, 0))
            })
        });
        let memory = shared(size);
        let lookup = SharedTable::new(&memory);
        group.bench_function(BenchmarkId::new("shared-data table", size), |b| {
            b.iter(|| {
                let scanned =
                    settings.scan(headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())));
                black_box(settings.route(&scanned, || None, &lookup, 0))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, context, decision);
criterion_main!(benches);

//! The large table the measurements use: one fork per key, as a sandbox
//! with one service and one endpoint.

use sandbox_router_proto::v1::{table_update::Kind, Fork, RoutingTable, TableEntry, TableUpdate};

/// The `i`th routing key's entry (keys as long as the control service mints).
pub fn entry(i: usize) -> TableEntry {
    TableEntry {
        routing_key: format!("key{i:021}"),
        sandbox: format!("sandbox-{i}"),
        forks: vec![Fork {
            service: "backend".into(),
            endpoints: vec![format!(
                "10.{}.{}.{}:8080",
                i >> 16,
                (i >> 8) & 255,
                i & 255
            )],
        }],
    }
}

/// A snapshot (version 1) of the first `keys` entries.
pub fn snapshot(keys: usize) -> TableUpdate {
    TableUpdate {
        version: 1,
        kind: Some(Kind::Snapshot(RoutingTable {
            version: 1,
            entries: (0..keys).map(entry).collect(),
        })),
    }
}

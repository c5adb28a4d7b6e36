//! The pushed routing table as it lives in proxy-wasm shared data (one
//! namespace per `vm_id`), written by the singleton and read by the HTTP
//! filter contexts of every worker.
//!
//! Every `get_shared_data` copies the whole value under a process-wide lock,
//! so the table is stored one entry per routing key: a routed request reads
//! only its own key's entry (a few hundred bytes), whatever the number of
//! sandboxes. Two small indexes serve Overrides: sandbox name -> routing key,
//! and service -> every endpoint registered for it. There is no delete in the
//! ABI, so an empty value means "absent".

use std::borrow::Cow;
use std::net::SocketAddr;

use prost::Message as _;
use sandbox_router_proto::v1 as proto;

use crate::table::{ForkLookup, RouteLookup};

/// Prefix of every shared-data key this filter writes.
pub const PREFIX: &str = "sandbox_router.";
/// The applied table version, as decimal text.
pub const VERSION_KEY: &str = "sandbox_router.version";
/// Every shared-data key the singleton has written, one per line, so a
/// reloaded singleton can clear what a new snapshot no longer holds.
pub const INDEX_KEY: &str = "sandbox_router.index";

/// Shared-data key of a routing key's entry (a `TableEntry` protobuf).
pub fn key_entry(routing_key: &str) -> String {
    format!("{PREFIX}key.{routing_key}")
}

/// Shared-data key of a sandbox name's routing key (text).
pub fn sandbox_entry(sandbox: &str) -> String {
    format!("{PREFIX}sandbox.{sandbox}")
}

/// Shared-data key of a service's registered endpoints (a `Fork` protobuf).
pub fn service_entry(service: &str) -> String {
    format!("{PREFIX}service.{service}")
}

/// Read access to shared data (the filter implements it over the host).
pub trait SharedStore {
    fn get(&self, key: &str) -> Option<Vec<u8>>;
}

/// The pushed table, read from shared data one entry at a time.
pub struct SharedTable<S> {
    store: S,
}

impl<S: SharedStore> SharedTable<S> {
    pub fn new(store: S) -> Self {
        SharedTable { store }
    }

    fn present(&self, key: &str) -> Option<Vec<u8>> {
        self.store.get(key).filter(|v| !v.is_empty())
    }
}

impl<S: SharedStore> RouteLookup for SharedTable<S> {
    fn fork(&self, routing_key: &str, service: &str) -> ForkLookup<'_> {
        // Entries were validated by the singleton before they were written;
        // anything undecodable here is treated as absent.
        let Some(entry) = self
            .present(&key_entry(routing_key))
            .and_then(|bytes| proto::TableEntry::decode(bytes.as_slice()).ok())
        else {
            return ForkLookup::UnknownKey;
        };
        let endpoints: Vec<SocketAddr> = entry
            .forks
            .iter()
            .filter(|f| f.service == service)
            .flat_map(|f| f.endpoints.iter().filter_map(|e| e.parse().ok()))
            .collect();
        if endpoints.is_empty() {
            ForkLookup::NoFork
        } else {
            ForkLookup::Endpoints(Cow::Owned(endpoints))
        }
    }

    fn routing_key_of(&self, sandbox: &str) -> Option<Cow<'_, str>> {
        let bytes = self.present(&sandbox_entry(sandbox))?;
        String::from_utf8(bytes).ok().map(Cow::Owned)
    }

    fn is_registered(&self, service: &str, endpoint: SocketAddr) -> bool {
        self.present(&service_entry(service))
            .and_then(|bytes| proto::Fork::decode(bytes.as_slice()).ok())
            .is_some_and(|fork| fork.endpoints.iter().any(|e| e.parse() == Ok(endpoint)))
    }
}

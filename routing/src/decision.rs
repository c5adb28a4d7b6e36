//! The routing decision: given the routing context, the destination service
//! and the table, route to a registered endpoint or stay on the baseline.
//!
//! Invariant (property-tested): a `Route` endpoint is always one the table
//! registers for the destination service; no header value alone becomes an
//! upstream address.

use std::borrow::Cow;
use std::net::SocketAddr;

use sandbox_router_proto::v1::{r#override::Target, Override, Overrides};

use crate::context::RoutingContext;
use crate::key::is_valid_routing_key;
use crate::table::{parse_endpoint, ForkLookup, RouteLookup};

/// Why a request stays on the baseline. Each has a counter of the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BaselineReason {
    /// No enabled source carries a routing key or Overrides.
    NoContext,
    /// The routing key (or sandbox named in an override) is not in the table.
    UnknownKey,
    /// The key exists but does not fork the destination service, or the
    /// Overrides have no entry for it.
    NoForkForService,
    /// Routing context present but unusable (bad encoding, bad key syntax,
    /// ambiguous duplicates, undecodable protobuf).
    Malformed,
    /// An override names an endpoint the table does not register for the service.
    UnregisteredEndpoint,
    /// The destination service could not be named from the request.
    NoDestination,
    /// Edge mode: the routing context came from an untrusted source and was
    /// removed from the request.
    Untrusted,
}

impl BaselineReason {
    pub const ALL: [BaselineReason; 7] = [
        BaselineReason::NoContext,
        BaselineReason::UnknownKey,
        BaselineReason::NoForkForService,
        BaselineReason::Malformed,
        BaselineReason::UnregisteredEndpoint,
        BaselineReason::NoDestination,
        BaselineReason::Untrusted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BaselineReason::NoContext => "no_context",
            BaselineReason::UnknownKey => "unknown_key",
            BaselineReason::NoForkForService => "no_fork_for_service",
            BaselineReason::Malformed => "malformed",
            BaselineReason::UnregisteredEndpoint => "unregistered_endpoint",
            BaselineReason::NoDestination => "no_destination",
            BaselineReason::Untrusted => "untrusted",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Send to this endpoint of the sandboxed version.
    Route(SocketAddr),
    Baseline(BaselineReason),
}

/// Decides where a request for `service` goes. `pick` chooses among several
/// endpoints of a fork (the filter passes a per-worker counter: round robin).
pub fn decide(
    context: &RoutingContext,
    service: Option<&str>,
    table: &impl RouteLookup,
    pick: usize,
) -> Decision {
    let (key, overrides) = match context {
        RoutingContext::None => return Decision::Baseline(BaselineReason::NoContext),
        RoutingContext::Malformed { .. } => return Decision::Baseline(BaselineReason::Malformed),
        RoutingContext::Named { sandbox, .. } => {
            let Some(service) = service else {
                return Decision::Baseline(BaselineReason::NoDestination);
            };
            return match table.routing_key_of(sandbox) {
                Some(key) => route_by_key(&key, service, table, pick),
                None => Decision::Baseline(BaselineReason::UnknownKey),
            };
        }
        RoutingContext::Found { key, overrides, .. } => (key, overrides),
    };
    let Some(service) = service else {
        return Decision::Baseline(BaselineReason::NoDestination);
    };
    if let Some(entry) = overrides.as_ref().and_then(|o| entry_for(o, service)) {
        return decide_override(entry, service, table, pick);
    }
    match key {
        Some(key) => route_by_key(key, service, table, pick),
        None => Decision::Baseline(BaselineReason::NoForkForService),
    }
}

fn entry_for<'o>(overrides: &'o Overrides, service: &str) -> Option<&'o Override> {
    overrides.overrides.iter().find(|o| o.service == service)
}

fn route_by_key(key: &str, service: &str, table: &impl RouteLookup, pick: usize) -> Decision {
    match table.fork(key, service) {
        ForkLookup::UnknownKey => Decision::Baseline(BaselineReason::UnknownKey),
        ForkLookup::NoFork => Decision::Baseline(BaselineReason::NoForkForService),
        ForkLookup::Endpoints(endpoints) => match endpoints.get(pick % endpoints.len().max(1)) {
            Some(endpoint) => Decision::Route(*endpoint),
            None => Decision::Baseline(BaselineReason::NoForkForService),
        },
    }
}

fn decide_override(
    entry: &Override,
    service: &str,
    table: &impl RouteLookup,
    pick: usize,
) -> Decision {
    let key: Option<Cow<'_, str>> = match &entry.target {
        Some(Target::RoutingKey(key)) if is_valid_routing_key(key.as_bytes()) => {
            Some(Cow::Borrowed(key))
        }
        Some(Target::RoutingKey(_)) => return Decision::Baseline(BaselineReason::Malformed),
        Some(Target::Sandbox(name)) => match table.routing_key_of(name) {
            Some(key) => Some(key),
            None => return Decision::Baseline(BaselineReason::UnknownKey),
        },
        None => None,
    };
    if entry.endpoint.is_empty() {
        return match key {
            Some(key) => route_by_key(&key, service, table, pick),
            None => Decision::Baseline(BaselineReason::Malformed),
        };
    }
    let Ok(endpoint) = parse_endpoint(&entry.endpoint) else {
        return Decision::Baseline(BaselineReason::Malformed);
    };
    let registered = match key {
        // Named a sandbox: the endpoint must be that sandbox's fork of the service.
        Some(key) => match table.fork(&key, service) {
            ForkLookup::UnknownKey => return Decision::Baseline(BaselineReason::UnknownKey),
            ForkLookup::NoFork => false,
            ForkLookup::Endpoints(endpoints) => endpoints.contains(&endpoint),
        },
        None => table.is_registered(service, endpoint),
    };
    if registered {
        Decision::Route(endpoint)
    } else {
        Decision::Baseline(BaselineReason::UnregisteredEndpoint)
    }
}

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

/// The fork a routing context selects for one service: what [`decide`]
/// picks an endpoint from, and what a message-queue consumer compares with
/// its own sandbox's fork ([`crate::consumer`]). One function for both, so a
/// request and a message with the same context and table go the same way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selected<'t> {
    /// The routing key whose fork this is (a sandbox's or a route group's);
    /// `None` for an override that names only an endpoint.
    pub routing_key: Option<Cow<'t, str>>,
    /// The fork's endpoints (never empty); for an override that names only an
    /// endpoint, that endpoint.
    pub endpoints: Cow<'t, [SocketAddr]>,
    /// An override named this endpoint (one of `endpoints`): requests go there,
    /// not round robin.
    pub endpoint: Option<SocketAddr>,
}

/// Decides where a request for `service` goes. `pick` chooses among several
/// endpoints of a fork (the filter passes a per-worker counter: round robin).
pub fn decide(
    context: &RoutingContext,
    service: Option<&str>,
    table: &impl RouteLookup,
    pick: usize,
) -> Decision {
    match select(context, service, table) {
        Err(reason) => Decision::Baseline(reason),
        Ok(Selected {
            endpoint: Some(endpoint),
            ..
        }) => Decision::Route(endpoint),
        Ok(Selected { endpoints, .. }) => match endpoints.get(pick % endpoints.len().max(1)) {
            Some(endpoint) => Decision::Route(*endpoint),
            None => Decision::Baseline(BaselineReason::NoForkForService),
        },
    }
}

/// Which fork of `service`, if any, the routing context selects, and if none,
/// why the baseline gets it. The whole policy of [`decide`] but the pick.
pub fn select<'t>(
    context: &'t RoutingContext,
    service: Option<&str>,
    table: &'t impl RouteLookup,
) -> Result<Selected<'t>, BaselineReason> {
    let (key, overrides) = match context {
        RoutingContext::None => return Err(BaselineReason::NoContext),
        RoutingContext::Malformed { .. } => return Err(BaselineReason::Malformed),
        RoutingContext::Named { sandbox, .. } => {
            let Some(service) = service else {
                return Err(BaselineReason::NoDestination);
            };
            return match table.routing_key_of(sandbox) {
                Some(key) => select_by_key(key, service, table),
                None => Err(BaselineReason::UnknownKey),
            };
        }
        RoutingContext::Found { key, overrides, .. } => (key, overrides),
    };
    let Some(service) = service else {
        return Err(BaselineReason::NoDestination);
    };
    if let Some(entry) = overrides.as_ref().and_then(|o| entry_for(o, service)) {
        return select_override(entry, service, table);
    }
    match key {
        Some(key) => select_by_key(Cow::Borrowed(key), service, table),
        None => Err(BaselineReason::NoForkForService),
    }
}

fn entry_for<'o>(overrides: &'o Overrides, service: &str) -> Option<&'o Override> {
    overrides.overrides.iter().find(|o| o.service == service)
}

fn select_by_key<'t>(
    key: Cow<'t, str>,
    service: &str,
    table: &'t impl RouteLookup,
) -> Result<Selected<'t>, BaselineReason> {
    match table.fork(&key, service) {
        ForkLookup::UnknownKey => Err(BaselineReason::UnknownKey),
        ForkLookup::NoFork => Err(BaselineReason::NoForkForService),
        ForkLookup::Endpoints(endpoints) if endpoints.is_empty() => {
            Err(BaselineReason::NoForkForService)
        }
        ForkLookup::Endpoints(endpoints) => Ok(Selected {
            routing_key: Some(key),
            endpoints,
            endpoint: None,
        }),
    }
}

fn select_override<'t>(
    entry: &'t Override,
    service: &str,
    table: &'t impl RouteLookup,
) -> Result<Selected<'t>, BaselineReason> {
    let key: Option<Cow<'t, str>> = match &entry.target {
        Some(Target::RoutingKey(key)) if is_valid_routing_key(key.as_bytes()) => {
            Some(Cow::Borrowed(key))
        }
        Some(Target::RoutingKey(_)) => return Err(BaselineReason::Malformed),
        Some(Target::Sandbox(name)) => match table.routing_key_of(name) {
            Some(key) => Some(key),
            None => return Err(BaselineReason::UnknownKey),
        },
        None => None,
    };
    if entry.endpoint.is_empty() {
        return match key {
            Some(key) => select_by_key(key, service, table),
            None => Err(BaselineReason::Malformed),
        };
    }
    let Ok(endpoint) = parse_endpoint(&entry.endpoint) else {
        return Err(BaselineReason::Malformed);
    };
    match key {
        // Named a sandbox: the endpoint must be that sandbox's fork of the service.
        Some(key) => {
            let endpoints = match table.fork(&key, service) {
                ForkLookup::UnknownKey => return Err(BaselineReason::UnknownKey),
                ForkLookup::NoFork => return Err(BaselineReason::UnregisteredEndpoint),
                ForkLookup::Endpoints(endpoints) => endpoints,
            };
            if !endpoints.contains(&endpoint) {
                return Err(BaselineReason::UnregisteredEndpoint);
            }
            Ok(Selected {
                routing_key: Some(key),
                endpoints,
                endpoint: Some(endpoint),
            })
        }
        None if table.is_registered(service, endpoint) => Ok(Selected {
            routing_key: None,
            endpoints: Cow::Owned(vec![endpoint]),
            endpoint: Some(endpoint),
        }),
        None => Err(BaselineReason::UnregisteredEndpoint),
    }
}

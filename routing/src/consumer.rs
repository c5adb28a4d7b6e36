//! Selective consumption: which side processes a message, for queue
//! consumers that each read every message (one consumer group per consumer).
//!
//! A message's routing context is read exactly as a request's
//! ([`crate::ContextConfig::extract`]), and [`owner`] asks the same
//! [`select`] as the filter's [`crate::decide`]: the fork of the consumer's
//! service that the context selects, or the baseline and why. A sandboxed
//! consumer processes the message when that fork is its sandbox's own
//! ([`Owner::is_for`]); the baseline consumer processes every other.
//!
//! A sandbox's own fork is recognised by its routing key or, for a route
//! group's key, by its endpoints: the control service builds a group's fork
//! of a service from exactly one member's (two members may not fork the same
//! service), so the same endpoints name the same sandbox. Two sandboxes that
//! register the same endpoints for the same service are one workload to the
//! router, and both of their consumers would claim a group's message: give
//! each sandboxed workload its own endpoints.
//!
//! [`Owner::claim_text`] is a message's owner as one line of text, so that
//! consumers whose tables differ for a moment (a sandbox created or deleted
//! while messages are in flight) can agree on the first decision made, see
//! `docs/message-queues.md`.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::net::SocketAddr;

use crate::context::RoutingContext;
use crate::decision::{select, BaselineReason, Selected};
use crate::table::{parse_endpoint, ForkLookup, RouteLookup};

/// One fork of one service: whose it is, as any consumer can tell from its table.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ForkId {
    /// The routing key the context selected the fork by (a sandbox's or a
    /// route group's); `None` for an override that names only an endpoint.
    pub routing_key: Option<String>,
    /// The fork's endpoints, sorted, without duplicates (never empty).
    pub endpoints: Vec<SocketAddr>,
}

impl ForkId {
    fn new(routing_key: Option<String>, endpoints: &[SocketAddr]) -> Self {
        let mut endpoints = endpoints.to_vec();
        endpoints.sort_unstable();
        endpoints.dedup();
        ForkId {
            routing_key,
            endpoints,
        }
    }

    fn of(selected: &Selected<'_>) -> Self {
        ForkId::new(
            selected.routing_key.as_deref().map(str::to_owned),
            &selected.endpoints,
        )
    }

    /// True when this fork is `own`, a sandbox's own fork ([`own_fork`]): the
    /// same routing key; or the same endpoints (a route group's fork is a copy
    /// of its member's); or, for an override that names only an endpoint, one
    /// of `own`'s.
    pub fn is(&self, own: &ForkId) -> bool {
        match &self.routing_key {
            Some(key) if own.routing_key.as_ref() == Some(key) => true,
            Some(_) => self.endpoints == own.endpoints,
            None => self.endpoints.iter().all(|e| own.endpoints.contains(e)),
        }
    }
}

/// Which side a message is for, by one consumer's table.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Owner {
    /// The baseline consumer, and why (the reasons of the filter's counters).
    Baseline(BaselineReason),
    /// The consumer of the sandbox whose fork of the service this is.
    Sandbox(ForkId),
}

impl Owner {
    /// True when the consumer whose own fork is `own` processes a message of
    /// this owner. `own`: `None` for the baseline consumer, `Some` for a
    /// sandbox's (see [`own_fork`]). For each message and table exactly one
    /// of a service's consumers answers true, given distinct endpoints per
    /// sandbox (see the module's documentation).
    pub fn is_for(&self, own: Option<&ForkId>) -> bool {
        match (self, own) {
            (Owner::Baseline(_), None) => true,
            (Owner::Sandbox(fork), Some(own)) => fork.is(own),
            _ => false,
        }
    }

    /// One line of text: `baseline REASON` or `sandbox KEY ENDPOINT,...`
    /// (`-` for no key). [`Owner::from_claim_text`] reads it back.
    pub fn claim_text(&self) -> String {
        match self {
            Owner::Baseline(reason) => format!("baseline {}", reason.as_str()),
            Owner::Sandbox(fork) => {
                let mut text = String::from("sandbox ");
                text.push_str(fork.routing_key.as_deref().unwrap_or("-"));
                for (i, endpoint) in fork.endpoints.iter().enumerate() {
                    let sep = if i == 0 { ' ' } else { ',' };
                    let _ = write!(text, "{sep}{endpoint}");
                }
                text
            }
        }
    }

    /// Reads [`Owner::claim_text`]; `None` for anything else.
    pub fn from_claim_text(text: &str) -> Option<Owner> {
        let mut words = text.split(' ');
        let owner = match (words.next()?, words.next()?, words.next()) {
            ("baseline", reason, None) => Owner::Baseline(
                BaselineReason::ALL
                    .into_iter()
                    .find(|r| r.as_str() == reason)?,
            ),
            ("sandbox", key, Some(endpoints)) => {
                let routing_key = match key {
                    "-" => None,
                    key if crate::key::is_valid_routing_key(key.as_bytes()) => Some(key.to_owned()),
                    _ => return None,
                };
                let endpoints = endpoints
                    .split(',')
                    .map(|e| parse_endpoint(e).ok())
                    .collect::<Option<Vec<_>>>()?;
                Owner::Sandbox(ForkId::new(routing_key, &endpoints))
            }
            _ => return None,
        };
        words.next().is_none().then_some(owner)
    }
}

/// The owner of a message for `service`: the fork the routing context
/// selects ([`select`], the filter's own), or the baseline and why.
pub fn owner(context: &RoutingContext, service: &str, table: &impl RouteLookup) -> Owner {
    match select(context, Some(service), table) {
        Ok(selected) => Owner::Sandbox(ForkId::of(&selected)),
        Err(reason) => Owner::Baseline(reason),
    }
}

/// The sandbox's own fork of `service`, from the table: `None` when the
/// table has no sandbox of that name, or it does not fork the service.
pub fn own_fork(sandbox: &str, service: &str, table: &impl RouteLookup) -> Option<ForkId> {
    let key = table.routing_key_of(sandbox)?;
    match table.fork(&key, service) {
        ForkLookup::Endpoints(endpoints) if !endpoints.is_empty() => {
            Some(ForkId::new(Some(Cow::into_owned(key)), &endpoints))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::{RoutingTable, Settings};
    use sandbox_router_proto::v1 as proto;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbb";
    const G: &str = "gggggggggggggggggggggggg";
    const F: &str = "ffffffffffffffffffffffff";

    fn entry(key: &str, sandbox: &str, forks: &[(&str, &[&str])]) -> proto::TableEntry {
        proto::TableEntry {
            routing_key: key.to_owned(),
            sandbox: sandbox.to_owned(),
            forks: forks
                .iter()
                .map(|(service, endpoints)| proto::Fork {
                    service: (*service).to_owned(),
                    endpoints: endpoints.iter().map(|e| (*e).to_owned()).collect(),
                })
                .collect(),
        }
    }

    /// Sandboxes worker-a and worker-b fork `worker`; frontend-v2 forks only
    /// `frontend`; route group `group` combines frontend-v2 and worker-b.
    fn table() -> RoutingTable {
        let b = ["127.0.0.1:9102", "127.0.0.1:9103"];
        RoutingTable::compile(
            &proto::RoutingTable {
                version: 3,
                entries: vec![
                    entry(A, "worker-a", &[("worker", &["127.0.0.1:9101"])]),
                    entry(B, "worker-b", &[("worker", &b)]),
                    entry(F, "frontend-v2", &[("frontend", &["127.0.0.1:9200"])]),
                    entry(
                        G,
                        "group",
                        &[("frontend", &["127.0.0.1:9200"]), ("worker", &b)],
                    ),
                ],
            },
            "table",
        )
        .unwrap()
    }

    fn owner_of(headers: &[(&str, &str)]) -> Owner {
        let settings = Settings::from_json(b"").unwrap();
        let scanned = settings.scan(headers.iter().map(|(n, v)| (*n, v.as_bytes())));
        let context = settings.context.extract(&scanned).context;
        owner(&context, "worker", &table())
    }

    fn overrides(entries: &[(&str, Option<&str>, &str)]) -> String {
        use base64::Engine as _;
        use prost::Message as _;
        let message = proto::Overrides {
            overrides: entries
                .iter()
                .map(|(service, sandbox, endpoint)| proto::Override {
                    service: (*service).to_owned(),
                    target: sandbox.map(|s| proto::r#override::Target::Sandbox(s.to_owned())),
                    endpoint: (*endpoint).to_owned(),
                })
                .collect(),
        };
        base64::engine::general_purpose::STANDARD.encode(message.encode_to_vec())
    }

    #[test]
    fn exactly_one_consumer_of_a_service_processes_each_message() {
        let table = table();
        let own_a = own_fork("worker-a", "worker", &table).unwrap();
        let own_b = own_fork("worker-b", "worker", &table).unwrap();
        assert_eq!(own_fork("frontend-v2", "worker", &table), None);
        assert_eq!(own_fork("gone", "worker", &table), None);
        let by_override = overrides(&[("worker", Some("worker-a"), "")]);
        let by_endpoint = overrides(&[("worker", None, "127.0.0.1:9103")]);
        let unregistered = overrides(&[("worker", None, "127.0.0.1:9999")]);
        let cases: Vec<(Vec<(&str, String)>, &str)> = vec![
            (vec![], "baseline"),
            (vec![("baggage", format!("sandbox-routing-key={A}"))], "a"),
            (vec![("baggage", format!("sandbox-routing-key={B}"))], "b"),
            (vec![("baggage", format!("sandbox-routing-key={G}"))], "b"),
            (
                vec![("baggage", format!("sandbox-routing-key={F}"))],
                "baseline",
            ),
            (
                vec![("baggage", "sandbox-routing-key=unknown-key".into())],
                "baseline",
            ),
            (
                vec![("baggage", "sandbox-routing-key=%zz".into())],
                "baseline",
            ),
            (vec![("uberctx-sandbox-routing-key", A.into())], "a"),
            (
                vec![("baggage", format!("sandbox-overrides={by_override}"))],
                "a",
            ),
            (
                vec![("baggage", format!("sandbox-overrides={by_endpoint}"))],
                "b",
            ),
            (
                vec![("baggage", format!("sandbox-overrides={unregistered}"))],
                "baseline",
            ),
        ];
        for (headers, expected) in cases {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            let owner = owner_of(&headers);
            let sides = [
                ("baseline", owner.is_for(None)),
                ("a", owner.is_for(Some(&own_a))),
                ("b", owner.is_for(Some(&own_b))),
            ];
            let processing: Vec<&str> = sides.iter().filter(|s| s.1).map(|s| s.0).collect();
            assert_eq!(processing, [expected], "{headers:?}: {owner:?}");
        }
    }

    #[test]
    fn the_owner_is_what_the_filter_routes_to() {
        // Same context, same table: a request to `worker` goes to the owner's endpoints.
        let table = table();
        let settings = Settings::from_json(b"").unwrap();
        for key in [A, B, G, F, "unknown-key", "%zz"] {
            let baggage = format!("sandbox-routing-key={key}");
            let scanned = settings.scan([
                (":authority", &b"worker"[..]),
                ("baggage", baggage.as_bytes()),
            ]);
            let plan = settings.plan(&scanned, &(), &table, 1);
            let context = settings.context.extract(&scanned).context;
            match (owner(&context, "worker", &table), plan.outcome.decision) {
                (Owner::Sandbox(fork), crate::Decision::Route(endpoint)) => {
                    assert!(fork.endpoints.contains(&endpoint), "{key}")
                }
                (Owner::Baseline(a), crate::Decision::Baseline(b)) => assert_eq!(a, b, "{key}"),
                (owner, decision) => panic!("{key}: {owner:?} but {decision:?}"),
            }
        }
    }

    #[test]
    fn claim_text_reads_back_and_refuses_anything_else() {
        let owners = [
            Owner::Baseline(BaselineReason::UnknownKey),
            Owner::Sandbox(ForkId::new(
                Some(A.into()),
                &[
                    "127.0.0.1:2".parse().unwrap(),
                    "127.0.0.1:1".parse().unwrap(),
                ],
            )),
            Owner::Sandbox(ForkId::new(None, &["[::1]:8080".parse().unwrap()])),
        ];
        for owner in owners {
            let text = owner.claim_text();
            assert_eq!(Owner::from_claim_text(&text), Some(owner), "{text}");
        }
        assert_eq!(
            Owner::Sandbox(ForkId::new(
                Some(A.into()),
                &[
                    "127.0.0.1:2".parse().unwrap(),
                    "127.0.0.1:1".parse().unwrap()
                ]
            ))
            .claim_text(),
            format!("sandbox {A} 127.0.0.1:1,127.0.0.1:2")
        );
        for bad in [
            "",
            "baseline",
            "baseline nope",
            "baseline unknown_key x",
            "sandbox",
            "sandbox k",
            "sandbox bad/key 127.0.0.1:1",
            "sandbox - 127.0.0.1:0",
            "sandbox - 127.0.0.1:1,",
            "sandbox - host:1",
            "sandbox - 127.0.0.1:1 x",
        ] {
            assert_eq!(Owner::from_claim_text(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_route_groups_fork_is_its_members() {
        let table = table();
        let group = own_fork("group", "worker", &table).unwrap();
        let b = own_fork("worker-b", "worker", &table).unwrap();
        let a = own_fork("worker-a", "worker", &table).unwrap();
        assert!(group.is(&b));
        assert!(!group.is(&a));
        let endpoint_only = ForkId::new(None, &["127.0.0.1:9102".parse().unwrap()]);
        assert!(endpoint_only.is(&b));
        assert!(!endpoint_only.is(&a));
    }
}

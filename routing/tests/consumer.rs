//! Property tests of selective consumption (`routing::consumer`): for any
//! table the control service can make (sandboxes with their own endpoints,
//! a route group combining some of them) and any routing context (keys,
//! names, Overrides, garbage), exactly one consumer of each service, the
//! baseline or one sandbox's, processes a message; and a sandbox's consumer
//! processes it exactly when the filter would route a request to it.

use proptest::prelude::*;
use sandbox_router_proto::v1::{self as proto, r#override::Target, Override, Overrides};
use sandbox_router_routing::consumer::{own_fork, owner};
use sandbox_router_routing::{decide, Decision, RoutingContext, RoutingTable, Source};

const SERVICES: [&str; 3] = ["worker", "backend", "frontend"];
const SANDBOXES: [&str; 3] = ["sandbox-a", "sandbox-b", "sandbox-c"];
const KEYS: [&str; 3] = [
    "aaaaaaaaaaaaaaaaaaaaaaaa",
    "bbbbbbbbbbbbbbbbbbbbbbbb",
    "cccccccccccccccccccccccc",
];
const GROUP_KEY: &str = "gggggggggggggggggggggggg";

/// Sandbox i forks some services, each to its own endpoints (10.0.i.x); a
/// route group combines members that fork disjoint services, as the control
/// service requires.
fn table() -> impl Strategy<Value = proto::RoutingTable> {
    let forks = prop::collection::vec((any::<bool>(), 1usize..3), SERVICES.len());
    let sandboxes = prop::collection::vec(forks, SANDBOXES.len());
    (
        sandboxes,
        prop::collection::vec(any::<bool>(), SANDBOXES.len()),
    )
        .prop_map(|(sandboxes, in_group)| {
            let mut entries = Vec::new();
            let mut group_forks: Vec<proto::Fork> = Vec::new();
            for (i, forks) in sandboxes.iter().enumerate() {
                let forks: Vec<proto::Fork> = forks
                    .iter()
                    .enumerate()
                    .filter(|(_, (forked, _))| *forked)
                    .map(|(s, (_, n))| proto::Fork {
                        service: SERVICES[s].to_owned(),
                        endpoints: (0..*n)
                            .map(|e| format!("10.0.{i}.{}:80", s * 4 + e + 1))
                            .collect(),
                    })
                    .collect();
                if forks.is_empty() {
                    continue;
                }
                let disjoint = forks
                    .iter()
                    .all(|f| group_forks.iter().all(|g| g.service != f.service));
                if in_group[i] && disjoint {
                    group_forks.extend(forks.iter().cloned());
                }
                entries.push(proto::TableEntry {
                    routing_key: KEYS[i].to_owned(),
                    sandbox: SANDBOXES[i].to_owned(),
                    forks,
                });
            }
            if !group_forks.is_empty() {
                entries.push(proto::TableEntry {
                    routing_key: GROUP_KEY.to_owned(),
                    sandbox: "group".to_owned(),
                    forks: group_forks,
                });
            }
            proto::RoutingTable {
                version: 1,
                entries,
            }
        })
}

fn a_key() -> impl Strategy<Value = String> {
    prop_oneof![
        (0..KEYS.len()).prop_map(|i| KEYS[i].to_owned()),
        Just(GROUP_KEY.to_owned()),
        Just("unknown-key".to_owned()),
        "[a-z0-9]{1,24}",
    ]
}

fn an_override() -> impl Strategy<Value = Override> {
    let target = prop_oneof![
        Just(None),
        a_key().prop_map(|k| Some(Target::RoutingKey(k))),
        (0..SANDBOXES.len()).prop_map(|i| Some(Target::Sandbox(SANDBOXES[i].to_owned()))),
        Just(Some(Target::Sandbox("group".to_owned()))),
        Just(Some(Target::Sandbox("nope".to_owned()))),
    ];
    let endpoint = prop_oneof![
        Just(String::new()),
        (0u8..3, 1u8..13).prop_map(|(i, h)| format!("10.0.{i}.{h}:80")),
        "\\PC{0,8}",
    ];
    (0..SERVICES.len(), target, endpoint).prop_map(|(s, target, endpoint)| Override {
        service: SERVICES[s].to_owned(),
        target,
        endpoint,
    })
}

fn context() -> impl Strategy<Value = RoutingContext> {
    prop_oneof![
        Just(RoutingContext::None),
        Just(RoutingContext::Malformed {
            source: Source::Baggage,
            why: "test",
        }),
        (
            prop::option::of(a_key()),
            prop::option::of(prop::collection::vec(an_override(), 0..3))
        )
            .prop_map(|(key, overrides)| RoutingContext::Found {
                source: Source::Baggage,
                key,
                overrides: overrides.map(|overrides| Overrides { overrides }),
            }),
        prop_oneof![
            (0..SANDBOXES.len()).prop_map(|i| SANDBOXES[i].to_owned()),
            Just("group".to_owned()),
            Just("nope".to_owned()),
        ]
        .prop_map(|sandbox| RoutingContext::Named {
            source: Source::PreviewHost,
            sandbox,
        }),
    ]
}

proptest! {
    #[test]
    fn exactly_one_consumer_processes_and_it_is_where_the_filter_routes(
        table in table(),
        context in context(),
        pick in 0usize..4,
    ) {
        let compiled = RoutingTable::compile(&table, "table").map_err(|e| TestCaseError::fail(e.to_string()))?;
        for service in SERVICES {
            let owner = owner(&context, service, &compiled);
            // The consumers of `service`: the baseline, and each sandbox that forks it.
            let mut processing = Vec::new();
            if owner.is_for(None) {
                processing.push("baseline");
            }
            for sandbox in SANDBOXES {
                if let Some(own) = own_fork(sandbox, service, &compiled) {
                    if owner.is_for(Some(&own)) {
                        processing.push(sandbox);
                    }
                }
            }
            prop_assert_eq!(processing.len(), 1, "{} {:?}: {:?}", service, owner, processing);
            // The filter, for a request to `service` with the same context, by the same table.
            match decide(&context, Some(service), &compiled, pick) {
                Decision::Route(endpoint) => {
                    let own = own_fork(processing[0], service, &compiled);
                    prop_assert!(
                        own.is_some_and(|own| own.endpoints.contains(&endpoint)),
                        "{} routes to {} but {} processes", service, endpoint, processing[0]
                    );
                }
                Decision::Baseline(_) => prop_assert_eq!(processing[0], "baseline"),
            }
        }
    }
}

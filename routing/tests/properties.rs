//! Property tests of the routing core: parsing never panics on arbitrary
//! bytes, a decision never yields an endpoint the table does not register for
//! the service, and what `mint` writes is read back unchanged.

use std::net::SocketAddr;

use proptest::prelude::*;
use sandbox_router_proto::v1::{self as proto, r#override::Target, Override, Overrides};
use sandbox_router_routing::mint::{self, Carried};
use sandbox_router_routing::{
    baggage, decide, Decision, HeaderEdit, RoutingContext, RoutingTable, Settings, Source,
};

const SERVICES: [&str; 3] = ["backend", "users", "frontend"];
const KEYS: [&str; 4] = ["key-a", "key-b", "key-c", "unknown"];
const NAMES: [&str; 3] = ["sandbox-a", "sandbox-b", "nope"];

fn endpoint() -> impl Strategy<Value = String> {
    // A small pool, so tables and overrides often name the same endpoints.
    (1u8..5, prop_oneof![Just(80u16), Just(8080)])
        .prop_map(|(host, port)| format!("10.0.0.{host}:{port}"))
}

fn table() -> impl Strategy<Value = proto::RoutingTable> {
    let fork = (0..SERVICES.len(), prop::collection::vec(endpoint(), 1..3));
    let entry = prop::collection::vec(fork, 0..3);
    prop::collection::vec(entry, 0..3).prop_map(|entries| proto::RoutingTable {
        version: 1,
        entries: entries
            .into_iter()
            .enumerate()
            .map(|(i, forks)| {
                let mut seen = Vec::new();
                proto::TableEntry {
                    routing_key: KEYS[i].to_owned(),
                    sandbox: NAMES[i].to_owned(),
                    forks: forks
                        .into_iter()
                        .filter(|(s, _)| {
                            let fresh = !seen.contains(s);
                            seen.push(*s);
                            fresh
                        })
                        .map(|(s, endpoints)| proto::Fork {
                            service: SERVICES[s].to_owned(),
                            endpoints,
                        })
                        .collect(),
                }
            })
            .collect(),
    })
}

fn an_override() -> impl Strategy<Value = Override> {
    let target = prop_oneof![
        Just(None),
        (0..KEYS.len()).prop_map(|i| Some(Target::RoutingKey(KEYS[i].to_owned()))),
        (0..NAMES.len()).prop_map(|i| Some(Target::Sandbox(NAMES[i].to_owned()))),
        "\\PC{0,8}".prop_map(|s| Some(Target::RoutingKey(s))),
    ];
    let endpoint = prop_oneof![Just(String::new()), endpoint(), "\\PC{0,12}"];
    (0..SERVICES.len(), target, endpoint).prop_map(|(s, target, endpoint)| Override {
        service: SERVICES[s].to_owned(),
        target,
        endpoint,
    })
}

/// Independent oracle: does the raw table fork `service` to `addr` under any key?
fn registered(table: &proto::RoutingTable, service: &str, addr: SocketAddr) -> bool {
    table.entries.iter().flat_map(|e| &e.forks).any(|f| {
        f.service == service
            && f.endpoints
                .iter()
                .any(|e| e.parse::<SocketAddr>().ok() == Some(addr))
    })
}

fn header_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("baggage".to_owned()),
        Just("tracestate".to_owned()),
        Just("traceparent".to_owned()),
        Just("x-ot-span-context".to_owned()),
        Just("ot-baggage-sandbox-routing-key".to_owned()),
        Just("uberctx-sandbox-overrides".to_owned()),
        Just("x-envoy-original-dst-host".to_owned()),
        Just(":authority".to_owned()),
        "[a-z-]{1,20}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn routing_never_panics_on_arbitrary_headers(
        headers in prop::collection::vec((header_name(), prop::collection::vec(any::<u8>(), 0..200)), 0..8),
        raw_table in table(),
    ) {
        let settings = Settings::from_json(b"").unwrap();
        let table = RoutingTable::compile(&raw_table, "table").unwrap();
        let scanned = settings.scan(headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())));
        let outcome = settings.route(&scanned, || None, &table, 0);
        if let Decision::Route(addr) = outcome.decision {
            let service = outcome.service.expect("a routed request has a service");
            prop_assert!(registered(&raw_table, &service, addr));
        }
    }

    #[test]
    fn a_decision_only_routes_to_endpoints_registered_for_the_service(
        raw_table in table(),
        key in prop::option::of((0..KEYS.len()).prop_map(|i| KEYS[i].to_owned())),
        overrides in prop::option::of(prop::collection::vec(an_override(), 0..4)),
        service in 0..SERVICES.len(),
        pick in any::<usize>(),
    ) {
        let table = RoutingTable::compile(&raw_table, "table").unwrap();
        let context = RoutingContext::Found {
            source: Source::Baggage,
            key,
            overrides: overrides.map(|overrides| Overrides { overrides }),
        };
        let service = SERVICES[service];
        if let Decision::Route(addr) = decide(&context, Some(service), &table, pick) {
            prop_assert!(registered(&raw_table, service, addr), "{addr} not registered for {service}");
        }
    }

    #[test]
    fn minted_headers_read_back_in_every_format(
        key in prop::option::of("[A-Za-z0-9_-]{1,64}"),
        overrides in prop::option::of(prop::collection::vec(an_override(), 0..4)),
        format in 0..5usize,
    ) {
        let settings = Settings::from_json(b"").unwrap();
        let format = Source::DEFAULT_ORDER[format];
        // tracestate carries a routing key only; the CLI refuses the rest.
        let overrides = if format == Source::Tracestate { None } else { overrides.map(|overrides| Overrides { overrides }) };
        prop_assume!(key.is_some() || overrides.is_some());
        let lines = mint::headers(format, &Carried {
            key_name: "sandbox-routing-key",
            key: key.as_deref(),
            overrides_key: "sandbox-overrides",
            overrides: overrides.as_ref(),
        });
        let scanned = settings.scan(lines.iter().map(|(n, v)| (n.as_str(), v.as_bytes())));
        let context = settings.context.extract(&scanned).context;
        prop_assert_eq!(context, RoutingContext::Found { source: format, key, overrides });
    }

    #[test]
    fn the_edge_leaves_no_routing_context_an_inner_hop_could_read(
        headers in prop::collection::vec((header_name(), prop::collection::vec(any::<u8>(), 0..200)), 0..8),
        key in "[a-z0-9]{1,24}",
        format in 0..5usize,
    ) {
        let edge = Settings::from_json(br#"{"edge": {"trusted_cidrs": ["10.0.0.0/8"]}}"#).unwrap();
        let inner = Settings::from_json(b"").unwrap();
        // Arbitrary headers, plus one real routing key in some format.
        let mut lines: Vec<(String, Vec<u8>)> = headers;
        for (name, value) in mint::headers(Source::DEFAULT_ORDER[format], &Carried::default_names(Some(&key), None)) {
            lines.push((name, value.into_bytes()));
        }
        let scanned = edge.scan(lines.iter().map(|(n, v)| (n.as_str(), v.as_slice())));
        let edits = edge.untrusted_context(&scanned, None, || Some(b"203.0.113.9:4000".to_vec()));
        // What the next hop receives.
        let mut forwarded = lines.clone();
        for edit in &edits {
            match edit {
                HeaderEdit::Remove(name) => forwarded.retain(|(n, _)| n != name),
                HeaderEdit::Replace(name, value) => {
                    forwarded.retain(|(n, _)| n != name);
                    forwarded.push((name.clone(), value.clone()));
                }
            }
        }
        let scanned = inner.scan(forwarded.iter().map(|(n, v)| (n.as_str(), v.as_slice())));
        prop_assert_eq!(inner.context.extract(&scanned).context, RoutingContext::None);
        // A trusted source keeps everything.
        let trusted = edge.untrusted_context(&edge.scan(lines.iter().map(|(n, v)| (n.as_str(), v.as_slice()))), None, || Some(b"10.1.2.3:4000".to_vec()));
        prop_assert!(trusted.is_empty());
    }

    #[test]
    fn the_order_of_baggage_members_never_changes_the_context(
        (members, shuffled) in prop::collection::vec(
            (
                prop::sample::select(vec!["sandbox-routing-key", "sd-routing-key", "other"]),
                prop::sample::select(vec!["key-a", "key-b"]),
            ),
            0..6,
        )
        .prop_flat_map(|members| (Just(members.clone()), Just(members).prop_shuffle())),
    ) {
        let settings = Settings::from_json(br#"{"keys": ["sandbox-routing-key", "sd-routing-key"]}"#).unwrap();
        let read = |members: &[(&str, &str)]| {
            let line: Vec<String> = members.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let line = line.join(",");
            let scanned = settings.scan([("baggage", line.as_bytes())]);
            settings.context.extract(&scanned).context
        };
        prop_assert_eq!(read(&members), read(&shuffled));
    }

    #[test]
    fn baggage_reader_respects_its_limits(lines in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..3000), 0..6)) {
        let refs: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
        let members: Vec<_> = baggage::Members::new(&refs).collect();
        prop_assert!(members.len() <= baggage::MAX_MEMBERS);
    }

    #[test]
    fn percent_decoding_inverts_encoding(bytes in prop::collection::vec(any::<u8>(), 0..100)) {
        let encoded = percent_encoding::percent_encode(&bytes, percent_encoding::NON_ALPHANUMERIC).to_string();
        let decoded = sandbox_router_routing::percent::decode_strict(encoded.as_bytes());
        prop_assert_eq!(decoded.as_deref(), Some(bytes.as_slice()));
    }

    #[test]
    fn configuration_parsing_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = Settings::from_json(&bytes);
    }
}

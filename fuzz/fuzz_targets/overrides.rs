//! `Overrides` protobuf bytes (the input), carried as the filter reads them:
//! base64 in a W3C baggage member, alone or beside a routing key, and
//! percent-encoded standard base64 in `ot-baggage-*`; routed for every
//! fixture service and for the services the overrides name.
//!
//! Invariants: the Overrides read are exactly the bytes decoded here (or the
//! context is malformed when they do not decode, exceed 64 entries or 4096
//! bytes); a `Route` endpoint is registered for the service, by the sandbox
//! or key the override names, and is the override's endpoint if it names
//! one; the compiled table and shared data decide the same.
#![no_main]

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use prost::Message as _;
use sandbox_router_fuzz::{route_and_check, settings_once, SERVICES};
use sandbox_router_proto::v1::Overrides;
use sandbox_router_routing::context::{MAX_OVERRIDES_ENTRIES, MAX_OVERRIDES_LEN};
use sandbox_router_routing::{RoutingContext, Settings};

const KEYS: [Option<&str>; 4] = [
    None,
    Some("abc"),
    Some("k7f3q9x2m4feature"),
    Some("unknown"),
];

fuzz_target!(|data: &[u8]| {
    static SETTINGS: OnceLock<Settings> = OnceLock::new();
    let settings = settings_once(&SETTINGS, b"");
    let decoded = Overrides::decode(data).ok();
    let baggage_text = URL_SAFE_NO_PAD.encode(data);
    let expected = decoded.clone().filter(|o| {
        o.overrides.len() <= MAX_OVERRIDES_ENTRIES && baggage_text.len() <= MAX_OVERRIDES_LEN
    });

    let key = KEYS[data.len() % KEYS.len()];
    let baggage = match key {
        Some(key) => format!("sandbox-routing-key={key}, sandbox-overrides={baggage_text};p=1"),
        None => format!("sandbox-overrides={baggage_text}"),
    };
    // Standard base64 has `+ / =`: percent-encoded in ot-baggage.
    let ot_baggage = percent_encoding::utf8_percent_encode(
        &STANDARD.encode(data),
        percent_encoding::NON_ALPHANUMERIC,
    )
    .to_string();
    // The length limit applies to the value as carried.
    let expected_ot = decoded.clone().filter(|o| {
        o.overrides.len() <= MAX_OVERRIDES_ENTRIES && ot_baggage.len() <= MAX_OVERRIDES_LEN
    });

    let mut services: Vec<String> = SERVICES.iter().map(|s| (*s).to_owned()).collect();
    if let Some(o) = &decoded {
        services.extend(o.overrides.iter().take(4).map(|o| o.service.clone()));
    }
    // Malformed decides the same for every service: one is enough (and big
    // undecodable inputs would otherwise dominate the time).
    let routed = if expected.is_some() {
        services.len()
    } else {
        1
    };
    for service in &services[..routed] {
        let headers: [(&str, &[u8]); 2] = [
            (":authority", service.as_bytes()),
            ("baggage", baggage.as_bytes()),
        ];
        let outcome = route_and_check(settings, &headers, data.len());
        match (&outcome.extracted.context, &expected) {
            (
                RoutingContext::Found {
                    overrides,
                    key: found_key,
                    ..
                },
                Some(want),
            ) => {
                assert_eq!(overrides.as_ref(), Some(want));
                assert_eq!(found_key.as_deref(), key);
            }
            (RoutingContext::Malformed { .. }, None) => {}
            (got, want) => panic!("read {got:?}, expected overrides {want:?}"),
        }
    }

    // The other encoding (standard base64, percent-encoded), for one service.
    let headers: [(&str, &[u8]); 2] = [
        (":authority", services[services.len() - 1].as_bytes()),
        ("ot-baggage-sandbox-overrides", ot_baggage.as_bytes()),
    ];
    let outcome = route_and_check(settings, &headers, data.len());
    match (&outcome.extracted.context, &expected_ot) {
        (RoutingContext::Found { overrides, .. }, Some(want)) => {
            assert_eq!(overrides.as_ref(), Some(want))
        }
        (RoutingContext::Malformed { .. }, None) => {}
        (got, want) => panic!("ot-baggage read {got:?}, expected overrides {want:?}"),
    }
});

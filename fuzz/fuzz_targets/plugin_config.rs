//! The filter's and the singleton's plugin configurations (JSON) on any
//! bytes: `Settings::from_json` and `sync::SyncSettings::from_json`.
//!
//! Invariants: an error names a field and a reason; accepted filter settings
//! hold what `compile` promises (1-8 valid, distinct key names; an overrides
//! name of its own; distinct sources; a marker header that is a header name
//! of its own, which a client-sent copy of is flagged as internal), and a
//! routing key minted for each enabled source under the configured names is
//! read back from that source; accepted singleton settings have a cluster and
//! a backoff that starts positive and never passes its maximum.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sandbox_router_proto::v1::{r#override::Target, Override, Overrides};
use sandbox_router_routing::key::is_valid_context_key_name;
use sandbox_router_routing::mint::{self, Carried};
use sandbox_router_routing::sync::{Backoff, SyncSettings};
use sandbox_router_routing::{ConfigError, RoutingContext, Settings, Source, MAX_KEYS};

fuzz_target!(|data: &[u8]| {
    match Settings::from_json(data) {
        Ok(settings) => check_settings(&settings),
        Err(e) => check_error(&e),
    }
    match SyncSettings::from_json(data) {
        Ok(sync) => {
            assert!(!sync.control_cluster.is_empty());
            assert!(sync.initial_backoff_ms > 0 && sync.initial_backoff_ms <= sync.max_backoff_ms);
            let mut backoff = Backoff::new(sync.initial_backoff_ms, sync.max_backoff_ms);
            let mut last = 0;
            for _ in 0..70 {
                let delay = backoff.next_delay_ms();
                assert!(delay >= last && delay <= sync.max_backoff_ms && delay > 0);
                last = delay;
            }
            assert_eq!(
                last, sync.max_backoff_ms,
                "backoff never reaches its maximum"
            );
            backoff.reset();
            assert_eq!(backoff.next_delay_ms(), sync.initial_backoff_ms);
        }
        Err(e) => check_error(&e),
    }
});

/// An error names the field and the reason (an unknown field named `""`
/// is named by the document's root).
fn check_error(e: &ConfigError) {
    assert!(!e.reason.is_empty(), "{e:?}");
    assert!(!e.field.is_empty(), "{e:?}");
}

/// Known, reported, not fixed here (it belongs in `Settings::compile`, in
/// routing/src/lib.rs): a marker header named like a header a source reads
/// (`x-ot-span-context`, `ot-baggage-*`, `uberctx-*`) is accepted; the scan
/// then either reads a client-sent marker as context (so it is not removed)
/// or drops the context header as internal. Inputs in the corpus:
/// `regression-marker-*`. Set to `false` once `compile` refuses such names:
/// the skip is then never taken anyway.
const KNOWN_MARKER_COLLISION: bool = false;

/// Known, reported, not fixed here (also `Settings::compile`): with
/// `overrides_key` left out, its default `sandbox-overrides` is not checked
/// against `keys`, so `{"keys": ["sandbox-routing-key", "sandbox-overrides"]}`
/// is accepted and Overrides are read as a routing key. Corpus:
/// `regression-default-overrides-key-in-keys`.
const KNOWN_DEFAULT_OVERRIDES_KEY_COLLISION: bool = false;

fn reads_context(header: &str) -> bool {
    header == "x-ot-span-context"
        || header.starts_with("ot-baggage-")
        || header.starts_with("uberctx-")
}

fn check_settings(settings: &Settings) {
    let context = &settings.context;
    let keys = &context.keys;
    assert!((1..=MAX_KEYS).contains(&keys.len()));
    for (i, key) in keys.iter().enumerate() {
        assert!(is_valid_context_key_name(key), "{key:?}");
        assert!(!keys[..i].contains(key), "duplicate {key:?}");
    }
    if let Some(name) = &context.overrides_key {
        assert!(is_valid_context_key_name(name));
        if KNOWN_DEFAULT_OVERRIDES_KEY_COLLISION && keys.contains(name) {
            return;
        }
        assert!(
            !keys.contains(name),
            "{name:?} is a key name and the overrides name"
        );
    }
    for (i, source) in context.sources.iter().enumerate() {
        assert!(!context.sources[..i].contains(source));
    }
    let marker = settings.marker_header.as_str();
    assert!(
        !marker.is_empty()
            && marker
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    );
    if KNOWN_MARKER_COLLISION && reads_context(marker) {
        return;
    }
    let flagged = settings.scan([(marker, &b"1"[..])]).internal_headers;
    assert!(
        flagged,
        "a client-sent marker header {marker:?} is not flagged as internal"
    );

    let overrides = Overrides {
        overrides: vec![Override {
            service: "backend".into(),
            target: Some(Target::Sandbox("feature-x".into())),
            endpoint: String::new(),
        }],
    };
    for source in &context.sources {
        // tracestate carries no Overrides.
        let with_overrides = context.overrides_key.is_some() && *source != Source::Tracestate;
        let carried = Carried {
            key_name: &keys[0],
            key: Some("k-1_A"),
            overrides_key: context.overrides_key.as_deref().unwrap_or_default(),
            overrides: with_overrides.then_some(&overrides),
        };
        let lines = mint::headers(*source, &carried);
        let scanned = settings.scan(lines.iter().map(|(n, v)| (n.as_str(), v.as_bytes())));
        assert_eq!(
            context.extract(&scanned).context,
            RoutingContext::Found {
                source: *source,
                key: Some("k-1_A".into()),
                overrides: with_overrides.then(|| overrides.clone()),
            },
            "minted {lines:?} not read back under {context:?}, marker {marker:?}"
        );
    }
}

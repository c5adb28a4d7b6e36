//! `x-ot-span-context`: base64 of a LightStep `BinaryCarrier` whose baggage
//! items may hold the routing key and base64 `Overrides`.
//!
//! Each input is tried twice: as the header value itself (the base64 layer),
//! and as carrier protobuf bytes the target base64-encodes (the protobuf
//! layers). Invariants: `decode_base64` accepts exactly the canonical
//! standard or URL-safe encodings, padded or not; the context read equals a
//! model built from the carrier decoded here; the decision routes only to
//! registered endpoints.
#![no_main]

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE};
use base64::Engine as _;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use prost::Message as _;
use sandbox_router_fuzz::{route_and_check, settings_once};
use sandbox_router_proto::lightstep::BinaryCarrier;
use sandbox_router_proto::v1::Overrides;
use sandbox_router_routing::context::{
    decode_base64, MAX_OVERRIDES_ENTRIES, MAX_OVERRIDES_LEN, MAX_SPAN_CONTEXT_LEN,
};
use sandbox_router_routing::key::is_valid_routing_key;
use sandbox_router_routing::{
    RoutingContext, Settings, Source, DEFAULT_KEY, DEFAULT_OVERRIDES_KEY,
};

/// What the header must read as: `Err` malformed, `Ok(None)` no context,
/// else the key and the Overrides.
type Expected = Result<Option<(Option<String>, Option<Overrides>)>, ()>;

fuzz_target!(|data: &[u8]| {
    static SETTINGS: OnceLock<Settings> = OnceLock::new();
    let settings = settings_once(&SETTINGS, br#"{"sources": ["x-ot-span-context"]}"#);

    let decoded = decode_base64(data);
    if let Some(bytes) = &decoded {
        // Canonical: re-encoding gives the input back, up to alphabet and padding.
        let text: Vec<u8> = data
            .iter()
            .map(|b| match b {
                b'-' => b'+',
                b'_' => b'/',
                b => *b,
            })
            .collect();
        let unpadded = text
            .strip_suffix(b"==")
            .or(text.strip_suffix(b"="))
            .unwrap_or(&text);
        assert_eq!(STANDARD_NO_PAD.encode(bytes).as_bytes(), unpadded);
        // One alphabet only.
        let plus = data.iter().any(|b| matches!(b, b'+' | b'/'));
        let url = data.iter().any(|b| matches!(b, b'-' | b'_'));
        assert!(!(plus && url), "mixed alphabets accepted");
    } else {
        for engine in [&STANDARD, &URL_SAFE] {
            assert!(
                engine.decode(data).is_err(),
                "padded canonical text refused"
            );
        }
    }
    let as_text = expected(data.len(), decoded.as_deref());
    check(settings, data, &as_text);

    let text = STANDARD.encode(data);
    let as_carrier = expected(text.len(), Some(data));
    check(settings, text.as_bytes(), &as_carrier);
});

/// What the filter must read from a header of `len` bytes whose base64 layer
/// decodes to `carrier` (`None`: not base64).
fn expected(len: usize, carrier: Option<&[u8]>) -> Expected {
    if len > MAX_SPAN_CONTEXT_LEN {
        return Err(());
    }
    let carrier = BinaryCarrier::decode(carrier.ok_or(())?).map_err(|_| ())?;
    let Some(ctx) = carrier.basic_ctx else {
        return Ok(None);
    };
    let key = ctx.baggage_items.get(DEFAULT_KEY);
    let overrides = ctx.baggage_items.get(DEFAULT_OVERRIDES_KEY);
    if key.is_none() && overrides.is_none() {
        return Ok(None);
    }
    if key.is_some_and(|k| !is_valid_routing_key(k.as_bytes())) {
        return Err(());
    }
    let overrides = match overrides {
        None => None,
        Some(text) if text.len() > MAX_OVERRIDES_LEN => return Err(()),
        Some(text) => {
            let bytes = decode_base64(text.as_bytes()).ok_or(())?;
            let o = Overrides::decode(bytes.as_slice()).map_err(|_| ())?;
            if o.overrides.len() > MAX_OVERRIDES_ENTRIES {
                return Err(());
            }
            Some(o)
        }
    };
    Ok(Some((key.cloned(), overrides)))
}

fn check(settings: &Settings, value: &[u8], expected: &Expected) {
    let headers: [(&str, &[u8]); 2] = [(":authority", b"backend"), ("x-ot-span-context", value)];
    let outcome = route_and_check(settings, &headers, value.len());
    match (&outcome.extracted.context, expected) {
        (RoutingContext::None, Ok(None)) => {}
        (RoutingContext::Malformed { source, .. }, Err(())) => {
            assert_eq!(*source, Source::XOtSpanContext)
        }
        (
            RoutingContext::Found {
                source,
                key,
                overrides,
            },
            Ok(Some((want_key, want_overrides))),
        ) => {
            assert_eq!(*source, Source::XOtSpanContext);
            assert_eq!(key, want_key);
            assert_eq!(overrides, want_overrides);
        }
        (got, want) => panic!("read {got:?}, expected {want:?}"),
    }
}

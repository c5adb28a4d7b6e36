//! Writes routing context headers exactly as [`crate::ContextConfig::extract`]
//! reads them. Used by the demo, the tests and the CLI's `header` command.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use prost::Message as _;
use sandbox_router_proto::lightstep::{BasicTracerCarrier, BinaryCarrier};
use sandbox_router_proto::v1::Overrides;

use crate::context::Source;

/// A valid sample `traceparent`, for formats that need one alongside.
pub const SAMPLE_TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// Bytes left as they are in percent-encoded values: unreserved characters.
const PERCENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// What to carry: a routing key, Overrides, or both.
#[derive(Debug, Clone, Default)]
pub struct Carried<'a> {
    pub key_name: &'a str,
    pub key: Option<&'a str>,
    pub overrides_key: &'a str,
    pub overrides: Option<&'a Overrides>,
}

impl<'a> Carried<'a> {
    /// `key` and/or `overrides` under the default names
    /// ([`crate::DEFAULT_KEY`], [`crate::DEFAULT_OVERRIDES_KEY`]).
    pub fn default_names(key: Option<&'a str>, overrides: Option<&'a Overrides>) -> Self {
        Carried {
            key_name: crate::DEFAULT_KEY,
            key,
            overrides_key: crate::DEFAULT_OVERRIDES_KEY,
            overrides,
        }
    }
}

/// `Overrides` as the base64 text carried in baggage (URL-safe alphabet, no
/// padding: needs no escaping anywhere).
pub fn overrides_text(overrides: &Overrides) -> String {
    URL_SAFE_NO_PAD.encode(overrides.encode_to_vec())
}

/// The header lines (name, value) that carry `what` in `format`. `tracestate`
/// carries only a routing key, and needs `traceparent` alongside; `query` is
/// no header (see [`query_param`]).
pub fn headers(format: Source, what: &Carried<'_>) -> Vec<(String, String)> {
    let overrides = what.overrides.map(overrides_text);
    let pct = |v: &str| utf8_percent_encode(v, PERCENT).to_string();
    let mut items: Vec<(&str, String)> = Vec::new();
    if let Some(key) = what.key {
        items.push((what.key_name, key.to_owned()));
    }
    if let Some(text) = &overrides {
        items.push((what.overrides_key, text.clone()));
    }
    match format {
        Source::Baggage => {
            let members: Vec<String> = items
                .iter()
                .map(|(k, v)| format!("{k}={}", pct(v)))
                .collect();
            vec![("baggage".to_owned(), members.join(","))]
        }
        Source::OtBaggage | Source::Uberctx => {
            let prefix = if format == Source::OtBaggage {
                "ot-baggage-"
            } else {
                "uberctx-"
            };
            items
                .iter()
                .map(|(k, v)| (format!("{prefix}{k}"), pct(v)))
                .collect()
        }
        // Not headers an application passes on: a URL, a browser's cookie, a host.
        Source::Query | Source::Cookie | Source::PreviewHost => Vec::new(),
        Source::Tracestate => match what.key {
            Some(key) => vec![
                ("traceparent".to_owned(), SAMPLE_TRACEPARENT.to_owned()),
                ("tracestate".to_owned(), format!("{}={key}", what.key_name)),
            ],
            None => Vec::new(),
        },
        Source::XOtSpanContext => {
            let carrier = BinaryCarrier {
                deprecated_text_ctx: Vec::new(),
                basic_ctx: Some(BasicTracerCarrier {
                    trace_id: 0x4bf9_2f35_77b3_4da6,
                    span_id: 0x00f0_67aa_0ba9_02b7,
                    sampled: true,
                    baggage_items: items.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
                }),
            };
            vec![(
                "x-ot-span-context".to_owned(),
                STANDARD.encode(carrier.encode_to_vec()),
            )]
        }
    }
}

/// The URL query parameter (`name=KEY`) that carries a routing key in the
/// `query` source, e.g. for a webhook URL.
pub fn query_param(name: &str, key: &str) -> String {
    format!("{name}={}", utf8_percent_encode(key, PERCENT))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{RoutingContext, Settings};
    use sandbox_router_proto::v1::{r#override::Target, Override};

    fn extract(settings: &Settings, lines: &[(String, String)]) -> RoutingContext {
        let scanned = settings.scan(lines.iter().map(|(n, v)| (n.as_str(), v.as_bytes())));
        settings.context.extract(&scanned).context
    }

    #[test]
    fn every_format_round_trips() {
        let settings = Settings::from_json(b"").unwrap();
        let overrides = Overrides {
            overrides: vec![Override {
                service: "backend".into(),
                target: Some(Target::Sandbox("feature-x".into())),
                endpoint: "10.0.0.7:8080".into(),
            }],
        };
        for format in Source::DEFAULT_ORDER {
            let what = Carried {
                key_name: crate::DEFAULT_KEY,
                key: Some("k-1_A"),
                overrides_key: crate::DEFAULT_OVERRIDES_KEY,
                overrides: (format != Source::Tracestate).then_some(&overrides),
            };
            let expected_overrides = (format != Source::Tracestate).then(|| overrides.clone());
            assert_eq!(
                extract(&settings, &headers(format, &what)),
                RoutingContext::Found {
                    source: format,
                    key: Some("k-1_A".into()),
                    overrides: expected_overrides
                },
                "{format:?}"
            );
        }
    }
}

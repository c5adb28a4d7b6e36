//! Adversarial requests through a real Envoy running the built filter.
//!
//! Every case asserts that the request is answered (2xx from the expected
//! upstream, or Envoy's own 4xx when the request breaks Envoy's limits), that
//! it lands exactly where expected (the echo service says who answered), that
//! it is never answered with a 5xx, and that exactly the expected filter
//! counters moved by exactly the expected amounts. The debug header
//! `x-sandbox-router-decision` must agree with the counters, and the internal
//! routing headers must never reach any upstream.
//!
//! Requests are written byte for byte on a plain TCP connection: header names
//! keep their case, values may hold any byte, and a request far over Envoy's
//! limits is written while Envoy's early answer is read.
//!
//! Cases already covered by `routing_decision.rs` and `header_formats.rs`
//! are not repeated here. The last test runs on the table the real control
//! service pushes; it needs the `sandbox-router` binary built next to this
//! test (`make build`).

// Test code: a failed expectation should panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use common::*;
use sandbox_router_proto::lightstep::{BasicTracerCarrier, BinaryCarrier};
use sandbox_router_proto::v1::{r#override::Target, Override, Overrides};
use sandbox_router_proto::Message as _;
use sandbox_router_routing::{
    mint, Source, DEBUG_HEADER, DEFAULT_MARKER_HEADER, ORIGINAL_DST_HEADER,
};
use testbed::{ControlService, EchoReply, Sidecar, SidecarOptions};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// One request header line: the name exactly as sent, and the raw value.
type Line = (String, Vec<u8>);

fn line(name: &str, value: impl AsRef<[u8]>) -> Line {
    (name.to_owned(), value.as_ref().to_vec())
}

fn baggage(value: impl AsRef<[u8]>) -> Line {
    line("baggage", value)
}

/// Header lines carrying `key` and/or `overrides` in `format`, default names.
fn minted(format: Source, key: Option<&str>, overrides: Option<&Overrides>) -> Vec<Line> {
    carrying(format, key, overrides)
        .into_iter()
        .map(|(name, value)| (name, value.into_bytes()))
        .collect()
}

/// One adversarial request for `backend` and what it must produce.
struct Case {
    what: String,
    lines: Vec<Line>,
    /// `service/version` of the echo service that must answer, or
    /// `status NNN` for an answer from Envoy itself.
    served_by: String,
    /// The filter counters that must move, by exactly these amounts; no
    /// other filter counter may move.
    counters: Vec<(&'static str, u64)>,
}

fn case(
    what: impl Into<String>,
    lines: Vec<Line>,
    served_by: impl Into<String>,
    counters: &[(&'static str, u64)],
) -> Case {
    Case {
        what: what.into(),
        lines,
        served_by: served_by.into(),
        counters: counters.to_vec(),
    }
}

/// Filter counters and by how much each must move.
type Counters = &'static [(&'static str, u64)];

const BASELINE: &str = "backend/baseline";
const FEATURE_X: &str = "backend/feature-x";
const ROUTED: Counters = &[("routed", 1)];
const NO_CONTEXT: Counters = &[("baseline.no_context", 1)];
const MALFORMED: Counters = &[("baseline.malformed", 1)];
const UNKNOWN_KEY: Counters = &[("baseline.unknown_key", 1)];
const NO_FORK: Counters = &[("baseline.no_fork_for_service", 1)];
const UNREGISTERED: Counters = &[("baseline.unregistered_endpoint", 1)];

/// What came back for one request.
#[derive(Debug)]
struct Answer {
    status: u16,
    decision: Option<String>,
    echo: Option<EchoReply>,
}

impl Answer {
    fn served_by(&self) -> String {
        match &self.echo {
            Some(echo) => echo.chain(),
            None => format!("status {}", self.status),
        }
    }
}

/// Sends `GET /` for `host` with `lines` on a new connection and reads the
/// answer. The request is written while the answer is read: Envoy answers a
/// request over its limits before it has read all of it.
async fn send(listener: SocketAddr, host: &str, lines: &[Line]) -> Answer {
    let mut request = format!("GET / HTTP/1.1\r\nHost: {host}\r\n").into_bytes();
    for (name, value) in lines {
        request.extend_from_slice(name.as_bytes());
        request.extend_from_slice(b": ");
        request.extend_from_slice(value);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"Connection: close\r\n\r\n");
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(listener).await.unwrap();
        let (mut reader, mut writer) = stream.split();
        let write = async {
            // Envoy may stop reading once it has answered.
            let _ = writer.write_all(&request).await;
            std::future::pending::<()>().await;
        };
        let read = async {
            let mut received = Vec::new();
            let mut buf = vec![0u8; 64 * 1024];
            // Until the whole answer is in (Envoy keeps a connection it
            // refused a request on open for a while), or the connection ends.
            while let Ok(n @ 1..) = reader.read(&mut buf).await {
                received.extend_from_slice(&buf[..n]);
                if answer_length(&received).is_some_and(|len| received.len() >= len) {
                    break;
                }
            }
            received
        };
        tokio::select! {
            received = read => received,
            () = write => unreachable!(),
        }
    };
    let received = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("an answer within 10 s");
    parse(&received)
}

/// The length of a complete answer (head and body), once its head is in and
/// says `content-length`.
fn answer_length(received: &[u8]) -> Option<usize> {
    let end = received.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&received[..end]);
    let body: usize = head
        .split("\r\n")
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse().ok())?;
    Some(end + 4 + body)
}

fn parse(received: &[u8]) -> Answer {
    let text = String::from_utf8_lossy(received);
    let end = received
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no complete response head in {text:?}"));
    let head = String::from_utf8_lossy(&received[..end]);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let decision = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case(DEBUG_HEADER))
        .map(|(_, value)| value.trim().to_owned());
    Answer {
        status,
        decision,
        echo: serde_json::from_slice(&received[end + 4..]).ok(),
    }
}

/// Sends one case through `sidecar` and checks everything it must produce.
async fn check(sidecar: &Sidecar, case: &Case) -> Answer {
    let what = &case.what;
    let before = stats(sidecar).await;
    let answer = send(sidecar.listener, "backend", &case.lines).await;
    let after = stats(sidecar).await;
    assert!(answer.status < 500, "{what}: {answer:?}");
    assert_eq!(answer.served_by(), case.served_by, "{what}: {answer:?}");
    if answer.echo.is_some() {
        assert_eq!(answer.status, 200, "{what}: {answer:?}");
    } else {
        assert!((400..500).contains(&answer.status), "{what}: {answer:?}");
    }
    assert_eq!(
        moved(&after, &before),
        counts(&case.counters),
        "{what}: {answer:?}"
    );
    // The debug header tells the same decision as the counters; a request
    // Envoy refused never reached the filter and has none.
    let expected = case.counters.iter().find_map(|(name, _)| match *name {
        "routed" => Some("routed; ".to_owned()),
        _ => name
            .strip_prefix("baseline.")
            .map(|reason| format!("baseline; reason={reason}")),
    });
    match (&expected, &answer.decision) {
        (None, None) => {}
        (Some(prefix), Some(decision)) if decision.starts_with(prefix.as_str()) => {}
        _ => panic!("{what}: decision header {answer:?}, expected {expected:?}"),
    }
    if answer.decision.is_some() {
        // `sandbox-router explain` plans the same (the one plan of `routing`).
        let lines: Vec<(&str, &[u8])> = case
            .lines
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_slice()))
            .collect();
        sidecar
            .agrees_with_explain("backend", "/", &lines, answer.decision.as_deref())
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
    }
    if let Some(echo) = &answer.echo {
        if expected.as_deref() == Some("routed; ") {
            let endpoint = format!("; endpoint={}", echo.addr);
            assert!(
                answer.decision.as_deref().unwrap().ends_with(&endpoint),
                "{what}: {answer:?}"
            );
        }
        // Whatever the client sent, the internal headers reach no upstream
        // (the baseline cluster has no filter of its own that strips them).
        for name in [ORIGINAL_DST_HEADER, DEFAULT_MARKER_HEADER] {
            assert!(
                !echo.headers.contains_key(name),
                "{what}: {name} reached {}: {:?}",
                echo.chain(),
                echo.headers
            );
        }
    }
    answer
}

async fn check_all(sidecar: &Sidecar, cases: &[Case]) {
    let compared = sidecar.compared_with_explain();
    for case in cases {
        check(sidecar, case).await;
    }
    assert!(
        sidecar.compared_with_explain() > compared,
        "no case was compared with `sandbox-router explain`"
    );
}

/// Standard base64, padded (what tracers write in `x-ot-span-context`).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut text = String::new();
    for chunk in bytes.chunks(3) {
        let byte = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let n = byte(0) << 16 | byte(1) << 8 | byte(2);
        for i in 0..4 {
            if i <= chunk.len() {
                text.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                text.push('=');
            }
        }
    }
    text
}

/// A `BinaryCarrier` protobuf with these baggage items.
fn carrier(items: &[(&str, &str)]) -> Vec<u8> {
    BinaryCarrier {
        deprecated_text_ctx: Vec::new(),
        basic_ctx: Some(BasicTracerCarrier {
            trace_id: 0x4bf9_2f35_77b3_4da6,
            span_id: 0x00f0_67aa_0ba9_02b7,
            sampled: true,
            baggage_items: items
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }),
    }
    .encode_to_vec()
}

fn span_context(carrier: &[u8]) -> Line {
    line("x-ot-span-context", base64(carrier))
}

fn entry(service: &str, target: Option<Target>, endpoint: &str) -> Override {
    Override {
        service: service.into(),
        target,
        endpoint: endpoint.into(),
    }
}

fn sandbox(name: &str) -> Option<Target> {
    Some(Target::Sandbox(name.into()))
}

#[tokio::test]
async fn spoofed_internal_headers_in_any_shape_are_removed() {
    let sidecar = sidecar().await;
    let own = sidecar.sandboxes[0].addr().to_string();
    let other = sidecar.sandboxes[1].addr().to_string();
    let admin = sidecar.envoy.admin().to_string();
    let dst = ORIGINAL_DST_HEADER;
    let marker = DEFAULT_MARKER_HEADER;
    // Both headers, `n` times each, naming `target`.
    let spoofed = |n: usize, target: &str| -> Vec<Line> {
        (0..n)
            .flat_map(|_| [line(dst, target), line(marker, "1")])
            .collect()
    };
    let removed = |counter: &'static str| [("internal_headers_removed", 1), (counter, 1)];
    let with_key = |key: &str, mut lines: Vec<Line>| {
        lines.insert(0, baggage(format!("sandbox-routing-key={key}")));
        lines
    };
    let cases = [
        case(
            "both, three times each, naming backend's sandbox",
            spoofed(3, &own),
            BASELINE,
            &removed("baseline.no_context"),
        ),
        case(
            "the address three times, no marker",
            vec![line(dst, &own), line(dst, &own), line(dst, &own)],
            BASELINE,
            &removed("baseline.no_context"),
        ),
        case(
            "the marker three times, different values",
            vec![line(marker, "1"), line(marker, "true"), line(marker, "")],
            BASELINE,
            &removed("baseline.no_context"),
        ),
        case(
            "mixed-case names",
            vec![
                line("X-Envoy-Original-Dst-Host", &own),
                line("X-SANDBOX-ROUTER-ROUTE", "1"),
            ],
            BASELINE,
            &removed("baseline.no_context"),
        ),
        case(
            "empty values",
            vec![line(dst, ""), line(marker, "")],
            BASELINE,
            &removed("baseline.no_context"),
        ),
        case(
            "an empty marker alone",
            vec![line(marker, "")],
            BASELINE,
            &removed("baseline.no_context"),
        ),
        case(
            "a list of addresses",
            vec![line(dst, format!("{own},{other}")), line(marker, "1")],
            BASELINE,
            &removed("baseline.no_context"),
        ),
        case(
            "Envoy's admin address",
            vec![line(dst, &admin), line(marker, "1")],
            BASELINE,
            &removed("baseline.no_context"),
        ),
        case(
            "three times towards frontend's sandbox, with a valid key",
            with_key(KEY_X, spoofed(3, &other)),
            FEATURE_X,
            &removed("routed"),
        ),
        case(
            "mixed case and repeated, with a valid key",
            with_key(
                KEY_X,
                vec![
                    line("X-Envoy-Original-Dst-Host", &admin),
                    line("x-envoy-original-dst-host", &other),
                    line("X-Sandbox-Router-Route", ""),
                ],
            ),
            FEATURE_X,
            &removed("routed"),
        ),
        case(
            "with the key of a sandbox that does not fork backend",
            with_key(KEY_Y, spoofed(2, &other)),
            BASELINE,
            &removed("baseline.no_fork_for_service"),
        ),
        case(
            "with an unknown key",
            with_key("no-such-key", spoofed(2, &own)),
            BASELINE,
            &removed("baseline.unknown_key"),
        ),
        case(
            "a space before the colon: refused by Envoy before the filter",
            vec![line(&format!("{dst} "), &own), line(marker, "1")],
            "status 400",
            &[],
        ),
    ];
    check_all(&sidecar, &cases).await;

    // Look-alike names are not internal: they route nowhere and pass on to
    // the upstream, which shows them (so the check in `check` that the
    // internal names never arrive can fail).
    let lookalike = check(
        &sidecar,
        &case(
            "look-alike names",
            vec![
                line("x-envoy-original-dst-host-x", &own),
                line("x-sandbox-router-routes", "1"),
                line("X-Sandbox-Router-Route-", "1"),
                line(DEBUG_HEADER, format!("routed; endpoint={own}")),
            ],
            BASELINE,
            NO_CONTEXT,
        ),
    )
    .await;
    let seen = lookalike.echo.unwrap().headers;
    for name in [
        "x-envoy-original-dst-host-x",
        "x-sandbox-router-routes",
        "x-sandbox-router-route-",
    ] {
        assert!(seen.contains_key(name), "{name}: {seen:?}");
    }
}

#[tokio::test]
async fn encoding_tricks_empty_parts_and_case_in_the_context() {
    let sidecar = sidecar().await;
    let traceparent = line("traceparent", mint::SAMPLE_TRACEPARENT);
    let cases = [
        // Percent-encoding: decoded once, strictly, then the key is checked.
        case(
            "overlong UTF-8 %C0%AF",
            vec![baggage("sandbox-routing-key=key%C0%AFfeature-x")],
            BASELINE,
            MALFORMED,
        ),
        case(
            "invalid escape %G1",
            vec![baggage("sandbox-routing-key=key%G1feature-x")],
            BASELINE,
            MALFORMED,
        ),
        case(
            "truncated escape at the end",
            vec![baggage("sandbox-routing-key=key-feature-x%4")],
            BASELINE,
            MALFORMED,
        ),
        case(
            "truncated escape inside",
            vec![baggage("sandbox-routing-key=key-feature-%4x")],
            BASELINE,
            MALFORMED,
        ),
        case(
            "a lone % at the end",
            vec![baggage("sandbox-routing-key=key-feature-x%")],
            BASELINE,
            MALFORMED,
        ),
        case(
            "%00 after a valid key",
            vec![baggage("sandbox-routing-key=key-feature-x%00")],
            BASELINE,
            MALFORMED,
        ),
        case(
            "double-encoded '-' is decoded once only",
            vec![baggage("sandbox-routing-key=key%252Dfeature-x")],
            BASELINE,
            MALFORMED,
        ),
        case(
            "'+' is not a space, and not a key character",
            vec![baggage("sandbox-routing-key=key+feature-x")],
            BASELINE,
            MALFORMED,
        ),
        case(
            "lowercase hex escapes are valid",
            vec![baggage("sandbox-routing-key=key%2dfeature%2dx")],
            FEATURE_X,
            ROUTED,
        ),
        case(
            "a percent-encoded key name is another name",
            vec![baggage("sandbox%2Drouting%2Dkey=key-feature-x")],
            BASELINE,
            NO_CONTEXT,
        ),
        case(
            "percent-encoded overlong UTF-8 in ot-baggage",
            vec![line("ot-baggage-sandbox-routing-key", "key%C0%AFfeature-x")],
            BASELINE,
            MALFORMED,
        ),
        case(
            "truncated escape in uberctx",
            vec![line("uberctx-sandbox-routing-key", "key-feature-x%4")],
            BASELINE,
            MALFORMED,
        ),
        // Empty keys and values.
        case(
            "an empty key",
            vec![baggage("=key-feature-x")],
            BASELINE,
            NO_CONTEXT,
        ),
        case(
            "an empty value",
            vec![baggage("sandbox-routing-key=")],
            BASELINE,
            MALFORMED,
        ),
        case(
            "an empty value with a property",
            vec![baggage("sandbox-routing-key= ;ttl=30")],
            BASELINE,
            MALFORMED,
        ),
        case(
            "our name without '='",
            vec![baggage("sandbox-routing-key")],
            BASELINE,
            MALFORMED,
        ),
        case(
            "empty members around ours",
            vec![baggage(" = , ,sandbox-routing-key=key-feature-x,=,")],
            FEATURE_X,
            ROUTED,
        ),
        case(
            "another member with an empty value",
            vec![baggage("userId=,sandbox-routing-key=key-feature-x")],
            FEATURE_X,
            ROUTED,
        ),
        case(
            "an empty baggage header",
            vec![baggage("")],
            BASELINE,
            NO_CONTEXT,
        ),
        case(
            "an empty ot-baggage value",
            vec![line("ot-baggage-sandbox-routing-key", "")],
            BASELINE,
            MALFORMED,
        ),
        case(
            "an empty uberctx value",
            vec![line("uberctx-sandbox-routing-key", "")],
            BASELINE,
            MALFORMED,
        ),
        // An empty value is the base64 of an empty, valid `Overrides`.
        case(
            "an empty Overrides value",
            vec![baggage("sandbox-overrides=")],
            BASELINE,
            NO_FORK,
        ),
        // Non-UTF-8 bytes (what routing_decision.rs does not cover).
        case(
            "non-UTF-8 in another baggage member",
            vec![baggage(
                b"userId=\xff\xfe,sandbox-routing-key=key-feature-x",
            )],
            FEATURE_X,
            ROUTED,
        ),
        case(
            "non-UTF-8 under another ot-baggage name",
            vec![
                line("ot-baggage-user", b"\xff"),
                line("ot-baggage-sandbox-routing-key", "key-feature-x"),
            ],
            FEATURE_X,
            ROUTED,
        ),
        case(
            "non-UTF-8 in tracestate with a valid traceparent",
            vec![
                traceparent.clone(),
                line("tracestate", b"sandbox-routing-key=key-\xe9"),
            ],
            BASELINE,
            MALFORMED,
        ),
        case(
            "non-UTF-8 Overrides in uberctx",
            vec![line("uberctx-sandbox-overrides", b"\xc0\xaf")],
            BASELINE,
            MALFORMED,
        ),
        case(
            "a raw NUL byte: refused by Envoy",
            vec![baggage(b"sandbox-routing-key=key-feature-x\0")],
            "status 400",
            &[],
        ),
        case(
            "a raw DEL byte: refused by Envoy",
            vec![baggage(b"sandbox-routing-key=key-feature-x\x7f")],
            "status 400",
            &[],
        ),
        // Case: header names are case-insensitive, baggage keys and routing keys are not.
        case(
            "our key name in another case",
            vec![baggage("Sandbox-Routing-Key=key-feature-x")],
            BASELINE,
            NO_CONTEXT,
        ),
        case(
            "another case of our name before ours",
            vec![baggage(
                "Sandbox-Routing-Key=key-frontend-y,sandbox-routing-key=key-feature-x",
            )],
            FEATURE_X,
            ROUTED,
        ),
        case(
            "the routing key in another case",
            vec![baggage("sandbox-routing-key=KEY-FEATURE-X")],
            BASELINE,
            UNKNOWN_KEY,
        ),
        case(
            "tracestate key in another case",
            vec![
                traceparent,
                line("tracestate", "Sandbox-Routing-Key=key-feature-x"),
            ],
            BASELINE,
            NO_CONTEXT,
        ),
        case(
            "header name 'Baggage'",
            vec![line("Baggage", "sandbox-routing-key=key-feature-x")],
            FEATURE_X,
            ROUTED,
        ),
        case(
            "header name 'OT-Baggage-Sandbox-Routing-Key'",
            vec![line("OT-Baggage-Sandbox-Routing-Key", "key-feature-x")],
            FEATURE_X,
            ROUTED,
        ),
        case(
            "header name 'UBERCTX-SANDBOX-ROUTING-KEY'",
            vec![line("UBERCTX-SANDBOX-ROUTING-KEY", "key-feature-x")],
            FEATURE_X,
            ROUTED,
        ),
    ];
    check_all(&sidecar, &cases).await;
}

#[tokio::test]
async fn duplicate_names_decide_the_same_whatever_their_order() {
    let sidecar = sidecar().await;
    let x = "sandbox-routing-key=key-feature-x";
    let y = "sandbox-routing-key=key-frontend-y";
    let carrier_x = carrier(&[("sandbox-routing-key", KEY_X)]);
    let carrier_y = carrier(&[("sandbox-routing-key", KEY_Y)]);
    let ot = |key: &str| line("ot-baggage-sandbox-routing-key", key);
    let overrides = |name: &str| {
        mint::overrides_text(&Overrides {
            overrides: vec![entry("backend", sandbox(name), "")],
        })
    };
    let mut cases = vec![
        case(
            "the same member twice",
            vec![baggage(format!("{x},{x}"))],
            FEATURE_X,
            ROUTED,
        ),
        case(
            "the same member in two baggage headers",
            vec![baggage(x), baggage(x)],
            FEATURE_X,
            ROUTED,
        ),
        case(
            "the same ot-baggage header twice",
            vec![ot(KEY_X), ot(KEY_X)],
            FEATURE_X,
            ROUTED,
        ),
        case(
            "the same x-ot-span-context twice",
            vec![span_context(&carrier_x), span_context(&carrier_x)],
            FEATURE_X,
            ROUTED,
        ),
    ];
    // Two values for one name are ambiguous in either order.
    for (what, first, second) in [
        (
            "two baggage headers with different keys",
            baggage(x),
            baggage(y),
        ),
        (
            "one key written plainly and percent-encoded (compared as sent)",
            baggage(x),
            baggage("sandbox-routing-key=key%2Dfeature%2Dx"),
        ),
        (
            "an alias given twice",
            baggage("sd-routing-key=key-feature-x"),
            baggage("sd-routing-key=key-frontend-y"),
        ),
        (
            "two different Overrides",
            baggage(format!("sandbox-overrides={}", overrides("feature-x"))),
            baggage(format!("sandbox-overrides={}", overrides("frontend-y"))),
        ),
        (
            "two ot-baggage headers with different keys",
            ot(KEY_X),
            ot(KEY_Y),
        ),
        (
            "two different x-ot-span-context headers",
            span_context(&carrier_x),
            span_context(&carrier_y),
        ),
    ] {
        cases.push(case(
            format!("{what}, one order"),
            vec![first.clone(), second.clone()],
            BASELINE,
            MALFORMED,
        ));
        cases.push(case(
            format!("{what}, the other order"),
            vec![second, first],
            BASELINE,
            MALFORMED,
        ));
    }
    // The canonical name wins over an alias, in either order.
    for value in [
        format!("{x},sd-routing-key=key-frontend-y"),
        format!("sd-routing-key=key-frontend-y,{x}"),
    ] {
        cases.push(case(
            format!("canonical and alias: {value}"),
            vec![baggage(value)],
            FEATURE_X,
            ROUTED,
        ));
    }
    // One carrier holding the key twice: protobuf merges the map entries and
    // the last one wins (a decoded carrier has one value per name).
    cases.push(case(
        "one carrier with frontend-y's key, then feature-x's",
        vec![span_context(&[carrier_y.as_slice(), &carrier_x].concat())],
        FEATURE_X,
        ROUTED,
    ));
    cases.push(case(
        "one carrier with feature-x's key, then frontend-y's",
        vec![span_context(&[carrier_x.as_slice(), &carrier_y].concat())],
        BASELINE,
        NO_FORK,
    ));
    check_all(&sidecar, &cases).await;
}

#[tokio::test]
async fn an_ambiguous_alias_is_malformed_wherever_the_canonical_name_stands() {
    // README: "Two values for the same name in one source ... are ambiguous.
    // The request stays on the baseline as `malformed`." The same members in
    // any order must get the same answer.
    let sidecar = sidecar().await;
    let x = "sandbox-routing-key=key-feature-x";
    let a = "sd-routing-key=key-frontend-y";
    let b = "sd-routing-key=no-such-key";
    let cases: Vec<Case> = [
        format!("{a},{b},{x}"), // malformed today
        format!("{x},{a},{b}"), // routed to feature-x today
        format!("{a},{x},{b}"), // routed to feature-x today
    ]
    .into_iter()
    .map(|value| case(value.clone(), vec![baggage(value)], BASELINE, MALFORMED))
    .collect();
    check_all(&sidecar, &cases).await;
}

#[tokio::test]
async fn oversized_context_is_refused_by_envoy_or_read_within_the_limits() {
    let sidecar = sidecar().await;
    let x = "sandbox-routing-key=key-feature-x";
    let over_limit = |counter: &'static str| [(counter, 1), ("baggage_over_limit", 1)];
    let tiny = |n: usize| vec!["a=1"; n].join(",");
    // A carrier with our key and a filler item of `filler` bytes.
    let padded_carrier = |filler: usize| {
        span_context(&carrier(&[
            ("filler", &"f".repeat(filler)),
            ("sandbox-routing-key", KEY_X),
        ]))
    };
    let under = padded_carrier(6000);
    let over = padded_carrier(6200);
    assert!(under.1.len() < 8192 && over.1.len() > 8192);
    let cases = [
        // Envoy's own limits (60 KiB of headers, 100 header lines) come
        // first: it answers 431 itself, and the filter never runs.
        case(
            "a 1 MB baggage header",
            vec![baggage(format!("{x},filler={}", "x".repeat(1 << 20)))],
            "status 431",
            &[],
        ),
        case(
            "a 64 KiB baggage header",
            vec![baggage(format!("{x},filler={}", "x".repeat(64 << 10)))],
            "status 431",
            &[],
        ),
        // (With 98 to 100 lines Envoy passes the request on, and the echo
        // service's own limit of 100 lines answers 431 after the filter ran.)
        case(
            "101 baggage headers",
            vec![baggage(x); 101],
            "status 431",
            &[],
        ),
        case(
            "1 MB over many ot-baggage headers",
            (0..64)
                .map(|i| line(&format!("ot-baggage-f{i}"), "x".repeat(16 << 10)))
                .collect(),
            "status 431",
            &[],
        ),
        // Under Envoy's limits, the filter reads the first 64 members / 8192 bytes.
        case(
            "ours first, then 58 KB of filler",
            vec![baggage(format!("{x},filler={}", "x".repeat(58_000)))],
            FEATURE_X,
            &over_limit("routed"),
        ),
        case(
            "10,000 tiny members, then ours",
            vec![baggage(format!("{},{x}", tiny(10_000)))],
            BASELINE,
            &over_limit("baseline.no_context"),
        ),
        case(
            "ours, then 5,000 tiny members",
            vec![baggage(format!("{x},{}", tiny(5_000)))],
            FEATURE_X,
            &over_limit("routed"),
        ),
        case(
            "50,000 empty list elements, then ours",
            vec![baggage(format!("{}{x}", ",".repeat(50_000)))],
            BASELINE,
            &over_limit("baseline.no_context"),
        ),
        case(
            "two headers of 30 KB, ours at the end of the second",
            vec![
                baggage(format!("f1={}", "x".repeat(30_000))),
                baggage(format!("f2={},{x}", "x".repeat(30_000))),
            ],
            BASELINE,
            &over_limit("baseline.no_context"),
        ),
        case(
            "64 baggage headers of one member, ours in the 65th",
            (0..64)
                .map(|i| baggage(format!("m{i}=v")))
                .chain([baggage(x)])
                .collect(),
            BASELINE,
            &over_limit("baseline.no_context"),
        ),
        case(
            "a conflicting duplicate past the member limit is never read",
            vec![baggage(format!("{x},{},{x}-other", tiny(70)))],
            FEATURE_X,
            &over_limit("routed"),
        ),
        case(
            "x-ot-span-context under 8192 bytes",
            vec![under],
            FEATURE_X,
            ROUTED,
        ),
        case(
            "x-ot-span-context over 8192 bytes",
            vec![over],
            BASELINE,
            MALFORMED,
        ),
    ];
    check_all(&sidecar, &cases).await;
}

#[tokio::test]
async fn overrides_in_every_format_reach_only_registered_endpoints() {
    let sidecar = sidecar().await;
    let own = sidecar.sandboxes[0].addr();
    let other = sidecar.sandboxes[1].addr().to_string();
    let port = own.port();
    let own = own.to_string();
    let unregistered = entry("backend", None, "10.1.2.3:80");
    let to_sandbox = entry("backend", sandbox("feature-x"), "");
    // Padding entries for another service, to reach the size and count limits.
    let padded = |pad: usize| Overrides {
        overrides: vec![to_sandbox.clone(), entry("padding", None, &"p".repeat(pad))],
    };
    let entries = |n: usize| Overrides {
        overrides: (1..n)
            .map(|i| entry(&format!("svc{i}"), sandbox("frontend-y"), ""))
            .chain([to_sandbox.clone()])
            .collect(),
    };
    assert!(mint::overrides_text(&padded(2900)).len() < 4096);
    assert!(mint::overrides_text(&padded(3100)).len() > 4096);
    let table: Vec<(&str, Option<&str>, Overrides, &str, Counters)> = vec![
        (
            "an unregistered IP beside a valid key: the override decides alone",
            Some(KEY_X),
            Overrides {
                overrides: vec![unregistered.clone()],
            },
            BASELINE,
            UNREGISTERED,
        ),
        (
            "frontend's sandbox beside a valid key",
            Some(KEY_X),
            Overrides {
                overrides: vec![entry("backend", None, &other)],
            },
            BASELINE,
            UNREGISTERED,
        ),
        (
            "the IPv4-mapped IPv6 spelling of the registered endpoint",
            None,
            Overrides {
                overrides: vec![entry(
                    "backend",
                    None,
                    &format!("[::ffff:127.0.0.1]:{port}"),
                )],
            },
            BASELINE,
            UNREGISTERED,
        ),
        (
            "IPv6 loopback on the registered port",
            None,
            Overrides {
                overrides: vec![entry("backend", None, &format!("[::1]:{port}"))],
            },
            BASELINE,
            UNREGISTERED,
        ),
        (
            "the unspecified address on the registered port",
            None,
            Overrides {
                overrides: vec![entry("backend", None, &format!("0.0.0.0:{port}"))],
            },
            BASELINE,
            MALFORMED,
        ),
        (
            "localhost on the registered port",
            None,
            Overrides {
                overrides: vec![entry("backend", None, &format!("localhost:{port}"))],
            },
            BASELINE,
            MALFORMED,
        ),
        (
            "the registered endpoint with a trailing space",
            None,
            Overrides {
                overrides: vec![entry("backend", None, &format!("{own} "))],
            },
            BASELINE,
            MALFORMED,
        ),
        (
            "a routing key target of the wrong alphabet",
            None,
            Overrides {
                overrides: vec![entry(
                    "backend",
                    Some(Target::RoutingKey("key feature x".into())),
                    "",
                )],
            },
            BASELINE,
            MALFORMED,
        ),
        (
            "a routing key target of 65 characters",
            None,
            Overrides {
                overrides: vec![entry(
                    "backend",
                    Some(Target::RoutingKey("k".repeat(65))),
                    "",
                )],
            },
            BASELINE,
            MALFORMED,
        ),
        (
            "an entry for 'BACKEND' only (service names are compared exactly)",
            None,
            Overrides {
                overrides: vec![entry("BACKEND", sandbox("feature-x"), "")],
            },
            BASELINE,
            NO_FORK,
        ),
        (
            "two entries for backend, the unregistered one first: the first decides",
            None,
            Overrides {
                overrides: vec![unregistered.clone(), to_sandbox.clone()],
            },
            BASELINE,
            UNREGISTERED,
        ),
        (
            "two entries for backend, the sandbox first: the first decides",
            None,
            Overrides {
                overrides: vec![to_sandbox.clone(), unregistered.clone()],
            },
            FEATURE_X,
            ROUTED,
        ),
        ("64 entries", None, entries(64), FEATURE_X, ROUTED),
        ("65 entries", None, entries(65), BASELINE, MALFORMED),
        (
            "just under 4096 bytes",
            None,
            padded(2900),
            FEATURE_X,
            ROUTED,
        ),
        (
            "just over 4096 bytes",
            None,
            padded(3100),
            BASELINE,
            MALFORMED,
        ),
    ];
    let mut cases = Vec::new();
    for format in [
        Source::Baggage,
        Source::OtBaggage,
        Source::Uberctx,
        Source::XOtSpanContext,
    ] {
        for (what, key, overrides, served_by, counters) in &table {
            cases.push(case(
                format!("{format:?}: {what}"),
                minted(format, *key, Some(overrides)),
                *served_by,
                counters,
            ));
        }
    }
    check_all(&sidecar, &cases).await;
}

// The table the control service pushes.

/// The `sandbox-router` binary `make build` builds.
fn control_binary() -> PathBuf {
    testbed::sibling_binary("sandbox-router").unwrap()
}

/// Creates a sandbox with the real CLI; returns its routing key.
fn create(control: &ControlService, name: &str, fork: &str, ttl: Option<&str>) -> String {
    let mut args = vec![
        "sandbox", "create", name, "--fork", fork, "--output", "json",
    ];
    if let Some(ttl) = ttl {
        args.extend(["--ttl", ttl]);
    }
    let output = control.cli(&args).unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let created: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    created["routing_key"].as_str().unwrap().to_owned()
}

/// Polls until a request for `host` carrying `key` is answered by `expected`.
async fn until_served(sidecar: &Sidecar, host: &str, key: &str, expected: &str) {
    sidecar
        .until_served(host, key, expected, Duration::from_secs(10))
        .await
        .unwrap();
}

#[tokio::test]
async fn pushed_table_keys_of_the_wrong_shape_and_of_gone_sandboxes_stay_on_the_baseline() {
    let control = ControlService::start(&control_binary(), None)
        .await
        .expect("control service starts");
    let options = SidecarOptions {
        sandboxes: vec![
            ("backend".into(), "feature-x".into()),
            ("frontend".into(), "frontend-y".into()),
            ("backend".into(), "short".into()),
            ("backend".into(), "gone".into()),
        ],
        node_id: "adversarial".into(),
        control: Some(control.addr()),
        ..SidecarOptions::default()
    };
    let sidecar = Sidecar::start(options, |_| {
        Ok(serde_json::json!({ "debug_header": true }).to_string())
    })
    .await
    .expect("sidecar starts");
    let addr = |i: usize| sidecar.sandboxes[i].addr().to_string();

    // First the sandbox that expires, seen routing while it lives.
    let key_short = create(
        &control,
        "short",
        &format!("backend={}", addr(2)),
        Some("3s"),
    );
    until_served(&sidecar, "backend", &key_short, "backend/short").await;
    let key_x = create(&control, "feature-x", &format!("backend={}", addr(0)), None);
    let key_y = create(
        &control,
        "frontend-y",
        &format!("frontend={}", addr(1)),
        None,
    );
    let key_gone = create(&control, "gone", &format!("backend={}", addr(3)), None);
    until_served(&sidecar, "backend", &key_x, FEATURE_X).await;
    until_served(&sidecar, "frontend", &key_y, "frontend/frontend-y").await;
    until_served(&sidecar, "backend", &key_gone, "backend/gone").await;
    let deleted = control.cli(&["sandbox", "delete", "gone"]).unwrap();
    assert!(deleted.status.success(), "{deleted:?}");
    until_served(&sidecar, "backend", &key_gone, BASELINE).await;
    until_served(&sidecar, "backend", &key_short, BASELINE).await;
    let expired = control.cli(&["sandbox", "get", "short"]).unwrap();
    assert!(!expired.status.success(), "{expired:?}");

    // The control service mints 24 characters of a-z0-9; the filter accepts
    // any 1-64 of A-Z a-z 0-9 - _ and looks them up exactly.
    assert_eq!(key_x.len(), 24);
    assert!(key_x
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
    let long = key_x.repeat(3);
    let key = |what: &str, value: &str, served_by: &str, counters: &[(&'static str, u64)]| {
        case(
            format!("{what}: {value}"),
            vec![baggage(format!("sandbox-routing-key={value}"))],
            served_by,
            counters,
        )
    };
    let mut cases = vec![
        key("the minted key", &key_x, FEATURE_X, ROUTED),
        key(
            "in upper case",
            &key_x.to_ascii_uppercase(),
            BASELINE,
            UNKNOWN_KEY,
        ),
        key("23 characters", &key_x[..23], BASELINE, UNKNOWN_KEY),
        key("25 characters", &format!("{key_x}0"), BASELINE, UNKNOWN_KEY),
        key("64 characters", &long[..64], BASELINE, UNKNOWN_KEY),
        key("65 characters", &long[..65], BASELINE, MALFORMED),
        key(
            "a '.' inside",
            &format!("{}.{}", &key_x[..12], &key_x[13..]),
            BASELINE,
            MALFORMED,
        ),
        key(
            "a shared-data name",
            "sandbox_router.version",
            BASELINE,
            MALFORMED,
        ),
        key(
            "the expired sandbox's key",
            &key_short,
            BASELINE,
            UNKNOWN_KEY,
        ),
        key(
            "the deleted sandbox's key",
            &key_gone,
            BASELINE,
            UNKNOWN_KEY,
        ),
        case(
            "the deleted sandbox's key in x-ot-span-context",
            minted(Source::XOtSpanContext, Some(&key_gone), None),
            BASELINE,
            UNKNOWN_KEY,
        ),
    ];
    let control_addr = control.addr().to_string();
    let admin = sidecar.envoy.admin().to_string();
    let overrides: Vec<(&str, Override, &str, Counters)> = vec![
        (
            "the deleted sandbox by name",
            entry("backend", sandbox("gone"), ""),
            BASELINE,
            UNKNOWN_KEY,
        ),
        (
            "the expired sandbox by name",
            entry("backend", sandbox("short"), ""),
            BASELINE,
            UNKNOWN_KEY,
        ),
        (
            "the deleted sandbox by routing key",
            entry("backend", Some(Target::RoutingKey(key_gone.clone())), ""),
            BASELINE,
            UNKNOWN_KEY,
        ),
        (
            "the deleted sandbox's endpoint",
            entry("backend", None, &addr(3)),
            BASELINE,
            UNREGISTERED,
        ),
        (
            "the expired sandbox's endpoint",
            entry("backend", None, &addr(2)),
            BASELINE,
            UNREGISTERED,
        ),
        (
            "the control service's address",
            entry("backend", None, &control_addr),
            BASELINE,
            UNREGISTERED,
        ),
        (
            "the control service's address under a live sandbox",
            entry("backend", sandbox("feature-x"), &control_addr),
            BASELINE,
            UNREGISTERED,
        ),
        (
            "Envoy's admin address",
            entry("backend", None, &admin),
            BASELINE,
            UNREGISTERED,
        ),
        (
            "frontend's sandbox endpoint",
            entry("backend", None, &addr(1)),
            BASELINE,
            UNREGISTERED,
        ),
        (
            "a sandbox that does not fork backend",
            entry("backend", sandbox("frontend-y"), ""),
            BASELINE,
            NO_FORK,
        ),
        (
            "the live sandbox's registered endpoint",
            entry("backend", None, &addr(0)),
            FEATURE_X,
            ROUTED,
        ),
    ];
    for format in [Source::Baggage, Source::XOtSpanContext] {
        for (what, item, served_by, counters) in &overrides {
            let overrides = Overrides {
                overrides: vec![item.clone()],
            };
            cases.push(case(
                format!("{format:?} Overrides: {what}"),
                minted(format, None, Some(&overrides)),
                *served_by,
                counters,
            ));
        }
    }
    check_all(&sidecar, &cases).await;
}

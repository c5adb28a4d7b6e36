//! gRPC and HTTP/2 through the shipped sidecar (`envoy-config/sidecar.yaml`)
//! and its edge-mode configuration, with a real gRPC client (tonic) and the
//! test bed's gRPC echo service (`testbed/proto/echo/v1/echo.proto`):
//! unary and server-streaming calls routed by a key in `baggage`,
//! `ot-baggage-*`, `x-ot-span-context` (and the other formats) metadata, to
//! the baseline and to the sandbox, over one and two hops; status codes and
//! trailers untouched; HTTP/1.1 and h2c callers keeping their protocol up to
//! the sandbox; a down sandbox endpoint answering `UNAVAILABLE` promptly.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use sandbox_router_routing::{Source, DEBUG_HEADER};
use testbed::echo_proto::echo_client::EchoClient;
use testbed::echo_proto::{CountRequest, EchoAnswer, Fail, SayRequest};
use testbed::grpc::SERVED_BY;
use testbed::{
    grpc_client, render, shipped_config, sidecar_config, wait_for_filter, EchoService, Envoy,
    NextHop, Sidecar, SidecarOptions, SidecarPorts,
};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

/// Bounds every call: a test fails instead of hanging.
async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(15), future)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within 15 s"))
}

/// A call with `message` and these metadata lines.
fn request<T>(message: T, metadata: &[(&str, &[u8])]) -> Request<T> {
    testbed::grpc::request(message, metadata).unwrap()
}

/// `service` through the sidecar's listener.
fn client(listener: SocketAddr, service: &str) -> EchoClient<Channel> {
    grpc_client(&format!("http://{listener}"), service).unwrap()
}

async fn say(
    client: &EchoClient<Channel>,
    metadata: &[(&str, &[u8])],
    fail: Option<Fail>,
) -> Result<(EchoAnswer, Option<String>), Status> {
    let message = SayRequest {
        text: "hello".into(),
        fail,
    };
    let response = within("Say", client.clone().say(request(message, metadata))).await?;
    let decision = response
        .metadata()
        .get(DEBUG_HEADER)
        .map(|v| v.to_str().unwrap().to_owned());
    Ok((response.into_inner(), decision))
}

/// The answers of a `Count`, and how the stream ended.
async fn count(
    client: &EchoClient<Channel>,
    metadata: &[(&str, &[u8])],
    n: u32,
    fail: Option<Fail>,
) -> (Vec<EchoAnswer>, Result<(), Status>) {
    let message = CountRequest { count: n, fail };
    within("Count", async {
        let mut stream = match client.clone().count(request(message, metadata)).await {
            Ok(response) => response.into_inner(),
            Err(status) => return (Vec::new(), Err(status)),
        };
        let mut answers = Vec::new();
        loop {
            match stream.message().await {
                Ok(Some(answer)) => answers.push(answer),
                Ok(None) => return (answers, Ok(())),
                Err(status) => return (answers, Err(status)),
            }
        }
    })
    .await
}

fn chains(answers: &[EchoAnswer]) -> Vec<String> {
    answers.iter().map(EchoAnswer::chain).collect()
}

/// Every format that travels in headers, i.e. in gRPC metadata.
const METADATA_FORMATS: [Source; 5] = [
    Source::Baggage,
    Source::OtBaggage,
    Source::Uberctx,
    Source::Tracestate,
    Source::XOtSpanContext,
];

/// Metadata lines carrying `key` in `format`, as owned strings.
fn key_in(format: Source, key: &str) -> Vec<(String, String)> {
    carrying(format, Some(key), None)
}

#[tokio::test]
async fn unary_and_streaming_calls_route_by_the_key_in_every_metadata_format() {
    let sidecar = sidecar().await;
    let backend = client(sidecar.listener, "backend");
    for format in METADATA_FORMATS {
        let lines = key_in(format, KEY_X);
        let metadata = as_refs(&lines);
        let what = format!("{format:?}");
        let (answer, decision) = say(&backend, &metadata, None)
            .await
            .unwrap_or_else(|s| panic!("{what}: {s:?}"));
        assert_eq!(answer.chain(), "backend/feature-x", "{what}: {decision:?}");
        assert_eq!(answer.addr, sidecar.sandboxes[0].addr().to_string());
        assert_eq!(answer.http_version, "HTTP/2.0", "{what}");
        // The filter's decision, in the response's initial metadata.
        let endpoint = sidecar.sandboxes[0].addr();
        assert_eq!(
            decision.as_deref(),
            Some(
                format!(
                    "routed; source={}; service=backend; endpoint={endpoint}",
                    format.as_str()
                )
                .as_str()
            ),
            "{what}"
        );
        // `sandbox-router explain` plans the same for the call's metadata.
        sidecar
            .agrees_with_explain(
                "backend",
                "/sandbox_router.echo.v1.Echo/Say",
                &metadata,
                decision.as_deref(),
            )
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        // The routing context reached the sandbox as sent; Envoy's internal
        // routing headers did not.
        for (name, value) in &lines {
            assert_eq!(answer.metadata.get(name), Some(value), "{what}: {name}");
        }
        for internal in ["x-envoy-original-dst-host", "x-sandbox-router-route"] {
            assert!(
                !answer.metadata.contains_key(internal),
                "{what}: {internal}"
            );
        }

        let (answers, end) = count(&backend, &metadata, 3, None).await;
        end.unwrap_or_else(|s| panic!("{what}: {s:?}"));
        assert_eq!(chains(&answers), ["backend/feature-x"; 3], "{what}");
        let indexes: Vec<u32> = answers.iter().map(|a| a.index).collect();
        assert_eq!(indexes, [0, 1, 2], "{what}");
        assert!(answers.iter().all(|a| a.http_version == "HTTP/2.0"));
    }

    // No key, a key nobody registered, a key that forks another service: the baseline.
    let unknown = key_in(Source::Baggage, "guessed-key");
    let other = key_in(Source::Baggage, KEY_Y);
    for (what, lines) in [
        ("no key", Vec::new()),
        ("unknown key", unknown),
        ("key forking frontend", other),
    ] {
        let metadata = as_refs(&lines);
        let (answer, _) = say(&backend, &metadata, None)
            .await
            .unwrap_or_else(|s| panic!("{what}: {s:?}"));
        assert_eq!(answer.chain(), "backend/baseline", "{what}");
        assert_eq!(answer.http_version, "HTTP/2.0", "{what}");
        let (answers, end) = count(&backend, &metadata, 2, None).await;
        end.unwrap();
        assert_eq!(chains(&answers), ["backend/baseline"; 2], "{what}");
    }

    // The other service's sandbox, by its own key.
    let lines = key_in(Source::Baggage, KEY_Y);
    let (answer, _) = say(
        &client(sidecar.listener, "frontend"),
        &as_refs(&lines),
        None,
    )
    .await
    .unwrap();
    assert_eq!(answer.chain(), "frontend/frontend-y");
}

/// The failure the tests ask the echo services for: a code Envoy never makes
/// up itself, a message that needs percent-encoding, custom trailers.
fn failure() -> Fail {
    Fail {
        code: Code::FailedPrecondition as i32,
        message: "the sandbox says no: 100% sure, ünïcode".into(),
        trailers: BTreeMap::from([
            ("x-echo-detail".to_owned(), "flag off".to_owned()),
            ("x-echo-retry".to_owned(), "never".to_owned()),
        ]),
    }
}

/// What a status looks like to the caller: code, message, custom trailers.
fn seen(status: &Status) -> (Code, String, Vec<Option<String>>) {
    let trailers = [SERVED_BY, "x-echo-detail", "x-echo-retry"]
        .iter()
        .map(|name| {
            status
                .metadata()
                .get(*name)
                .map(|v| v.to_str().unwrap().to_owned())
        })
        .collect();
    (status.code(), status.message().to_owned(), trailers)
}

#[tokio::test]
async fn status_codes_and_trailers_pass_through_untouched() {
    let sidecar = sidecar().await;
    let through_envoy = client(sidecar.listener, "backend");
    let cases = [
        ("baseline", Vec::new(), sidecar.backend_baseline.addr()),
        ("sandbox", vec![BAGGAGE_KEY_X], sidecar.sandboxes[0].addr()),
    ];
    for (what, metadata, addr) in cases {
        let direct = client(addr, "backend");
        let served_by = if what == "baseline" {
            "backend/baseline"
        } else {
            "backend/feature-x"
        };

        // Unary: a trailers-only answer (status and metadata in one HEADERS frame).
        let expected = seen(&say(&direct, &[], Some(failure())).await.unwrap_err());
        assert_eq!(
            expected,
            (
                Code::FailedPrecondition,
                failure().message,
                vec![
                    Some(served_by.to_owned()),
                    Some("flag off".into()),
                    Some("never".into())
                ]
            ),
            "{what}: the echo service itself"
        );
        let status = say(&through_envoy, &metadata, Some(failure()))
            .await
            .unwrap_err();
        assert_eq!(seen(&status), expected, "{what}: unary through Envoy");

        // Streaming: answers, then the status in real trailers.
        let (answers, end) = count(&through_envoy, &metadata, 2, Some(failure())).await;
        assert_eq!(chains(&answers), [served_by; 2], "{what}");
        assert_eq!(
            seen(&end.unwrap_err()),
            expected,
            "{what}: streaming through Envoy"
        );

        // Every code, unary and streaming, arrives as the service sent it.
        for code in 1..=16 {
            let fail = Fail {
                code,
                message: format!("code {code}"),
                trailers: BTreeMap::new(),
            };
            let status = say(&through_envoy, &metadata, Some(fail.clone()))
                .await
                .unwrap_err();
            assert_eq!(
                (status.code() as i32, status.message()),
                (code, fail.message.as_str()),
                "{what}: unary"
            );
            assert_eq!(
                status.metadata().get(SERVED_BY).unwrap(),
                served_by,
                "{what}"
            );
            let (answers, end) = count(&through_envoy, &metadata, 1, Some(fail.clone())).await;
            assert_eq!(answers.len(), 1, "{what}: code {code}");
            let status = end.unwrap_err();
            assert_eq!(
                (status.code() as i32, status.message()),
                (code, fail.message.as_str()),
                "{what}: streaming"
            );
        }
    }
}

/// The credential the edge in [`two_hops`] honours routing context with.
const CREDENTIAL: &str = "grpc-test-credential";

struct TwoHops {
    edge: Envoy,
    edge_listener: SocketAddr,
    _sidecar: Envoy,
    _services: Vec<EchoService>,
}

/// `make demo`'s topology: client -> edge Envoy (edge mode) -> frontend ->
/// frontend's sidecar Envoy -> backend, both Envoys the shipped sidecar.yaml
/// with a static table: KEY_X forks backend (feature-x), KEY_Y forks frontend
/// (frontend-y).
async fn two_hops() -> TwoHops {
    let backend = EchoService::start("backend", "baseline").await.unwrap();
    let backend_x = EchoService::start("backend", "feature-x").await.unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();

    let sidecar_ports = SidecarPorts {
        backend_baseline: backend.addr().port(),
        frontend_baseline: 1,
        control: 1,
    };
    // frontend-y's address is not known yet; the sidecar never routes frontend.
    let placeholder: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let sidecar = Envoy::start(
        &sidecar_config(
            "grpc-sidecar",
            &sidecar_ports,
            &config(&[backend_x.addr(), placeholder], serde_json::json!({})),
        )
        .unwrap(),
        1,
    )
    .await
    .unwrap();
    let sidecar_listener = sidecar.listener("outbound").await.unwrap();
    wait_for_filter(&sidecar, &http, sidecar_listener, "backend")
        .await
        .unwrap();

    let next = NextHop {
        via: format!("http://{sidecar_listener}"),
        host: "backend".into(),
    };
    let frontend = EchoService::start_calling("frontend", "baseline", Some(next.clone()))
        .await
        .unwrap();
    let frontend_y = EchoService::start_calling("frontend", "frontend-y", Some(next))
        .await
        .unwrap();
    let edge_ports = SidecarPorts {
        backend_baseline: 1,
        frontend_baseline: frontend.addr().port(),
        control: 1,
    };
    let digest = sandbox_router_routing::edge::credential_sha256(CREDENTIAL.as_bytes());
    let edge_config = render(
        &shipped_config("filter-config-edge.json").unwrap(),
        &[("EDGE_CREDENTIAL_SHA256", &digest)],
    )
    .unwrap();
    // The shipped edge configuration, with the test's static table.
    let mut edge_filter: serde_json::Value = serde_json::from_str(&edge_config).unwrap();
    let table: serde_json::Value = serde_json::from_str(&config(
        &[backend_x.addr(), frontend_y.addr()],
        serde_json::json!({}),
    ))
    .unwrap();
    edge_filter["table"] = table["table"].clone();
    edge_filter["keys"] = table["keys"].clone();
    let edge = Envoy::start(
        &sidecar_config("grpc-edge", &edge_ports, &edge_filter.to_string()).unwrap(),
        1,
    )
    .await
    .unwrap();
    let edge_listener = edge.listener("outbound").await.unwrap();
    wait_for_filter(&edge, &http, edge_listener, "frontend")
        .await
        .unwrap();
    TwoHops {
        edge,
        edge_listener,
        _sidecar: sidecar,
        _services: vec![backend, backend_x, frontend, frontend_y],
    }
}

#[tokio::test]
async fn two_hops_pass_the_metadata_on_and_each_sidecar_routes_its_hop() {
    let hops = two_hops().await;
    let frontend = client(hops.edge_listener, "frontend");
    let credential = ("x-sandbox-router-credential", CREDENTIAL.as_bytes());
    for format in [Source::Baggage, Source::OtBaggage, Source::XOtSpanContext] {
        for (key, expected) in [
            (KEY_X, "frontend/baseline -> backend/feature-x"),
            (KEY_Y, "frontend/frontend-y -> backend/baseline"),
        ] {
            let lines = key_in(format, key);
            let mut metadata = as_refs(&lines);
            metadata.push(credential);
            let what = format!("{format:?} {key}");
            let (answer, _) = say(&frontend, &metadata, None)
                .await
                .unwrap_or_else(|s| panic!("{what}: {s:?}\n{}", hops.edge.log_tail()));
            assert_eq!(answer.chain(), expected, "{what}");
            // The frontend passed the context on: the backend saw it too.
            let backend = answer.downstream.as_deref().unwrap();
            for (name, value) in &lines {
                assert_eq!(backend.metadata.get(name), Some(value), "{what}: {name}");
            }
            assert_eq!(backend.http_version, "HTTP/2.0", "{what}");

            let (answers, end) = count(&frontend, &metadata, 3, None).await;
            end.unwrap_or_else(|s| panic!("{what}: {s:?}"));
            assert_eq!(chains(&answers), [expected; 3], "{what}");
        }
    }
    // Without the credential the edge removes the routing context: baseline
    // all the way, and the backend never sees the key.
    let lines = key_in(Source::Baggage, KEY_X);
    let (answer, _) = say(&frontend, &as_refs(&lines), None).await.unwrap();
    assert_eq!(answer.chain(), "frontend/baseline -> backend/baseline");
    assert!(!answer.downstream.unwrap().metadata.contains_key("baggage"));
    let (answer, _) = say(&frontend, &[], None).await.unwrap();
    assert_eq!(answer.chain(), "frontend/baseline -> backend/baseline");
}

/// A plain `GET /` for `backend` through `listener` with `client`; the echo
/// service's answer.
async fn get(
    client: &reqwest::Client,
    listener: SocketAddr,
    headers: &[(&str, &[u8])],
) -> testbed::EchoReply {
    let mut request = client.get(format!("http://backend:{}/", listener.port()));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = within("GET", request.send()).await.unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

#[tokio::test]
async fn http1_and_h2c_callers_keep_their_protocol_to_the_sandbox_and_the_baseline() {
    let sidecar = sidecar().await;
    let builder = || {
        reqwest::Client::builder()
            .no_proxy()
            .resolve("backend", sidecar.listener)
    };
    let http1 = builder().http1_only().build().unwrap();
    let h2c = builder().http2_prior_knowledge().build().unwrap();
    for (client, protocol) in [(&http1, "HTTP/1.1"), (&h2c, "HTTP/2.0")] {
        for (headers, expected) in [
            (vec![BAGGAGE_KEY_X], "backend/feature-x"),
            (Vec::new(), "backend/baseline"),
        ] {
            let reply = get(client, sidecar.listener, &headers).await;
            assert_eq!(reply.chain(), expected, "{protocol}");
            assert_eq!(reply.http_version, protocol, "{protocol} to {expected}");
            assert!(!reply.headers.contains_key("x-envoy-original-dst-host"));
        }
    }
}

/// Connect attempts to this address hang: a listener whose accept queue is
/// full, so the kernel drops further SYNs (a host that is gone, as far as a
/// connecting Envoy can tell).
struct Blackhole {
    _listener: tokio::net::TcpListener,
    _queued: Vec<tokio::net::TcpStream>,
    addr: SocketAddr,
}

async fn blackhole() -> Blackhole {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut queued = Vec::new();
    for _ in 0..8 {
        match tokio::time::timeout(
            Duration::from_millis(300),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            Ok(stream) => queued.push(stream.unwrap()),
            Err(_) => {
                return Blackhole {
                    _listener: listener,
                    _queued: queued,
                    addr,
                }
            }
        }
    }
    panic!("the accept queue of {addr} never filled");
}

#[tokio::test]
async fn a_down_sandbox_endpoint_answers_unavailable_promptly() {
    // backend's sandbox: a port nothing listens on (connection refused);
    // frontend's: an address that never answers (connect timeout).
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let hole = blackhole().await;
    let sidecar = Sidecar::start(SidecarOptions::default(), |_| {
        Ok(config(&[closed, hole.addr], serde_json::json!({})))
    })
    .await
    .unwrap();
    // The shipped connect timeout of the ORIGINAL_DST cluster; Envoy's
    // default (5 s) would exceed the bound below.
    let bound = Duration::from_secs(3);
    for (service, key, reason, envoy_says) in [
        (
            "backend",
            KEY_X,
            "connection refused",
            "remote connection failure",
        ),
        ("frontend", KEY_Y, "connect timeout", "connection timeout"),
    ] {
        let lines = key_in(Source::Baggage, key);
        let metadata = as_refs(&lines);
        let grpc = client(sidecar.listener, service);
        let start = Instant::now();
        let status = tokio::time::timeout(bound, say(&grpc, &metadata, None))
            .await
            .unwrap_or_else(|_| panic!("{service} ({reason}): no answer within {bound:?}"))
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{reason}: {status:?}");
        let took = start.elapsed();
        assert_eq!(
            status.message(),
            format!("upstream connect error or disconnect/reset before headers. reset reason: {envoy_says}"),
            "{reason}"
        );
        println!("{reason}: UNAVAILABLE after {took:?}: {}", status.message());
        let (answers, end) = tokio::time::timeout(bound, count(&grpc, &metadata, 2, None))
            .await
            .unwrap_or_else(|_| panic!("{service} ({reason}): no end within {bound:?}"));
        assert!(answers.is_empty());
        assert_eq!(end.unwrap_err().code(), Code::Unavailable, "{reason}");

        // The baseline is unaffected.
        let (answer, _) = say(&grpc, &[], None).await.unwrap();
        assert_eq!(answer.chain(), format!("{service}/baseline"));
    }
}

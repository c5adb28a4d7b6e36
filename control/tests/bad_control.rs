//! The control service gone silent or sending garbage: Envoy keeps the last
//! good table, counts each bad update, reconnects, and no request fails.
//!
//! The misbehaving service is a stand-in written here at the HTTP/2 level
//! (the real control service never sends such things), listening on the real
//! one's port after it is killed.

// Test code: a failed expectation should panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use reqwest::Method;
use sandbox_router_proto::v1::{
    table_update::Kind, Fork, RoutingTable, TableDelta, TableEntry, TableUpdate,
};
use serde_json::json;
use testbed::{poll_until, ControlService, Sidecar, SidecarOptions};
use tokio::task::JoinSet;

const BIN: &str = env!("CARGO_BIN_EXE_sandbox-router");
const DEADLINE: Duration = Duration::from_secs(15);

/// What the stand-in does on each watch stream.
struct Behaviour {
    /// Answer the stream's headers, then say nothing, ever.
    silent: AtomicBool,
    streams: AtomicUsize,
    silent_streams: AtomicUsize,
}

/// Messages that must each be refused: not a protobuf, a table with an
/// endpoint that is not IP:PORT, and a delta on a version the proxy never had.
fn garbage() -> Vec<Vec<u8>> {
    let bad_endpoint = TableUpdate {
        version: 99,
        kind: Some(Kind::Snapshot(RoutingTable {
            version: 99,
            entries: vec![TableEntry {
                routing_key: "evil-key".into(),
                sandbox: "evil".into(),
                forks: vec![Fork {
                    service: "backend".into(),
                    endpoints: vec!["metadata.google.internal:80".into()],
                }],
            }],
        })),
    };
    let wrong_base = TableUpdate {
        version: 100,
        kind: Some(Kind::Delta(TableDelta {
            base_version: 42,
            upserts: Vec::new(),
            removed_keys: vec!["anything".into()],
        })),
    };
    vec![
        b"\xff\xff\xff\xffnot a protobuf".to_vec(),
        bad_endpoint.encode_to_vec(),
        wrong_base.encode_to_vec(),
    ]
}

/// gRPC length-prefixed message framing.
fn frame(message: &[u8]) -> Bytes {
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(message);
    Bytes::from(framed)
}

/// Serves watch streams on `addr` until the returned set is dropped.
async fn bad_control(addr: SocketAddr, behaviour: Arc<Behaviour>) -> JoinSet<()> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_reuseaddr(true).unwrap();
    socket.bind(addr).unwrap();
    let listener = socket.listen(64).unwrap();
    let mut tasks = JoinSet::new();
    tasks.spawn(async move {
        let mut connections = JoinSet::new();
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let behaviour = behaviour.clone();
            connections.spawn(async move {
                let Ok(mut h2) = h2::server::handshake(tcp).await else {
                    return;
                };
                let mut open = Vec::new();
                while let Some(Ok((_request, mut respond))) = h2.accept().await {
                    behaviour.streams.fetch_add(1, Ordering::SeqCst);
                    let response = http::Response::builder()
                        .status(200)
                        .header("content-type", "application/grpc")
                        .body(())
                        .unwrap();
                    let Ok(mut stream) = respond.send_response(response, false) else {
                        continue;
                    };
                    if behaviour.silent.load(Ordering::SeqCst) {
                        behaviour.silent_streams.fetch_add(1, Ordering::SeqCst);
                    } else {
                        for message in garbage() {
                            let _ = stream.send_data(frame(&message), false);
                        }
                    }
                    // Never closed: the proxy decides when it has had enough.
                    open.push(stream);
                }
            });
        }
    });
    tasks
}

#[tokio::test]
async fn garbage_and_silence_from_the_control_service_change_nothing() {
    let mut control = ControlService::start(Path::new(BIN), None).await.unwrap();
    let options = SidecarOptions {
        sandboxes: vec![
            ("backend".into(), "feature-x".into()),
            ("frontend".into(), "frontend-y".into()),
        ],
        node_id: "victim".into(),
        control: Some(control.addr()),
        // `explain` would read the table from the misbehaving control service.
        compare_with_explain: false,
        ..SidecarOptions::default()
    };
    let sidecar = Sidecar::start(options, |_| Ok(json!({ "debug_header": true }).to_string()))
        .await
        .unwrap();
    let (_, body) = control
        .api(
            Method::POST,
            "/v1/sandboxes",
            Some(json!({ "name": "feature-x",
                         "forks": { "backend": [sidecar.sandboxes[0].addr().to_string()] } })),
        )
        .await
        .unwrap();
    let key = body["routing_key"].as_str().unwrap().to_owned();
    let baggage = format!("sandbox-routing-key={key}");
    let routed = || async {
        let reply = sidecar
            .get("backend", &[("baggage", baggage.as_bytes())])
            .await
            .unwrap();
        reply.served_by() == "backend/feature-x"
    };
    poll_until("the key routes", DEADLINE, || async {
        routed().await.then_some(())
    })
    .await
    .unwrap();
    let before = sidecar.envoy.stats().await.unwrap();

    // Garbage: every message refused and counted; the proxy reconnects; every
    // request meanwhile is answered and routed by the last good table.
    control.kill();
    let behaviour = Arc::new(Behaviour {
        silent: AtomicBool::new(false),
        streams: AtomicUsize::new(0),
        silent_streams: AtomicUsize::new(0),
    });
    let bad = bad_control(control.addr(), behaviour.clone()).await;
    poll_until("three rounds of garbage refused", DEADLINE, || async {
        assert!(routed().await, "a request left the last good table");
        let stats = sidecar.envoy.stats().await.ok()?;
        let errors = stats.filter("sync.update_errors") - before.filter("sync.update_errors");
        (errors >= 9 && behaviour.streams.load(Ordering::SeqCst) >= 3).then_some(())
    })
    .await
    .unwrap();
    let stats = sidecar.envoy.stats().await.unwrap();
    assert_eq!(stats.filter("sync.table_version"), 1);
    assert_eq!(stats.filter("sync.routing_keys"), 1);
    let evil = sidecar
        .get("backend", &[("baggage", b"sandbox-routing-key=evil-key")])
        .await
        .unwrap();
    assert_eq!(evil.served_by(), "backend/baseline");

    // Silence: a stream that never says anything; the table stays.
    behaviour.silent.store(true, Ordering::SeqCst);
    poll_until("a silent stream", DEADLINE, || async {
        assert!(routed().await, "a request left the last good table");
        (behaviour.silent_streams.load(Ordering::SeqCst) >= 1).then_some(())
    })
    .await
    .unwrap();
    for _ in 0..50 {
        assert!(routed().await, "a request left the last good table");
    }

    // The real control service comes back: the proxy resyncs and takes new writes.
    drop(bad);
    control.restart().await.unwrap();
    let (_, body) = control
        .api(
            Method::POST,
            "/v1/sandboxes",
            Some(json!({ "name": "frontend-y",
                         "forks": { "frontend": [sidecar.sandboxes[1].addr().to_string()] } })),
        )
        .await
        .unwrap();
    let key_y = format!(
        "sandbox-routing-key={}",
        body["routing_key"].as_str().unwrap()
    );
    poll_until(
        "the proxy back in sync",
        Duration::from_secs(20),
        || async {
            let reply = sidecar
                .get("frontend", &[("baggage", key_y.as_bytes())])
                .await
                .ok()?;
            (reply.served_by() == "frontend/frontend-y").then_some(())
        },
    )
    .await
    .unwrap();
    assert!(routed().await);
}

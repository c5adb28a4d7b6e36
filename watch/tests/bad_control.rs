//! What the real control service never sends: refused updates answered on
//! the wire with their error while the last good table stays; a delta out of
//! step and an undecodable message make the watch reconnect and say (in its
//! hello) which version it still holds; refused streams are retried with
//! exponential backoff, reset once a stream delivers.
//!
//! The control service here is a stand-in written at the HTTP/2 level (h2),
//! speaking gRPC framing over a real socket, scripted message by message.

// Test code: a failed expectation should panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;
use sandbox_router_proto::v1::{
    table_update::Kind, Fork, RoutingTable, TableDelta, TableEntry, TableUpdate, WatchRequest,
};
use sandbox_router_routing::{ForkLookup, RouteLookup};
use sandbox_router_watch::{Watch, WatchConfig};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const DEADLINE: Duration = Duration::from_secs(15);

/// One watch stream as the stand-in sees it.
struct Stream {
    /// When its headers arrived.
    opened: Instant,
    request: h2::RecvStream,
    respond: h2::server::SendResponse<Bytes>,
    send: Option<h2::SendStream<Bytes>>,
    buffer: Vec<u8>,
}

impl Stream {
    /// Answers the headers: the stream is open.
    fn accept(&mut self) {
        let response = http::Response::builder()
            .status(200)
            .header("content-type", "application/grpc")
            .body(())
            .unwrap();
        self.send = Some(self.respond.send_response(response, false).unwrap());
    }

    /// Refuses the stream (a trailers-only gRPC response).
    fn refuse(&mut self) {
        let response = http::Response::builder()
            .status(200)
            .header("content-type", "application/grpc")
            .header("grpc-status", "16")
            .header("grpc-message", "go away")
            .body(())
            .unwrap();
        self.respond.send_response(response, true).unwrap();
    }

    fn send_raw(&mut self, message: &[u8]) {
        let mut framed = vec![0u8];
        framed.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
        framed.extend_from_slice(message);
        self.send
            .as_mut()
            .unwrap()
            .send_data(Bytes::from(framed), false)
            .unwrap();
    }

    fn send(&mut self, update: &TableUpdate) {
        self.send_raw(&update.encode_to_vec());
    }

    /// Ends the stream normally (`grpc-status: 0`).
    fn close(&mut self) {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        self.send.as_mut().unwrap().send_trailers(trailers).unwrap();
    }

    /// The next message the watch sent (its hello, then acknowledgements).
    async fn read(&mut self) -> WatchRequest {
        tokio::time::timeout(DEADLINE, async {
            loop {
                if self.buffer.len() >= 5 {
                    let len = u32::from_be_bytes(self.buffer[1..5].try_into().unwrap()) as usize;
                    if self.buffer.len() >= 5 + len {
                        let message = WatchRequest::decode(&self.buffer[5..5 + len]).unwrap();
                        self.buffer.drain(..5 + len);
                        return message;
                    }
                }
                let chunk = self.request.data().await.unwrap().unwrap();
                let _ = self.request.flow_control().release_capacity(chunk.len());
                self.buffer.extend_from_slice(&chunk);
            }
        })
        .await
        .expect("a message from the watch")
    }

    /// The stream's end, as the watch leaves it.
    async fn ended(&mut self) {
        tokio::time::timeout(DEADLINE, async {
            while let Some(Ok(_)) = self.request.data().await {}
        })
        .await
        .expect("the watch leaves the stream");
    }
}

/// Listens on a free port; every watch stream opened is handed over.
async fn stand_in() -> (String, mpsc::UnboundedReceiver<Stream>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let Ok(mut connection) = h2::server::handshake(tcp).await else {
                    return;
                };
                // Accepting also drives the connection: keep at it.
                while let Some(Ok((request, respond))) = connection.accept().await {
                    let stream = Stream {
                        opened: Instant::now(),
                        request: request.into_body(),
                        respond,
                        send: None,
                        buffer: Vec::new(),
                    };
                    if tx.send(stream).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, rx)
}

async fn next(streams: &mut mpsc::UnboundedReceiver<Stream>) -> Stream {
    tokio::time::timeout(DEADLINE, streams.recv())
        .await
        .expect("the watch opens a stream")
        .unwrap()
}

fn entry(key: &str, endpoint: &str) -> TableEntry {
    TableEntry {
        routing_key: key.into(),
        sandbox: String::new(),
        forks: vec![Fork {
            service: "backend".into(),
            endpoints: vec![endpoint.into()],
        }],
    }
}

fn snapshot(version: u64, entries: Vec<TableEntry>) -> TableUpdate {
    TableUpdate {
        version,
        kind: Some(Kind::Snapshot(RoutingTable { version, entries })),
    }
}

fn delta(version: u64, base_version: u64, upserts: Vec<TableEntry>) -> TableUpdate {
    TableUpdate {
        version,
        kind: Some(Kind::Delta(TableDelta {
            base_version,
            upserts,
            removed_keys: Vec::new(),
        })),
    }
}

fn routes(watch: &Watch, key: &str) -> bool {
    matches!(watch.table().fork(key, "backend"), ForkLookup::Endpoints(_))
        && matches!(
            watch.lookup().fork(key, "backend"),
            ForkLookup::Endpoints(_)
        )
}

#[tokio::test]
async fn refused_updates_are_acknowledged_with_their_error_and_change_nothing() {
    let (url, mut streams) = stand_in().await;
    let mut config = WatchConfig::new(url, "victim");
    config.initial_backoff = Duration::from_millis(20);
    config.max_backoff = Duration::from_millis(200);
    let watch = Watch::start(config).unwrap();

    let mut s1 = next(&mut streams).await;
    s1.accept();
    let hello = s1.read().await;
    assert_eq!(
        (hello.node_id.as_str(), hello.applied_version),
        ("victim", 0)
    );
    s1.send(&snapshot(1, vec![entry("ka", "10.0.0.1:80")]));
    let ack = s1.read().await;
    assert_eq!((ack.applied_version, ack.error.as_str()), (1, ""));
    assert!(routes(&watch, "ka"));

    // Invalid: an endpoint that is a name; a snapshot with a bad key; an
    // update that is neither snapshot nor delta. Each is answered with its
    // error and version 1 still applied.
    s1.send(&delta(
        2,
        1,
        vec![entry("kb", "metadata.google.internal:80")],
    ));
    let ack = s1.read().await;
    assert_eq!(ack.applied_version, 1);
    assert!(ack.error.contains("endpoints[0]"), "{}", ack.error);
    s1.send(&snapshot(3, vec![entry("bad key", "10.0.0.2:80")]));
    let ack = s1.read().await;
    assert_eq!(ack.applied_version, 1);
    assert!(ack.error.contains("routing_key"), "{}", ack.error);
    s1.send(&TableUpdate {
        version: 4,
        kind: None,
    });
    let ack = s1.read().await;
    assert_eq!(ack.applied_version, 1);
    assert!(!ack.error.is_empty());
    let status = watch.status();
    assert!(status.connected);
    assert_eq!((status.version, status.routing_keys), (1, 1));
    assert_eq!((status.updates_applied, status.update_errors), (1, 3));
    assert!(routes(&watch, "ka") && !routes(&watch, "kb"));

    // A delta on a version the watch does not hold: it leaves the stream
    // and reconnects, holding version 1, for a snapshot.
    s1.send(&delta(6, 5, vec![entry("kc", "10.0.0.3:80")]));
    s1.ended().await;
    let mut s2 = next(&mut streams).await;
    s2.accept();
    let hello = s2.read().await;
    assert_eq!(
        (hello.node_id.as_str(), hello.applied_version),
        ("victim", 1)
    );
    assert!(!routes(&watch, "kc"));

    // Not a protobuf: refused like any bad update (answered with its error,
    // counted), and the stream goes on, as the Wasm singleton's does.
    s2.send_raw(b"\xff\xff\xff\xffnot a protobuf");
    let ack = s2.read().await;
    assert_eq!(ack.applied_version, 1);
    assert!(ack.error.contains("not a TableUpdate"), "{}", ack.error);
    assert!(routes(&watch, "ka"));

    // A good snapshot on the same stream replaces everything.
    s2.send(&snapshot(7, vec![entry("kd", "10.0.0.4:80")]));
    assert_eq!(s2.read().await.applied_version, 7);
    assert!(routes(&watch, "kd") && !routes(&watch, "ka"));
    let status = watch.status();
    assert_eq!((status.connects, status.disconnects), (2, 1));
    assert_eq!((status.updates_applied, status.update_errors), (2, 5));
}

#[tokio::test]
async fn refused_streams_back_off_exponentially_and_a_delivering_stream_resets_it() {
    let (url, mut streams) = stand_in().await;
    let mut config = WatchConfig::new(url, "patient");
    config.initial_backoff = Duration::from_millis(50);
    config.max_backoff = Duration::from_millis(800);
    let watch = Watch::start(config).unwrap();

    // Five refusals: the waits between attempts are at least 50, 100, 200, 400 ms.
    let mut opened = Vec::new();
    for _ in 0..5 {
        let mut s = next(&mut streams).await;
        s.refuse();
        opened.push(s.opened);
    }
    for (i, pair) in opened.windows(2).enumerate() {
        let gap = pair[1] - pair[0];
        let backoff = Duration::from_millis(50 << i);
        assert!(gap >= backoff, "attempt {}: {gap:?} < {backoff:?}", i + 2);
    }
    let status = watch.status();
    assert_eq!((status.connects, status.version), (0, 0));
    assert!(status.last_error.unwrap().contains("go away"));

    // A stream that delivers, then ends: the next attempt comes after the
    // initial backoff again (800 ms had been next).
    let mut s = next(&mut streams).await;
    s.accept();
    s.read().await;
    s.send(&snapshot(1, vec![entry("ka", "10.0.0.1:80")]));
    assert_eq!(s.read().await.applied_version, 1);
    s.close();
    let closed = Instant::now();
    let again = next(&mut streams).await;
    let gap = again.opened - closed;
    assert!(
        gap >= Duration::from_millis(50) && gap < Duration::from_millis(700),
        "{gap:?}"
    );
    assert!(routes(&watch, "ka"));
    assert_eq!(watch.status().disconnects, 1);
}

#[tokio::test]
async fn a_stream_that_only_sends_deltas_out_of_step_is_retried_with_backoff() {
    let (url, mut streams) = stand_in().await;
    let mut config = WatchConfig::new(url, "patient");
    config.initial_backoff = Duration::from_millis(50);
    config.max_backoff = Duration::from_millis(800);
    let watch = Watch::start(config).unwrap();
    // Never a snapshot, only a delta on a version the watch never had: each
    // stream is left, and the next one waits longer (no reconnect spin).
    let mut opened = Vec::new();
    for _ in 0..4 {
        let mut s = next(&mut streams).await;
        s.accept();
        s.read().await;
        s.send(&delta(9, 8, vec![entry("ka", "10.0.0.1:80")]));
        s.ended().await;
        opened.push(s.opened);
    }
    for (i, pair) in opened.windows(2).enumerate() {
        let gap = pair[1] - pair[0];
        let backoff = Duration::from_millis(50 << i);
        assert!(gap >= backoff, "attempt {}: {gap:?} < {backoff:?}", i + 2);
    }
    let status = watch.status();
    assert_eq!((status.version, status.updates_applied), (0, 0));
    assert!(status.update_errors >= 3);
    assert!(!routes(&watch, "ka"));
}

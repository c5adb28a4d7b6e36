//! The gRPC `Watch` stream: a snapshot, then every delta in order. A proxy
//! that falls behind (its buffer overflowed) gets a fresh snapshot instead.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::ConnectInfo;
use sandbox_router_proto::v1::{table_update::Kind, TableUpdate, WatchRequest};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::api::constant_time_eq;
use crate::control::Control;
use crate::grpc::routing_table_service_server::{RoutingTableService, RoutingTableServiceServer};

/// `token`: when set, a proxy must send `authorization: Bearer <token>` as
/// gRPC metadata to open the stream.
pub fn service(
    control: Arc<Control>,
    token: Option<String>,
) -> RoutingTableServiceServer<WatchService> {
    RoutingTableServiceServer::new(WatchService {
        control,
        token: token.map(Arc::from),
    })
}

pub struct WatchService {
    control: Arc<Control>,
    token: Option<Arc<str>>,
}

type UpdateStream = Pin<Box<dyn Stream<Item = Result<TableUpdate, Status>> + Send>>;

#[tonic::async_trait]
impl RoutingTableService for WatchService {
    type WatchStream = UpdateStream;

    async fn watch(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<UpdateStream>, Status> {
        if let Some(token) = &self.token {
            let given = request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes())) {
                self.control
                    .counters
                    .watch_refused
                    .fetch_add(1, Ordering::Relaxed);
                return Err(Status::unauthenticated(
                    "this control service needs the watch token (the sync plugin's \"token\")",
                ));
            }
        }
        let peer = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.to_string())
            .unwrap_or_default();
        let mut inbound = request.into_inner();
        let hello = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("send a WatchRequest (node_id) first"))?;
        let id = self.control.proxy_connected(hello.node_id, peer);
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(stream_updates(Arc::clone(&self.control), id, inbound, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

async fn stream_updates(
    control: Arc<Control>,
    id: u64,
    mut inbound: Streaming<WatchRequest>,
    tx: mpsc::Sender<Result<TableUpdate, Status>>,
) {
    let (mut sent, mut updates) = match send_snapshot(&control, &tx).await {
        Some(subscribed) => subscribed,
        None => return control.proxy_disconnected(id),
    };
    control.proxy_update(id, |p| p.sent_version = sent);
    loop {
        tokio::select! {
            update = updates.recv() => match update {
                Ok(update) => {
                    if update.version <= sent {
                        continue;
                    }
                    let follows = match &update.kind {
                        Some(Kind::Delta(delta)) => delta.base_version == sent,
                        _ => false,
                    };
                    if follows {
                        if tx.send(Ok((*update).clone())).await.is_err() {
                            break;
                        }
                        control.counters.updates_sent.fetch_add(1, Ordering::Relaxed);
                        sent = update.version;
                    } else {
                        match send_snapshot(&control, &tx).await {
                            Some((version, receiver)) => (sent, updates) = (version, receiver),
                            None => break,
                        }
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => match send_snapshot(&control, &tx).await {
                    Some((version, receiver)) => (sent, updates) = (version, receiver),
                    None => break,
                },
                Err(broadcast::error::RecvError::Closed) => break,
            },
            message = inbound.message() => match message {
                Ok(Some(ack)) => control.proxy_update(id, |p| {
                    p.applied_version = ack.applied_version;
                    p.error = ack.error;
                }),
                Ok(None) | Err(_) => break,
            },
        }
        control.proxy_update(id, |p| p.sent_version = sent);
    }
    control.proxy_disconnected(id);
}

/// Sends the current table; returns its version and a receiver for what follows.
async fn send_snapshot(
    control: &Control,
    tx: &mpsc::Sender<Result<TableUpdate, Status>>,
) -> Option<(u64, broadcast::Receiver<Arc<TableUpdate>>)> {
    let (snapshot, updates) = control.subscribe();
    let version = snapshot.version;
    tx.send(Ok(snapshot)).await.ok()?;
    control
        .counters
        .snapshots_sent
        .fetch_add(1, Ordering::Relaxed);
    Some((version, updates))
}

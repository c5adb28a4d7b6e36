//! A tiny HTTP service standing in for one version of one service: it answers
//! every request with who it is and the headers it received, so a test can
//! see where a request landed and what reached the upstream. Given a next hop,
//! it first calls that service through its sidecar, propagating the tracing
//! context as an instrumented application does, and includes the answer.
//!
//! It serves HTTP/1.1 and h2c on one port, and the gRPC echo service
//! (`sandbox_router.echo.v1.Echo`, see [`crate::grpc`]) beside the HTTP echo.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use anyhow::Result;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Version};
use axum::Json;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::grpc::GrpcEcho;

/// What an echo service answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EchoReply {
    pub service: String,
    /// `baseline`, or the sandbox's name.
    pub version: String,
    /// The address this instance listens on (tells a fork's endpoints apart).
    pub addr: String,
    /// The HTTP version of the request as it reached this instance
    /// (`HTTP/1.1`, `HTTP/2.0`).
    #[serde(default)]
    pub http_version: String,
    /// The request's path and query as they reached this instance.
    #[serde(default)]
    pub path: String,
    /// Request headers as received (lossy UTF-8; repeated names joined by `, `).
    pub headers: BTreeMap<String, String>,
    /// The next hop's answer, when this service calls one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downstream: Option<Box<EchoReply>>,
}

impl EchoReply {
    /// `service/version`, followed by ` -> ` and the next hop's, if any.
    pub fn chain(&self) -> String {
        let mut text = format!("{}/{}", self.service, self.version);
        if let Some(next) = &self.downstream {
            text.push_str(" -> ");
            text.push_str(&next.chain());
        }
        text
    }
}

/// Where a service calls next: `host` through its sidecar.
#[derive(Debug, Clone)]
pub struct NextHop {
    /// The sidecar's listener as a URL: `http://127.0.0.1:PORT`, or
    /// `http://frontend-sidecar:15001` in containers.
    pub via: String,
    /// The service called (the request's `Host`).
    pub host: String,
}

/// Headers an OpenTelemetry / OpenTracing / Jaeger instrumented app passes on.
pub(crate) fn is_propagated(name: &str) -> bool {
    matches!(
        name,
        "baggage" | "traceparent" | "tracestate" | "x-ot-span-context"
    ) || name.starts_with("ot-baggage-")
        || name.starts_with("uberctx-")
}

pub struct EchoService {
    pub service: String,
    pub version: String,
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
}

#[derive(Clone)]
struct Identity {
    service: String,
    version: String,
    addr: String,
    next: Option<NextHop>,
    http: reqwest::Client,
}

impl EchoService {
    /// Serves on a free loopback port until dropped.
    pub async fn start(service: &str, version: &str) -> Result<EchoService> {
        Self::start_calling(service, version, None).await
    }

    /// Like `start`, but every request first calls `next`.
    pub async fn start_calling(
        service: &str,
        version: &str,
        next: Option<NextHop>,
    ) -> Result<EchoService> {
        Self::start_on(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            service,
            version,
            next,
        )
        .await
    }

    /// Serves on `listen` (port 0: any free port) until dropped; every
    /// request first calls `next`, if given (an HTTP request over HTTP, a
    /// gRPC call over gRPC). The `demo-service` binary runs one of these in a
    /// container.
    pub async fn start_on(
        listen: SocketAddr,
        service: &str,
        version: &str,
        next: Option<NextHop>,
    ) -> Result<EchoService> {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let grpc = GrpcEcho::new(service, version, &addr.to_string(), next.as_ref())?;
        let identity = Identity {
            service: service.to_owned(),
            version: version.to_owned(),
            addr: addr.to_string(),
            next,
            http: reqwest::Client::builder().no_proxy().build()?,
        };
        // gRPC calls (`/sandbox_router.echo.v1.Echo/*`) to the gRPC echo,
        // every other request to the HTTP echo.
        let http = axum::Router::new().fallback(answer).with_state(identity);
        let app = grpc.router().fallback_service(http);
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        Ok(EchoService {
            service: service.to_owned(),
            version: version.to_owned(),
            addr,
            shutdown: Some(tx),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for EchoService {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

async fn answer(
    State(identity): State<Identity>,
    version: Version,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Result<Json<EchoReply>, (StatusCode, String)> {
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in &headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        seen.entry(name.as_str().to_owned())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert(value);
    }
    let downstream = match &identity.next {
        Some(next) => Some(Box::new(
            call(&identity.http, next, &headers).await.map_err(|e| {
                (
                    StatusCode::BAD_GATEWAY,
                    format!("{} calling {}: {e}", identity.service, next.host),
                )
            })?,
        )),
        None => None,
    };
    Ok(Json(EchoReply {
        service: identity.service,
        version: identity.version,
        addr: identity.addr,
        http_version: format!("{version:?}"),
        path: uri
            .path_and_query()
            .map_or_else(|| uri.path().to_owned(), |p| p.as_str().to_owned()),
        headers: seen,
        downstream,
    }))
}

async fn call(http: &reqwest::Client, next: &NextHop, incoming: &HeaderMap) -> Result<EchoReply> {
    let mut request = http
        .get(format!("{}/", next.via.trim_end_matches('/')))
        .header(reqwest::header::HOST, next.host.as_str());
    for (name, value) in incoming
        .iter()
        .filter(|(name, _)| is_propagated(name.as_str()))
    {
        request = request.header(name.as_str(), value.as_bytes());
    }
    Ok(request.send().await?.error_for_status()?.json().await?)
}

//! The sandbox-router control service: owns sandboxes and route groups
//! (SQLite store), serves the HTTP/JSON API and the gRPC watch stream on one
//! port, and pushes every table change to every connected Envoy.

#![forbid(unsafe_code)]

pub mod access;
pub mod api;
pub mod control;
pub mod error;
pub mod kubernetes;
pub mod model;
pub mod store;
pub mod watch;

/// Generated gRPC service code for `sandbox_router.v1.RoutingTableService`.
pub mod grpc {
    #![allow(clippy::all, clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    include!(concat!(env!("OUT_DIR"), "/sandbox_router.v1.rs"));
}

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sandbox_router_proto::v1 as proto;

pub use control::Control;
pub use error::ApiError;

/// How often expired sandboxes are looked for (expiry is precise to this).
pub const EXPIRY_INTERVAL: Duration = Duration::from_millis(500);

/// Serves API and watch stream on `listener` until `shutdown` resolves.
/// What `serve` offers besides the model: the tokens it requires (`None`:
/// open), and the filter module it hands out.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// For API writes (people and CI).
    pub write_token: Option<String>,
    /// For the proxies' watch streams: a separate token, so a proxy never
    /// holds one that can change the table.
    pub watch_token: Option<String>,
    /// The filter `.wasm`, served at `GET /v1/filter.wasm` so that proxies
    /// can fetch the module the singleton runs (the Istio install does).
    pub filter_wasm: Option<Arc<[u8]>>,
    /// What the edge enables besides headers, shown with every sandbox.
    pub access: access::Access,
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    control: Arc<Control>,
    options: ServeOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let grpc =
        tonic::service::Routes::new(watch::service(Arc::clone(&control), options.watch_token))
            .into_axum_router();
    let app = api::router(
        Arc::clone(&control),
        options.write_token,
        options.filter_wasm,
        options.access,
    )
    .merge(grpc);
    // An external owner (the Kubernetes controller) expires sandboxes itself.
    let expiry = (!control.is_external()).then(|| tokio::spawn(expire_forever(control)));
    let served = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await;
    if let Some(expiry) = expiry {
        expiry.abort();
    }
    served
}

async fn expire_forever(control: Arc<Control>) {
    let mut tick = tokio::time::interval(EXPIRY_INTERVAL);
    loop {
        tick.tick().await;
        let control = Arc::clone(&control);
        let _ = tokio::task::spawn_blocking(move || control.expire(control::now_ms())).await;
    }
}

/// Opens (or creates) the store at `path`.
pub fn open(path: &Path) -> Result<Arc<Control>, ApiError> {
    Control::open(path)
}

/// The routing table as JSON, in the shape of the filter's `table` setting.
pub fn table_json(table: &proto::RoutingTable) -> serde_json::Value {
    let entries: Vec<serde_json::Value> = table
        .entries
        .iter()
        .map(|e| {
            let forks: Vec<serde_json::Value> = e
                .forks
                .iter()
                .map(|f| serde_json::json!({ "service": f.service, "endpoints": f.endpoints }))
                .collect();
            serde_json::json!({ "routing_key": e.routing_key, "sandbox": e.sandbox, "forks": forks })
        })
        .collect();
    serde_json::json!({ "version": table.version, "entries": entries })
}

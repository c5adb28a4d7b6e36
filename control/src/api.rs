//! HTTP/JSON API.
//!
//! | method | path | |
//! |---|---|---|
//! | POST | /v1/sandboxes | create (201; body: name, forks, labels, ttl_seconds) |
//! | GET | /v1/sandboxes, /v1/sandboxes/{name} | list, get |
//! | PUT | /v1/sandboxes/{name}/forks | replace forks (body: forks) |
//! | DELETE | /v1/sandboxes/{name} | delete |
//! | POST, GET, PUT, DELETE | /v1/routegroups[/{name}] | the same for route groups |
//! | GET | /v1/table | the routing table as pushed |
//! | GET | /v1/proxies | connected proxies and their versions |
//! | GET | /healthz, /metrics | liveness; Prometheus text |
//!
//! Writes need `Authorization: Bearer <token>` when a token is configured.
//! Errors are `{"error": {"field", "reason"}}` with 400/401/404/409; a
//! rejected write has written nothing. In Kubernetes mode every write is
//! answered 405: the cluster owns the state.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::access::Access;
use crate::control::Control;
use crate::error::ApiError;
use crate::model::{NewRouteGroup, NewSandbox, RouteGroup, Sandbox};

#[derive(Clone)]
struct Api {
    control: Arc<Control>,
    token: Option<Arc<str>>,
    filter_wasm: Option<Arc<[u8]>>,
    access: Arc<Access>,
}

impl Api {
    /// A sandbox or route group as the API shows it: with its `access`.
    fn show(&self, item: impl Serialize) -> serde_json::Value {
        self.access
            .annotate(serde_json::to_value(item).unwrap_or_default())
    }

    fn show_all<T: Serialize>(&self, list: List<T>) -> serde_json::Value {
        serde_json::json!({
            "version": list.version,
            "items": list.items.into_iter().map(|i| self.show(i)).collect::<Vec<_>>(),
        })
    }
}

pub fn router(
    control: Arc<Control>,
    token: Option<String>,
    filter_wasm: Option<Arc<[u8]>>,
    access: Access,
) -> Router {
    let api = Api {
        control,
        token: token.map(Arc::from),
        filter_wasm,
        access: Arc::new(access),
    };
    Router::new()
        .route("/v1/sandboxes", get(list_sandboxes).post(create_sandbox))
        .route(
            "/v1/sandboxes/{name}",
            get(get_sandbox).delete(delete_sandbox),
        )
        .route("/v1/sandboxes/{name}/forks", put(set_forks))
        .route("/v1/routegroups", get(list_groups).post(create_group))
        .route(
            "/v1/routegroups/{name}",
            get(get_group).put(update_group).delete(delete_group),
        )
        .route("/v1/table", get(table))
        .route("/v1/proxies", get(proxies))
        .route("/v1/filter.wasm", get(serve_filter_wasm))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(
            api.clone(),
            require_token_for_writes,
        ))
        .with_state(api)
}

/// The filter module, for proxies that fetch it (`serve --filter-wasm`).
async fn serve_filter_wasm(State(api): State<Api>) -> Response {
    match &api.filter_wasm {
        Some(bytes) => {
            ([(header::CONTENT_TYPE, "application/wasm")], bytes.to_vec()).into_response()
        }
        None => (
            axum::http::StatusCode::NOT_FOUND,
            "this control service serves no filter module (serve --filter-wasm)\n",
        )
            .into_response(),
    }
}

async fn require_token_for_writes(
    State(api): State<Api>,
    request: Request,
    next: Next,
) -> Response {
    let write = !matches!(
        *request.method(),
        axum::http::Method::GET | axum::http::Method::HEAD
    );
    if let (true, Some(token)) = (write, &api.token) {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes())) {
            return ApiError::Unauthorized.into_response();
        }
    }
    if write && api.control.is_external() {
        // Refused before the body is read: any write, well-formed or not.
        api.control
            .counters
            .rejected_writes
            .fetch_add(1, Ordering::Relaxed);
        return ApiError::ReadOnly(crate::control::READ_ONLY.to_owned()).into_response();
    }
    next.run(request).await
}

/// Compares without an early exit, so timing does not reveal a token prefix.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A JSON body whose errors are ours (400 naming the field), not axum's text.
struct Body<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = axum::body::Bytes::from_request(request, state)
            .await
            .map_err(|e| ApiError::invalid("body", e.body_text()))?;
        sandbox_router_routing::error::parse_json(&bytes, "body")
            .map(Body)
            .map_err(|e| ApiError::invalid(e.field, e.reason))
    }
}

/// Runs blocking store work off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
}

async fn create_sandbox(
    State(api): State<Api>,
    Body(new): Body<NewSandbox>,
) -> Result<Response, ApiError> {
    let control = Arc::clone(&api.control);
    let written = blocking(move || control.create_sandbox(new)).await?;
    Ok((StatusCode::CREATED, Json(api.show(written))).into_response())
}

async fn list_sandboxes(State(api): State<Api>) -> Json<serde_json::Value> {
    Json(api.show_all(api.control.read(|m, version| List {
        version,
        items: m.sandboxes().cloned().collect::<Vec<Sandbox>>(),
    })))
}

async fn get_sandbox(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    api.control
        .read(|m, _| m.sandbox(&name).cloned())
        .map(|s| Json(api.show(s)))
        .ok_or_else(|| ApiError::not_found("sandbox", &name))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Forks {
    forks: BTreeMap<String, Vec<String>>,
}

async fn set_forks(
    State(api): State<Api>,
    Path(name): Path<String>,
    Body(body): Body<Forks>,
) -> Result<Response, ApiError> {
    let control = Arc::clone(&api.control);
    let written = blocking(move || control.set_forks(&name, &body.forks)).await?;
    Ok(Json(api.show(written)).into_response())
}

async fn delete_sandbox(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Result<Json<Version>, ApiError> {
    let version = blocking(move || api.control.delete_sandbox(&name)).await?;
    Ok(Json(Version { version }))
}

async fn create_group(
    State(api): State<Api>,
    Body(new): Body<NewRouteGroup>,
) -> Result<Response, ApiError> {
    let control = Arc::clone(&api.control);
    let written = blocking(move || control.create_group(new)).await?;
    Ok((StatusCode::CREATED, Json(api.show(written))).into_response())
}

async fn list_groups(State(api): State<Api>) -> Json<serde_json::Value> {
    Json(api.show_all(api.control.read(|m, version| List {
        version,
        items: m.groups().cloned().collect::<Vec<RouteGroup>>(),
    })))
}

async fn get_group(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    api.control
        .read(|m, _| m.group(&name).cloned())
        .map(|g| Json(api.show(g)))
        .ok_or_else(|| ApiError::not_found("route group", &name))
}

async fn update_group(
    State(api): State<Api>,
    Path(name): Path<String>,
    Body(update): Body<NewRouteGroup>,
) -> Result<Response, ApiError> {
    let control = Arc::clone(&api.control);
    let written = blocking(move || control.update_group(&name, update)).await?;
    Ok(Json(api.show(written)).into_response())
}

async fn delete_group(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Result<Json<Version>, ApiError> {
    let version = blocking(move || api.control.delete_group(&name)).await?;
    Ok(Json(Version { version }))
}

async fn table(State(api): State<Api>) -> Json<serde_json::Value> {
    let table = api.control.read(|m, version| m.table(version));
    Json(crate::table_json(&table))
}

async fn proxies(State(api): State<Api>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "version": api.control.version(),
        "proxies": api.control.proxies(),
    }))
}

async fn metrics(State(api): State<Api>) -> impl IntoResponse {
    let c = &api.control;
    let (sandboxes, groups, version) =
        c.read(|m, v| (m.sandboxes().count(), m.groups().count(), v));
    let proxies = c.proxies();
    let in_sync = proxies
        .iter()
        .filter(|p| p.applied_version == version)
        .count();
    let n = &c.counters;
    let lines = [
        (
            "sandbox_router_table_version",
            "gauge",
            "Current routing table version.",
            version,
        ),
        (
            "sandbox_router_sandboxes",
            "gauge",
            "Sandboxes in the store.",
            sandboxes as u64,
        ),
        (
            "sandbox_router_route_groups",
            "gauge",
            "Route groups in the store.",
            groups as u64,
        ),
        (
            "sandbox_router_proxies_connected",
            "gauge",
            "Proxies holding a watch stream.",
            proxies.len() as u64,
        ),
        (
            "sandbox_router_proxies_in_sync",
            "gauge",
            "Connected proxies that applied the current version.",
            in_sync as u64,
        ),
        (
            "sandbox_router_writes_total",
            "counter",
            "Acknowledged writes.",
            n.writes.load(Ordering::Relaxed),
        ),
        (
            "sandbox_router_rejected_writes_total",
            "counter",
            "Writes rejected (4xx).",
            n.rejected_writes.load(Ordering::Relaxed),
        ),
        (
            "sandbox_router_expired_sandboxes_total",
            "counter",
            "Sandboxes deleted at expiry.",
            n.expired_sandboxes.load(Ordering::Relaxed),
        ),
        (
            "sandbox_router_snapshots_sent_total",
            "counter",
            "Full tables sent to proxies.",
            n.snapshots_sent.load(Ordering::Relaxed),
        ),
        (
            "sandbox_router_updates_sent_total",
            "counter",
            "Incremental updates sent to proxies.",
            n.updates_sent.load(Ordering::Relaxed),
        ),
        (
            "sandbox_router_watch_refused_total",
            "counter",
            "Watch streams refused for a missing or wrong watch token.",
            n.watch_refused.load(Ordering::Relaxed),
        ),
    ];
    let mut text = String::new();
    for (name, kind, help, value) in lines {
        text.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        ));
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

#[derive(Serialize)]
struct List<T> {
    version: u64,
    items: Vec<T>,
}

#[derive(Serialize)]
struct Version {
    version: u64,
}

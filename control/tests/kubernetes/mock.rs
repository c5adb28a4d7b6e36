//! A mock of the Kubernetes API server, behind a real `kube::Client` (the
//! client's transport is a `tower_test::mock` pair, so every request the
//! controller makes lands here as HTTP).
//!
//! It serves what the controller uses, in the API server's wire format:
//! list and watch (resourceVersion, label selectors, newline-delimited watch
//! events) of sandboxes, routegroups and pods, cluster-wide or namespaced;
//! PUT of the status subresource (refused with 409 on a stale
//! resourceVersion); PATCH as a JSON merge patch (RFC 7386; a patch that
//! changes nothing keeps the resourceVersion and sends no event, as the API
//! server does); DELETE with a uid precondition. Objects start from the
//! recorded responses in `fixtures/`, and tests change them as the cluster
//! would ([`MockApiServer::apply`], [`MockApiServer::remove`]); every change
//! goes to the open watches. It is no API server: no admission, no schema
//! validation, no field managers, no watch-cache expiry (410) unless a test
//! asks for it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::body::Body as ResponseBody;
use bytes::Bytes;
use futures::StreamExt as _;
use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{json, Value};
use tokio::sync::mpsc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Sandbox,
    RouteGroup,
    Pod,
}

impl Kind {
    fn plural(self) -> &'static str {
        match self {
            Kind::Sandbox => "sandboxes",
            Kind::RouteGroup => "routegroups",
            Kind::Pod => "pods",
        }
    }

    fn list_kind(self) -> (&'static str, &'static str) {
        match self {
            Kind::Sandbox => ("sandbox-router.io/v1alpha1", "SandboxList"),
            Kind::RouteGroup => ("sandbox-router.io/v1alpha1", "RouteGroupList"),
            Kind::Pod => ("v1", "PodList"),
        }
    }
}

type Key = (Kind, String, String);

/// One change, as a watch event line would carry it.
#[derive(Clone)]
struct Change {
    rv: u64,
    kind: Kind,
    kind_event: &'static str,
    object: Value,
}

struct Watcher {
    kind: Kind,
    namespace: Option<String>,
    selector: Option<String>,
    tx: mpsc::UnboundedSender<Bytes>,
}

#[derive(Default)]
struct State {
    objects: BTreeMap<Key, Value>,
    log: Vec<Change>,
    rv: u64,
    uid: u64,
    watchers: Vec<Watcher>,
    /// Every request: "METHOD path?query".
    requests: Vec<String>,
    /// Status bodies the controller PUT, in order.
    status_writes: Vec<Value>,
    /// Every PATCH, in order, answered or refused.
    patches: Vec<PatchRequest>,
    /// Answer every PATCH with 403 Forbidden (RBAC without `patch`).
    forbid_patches: bool,
    /// Watch events of these kinds wait here (a slow watch) until released.
    held: Option<(Kind, Vec<Change>)>,
    /// Answer the next watch of this kind with 410 Gone (an expired
    /// resourceVersion), as the API server does after compaction.
    gone_once: Vec<Kind>,
}

/// A PATCH as it arrived.
#[derive(Clone, Debug)]
pub struct PatchRequest {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    pub content_type: String,
    /// The fieldManager query parameter.
    pub field_manager: Option<String>,
    pub body: Value,
}

#[derive(Clone, Default)]
pub struct MockApiServer {
    state: Arc<Mutex<State>>,
}

impl MockApiServer {
    /// A mock API server holding the objects of recorded list responses.
    pub fn with_fixtures(lists: &[(Kind, &str)]) -> Self {
        let server = MockApiServer::default();
        for (kind, text) in lists {
            let list: Value = serde_json::from_str(text).expect("fixture is JSON");
            for item in list["items"].as_array().expect("a list has items") {
                server.apply(*kind, item.clone());
            }
        }
        server
    }

    /// A `kube::Client` whose every request this mock answers.
    pub fn client(&self) -> kube::Client {
        let (service, mut handle) =
            tower_test::mock::pair::<Request<Body>, Response<ResponseBody>>();
        let server = self.clone();
        tokio::spawn(async move {
            while let Some((request, respond)) = handle.next_request().await {
                respond.send_response(server.handle(request).await);
            }
        });
        kube::Client::new(service, "default")
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates or replaces an object as a client would (kubectl apply, the
    /// kubelet updating a pod): new resourceVersion, uid and
    /// creationTimestamp kept, generation bumped when the spec changes.
    pub fn apply(&self, kind: Kind, mut object: Value) {
        let mut state = self.lock();
        let key = key_of(kind, &object);
        let old = state.objects.get(&key).cloned();
        state.rv += 1;
        state.uid += 1;
        let rv = state.rv;
        let meta = &mut object["metadata"];
        meta["resourceVersion"] = json!(rv.to_string());
        match &old {
            Some(old) => {
                meta["uid"] = old["metadata"]["uid"].clone();
                meta["creationTimestamp"] = old["metadata"]["creationTimestamp"].clone();
                let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
                let changed = old["spec"] != object["spec"];
                object["metadata"]["generation"] =
                    json!(if changed { generation + 1 } else { generation });
            }
            None => {
                if meta["uid"].is_null() {
                    meta["uid"] = json!(format!("00000000-0000-0000-0000-{:012}", state.uid));
                }
                if meta["creationTimestamp"].is_null() {
                    meta["creationTimestamp"] = json!("2026-01-10T09:00:00Z");
                }
                if meta["generation"].is_null() && kind != Kind::Pod {
                    meta["generation"] = json!(1);
                }
            }
        }
        let event = if old.is_some() { "MODIFIED" } else { "ADDED" };
        state.objects.insert(key, object.clone());
        publish(&mut state, kind, event, object);
    }

    /// Deletes an object (kubectl delete).
    pub fn remove(&self, kind: Kind, namespace: &str, name: &str) {
        let mut state = self.lock();
        let key = (kind, namespace.to_owned(), name.to_owned());
        if let Some(mut object) = state.objects.remove(&key) {
            state.rv += 1;
            object["metadata"]["resourceVersion"] = json!(state.rv.to_string());
            publish(&mut state, kind, "DELETED", object);
        }
    }

    pub fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<Value> {
        let key = (kind, namespace.to_owned(), name.to_owned());
        self.lock().objects.get(&key).cloned()
    }

    pub fn requests(&self) -> Vec<String> {
        self.lock().requests.clone()
    }

    pub fn status_writes(&self) -> Vec<Value> {
        self.lock().status_writes.clone()
    }

    pub fn patches(&self) -> Vec<PatchRequest> {
        self.lock().patches.clone()
    }

    /// From now on, every PATCH is refused with 403 (`true`) or served.
    pub fn forbid_patches(&self, forbid: bool) {
        self.lock().forbid_patches = forbid;
    }

    /// Open watches of `kind` get no events until [`Self::release_events`]
    /// (a watch lagging behind the writes, as it may in a real cluster).
    pub fn hold_events(&self, kind: Kind) {
        self.lock().held = Some((kind, Vec::new()));
    }

    /// Sends the held events, in order, and stops holding.
    pub fn release_events(&self) {
        let mut state = self.lock();
        if let Some((_, changes)) = state.held.take() {
            for change in &changes {
                for watcher in &state.watchers {
                    send(watcher, change);
                }
            }
        }
    }

    /// The next watch of `kind` is answered 410 Gone.
    pub fn expire_next_watch(&self, kind: Kind) {
        self.lock().gone_once.push(kind);
    }

    /// Ends every open watch, as the API server does at its watch timeout.
    pub fn close_watches(&self) {
        self.lock().watchers.clear();
    }

    async fn handle(&self, request: Request<Body>) -> Response<ResponseBody> {
        let method = request.method().clone();
        let uri = request.uri().clone();
        let query: BTreeMap<String, String> = uri
            .query()
            .map(|q| {
                url_pairs(q)
                    .into_iter()
                    .collect::<BTreeMap<String, String>>()
            })
            .unwrap_or_default();
        self.lock().requests.push(format!(
            "{method} {}",
            uri.path_and_query().map(|p| p.as_str()).unwrap_or("")
        ));
        let content_type = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = request
            .into_body()
            .collect_bytes()
            .await
            .unwrap_or_default();
        let Some(route) = Route::parse(uri.path()) else {
            return status(StatusCode::NOT_FOUND, "NotFound", "no such path");
        };
        match (method, route.name, route.subresource) {
            (Method::GET, None, None) if query.get("watch").map(String::as_str) == Some("true") => {
                self.watch(route.kind, route.namespace, &query)
            }
            (Method::GET, None, None) => self.list(route.kind, route.namespace.as_deref(), &query),
            (Method::PUT, Some(name), Some(sub)) if sub == "status" => self.put_status(
                route.kind,
                &route.namespace.unwrap_or_default(),
                &name,
                &body,
            ),
            (Method::PATCH, Some(name), None) => self.patch(PatchRequest {
                kind: route.kind,
                namespace: route.namespace.unwrap_or_default(),
                name,
                content_type,
                field_manager: query.get("fieldManager").cloned(),
                body: serde_json::from_slice(&body).unwrap_or(Value::Null),
            }),
            (Method::DELETE, Some(name), None) => self.delete(
                route.kind,
                &route.namespace.unwrap_or_default(),
                &name,
                &body,
            ),
            _ => status(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "the mock API server does not serve this",
            ),
        }
    }

    fn list(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        query: &BTreeMap<String, String>,
    ) -> Response<ResponseBody> {
        let state = self.lock();
        let selector = query.get("labelSelector").map(String::as_str);
        let items: Vec<Value> = state
            .objects
            .iter()
            .filter(|((k, ns, _), object)| {
                *k == kind
                    && namespace.is_none_or(|n| n == ns)
                    && selector.is_none_or(|s| matches_selector(object, s))
            })
            .map(|(_, object)| object.clone())
            .collect();
        let (api_version, list_kind) = kind.list_kind();
        json_response(
            StatusCode::OK,
            &json!({
                "apiVersion": api_version,
                "kind": list_kind,
                "metadata": { "resourceVersion": state.rv.to_string() },
                "items": items,
            }),
        )
    }

    fn watch(
        &self,
        kind: Kind,
        namespace: Option<String>,
        query: &BTreeMap<String, String>,
    ) -> Response<ResponseBody> {
        let mut state = self.lock();
        if let Some(i) = state.gone_once.iter().position(|k| *k == kind) {
            state.gone_once.remove(i);
            // Kubernetes sends 410 as an ERROR event on a 200 watch stream.
            let line = json!({
                "type": "ERROR",
                "object": {
                    "kind": "Status", "apiVersion": "v1", "metadata": {},
                    "status": "Failure", "reason": "Expired", "code": 410,
                    "message": "too old resource version",
                },
            });
            return Response::new(ResponseBody::from(format!("{line}\n")));
        }
        let since: u64 = query
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let selector = query.get("labelSelector").cloned();
        let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
        let watcher = Watcher {
            kind,
            namespace,
            selector,
            tx,
        };
        // Replay what happened since the list, then follow live changes.
        for change in state.log.iter().filter(|c| c.rv > since) {
            send(&watcher, change);
        }
        state.watchers.push(watcher);
        let lines = futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
            .map(Ok::<Bytes, std::convert::Infallible>);
        Response::new(ResponseBody::from_stream(lines))
    }

    fn put_status(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        body: &[u8],
    ) -> Response<ResponseBody> {
        let Ok(sent) = serde_json::from_slice::<Value>(body) else {
            return status(StatusCode::BAD_REQUEST, "BadRequest", "body is not JSON");
        };
        let mut state = self.lock();
        state.status_writes.push(sent.clone());
        let key = (kind, namespace.to_owned(), name.to_owned());
        let Some(stored) = state.objects.get(&key).cloned() else {
            return status(StatusCode::NOT_FOUND, "NotFound", "not found");
        };
        if sent["metadata"]["resourceVersion"] != stored["metadata"]["resourceVersion"] {
            return status(
                StatusCode::CONFLICT,
                "Conflict",
                "the object has been modified; please apply your changes to the latest version and try again",
            );
        }
        // The status subresource takes the status only.
        let mut object = stored;
        object["status"] = sent["status"].clone();
        state.rv += 1;
        object["metadata"]["resourceVersion"] = json!(state.rv.to_string());
        state.objects.insert(key, object.clone());
        publish(&mut state, kind, "MODIFIED", object.clone());
        json_response(StatusCode::OK, &object)
    }

    fn patch(&self, request: PatchRequest) -> Response<ResponseBody> {
        let mut state = self.lock();
        state.patches.push(request.clone());
        if state.forbid_patches {
            return status(
                StatusCode::FORBIDDEN,
                "Forbidden",
                &format!(
                    "{} \"{}\" is forbidden: User \"system:serviceaccount:sandbox-router:sandbox-router\" cannot patch resource \"{}\" in API group \"\" in the namespace \"{}\"",
                    request.kind.plural(), request.name, request.kind.plural(), request.namespace
                ),
            );
        }
        if request.content_type != "application/merge-patch+json" {
            return status(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                "the mock API server takes JSON merge patches only",
            );
        }
        if !request.body.is_object() {
            return status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "body is not a JSON object",
            );
        }
        let key = (
            request.kind,
            request.namespace.clone(),
            request.name.clone(),
        );
        let Some(stored) = state.objects.get(&key).cloned() else {
            return status(StatusCode::NOT_FOUND, "NotFound", "not found");
        };
        let mut object = stored.clone();
        merge_patch(&mut object, &request.body);
        if object == stored {
            return json_response(StatusCode::OK, &stored);
        }
        state.rv += 1;
        object["metadata"]["resourceVersion"] = json!(state.rv.to_string());
        state.objects.insert(key, object.clone());
        publish(&mut state, request.kind, "MODIFIED", object.clone());
        json_response(StatusCode::OK, &object)
    }

    fn delete(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        body: &[u8],
    ) -> Response<ResponseBody> {
        let options: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let Some(stored) = self.get(kind, namespace, name) else {
            return status(StatusCode::NOT_FOUND, "NotFound", "not found");
        };
        let uid = &options["preconditions"]["uid"];
        if !uid.is_null() && *uid != stored["metadata"]["uid"] {
            return status(StatusCode::CONFLICT, "Conflict", "Precondition failed: UID");
        }
        self.remove(kind, namespace, name);
        json_response(
            StatusCode::OK,
            &json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                "details": { "name": name, "kind": kind.plural(), "uid": stored["metadata"]["uid"] },
            }),
        )
    }
}

/// RFC 7386: objects merge member by member, null removes, anything else replaces.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(members) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    if let Value::Object(fields) = target {
        for (name, value) in members {
            if value.is_null() {
                fields.remove(name);
            } else {
                merge_patch(fields.entry(name.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

fn publish(state: &mut State, kind: Kind, event: &'static str, object: Value) {
    let change = Change {
        rv: state.rv,
        kind,
        kind_event: event,
        object,
    };
    state.watchers.retain(|w| !w.tx.is_closed());
    match &mut state.held {
        Some((held, changes)) if *held == kind => changes.push(change.clone()),
        _ => {
            for watcher in &state.watchers {
                send(watcher, &change);
            }
        }
    }
    state.log.push(change);
}

fn send(watcher: &Watcher, change: &Change) {
    let namespace = change.object["metadata"]["namespace"].as_str();
    if watcher.kind != change.kind
        || watcher
            .namespace
            .as_deref()
            .is_some_and(|ns| Some(ns) != namespace)
        || watcher
            .selector
            .as_deref()
            .is_some_and(|s| !matches_selector(&change.object, s))
    {
        return;
    }
    let line = json!({ "type": change.kind_event, "object": change.object });
    let _ = watcher.tx.send(Bytes::from(format!("{line}\n")));
}

/// `key`, `key=value`, comma-separated (what the controller sends).
fn matches_selector(object: &Value, selector: &str) -> bool {
    let labels = &object["metadata"]["labels"];
    selector.split(',').all(|term| match term.split_once('=') {
        Some((k, v)) => labels[k].as_str() == Some(v),
        None => !labels[term].is_null(),
    })
}

fn key_of(kind: Kind, object: &Value) -> Key {
    let meta = &object["metadata"];
    (
        kind,
        meta["namespace"].as_str().unwrap_or("default").to_owned(),
        meta["name"]
            .as_str()
            .expect("objects have names")
            .to_owned(),
    )
}

struct Route {
    kind: Kind,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

impl Route {
    /// `/api/v1[/namespaces/NS]/pods[/NAME[/SUB]]` and the same under
    /// `/apis/sandbox-router.io/v1alpha1`.
    fn parse(path: &str) -> Option<Route> {
        let rest = path
            .strip_prefix("/apis/sandbox-router.io/v1alpha1/")
            .or_else(|| path.strip_prefix("/api/v1/"))?;
        let mut parts: Vec<&str> = rest.split('/').collect();
        let namespace = if parts.first() == Some(&"namespaces") && parts.len() >= 3 {
            let ns = parts[1].to_owned();
            parts.drain(..2);
            Some(ns)
        } else {
            None
        };
        let kind = match *parts.first()? {
            "sandboxes" if path.starts_with("/apis/") => Kind::Sandbox,
            "routegroups" if path.starts_with("/apis/") => Kind::RouteGroup,
            "pods" if path.starts_with("/api/") => Kind::Pod,
            _ => return None,
        };
        Some(Route {
            kind,
            namespace,
            name: parts.get(1).map(|s| (*s).to_owned()),
            subresource: parts.get(2).map(|s| (*s).to_owned()),
        })
    }
}

fn url_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn json_response(code: StatusCode, value: &Value) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::from(value.to_string()));
    *response.status_mut() = code;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        "application/json".parse().unwrap(),
    );
    response
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response<ResponseBody> {
    json_response(
        code,
        &json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code.as_u16(),
        }),
    )
}

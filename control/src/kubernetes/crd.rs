//! The custom resources of Kubernetes mode (`sandbox-router.io/v1alpha1`):
//! `Sandbox` and `RouteGroup`, the same things the HTTP API manages in
//! SQLite mode. `envoy-config/kubernetes/crds.yaml` is generated from these
//! types (`sandbox-router crds`), and a test keeps it from drifting.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The routing key requests carry, and the services it forks.
// Clippy reads the printcolumns' repeated `type_ = "string"` as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "sandbox-router.io",
    version = "v1alpha1",
    kind = "Sandbox",
    namespaced,
    status = "SandboxStatus",
    shortname = "sbx",
    category = "sandbox-router",
    doc = "A sandbox: a routing key, and the services it forks to sandboxed workloads. Requests carrying the key (in their tracing context) go to the forks; everything else stays on the baseline.",
    printcolumn(
        name = "Routing-Key",
        type_ = "string",
        json_path = ".status.routingKey"
    ),
    printcolumn(
        name = "Routed",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Routed\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Routed\")].reason"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct SandboxSpec {
    /// The services this sandbox forks, each to its sandboxed workload.
    #[schemars(length(min = 1, max = 64))]
    pub forks: Vec<ForkSpec>,
    /// A fixed routing key (1-64 of A-Z a-z 0-9 - _). Without it the control
    /// service mints one and keeps it in status.routingKey.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9_-]{1,64}$"))]
    pub routing_key: Option<String>,
    /// Delete this Sandbox this many seconds after its creation (at most 90 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 7_776_000))]
    pub ttl_seconds: Option<i64>,
}

/// One forked service: fixed endpoints, or the Ready pods a selector picks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ForkSpec {
    /// The service as the filter names the destination (e.g. "backend").
    pub service: String,
    /// Fixed endpoints IP:PORT. Give these, or selector and port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub endpoints: Vec<String>,
    /// Pods of this Sandbox (label sandbox-router.io/sandbox=<this Sandbox's
    /// name>, in its namespace) that also carry these labels; their Ready
    /// pods' IPs, with `port`, are the endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// The pods' port, with selector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
}

/// A label selector (equality only, as a Service's).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

/// What the control service made of a Sandbox.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SandboxStatus {
    /// The routing key: spec.routingKey, or minted once by the control
    /// service and kept here, so it survives restarts of the control service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing_key: Option<String>,
    /// The forks as pushed to the proxies: service -> endpoints IP:PORT.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub endpoints: BTreeMap<String, Vec<String>>,
    /// One condition, type Routed: True when the key is in the routing table.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Several sandboxes' forks under one routing key of its own.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "sandbox-router.io",
    version = "v1alpha1",
    kind = "RouteGroup",
    namespaced,
    status = "RouteGroupStatus",
    shortname = "rg",
    category = "sandbox-router",
    doc = "A route group: its own routing key, combining the forks of several Sandboxes of its namespace (by name and/or label selector). No two members may fork the same service.",
    printcolumn(
        name = "Routing-Key",
        type_ = "string",
        json_path = ".status.routingKey"
    ),
    printcolumn(
        name = "Routed",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Routed\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Routed\")].reason"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct RouteGroupSpec {
    /// Sandboxes of this namespace, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub members: Vec<String>,
    /// Sandboxes of this namespace whose labels match are members too
    /// ({} selects every Sandbox of the namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// A fixed routing key, as for a Sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9_-]{1,64}$"))]
    pub routing_key: Option<String>,
}

/// What the control service made of a RouteGroup.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteGroupStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing_key: Option<String>,
    /// The member Sandboxes whose forks the group routes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// A status condition in the Kubernetes shape.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Routed
    #[serde(rename = "type")]
    pub type_: String,
    /// "True" or "False"
    pub status: String,
    /// Routed, NoReadyPods, Invalid, Conflict, NoMembers, MintingKey
    pub reason: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
}

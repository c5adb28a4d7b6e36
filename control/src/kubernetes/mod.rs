//! Kubernetes mode (`sandbox-router serve --kubernetes`): the state lives in
//! the cluster as `Sandbox` and `RouteGroup` resources
//! (`sandbox-router.io/v1alpha1`), not in SQLite.
//!
//! - [`crd`]: the resource types; `envoy-config/kubernetes/crds.yaml` is
//!   generated from them ([`crds_yaml`]).
//! - [`reconcile`]: resources and pods to the model, statuses, pod
//!   annotations and deletes (pure).
//! - [`run`]: the controller, which feeds the model to [`crate::Control`], so
//!   the push to proxies (versions, deltas, snapshots, status) is the one
//!   SQLite mode uses. The HTTP API stays up read-only.
//!
//! Routing keys: `spec.routingKey` when given; otherwise minted once by the
//! controller and stored in `status.routingKey` (status subresource), so a
//! key survives restarts of the control service. A resource routes only
//! once its key is stored. Each Sandbox's pods carry the key it holds as the
//! annotation [`reconcile::ROUTING_KEY_ANNOTATION`], which a workload reads
//! through a downward API volume (e.g. for webhook URLs).

mod controller;
pub mod crd;
pub mod reconcile;

pub use controller::run;
pub use crd::{RouteGroup, Sandbox};

use kube::CustomResourceExt;

/// The CRDs as YAML, as checked in at `envoy-config/kubernetes/crds.yaml`.
pub fn crds_yaml() -> Result<String, String> {
    let mut text = String::from(
        "# Generated from control/src/kubernetes/crd.rs by `sandbox-router crds`; do not edit.\n\
         # A test fails when this file and the code differ.\n",
    );
    for (i, crd) in [Sandbox::crd(), RouteGroup::crd()].iter().enumerate() {
        if i > 0 {
            text.push_str("---\n");
        }
        text.push_str(&serde_saphyr::to_string(crd).map_err(|e| e.to_string())?);
    }
    Ok(text)
}

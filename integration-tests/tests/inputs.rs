//! Routing inputs beyond the propagated headers, through a real Envoy:
//! a routing key in the URL query (webhooks and callbacks), and a sandbox's
//! own sidecar stamping its key into requests that start in the sandbox
//! (cron jobs, queue workers). Every answer is also compared with
//! `sandbox-router explain` (the one plan).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use testbed::{Reply, Sidecar};

/// Headers the upstream received, from the echo reply.
fn received(reply: &Reply, name: &str) -> Option<String> {
    reply
        .echo
        .as_ref()
        .expect("an echo service answered")
        .headers
        .get(name)
        .cloned()
}

fn path(reply: &Reply) -> String {
    reply
        .echo
        .as_ref()
        .expect("an echo service answered")
        .path
        .clone()
}

async fn get(sidecar: &Sidecar, host: &str, path: &str, headers: Headers<'_>) -> Reply {
    let reply = sidecar.get_path(host, path, headers).await.unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    reply
}

#[tokio::test]
async fn a_routing_key_in_the_query_routes_only_when_the_source_is_listed() {
    let off = sidecar().await;
    let url = format!("/stripe?event=1&sandbox-routing-key={KEY_X}");
    let before = stats(&off).await;
    let reply = get(&off, "backend", &url, &[]).await;
    assert_eq!(reply.served_by(), "backend/baseline");
    assert_eq!(
        moved(&stats(&off).await, &before),
        counts(&[("baseline.no_context", 1)])
    );

    let on = sidecar_with(serde_json::json!({ "sources": ["baggage", "query"] })).await;
    let before = stats(&on).await;
    let reply = get(&on, "backend", &url, &[("baggage", b"userId=alice")]).await;
    assert_eq!(reply.served_by(), "backend/feature-x");
    // Carried on in baggage for the next hops; the parameter is kept by default.
    assert_eq!(
        received(&reply, "baggage").as_deref(),
        Some(format!("sandbox-routing-key={KEY_X},userId=alice").as_str())
    );
    assert_eq!(path(&reply), url);
    assert_eq!(
        moved(&stats(&on).await, &before),
        counts(&[("routed", 1), ("baggage_added", 1)])
    );
    assert_eq!(
        reply.decision.as_deref(),
        Some(
            format!(
                "routed; source=query; service=backend; endpoint={}",
                reply.echo.as_ref().unwrap().addr
            )
            .as_str()
        )
    );

    // Accepted where this service has no fork: the baseline, and the key goes on.
    let before = stats(&on).await;
    let reply = get(&on, "frontend", &url, &[]).await;
    assert_eq!(reply.served_by(), "frontend/baseline");
    assert_eq!(
        received(&reply, "baggage").as_deref(),
        Some(format!("sandbox-routing-key={KEY_X}").as_str())
    );
    assert_eq!(
        moved(&stats(&on).await, &before),
        counts(&[("baseline.no_fork_for_service", 1), ("baggage_added", 1)])
    );

    // A header source listed first wins over the query.
    let reply = get(
        &on,
        "backend",
        &url,
        &[("baggage", b"sandbox-routing-key=key-frontend-y")],
    )
    .await;
    assert_eq!(reply.served_by(), "backend/baseline");
    assert_eq!(
        reply.decision.as_deref(),
        Some("baseline; reason=no_fork_for_service; source=baggage; service=backend")
    );

    // Unusable parameters carry nothing on.
    for bad in [
        "/h?sandbox-routing-key=a%zz",
        "/h?sandbox-routing-key=a&sandbox-routing-key=b",
    ] {
        let before = stats(&on).await;
        let reply = get(&on, "backend", bad, &[]).await;
        assert_eq!(reply.served_by(), "backend/baseline", "{bad}");
        assert_eq!(received(&reply, "baggage"), None, "{bad}");
        assert_eq!(
            moved(&stats(&on).await, &before),
            counts(&[("baseline.malformed", 1)]),
            "{bad}"
        );
    }
    assert!(on.compared_with_explain() >= 5);
}

#[tokio::test]
async fn the_query_parameter_can_be_removed_before_the_upstream() {
    let sidecar = sidecar_with(serde_json::json!({
        "sources": ["query"],
        "query": { "param": "sr", "remove": true }
    }))
    .await;
    let reply = get(
        &sidecar,
        "backend",
        &format!("/hook?a=1&sr={KEY_X}&b=2"),
        &[],
    )
    .await;
    assert_eq!(reply.served_by(), "backend/feature-x");
    assert_eq!(path(&reply), "/hook?a=1&b=2");
    let reply = get(&sidecar, "backend", &format!("/hook?sr={KEY_X}"), &[]).await;
    assert_eq!(path(&reply), "/hook");
    assert_eq!(
        received(&reply, "baggage").as_deref(),
        Some(format!("sandbox-routing-key={KEY_X}").as_str())
    );
}

#[tokio::test]
async fn the_edge_removes_an_untrusted_query_key_and_counts_it() {
    const CREDENTIAL: &str = "edge-test-credential";
    // printf %s edge-test-credential | sha256sum
    const DIGEST: &str = "ddc2f476680df110381d8e491ed107296a7bf6ceaf5a6047f43954f568a0179e";
    let sidecar = sidecar_with(serde_json::json!({
        "sources": ["baggage", "query"],
        "edge": { "trusted_cidrs": ["10.0.0.0/8"], "credential_sha256": [DIGEST] }
    }))
    .await;
    let url = format!("/stripe?sandbox-routing-key={KEY_X}&id=7");
    let before = stats(&sidecar).await;
    let reply = get(&sidecar, "backend", &url, &[]).await;
    assert_eq!(reply.served_by(), "backend/baseline");
    assert_eq!(path(&reply), "/stripe?id=7");
    assert_eq!(received(&reply, "baggage"), None);
    assert_eq!(
        moved(&stats(&sidecar).await, &before),
        counts(&[("baseline.untrusted", 1)])
    );
    // With the credential the same URL routes, and the key is carried on.
    let reply = get(
        &sidecar,
        "backend",
        &url,
        &[("x-sandbox-router-credential", CREDENTIAL.as_bytes())],
    )
    .await;
    assert_eq!(reply.served_by(), "backend/feature-x");
    assert_eq!(path(&reply), url);
    assert_eq!(received(&reply, "x-sandbox-router-credential"), None);
}

#[tokio::test]
async fn a_sandboxs_sidecar_stamps_its_key_into_requests_without_context() {
    let sidecar = sidecar_with(serde_json::json!({ "origin": { "sandbox": "feature-x" } })).await;
    // The readiness request of the test bed was stamped already; count from here.
    let before = stats(&sidecar).await;
    let reply = get(&sidecar, "backend", "/", &[("baggage", b"userId=alice")]).await;
    assert_eq!(reply.served_by(), "backend/feature-x");
    assert_eq!(
        received(&reply, "baggage").as_deref(),
        Some(format!("sandbox-routing-key={KEY_X},userId=alice").as_str())
    );
    assert_eq!(
        moved(&stats(&sidecar).await, &before),
        counts(&[("routed", 1), ("stamped", 1), ("baggage_added", 1)])
    );
    assert!(reply
        .decision
        .as_deref()
        .unwrap()
        .starts_with("routed; source=origin;"));

    // A service the sandbox does not fork: baseline, with the key for later hops.
    let reply = get(&sidecar, "frontend", "/", &[]).await;
    assert_eq!(reply.served_by(), "frontend/baseline");
    assert_eq!(
        received(&reply, "baggage").as_deref(),
        Some(format!("sandbox-routing-key={KEY_X}").as_str())
    );

    // A request that carries context is left alone, whatever it says.
    let before = stats(&sidecar).await;
    let reply = get(
        &sidecar,
        "frontend",
        "/",
        &[("baggage", b"sandbox-routing-key=key-frontend-y")],
    )
    .await;
    assert_eq!(reply.served_by(), "frontend/frontend-y");
    let reply = get(
        &sidecar,
        "backend",
        "/",
        &[("baggage", b"sandbox-routing-key=unknown")],
    )
    .await;
    assert_eq!(reply.served_by(), "backend/baseline");
    assert_eq!(
        received(&reply, "baggage").as_deref(),
        Some("sandbox-routing-key=unknown")
    );
    assert_eq!(
        moved(&stats(&sidecar).await, &before),
        counts(&[("routed", 1), ("baseline.unknown_key", 1)])
    );

    // Stamping goes through the table like any key: a spoofed destination is
    // removed first, and only the table's endpoint is used.
    let reply = get(
        &sidecar,
        "backend",
        "/",
        &[
            ("x-envoy-original-dst-host", b"127.0.0.1:1"),
            ("x-sandbox-router-route", b"1"),
        ],
    )
    .await;
    assert_eq!(reply.served_by(), "backend/feature-x");
    assert!(sidecar.compared_with_explain() >= 5);
}

#[tokio::test]
async fn a_sidecar_whose_sandbox_is_not_in_the_table_stamps_nothing() {
    let sidecar = sidecar_with(serde_json::json!({ "origin": { "sandbox": "gone" } })).await;
    let before = stats(&sidecar).await;
    let reply = get(&sidecar, "backend", "/", &[]).await;
    assert_eq!(reply.served_by(), "backend/baseline");
    assert_eq!(received(&reply, "baggage"), None);
    assert_eq!(
        moved(&stats(&sidecar).await, &before),
        counts(&[("baseline.no_context", 1), ("origin_unknown", 1)])
    );
}

#[tokio::test]
async fn a_routing_cookie_routes_goes_on_in_baggage_and_is_not_forwarded() {
    let sidecar = sidecar_with(serde_json::json!({ "sources": ["cookie", "baggage"] })).await;
    let cookie = format!("theme=dark; sandbox-routing-key={KEY_X}; sid=7");
    let before = stats(&sidecar).await;
    let reply = get(&sidecar, "backend", "/", &[("cookie", cookie.as_bytes())]).await;
    assert_eq!(reply.served_by(), "backend/feature-x");
    assert_eq!(
        received(&reply, "cookie").as_deref(),
        Some("theme=dark; sid=7")
    );
    assert_eq!(
        received(&reply, "baggage").as_deref(),
        Some(format!("sandbox-routing-key={KEY_X}").as_str())
    );
    assert_eq!(
        moved(&stats(&sidecar).await, &before),
        counts(&[("routed", 1), ("baggage_added", 1)])
    );
    // Only our cookie: no cookie header reaches the service at all.
    let only = format!("sandbox-routing-key={KEY_X}");
    let reply = get(&sidecar, "backend", "/", &[("cookie", only.as_bytes())]).await;
    assert_eq!(received(&reply, "cookie"), None);

    let forwarding = sidecar_with(serde_json::json!({
        "sources": ["cookie"], "cookie": { "name": "sr", "forward": true }
    }))
    .await;
    let cookie = format!("sr={KEY_X}; a=1");
    let reply = get(
        &forwarding,
        "backend",
        "/",
        &[("cookie", cookie.as_bytes())],
    )
    .await;
    assert_eq!(reply.served_by(), "backend/feature-x");
    assert_eq!(received(&reply, "cookie").as_deref(), Some(cookie.as_str()));
}

#[tokio::test]
async fn at_the_edge_a_credential_cookie_trusts_a_browser_and_never_goes_on() {
    // printf %s edge-test-credential | sha256sum
    const DIGEST: &str = "ddc2f476680df110381d8e491ed107296a7bf6ceaf5a6047f43954f568a0179e";
    let sidecar = sidecar_with(serde_json::json!({
        "sources": ["cookie", "baggage"],
        "edge": { "credential_cookie": "sr-credential", "credential_sha256": [DIGEST] }
    }))
    .await;
    let trusted = format!("sandbox-routing-key={KEY_X}; sr-credential=edge-test-credential; a=1");
    let reply = get(&sidecar, "backend", "/", &[("cookie", trusted.as_bytes())]).await;
    assert_eq!(reply.served_by(), "backend/feature-x");
    assert_eq!(received(&reply, "cookie").as_deref(), Some("a=1"));

    let before = stats(&sidecar).await;
    let untrusted = format!("sandbox-routing-key={KEY_X}; sr-credential=guess; a=1");
    let reply = get(
        &sidecar,
        "backend",
        "/",
        &[("cookie", untrusted.as_bytes())],
    )
    .await;
    assert_eq!(reply.served_by(), "backend/baseline");
    assert_eq!(received(&reply, "cookie").as_deref(), Some("a=1"));
    assert_eq!(received(&reply, "baggage"), None);
    assert_eq!(
        moved(&stats(&sidecar).await, &before),
        counts(&[("baseline.untrusted", 1)])
    );
}

/// The edge names services by cluster (`frontend_baseline` -> `frontend`):
/// a preview host names the sandbox, not the service.
fn preview_config(extra: serde_json::Value) -> serde_json::Value {
    let mut config = serde_json::json!({
        "sources": ["preview-host", "baggage"],
        "preview_host": "{sandbox}.preview.example.com",
        "destination": { "from": "cluster_name", "strip_suffixes": ["_baseline"] }
    });
    if let (Some(base), Some(extra)) = (config.as_object_mut(), extra.as_object()) {
        base.extend(extra.clone());
    }
    config
}

#[tokio::test]
async fn a_preview_host_routes_by_the_key_of_the_sandbox_it_names() {
    let sidecar = sidecar_with(preview_config(serde_json::json!({}))).await;
    let before = stats(&sidecar).await;
    // frontend-y forks frontend: routed, and the key goes on.
    let reply = get(&sidecar, "frontend-y.preview.example.com", "/", &[]).await;
    assert_eq!(reply.served_by(), "frontend/frontend-y");
    assert_eq!(
        received(&reply, "baggage").as_deref(),
        Some(format!("sandbox-routing-key={KEY_Y}").as_str())
    );
    assert!(reply
        .decision
        .as_deref()
        .unwrap()
        .starts_with("routed; source=preview-host; service=frontend;"));
    // feature-x forks backend only: the front end's baseline, with the key for its call to backend.
    let reply = get(&sidecar, "Feature-X.preview.example.com", "/", &[]).await;
    assert_eq!(reply.served_by(), "frontend/baseline");
    assert_eq!(
        received(&reply, "baggage").as_deref(),
        Some(format!("sandbox-routing-key={KEY_X}").as_str())
    );
    let reply = get(&sidecar, "nosuch.preview.example.com", "/", &[]).await;
    assert_eq!(reply.served_by(), "frontend/baseline");
    assert_eq!(received(&reply, "baggage"), None);
    assert_eq!(
        moved(&stats(&sidecar).await, &before),
        counts(&[
            ("routed", 1),
            ("baseline.no_fork_for_service", 1),
            ("baseline.unknown_key", 1),
            ("baggage_added", 2)
        ])
    );
}

#[tokio::test]
async fn at_the_edge_a_preview_host_needs_trust() {
    // printf %s edge-test-credential | sha256sum
    const DIGEST: &str = "ddc2f476680df110381d8e491ed107296a7bf6ceaf5a6047f43954f568a0179e";
    let sidecar = sidecar_with(preview_config(serde_json::json!({
        "edge": { "credential_cookie": "sr-credential", "credential_sha256": [DIGEST] }
    })))
    .await;
    let before = stats(&sidecar).await;
    let reply = get(&sidecar, "frontend-y.preview.example.com", "/", &[]).await;
    assert_eq!(reply.served_by(), "frontend/baseline");
    assert_eq!(received(&reply, "baggage"), None);
    assert_eq!(
        moved(&stats(&sidecar).await, &before),
        counts(&[("baseline.untrusted", 1)])
    );
    // A browser with the credential cookie (what a tester sets once).
    let reply = get(
        &sidecar,
        "frontend-y.preview.example.com",
        "/",
        &[("cookie", b"sr-credential=edge-test-credential")],
    )
    .await;
    assert_eq!(reply.served_by(), "frontend/frontend-y");
    assert_eq!(received(&reply, "cookie"), None);
}

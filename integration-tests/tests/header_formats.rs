//! Every supported header format routes a request with a known routing key to
//! the sandbox, through a real Envoy running the built filter.

mod common;

use common::*;
use sandbox_router_proto::v1::{r#override::Target, Override, Overrides};
use sandbox_router_routing::Source;

#[tokio::test]
async fn each_header_format_routes_to_the_sandbox() {
    let sidecar = sidecar().await;
    for format in Source::DEFAULT_ORDER {
        let before = stats(&sidecar).await;
        let lines = carrying(format, Some(KEY_X), None);
        let reply = sidecar.get("backend", &as_refs(&lines)).await.unwrap();
        assert_eq!(
            reply.served_by(),
            "backend/feature-x",
            "{format:?}: {lines:?}"
        );
        let expected = format!(
            "routed; source={}; service=backend; endpoint={}",
            format.as_str(),
            sidecar.sandboxes[0].addr()
        );
        assert_eq!(reply.decision.as_deref(), Some(expected.as_str()));
        assert_eq!(
            moved(&stats(&sidecar).await, &before),
            counts(&[("routed", 1)]),
            "{format:?}"
        );
    }
}

#[tokio::test]
async fn w3c_baggage_details() {
    let sidecar = sidecar().await;
    let cases: &[(&str, Headers)] = &[
        // OWS, properties, other members around ours.
        (
            "ows and properties",
            &[(
                "baggage",
                b"userId=alice , sandbox-routing-key = key-feature-x ;ttl=30;flag , x=1",
            )],
        ),
        // Percent-encoded value.
        (
            "percent-encoded",
            &[("baggage", b"sandbox-routing-key=key%2Dfeature%2Dx")],
        ),
        // Several baggage headers form one list.
        ("several headers", &[("baggage", b"a=1,b=2"), BAGGAGE_KEY_X]),
        // An alias key name (e.g. migrating from Signadot).
        ("alias key", &[("baggage", b"sd-routing-key=key-feature-x")]),
    ];
    for (what, headers) in cases {
        let reply = sidecar.get("backend", headers).await.unwrap();
        assert_eq!(reply.served_by(), "backend/feature-x", "{what}");
    }
}

#[tokio::test]
async fn tracestate_is_honoured_only_with_a_valid_traceparent() {
    let sidecar = sidecar().await;
    let state: &[u8] = b"congo=t61rcWkgMzE,sandbox-routing-key=key-feature-x";
    let valid: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let zero_trace: &[u8] = b"00-00000000000000000000000000000000-00f067aa0ba902b7-01";

    let routed = sidecar
        .get("backend", &[("traceparent", valid), ("tracestate", state)])
        .await
        .unwrap();
    assert_eq!(routed.served_by(), "backend/feature-x");

    let before = stats(&sidecar).await;
    for headers in [
        vec![("tracestate", state)],
        vec![("traceparent", zero_trace), ("tracestate", state)],
        vec![("traceparent", &b"garbage"[..]), ("tracestate", state)],
    ] {
        let reply = sidecar.get("backend", &headers).await.unwrap();
        assert_eq!(reply.served_by(), "backend/baseline", "{headers:?}");
    }
    assert_eq!(
        moved(&stats(&sidecar).await, &before),
        counts(&[("baseline.no_context", 3)])
    );
}

#[tokio::test]
async fn overrides_route_by_sandbox_key_or_registered_endpoint() {
    let sidecar = sidecar().await;
    let sandbox = sidecar.sandboxes[0].addr().to_string();
    let entries = [
        (
            "by sandbox name",
            Some(Target::Sandbox("feature-x".into())),
            String::new(),
        ),
        (
            "by routing key",
            Some(Target::RoutingKey(KEY_X.into())),
            String::new(),
        ),
        ("by registered endpoint", None, sandbox.clone()),
        (
            "by sandbox and its endpoint",
            Some(Target::Sandbox("feature-x".into())),
            sandbox.clone(),
        ),
    ];
    for format in [
        Source::Baggage,
        Source::OtBaggage,
        Source::Uberctx,
        Source::XOtSpanContext,
    ] {
        for (what, target, endpoint) in &entries {
            let overrides = Overrides {
                overrides: vec![Override {
                    service: "backend".into(),
                    target: target.clone(),
                    endpoint: endpoint.clone(),
                }],
            };
            let lines = carrying(format, None, Some(&overrides));
            let reply = sidecar.get("backend", &as_refs(&lines)).await.unwrap();
            assert_eq!(reply.served_by(), "backend/feature-x", "{format:?} {what}");
        }
    }
}

#[tokio::test]
async fn an_override_for_one_service_leaves_others_on_their_key() {
    let sidecar = sidecar().await;
    // Overrides fork backend; the routing key (frontend-y) still applies to frontend.
    let overrides = Overrides {
        overrides: vec![Override {
            service: "backend".into(),
            target: Some(Target::Sandbox("feature-x".into())),
            endpoint: String::new(),
        }],
    };
    let lines = carrying(Source::Baggage, Some(KEY_Y), Some(&overrides));
    let backend = sidecar.get("backend", &as_refs(&lines)).await.unwrap();
    assert_eq!(backend.served_by(), "backend/feature-x");
    let frontend = sidecar.get("frontend", &as_refs(&lines)).await.unwrap();
    assert_eq!(frontend.served_by(), "frontend/frontend-y");
}

#[tokio::test]
async fn the_first_source_in_precedence_order_decides() {
    let sidecar = sidecar().await;
    // baggage (first) says an unknown key; x-ot-span-context (last) a good one.
    let mut lines = carrying(Source::XOtSpanContext, Some(KEY_X), None);
    lines.push(("baggage".into(), "sandbox-routing-key=no-such-key".into()));
    let reply = sidecar.get("backend", &as_refs(&lines)).await.unwrap();
    assert_eq!(reply.served_by(), "backend/baseline");
    assert_eq!(
        reply.decision.as_deref(),
        Some("baseline; reason=unknown_key; source=baggage; service=backend")
    );
}

#[tokio::test]
async fn sources_and_key_names_follow_the_configuration() {
    let sidecar = sidecar_with(serde_json::json!({
        "keys": ["tenant"],
        "sources": ["uberctx", "baggage"],
    }))
    .await;
    let routed = sidecar
        .get("backend", &[("uberctx-tenant", b"key-feature-x")])
        .await
        .unwrap();
    assert_eq!(routed.served_by(), "backend/feature-x");
    // The default name is no longer read, and a disabled source is ignored.
    let default_name = sidecar.get("backend", &[BAGGAGE_KEY_X]).await.unwrap();
    assert_eq!(default_name.served_by(), "backend/baseline");
    let disabled = sidecar
        .get("backend", &[("ot-baggage-tenant", b"key-feature-x")])
        .await
        .unwrap();
    assert_eq!(disabled.served_by(), "backend/baseline");
}

//! Edge mode through a real Envoy: routing context from an untrusted source
//! is removed and the request stays on the baseline; a trusted source or a
//! valid credential keeps it. Envoy sees the test client as 127.0.0.1.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use sandbox_router_proto::v1::{r#override::Target, Override, Overrides};
use sandbox_router_routing::Source;
use testbed::Sidecar;

const CREDENTIAL: &str = "edge-test-credential";
/// `printf %s edge-test-credential | sha256sum`
const CREDENTIAL_SHA256: &str = "ddc2f476680df110381d8e491ed107296a7bf6ceaf5a6047f43954f568a0179e";

async fn edge(trusted_cidrs: &[&str]) -> Sidecar {
    sidecar_with(serde_json::json!({
        "edge": { "trusted_cidrs": trusted_cidrs, "credential_sha256": [CREDENTIAL_SHA256] }
    }))
    .await
}

/// Headers the upstream received, from the echo reply.
fn received(reply: &testbed::Reply) -> std::collections::BTreeMap<String, String> {
    reply
        .echo
        .as_ref()
        .expect("an echo service answered")
        .headers
        .clone()
}

#[tokio::test]
async fn untrusted_routing_context_is_removed_in_every_format() {
    let sidecar = edge(&["10.0.0.0/8"]).await;
    let overrides = Overrides {
        overrides: vec![Override {
            service: "backend".into(),
            target: Some(Target::Sandbox("feature-x".into())),
            endpoint: String::new(),
        }],
    };
    for format in Source::DEFAULT_ORDER {
        for (key, overrides) in [(Some(KEY_X), None), (None, Some(&overrides))] {
            if format == Source::Tracestate && overrides.is_some() {
                continue; // tracestate carries routing keys only
            }
            let mut lines = carrying(format, key, overrides);
            // Unrelated context in the same headers passes on untouched.
            let keep = match format {
                Source::Baggage => Some(("baggage", "userId=alice")),
                Source::Tracestate => Some(("tracestate", "dd=s:1")),
                _ => None,
            };
            if let Some((name, value)) = keep {
                lines.push((name.into(), value.into()));
            }
            let before = stats(&sidecar).await;
            let reply = sidecar.get("backend", &as_refs(&lines)).await.unwrap();
            let what = format!("{format:?} key={key:?} overrides={}", overrides.is_some());
            assert_eq!(reply.status, 200, "{what}");
            assert_eq!(reply.served_by(), "backend/baseline", "{what}");
            assert_eq!(
                moved(&stats(&sidecar).await, &before),
                counts(&[("baseline.untrusted", 1)]),
                "{what}"
            );
            let headers = received(&reply);
            for (name, value) in &headers {
                assert!(
                    !name.contains("routing-key")
                        && !name.contains("sandbox-overrides")
                        && name != "x-ot-span-context"
                        && !value.contains("routing-key")
                        && !value.contains("sandbox-overrides"),
                    "{what}: {name}: {value} reached the upstream"
                );
            }
            if let Some((name, value)) = keep {
                assert_eq!(headers.get(name).map(String::as_str), Some(value), "{what}");
            }
        }
    }
}

#[tokio::test]
async fn a_valid_credential_keeps_the_context_and_is_never_forwarded() {
    let sidecar = edge(&["10.0.0.0/8"]).await;
    let credential = ("x-sandbox-router-credential", CREDENTIAL.as_bytes());

    let before = stats(&sidecar).await;
    let reply = sidecar
        .get("backend", &[BAGGAGE_KEY_X, credential])
        .await
        .unwrap();
    assert_eq!(reply.served_by(), "backend/feature-x");
    assert_eq!(
        moved(&stats(&sidecar).await, &before),
        counts(&[("routed", 1)])
    );
    let headers = received(&reply);
    assert!(!headers.contains_key("x-sandbox-router-credential"));
    assert_eq!(
        headers.get("baggage").map(String::as_str),
        Some("sandbox-routing-key=key-feature-x")
    );

    // A wrong credential is no credential; neither is forwarded.
    for wrong in [&b"edge-test-credential2"[..], b"EDGE-TEST-CREDENTIAL", b""] {
        let before = stats(&sidecar).await;
        let reply = sidecar
            .get(
                "backend",
                &[BAGGAGE_KEY_X, ("x-sandbox-router-credential", wrong)],
            )
            .await
            .unwrap();
        assert_eq!(reply.served_by(), "backend/baseline", "{wrong:?}");
        assert_eq!(
            moved(&stats(&sidecar).await, &before),
            counts(&[("baseline.untrusted", 1)])
        );
        assert!(!received(&reply).contains_key("x-sandbox-router-credential"));
    }

    // Without routing context the credential changes nothing, and still stops here.
    let reply = sidecar.get("backend", &[credential]).await.unwrap();
    assert_eq!(reply.served_by(), "backend/baseline");
    assert!(!received(&reply).contains_key("x-sandbox-router-credential"));
}

#[tokio::test]
async fn requests_without_routing_context_pass_untouched() {
    let sidecar = edge(&["10.0.0.0/8"]).await;
    let before = stats(&sidecar).await;
    let reply = sidecar
        .get("backend", &[("baggage", b"userId=alice, tenant=t1")])
        .await
        .unwrap();
    assert_eq!(reply.served_by(), "backend/baseline");
    assert_eq!(
        received(&reply).get("baggage").map(String::as_str),
        Some("userId=alice, tenant=t1")
    );
    assert_eq!(
        moved(&stats(&sidecar).await, &before),
        counts(&[("baseline.no_context", 1)])
    );
}

#[tokio::test]
async fn a_trusted_source_keeps_its_routing_context() {
    let sidecar = edge(&["127.0.0.0/8"]).await;
    for format in Source::DEFAULT_ORDER {
        let lines = carrying(format, Some(KEY_X), None);
        let before = stats(&sidecar).await;
        let reply = sidecar.get("backend", &as_refs(&lines)).await.unwrap();
        assert_eq!(reply.served_by(), "backend/feature-x", "{format:?}");
        assert_eq!(
            moved(&stats(&sidecar).await, &before),
            counts(&[("routed", 1)]),
            "{format:?}"
        );
    }
}

/// The trusted range is matched against the connection's peer: an
/// `x-forwarded-for` a client writes itself never makes it trusted.
#[tokio::test]
async fn a_forged_x_forwarded_for_does_not_make_a_client_trusted() {
    let sidecar = edge(&["10.0.0.0/8"]).await;
    let before = stats(&sidecar).await;
    let reply = sidecar
        .get(
            "backend",
            &[BAGGAGE_KEY_X, ("x-forwarded-for", b"10.9.9.9")],
        )
        .await;
    let moved = moved(&stats(&sidecar).await, &before);
    let reply = reply.unwrap();
    assert_eq!(reply.served_by(), "backend/baseline", "{moved:?}");
    assert_eq!(moved, counts(&[("baseline.untrusted", 1)]));
}

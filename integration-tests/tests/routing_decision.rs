//! The routing decision through a real Envoy: every miss stays on the
//! baseline with a 2xx and moves exactly the counter of its reason; nothing a
//! client sends picks an upstream address by itself.

mod common;

use common::*;
use sandbox_router_proto::v1::{r#override::Target, Override, Overrides};
use sandbox_router_routing::Source;

#[tokio::test]
async fn misses_stay_on_the_baseline_and_are_counted_by_reason() {
    let sidecar = sidecar().await;
    let cases: &[(&str, &str, Headers, &str)] = &[
        ("no context", "backend", &[], "baseline.no_context"),
        (
            "unrelated baggage",
            "backend",
            &[("baggage", b"userId=alice")],
            "baseline.no_context",
        ),
        (
            "unknown key",
            "backend",
            &[("baggage", b"sandbox-routing-key=nope")],
            "baseline.unknown_key",
        ),
        (
            "key without a fork for this service",
            "frontend",
            &[BAGGAGE_KEY_X],
            "baseline.no_fork_for_service",
        ),
        (
            "key of wrong alphabet",
            "backend",
            &[("baggage", b"sandbox-routing-key=key%20feature")],
            "baseline.malformed",
        ),
        (
            "bad percent-encoding",
            "backend",
            &[("baggage", b"sandbox-routing-key=key%zz")],
            "baseline.malformed",
        ),
        (
            "%00 in key",
            "backend",
            &[("baggage", b"sandbox-routing-key=key%00x")],
            "baseline.malformed",
        ),
        (
            "ambiguous duplicate",
            "backend",
            &[(
                "baggage",
                b"sandbox-routing-key=key-feature-x,sandbox-routing-key=key-frontend-y",
            )],
            "baseline.malformed",
        ),
        (
            "x-ot-span-context not base64",
            "backend",
            &[("x-ot-span-context", b"!!!")],
            "baseline.malformed",
        ),
        (
            "x-ot-span-context not a carrier",
            "backend",
            &[("x-ot-span-context", b"////////")],
            "baseline.malformed",
        ),
        (
            "overrides not a protobuf",
            "backend",
            &[("baggage", b"sandbox-overrides=AAAA")],
            "baseline.malformed",
        ),
    ];
    for (what, host, headers, counter) in cases {
        let before = stats(&sidecar).await;
        let reply = sidecar.get(host, headers).await.unwrap();
        assert_eq!(reply.status, 200, "{what}");
        assert_eq!(reply.served_by(), format!("{host}/baseline"), "{what}");
        assert_eq!(
            moved(&stats(&sidecar).await, &before),
            counts(&[(counter, 1)]),
            "{what}"
        );
    }
}

#[tokio::test]
async fn spoofed_internal_headers_are_removed_before_deciding() {
    let sidecar = sidecar().await;
    let sandbox = sidecar.sandboxes[0].addr().to_string();
    let frontend_sandbox = sidecar.sandboxes[1].addr().to_string();
    // Without a key: the spoofed address and marker are dropped -> baseline.
    for headers in [
        vec![("x-envoy-original-dst-host", sandbox.as_bytes())],
        vec![("x-sandbox-router-route", &b"1"[..])],
        vec![
            ("x-envoy-original-dst-host", sandbox.as_bytes()),
            ("x-sandbox-router-route", &b"1"[..]),
        ],
    ] {
        let before = stats(&sidecar).await;
        let reply = sidecar.get("backend", &headers).await.unwrap();
        assert_eq!(reply.served_by(), "backend/baseline", "{headers:?}");
        assert_eq!(
            moved(&stats(&sidecar).await, &before),
            counts(&[("internal_headers_removed", 1), ("baseline.no_context", 1)])
        );
    }
    // With a valid key: routed to the table's endpoint, not the spoofed one.
    let before = stats(&sidecar).await;
    let reply = sidecar
        .get(
            "backend",
            &[
                BAGGAGE_KEY_X,
                ("x-envoy-original-dst-host", frontend_sandbox.as_bytes()),
                ("x-sandbox-router-route", b"1"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(reply.served_by(), "backend/feature-x");
    assert_eq!(
        moved(&stats(&sidecar).await, &before),
        counts(&[("internal_headers_removed", 1), ("routed", 1)])
    );
}

#[tokio::test]
async fn internal_headers_do_not_reach_the_sandbox() {
    let sidecar = sidecar().await;
    let reply = sidecar.get("backend", &[BAGGAGE_KEY_X]).await.unwrap();
    let echo = reply.echo.expect("sandbox answered");
    assert_eq!(echo.version, "feature-x");
    assert!(
        !echo.headers.contains_key("x-envoy-original-dst-host"),
        "{:?}",
        echo.headers
    );
    assert!(
        !echo.headers.contains_key("x-sandbox-router-route"),
        "{:?}",
        echo.headers
    );
    // The routing context itself travels on, for the next hop.
    assert_eq!(echo.headers["baggage"], "sandbox-routing-key=key-feature-x");
}

#[tokio::test]
async fn overrides_never_reach_an_unregistered_endpoint() {
    let sidecar = sidecar().await;
    let admin = sidecar.envoy.admin().to_string();
    let frontend_sandbox = sidecar.sandboxes[1].addr().to_string();
    let baseline = sidecar.backend_baseline.addr().to_string();
    let cases = [
        (
            "unregistered IP",
            None,
            "10.1.2.3:80".to_owned(),
            "baseline.unregistered_endpoint",
        ),
        (
            "Envoy's admin port",
            None,
            admin.clone(),
            "baseline.unregistered_endpoint",
        ),
        (
            "another service's fork",
            None,
            frontend_sandbox.clone(),
            "baseline.unregistered_endpoint",
        ),
        (
            "the baseline itself",
            None,
            baseline,
            "baseline.unregistered_endpoint",
        ),
        (
            "another sandbox's endpoint under this sandbox",
            Some(Target::Sandbox("feature-x".into())),
            frontend_sandbox,
            "baseline.unregistered_endpoint",
        ),
        (
            "a host name",
            None,
            "backend:80".to_owned(),
            "baseline.malformed",
        ),
        (
            "unknown sandbox",
            Some(Target::Sandbox("nope".into())),
            String::new(),
            "baseline.unknown_key",
        ),
        (
            "no target, no endpoint",
            None,
            String::new(),
            "baseline.malformed",
        ),
    ];
    for (what, target, endpoint, counter) in cases {
        let overrides = Overrides {
            overrides: vec![Override {
                service: "backend".into(),
                target,
                endpoint,
            }],
        };
        for format in [Source::Baggage, Source::XOtSpanContext] {
            let before = stats(&sidecar).await;
            let lines = carrying(format, None, Some(&overrides));
            let reply = sidecar.get("backend", &as_refs(&lines)).await.unwrap();
            assert_eq!(reply.status, 200, "{what} {format:?}");
            assert_eq!(reply.served_by(), "backend/baseline", "{what} {format:?}");
            assert_eq!(
                moved(&stats(&sidecar).await, &before),
                counts(&[(counter, 1)]),
                "{what} {format:?}"
            );
        }
    }
    // Overrides that name only another service: no fork for this one.
    let other = Overrides {
        overrides: vec![Override {
            service: "frontend".into(),
            target: Some(Target::Sandbox("frontend-y".into())),
            endpoint: String::new(),
        }],
    };
    let lines = carrying(Source::Baggage, None, Some(&other));
    let reply = sidecar.get("backend", &as_refs(&lines)).await.unwrap();
    assert_eq!(reply.served_by(), "backend/baseline");
    assert_eq!(
        reply.decision.as_deref(),
        Some("baseline; reason=no_fork_for_service; source=baggage; service=backend")
    );
}

#[tokio::test]
async fn non_utf8_context_stays_on_the_baseline_with_2xx() {
    let sidecar = sidecar().await;
    let cases: &[(&str, &[u8])] = &[
        ("baggage", b"sandbox-routing-key=\xff\xfe"),
        (
            "baggage",
            b"\xc3\x28=1,sandbox-routing-key=key-feature-x\x80",
        ),
        ("ot-baggage-sandbox-routing-key", b"key-\xe9"),
        ("uberctx-sandbox-routing-key", b"\xff"),
        ("x-ot-span-context", b"\xff\xff\xff\xff"),
    ];
    let before = stats(&sidecar).await;
    for (name, value) in cases {
        let reply = sidecar.get("backend", &[(name, value)]).await.unwrap();
        assert_eq!(reply.status, 200, "{name}");
        assert_eq!(reply.served_by(), "backend/baseline", "{name}");
    }
    assert_eq!(
        moved(&stats(&sidecar).await, &before),
        counts(&[("baseline.malformed", cases.len() as u64)])
    );
    // The filter never trapped.
    assert_eq!(
        stats(&sidecar).await.get("wasm.sandbox_router.vm_reload"),
        0
    );
}

#[tokio::test]
async fn a_non_token_header_name_is_refused_by_envoy_before_the_filter() {
    // The SDK's header-map getter assumes header names are UTF-8; Envoy's codec
    // refuses names that are not tokens, so the filter never sees one.
    let sidecar = sidecar().await;
    let before = stats(&sidecar).await;
    let status = sidecar
        .raw_status(
            b"GET / HTTP/1.1\r\nHost: backend\r\nbag\xffgage: x\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    assert_eq!(status, 400);
    let after = stats(&sidecar).await;
    assert_eq!(moved(&after, &before), counts(&[]));
    assert_eq!(after.get("wasm.sandbox_router.vm_reload"), 0);
}

#[tokio::test]
async fn baggage_past_the_w3c_limits_is_ignored_safely() {
    let sidecar = sidecar().await;
    // Our member after 8192 bytes of other baggage.
    let long = format!(
        "filler={},sandbox-routing-key=key-feature-x",
        "x".repeat(8200)
    );
    // Our member as the 65th member.
    let many: Vec<String> = (0..64).map(|i| format!("m{i}=v")).collect();
    let many = format!("{},sandbox-routing-key=key-feature-x", many.join(","));
    // Within the limits it still routes.
    let within = format!(
        "filler={},sandbox-routing-key=key-feature-x",
        "x".repeat(8000)
    );
    for (what, value, served, counters) in [
        (
            "past 8192 bytes",
            &long,
            "backend/baseline",
            counts(&[("baseline.no_context", 1), ("baggage_over_limit", 1)]),
        ),
        (
            "past 64 members",
            &many,
            "backend/baseline",
            counts(&[("baseline.no_context", 1), ("baggage_over_limit", 1)]),
        ),
        (
            "within limits",
            &within,
            "backend/feature-x",
            counts(&[("routed", 1)]),
        ),
    ] {
        let before = stats(&sidecar).await;
        let reply = sidecar
            .get("backend", &[("baggage", value.as_bytes())])
            .await
            .unwrap();
        assert_eq!(reply.status, 200, "{what}");
        assert_eq!(reply.served_by(), served, "{what}");
        assert_eq!(moved(&stats(&sidecar).await, &before), counters, "{what}");
    }
    assert_eq!(
        sidecar.compared_with_explain(),
        3,
        "each case compared with explain"
    );
}

#[tokio::test]
async fn requests_spread_over_a_forks_endpoints_on_several_workers() {
    // Two endpoints for one fork, Envoy with two workers.
    let mut options = two_sandboxes();
    options
        .sandboxes
        .push(("backend".into(), "feature-x".into()));
    options.concurrency = 2;
    // Round robin picks what `explain` (one request, pick 0) cannot; and this
    // test checks the debug header's default (off).
    options.compare_with_explain = false;
    let sidecar = testbed::Sidecar::start(options, |addrs| {
        Ok(serde_json::json!({
            "table": { "entries": [{
                "routing_key": KEY_X,
                "forks": [{ "service": "backend", "endpoints": [addrs[0].to_string(), addrs[2].to_string()] }]
            }]}
        })
        .to_string())
    })
    .await
    .unwrap();
    let before = stats(&sidecar).await;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let reply = sidecar.get("backend", &[BAGGAGE_KEY_X]).await.unwrap();
        assert_eq!(reply.served_by(), "backend/feature-x");
        // Debug header is off by default.
        assert_eq!(reply.decision, None);
        seen.insert(reply.echo.unwrap().addr);
    }
    assert_eq!(
        moved(&stats(&sidecar).await, &before),
        counts(&[("routed", 40)])
    );
    let endpoints = [
        sidecar.sandboxes[0].addr().to_string(),
        sidecar.sandboxes[2].addr().to_string(),
    ];
    assert_eq!(seen, endpoints.into_iter().collect());
}

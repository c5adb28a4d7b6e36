//! `make demo`: one sidecar Envoy running the sandbox-router filter in front
//! of two services, `backend` and `users`. `backend` also has a sandboxed
//! version, `feature-x`, that gets no normal traffic. The demo sends requests
//! with and without routing context, in every header format, and prints who
//! answered and what the filter decided. Everything it starts stops when it
//! ends, or on Ctrl-C.

use anyhow::Result;
use sandbox_router_proto::v1::{r#override::Target, Override, Overrides};
use sandbox_router_routing::mint::{self, Carried};
use sandbox_router_routing::Source;
use testbed::{render, shipped_config, Sidecar, SidecarOptions};

/// The routing key of sandbox `feature-x` in `envoy-config/filter-config-static.json`.
const KEY: &str = "k7f3q9x2m4feature";

#[tokio::main]
async fn main() -> Result<()> {
    tokio::select! {
        result = run() => result,
        _ = tokio::signal::ctrl_c() => {
            // Returning drops the sidecar, which stops Envoy and the services.
            println!("\nInterrupted: stopping Envoy and the demo services.");
            Ok(())
        }
    }
}

async fn run() -> Result<()> {
    println!("sandbox-router demo\n");
    println!("Starting: baseline backend, baseline users, sandboxed backend `feature-x`,");
    println!("and a real Envoy (envoy-config/sidecar.yaml) running the sandbox-router filter");
    println!("with the table from envoy-config/filter-config-static.json.\n");
    let options = SidecarOptions {
        sandboxes: vec![("backend".into(), "feature-x".into())],
        ..SidecarOptions::default()
    };
    let template = shipped_config("filter-config-static.json")?;
    let sidecar = Sidecar::start(options, |addrs| {
        let sandbox = addrs.first().map(ToString::to_string).unwrap_or_default();
        render(&template, &[("BACKEND_SANDBOX", &sandbox)])
    })
    .await?;
    println!(
        "  envoy        pid {}, listening on {}, admin on {}",
        sidecar.envoy.pid(),
        sidecar.listener,
        sidecar.envoy.admin()
    );
    println!(
        "  backend      baseline  on {}",
        sidecar.backend_baseline.addr()
    );
    println!(
        "  backend      feature-x on {}  (sandboxed: reachable only via routing key {KEY})",
        sidecar
            .sandboxes
            .first()
            .map(|s| s.addr().to_string())
            .unwrap_or_default()
    );
    println!(
        "  users        baseline  on {}\n",
        sidecar.users_baseline.addr()
    );

    let sandbox_addr = sidecar
        .sandboxes
        .first()
        .map(|s| s.addr().to_string())
        .unwrap_or_default();
    let overrides = Overrides {
        overrides: vec![Override {
            service: "backend".into(),
            target: Some(Target::Sandbox("feature-x".into())),
            endpoint: String::new(),
        }],
    };
    let mut steps: Vec<Step> = vec![Step::new(
        "no routing context: normal traffic stays on the baseline",
        "backend",
        Vec::new(),
        "backend/baseline",
    )];
    for format in Source::DEFAULT_ORDER {
        steps.push(Step::new(
            format_title(format),
            "backend",
            minted(format, Some(KEY), None),
            "backend/feature-x",
        ));
    }
    steps.push(Step::new(
        "an Overrides protobuf (Lyft style) in W3C baggage: backend -> sandbox feature-x",
        "backend",
        minted(Source::Baggage, None, Some(&overrides)),
        "backend/feature-x",
    ));
    steps.push(Step::new(
        "the same Overrides inside x-ot-span-context baggage",
        "backend",
        minted(Source::XOtSpanContext, None, Some(&overrides)),
        "backend/feature-x",
    ));
    steps.push(Step::new(
        "the alias key name sd-routing-key (as a Signadot user would send)",
        "backend",
        vec![("baggage".into(), format!("sd-routing-key={KEY}"))],
        "backend/feature-x",
    ));
    steps.push(Step::new(
        "the key forks backend only: a call to users stays on its baseline",
        "users",
        minted(Source::Baggage, Some(KEY), None),
        "users/baseline",
    ));
    steps.push(Step::new(
        "a routing key the table does not know",
        "backend",
        minted(Source::Baggage, Some("no-such-key"), None),
        "backend/baseline",
    ));
    steps.push(Step::new(
        "a client tries to steer Envoy itself: the filter removes these headers",
        "backend",
        vec![
            ("x-envoy-original-dst-host".into(), sandbox_addr.clone()),
            ("x-sandbox-router-route".into(), "1".into()),
        ],
        "backend/baseline",
    ));

    println!("Requests through the sidecar (GET / with the host and headers shown):\n");
    let mut unexpected = 0;
    for (i, step) in steps.iter().enumerate() {
        let refs: Vec<(&str, &[u8])> = step
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_bytes()))
            .collect();
        let reply = sidecar.get(step.host, &refs).await?;
        let served = reply.served_by();
        let verdict = if served == step.expect {
            "ok"
        } else {
            "UNEXPECTED"
        };
        if served != step.expect {
            unexpected += 1;
        }
        println!("{:>2}. {}", i + 1, step.title);
        println!("    host: {}", step.host);
        for (name, value) in &step.headers {
            println!("    {name}: {}", shorten(value));
        }
        println!(
            "    -> answered by {served}  [{verdict}, expected {}]",
            step.expect
        );
        println!(
            "       filter said: {}",
            reply.decision.as_deref().unwrap_or("-")
        );
        println!();
    }

    let stats = sidecar.envoy.stats().await?;
    println!("Filter counters (Envoy admin /stats, wasmcustom.sandbox_router.*):");
    for (name, value) in stats
        .0
        .iter()
        .filter(|(n, _)| n.starts_with("wasmcustom.sandbox_router."))
    {
        println!("  {name:<58} {value}");
    }
    println!("\n(One more no_context than above: the readiness check made before the first step.)");
    println!("Done: stopping Envoy and the demo services.");
    if unexpected > 0 {
        anyhow::bail!("{unexpected} request(s) did not land where expected");
    }
    Ok(())
}

struct Step {
    title: String,
    host: &'static str,
    headers: Vec<(String, String)>,
    /// `service/version` that should answer.
    expect: &'static str,
}

impl Step {
    fn new(
        title: impl Into<String>,
        host: &'static str,
        headers: Vec<(String, String)>,
        expect: &'static str,
    ) -> Self {
        Step {
            title: title.into(),
            host,
            headers,
            expect,
        }
    }
}

fn format_title(format: Source) -> String {
    let how = match format {
        Source::Baggage => "W3C baggage (OpenTelemetry)",
        Source::OtBaggage => "ot-baggage-* (OpenTracing)",
        Source::Uberctx => "uberctx-* (Jaeger)",
        Source::Tracestate => "W3C tracestate, with a valid traceparent",
        Source::XOtSpanContext => "x-ot-span-context (OpenTracing binary carrier, base64)",
    };
    format!("routing key in {how}: backend -> sandbox feature-x")
}

fn minted(
    format: Source,
    key: Option<&str>,
    overrides: Option<&Overrides>,
) -> Vec<(String, String)> {
    mint::headers(format, &Carried::default_names(key, overrides))
}

fn shorten(value: &str) -> String {
    if value.len() > 90 {
        format!(
            "{}... ({} bytes)",
            value.get(..87).unwrap_or(value),
            value.len()
        )
    } else {
        value.to_owned()
    }
}

//! `make demo`: sandbox-router end to end, on the embedded defaults.
//!
//! ```text
//! client ──► edge Envoy ──► frontend ──► frontend's sidecar Envoy ──► backend
//!              (filter)     baseline          (filter)                 baseline
//!                           frontend-v2                                backend-v2
//!                 ▲                                 ▲
//!                 └── routing table pushed by `sandbox-router serve` (SQLite store)
//! ```
//!
//! Both Envoys run the shipped `envoy-config/sidecar.yaml` (the Wasm filter),
//! or with `SANDBOX_ROUTER_HOST=native` (`make demo HOST=native`) the
//! generated `envoy-config/native/sidecar.yaml` (the native dynamic module):
//! the sidecar with the shipped `filter-config.json`, the edge with
//! `filter-config-edge.json` (edge mode: routing context only with the
//! testers' credential). The apps
//! answer HTTP and gRPC (h2c) and propagate the tracing context, in headers
//! and in gRPC metadata; sandboxes are created with the real CLI. Every answer is checked, and the demo exits
//! non-zero if one lands anywhere unexpected. Everything it starts stops when
//! it ends, or on Ctrl-C.
//!
//! Then a message hop ([`queue`]): the frontend's context goes into a job on a
//! Redis stream, and of the two workers (baseline and sandboxed) exactly the
//! right one processes it.

mod queue;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use sandbox_router_proto::v1::{r#override::Target, Override, Overrides};
use sandbox_router_routing::mint::{self, Carried};
use sandbox_router_routing::Source;
use testbed::{
    get_via, poll_until, shipped_config, sidecar_config, wait_for_filter, ControlService,
    EchoService, Envoy, Host, NextHop, RedisBroker, Reply, SidecarPorts,
};

#[tokio::main]
async fn main() -> Result<()> {
    tokio::select! {
        result = run() => result,
        _ = tokio::signal::ctrl_c() => {
            // Returning drops everything, which stops Envoy and the services.
            println!("\nInterrupted: stopping the Envoys, the control service and the demo services.");
            Ok(())
        }
    }
}

struct Demo {
    control: ControlService,
    /// The message broker of the message hop.
    broker: RedisBroker,
    edge: Envoy,
    edge_listener: SocketAddr,
    /// The testers' edge credential (`sandbox-router edge-credential`).
    credential: String,
    sidecar: Envoy,
    http: reqwest::Client,
    unexpected: usize,
    _services: Vec<EchoService>,
}

async fn run() -> Result<()> {
    let host = Host::from_env()?;
    println!("sandbox-router demo\n");
    println!("  client ──► edge Envoy ──► frontend ──► frontend's sidecar Envoy ──► backend");
    let build = match host {
        Host::Wasm => "the sandbox-router filter (Wasm)",
        Host::Native => "the sandbox-router native module (an Envoy dynamic module)",
    };
    println!("  Both Envoys run {build}; the control service pushes the routing table to both.");
    println!("  The edge Envoy is in edge mode: it honours routing context only from requests with the testers' credential.");
    println!("  The apps pass the tracing context (baggage etc.) on to the calls they make, as instrumented apps do.");
    println!("  They answer HTTP/1.1 and gRPC (HTTP/2 without TLS); a gRPC call to the frontend makes a gRPC call to the backend.\n");
    let mut demo = Demo::start().await?;
    let backend_v2 = demo._services[1].addr();
    let frontend_v2 = demo._services[3].addr();

    step("A normal request: no routing context, baseline all the way.");
    demo.request(
        "no routing context",
        &[] as &[(&str, &str)],
        "frontend/baseline -> backend/baseline",
    )
    .await?;

    step("Create a sandbox for a changed backend (already running, receiving no traffic) with the CLI.");
    let key = demo.create_sandbox("backend-v2", &format!("backend={backend_v2}"))?;
    let waited = demo
        .until_routed(&key, "frontend/baseline -> backend/backend-v2")
        .await?;
    println!(
        "  Both Envoys had the new table {} ms after the API acknowledged the write.\n",
        waited.as_millis()
    );

    step("A request carrying the routing key in W3C baggage: the frontend's sidecar sends the backend call to the sandbox.");
    let baggage = format!("sandbox-routing-key={key}");
    demo.request(
        "routing key in baggage",
        &[("baggage", baggage.clone())],
        "frontend/baseline -> backend/backend-v2",
    )
    .await?;

    step("The same key in each header format the filter reads (the frontend passes each one on):");
    for format in Source::DEFAULT_ORDER {
        let lines = mint::headers(format, &Carried::default_names(Some(&key), None));
        demo.request(
            format_name(format),
            &lines,
            "frontend/baseline -> backend/backend-v2",
        )
        .await?;
    }
    let overrides = Overrides {
        overrides: vec![Override {
            service: "backend".into(),
            target: Some(Target::Sandbox("backend-v2".into())),
            endpoint: String::new(),
        }],
    };
    let lines = mint::headers(
        Source::XOtSpanContext,
        &Carried::default_names(None, Some(&overrides)),
    );
    demo.request(
        "Overrides protobuf in x-ot-span-context (Lyft style)",
        &lines,
        "frontend/baseline -> backend/backend-v2",
    )
    .await?;

    step("gRPC: Echo calls to the frontend with the routing key in their baggage metadata; the frontend calls the backend over gRPC through its sidecar, passing the metadata on.");
    let key_metadata = [("baggage", baggage.clone())];
    demo.grpc_say(
        "gRPC Echo/Say, routing key in baggage metadata",
        &key_metadata,
        "frontend/baseline -> backend/backend-v2",
    )
    .await?;
    demo.grpc_count(
        "gRPC Echo/Count (server streaming, 3 answers), routing key in baggage metadata",
        &key_metadata,
        3,
        "frontend/baseline -> backend/backend-v2",
    )
    .await?;
    demo.grpc_say(
        "gRPC Echo/Say, no routing context",
        &[] as &[(&str, &str)],
        "frontend/baseline -> backend/baseline",
    )
    .await?;

    step("A second sandbox for a changed frontend, and a route group that tests both changes together.");
    demo.cli(&[
        "sandbox",
        "create",
        "frontend-v2",
        "--fork",
        &format!("frontend={frontend_v2}"),
    ])?;
    let out = demo.cli(&[
        "group",
        "create",
        "both-changes",
        "--member",
        "frontend-v2",
        "--member",
        "backend-v2",
    ])?;
    let group_key = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("routing key: "))
        .ok_or_else(|| anyhow!("no routing key in:\n{out}"))?
        .to_owned();
    demo.until_routed(&group_key, "frontend/frontend-v2 -> backend/backend-v2")
        .await?;
    demo.request(
        "route group key",
        &[("baggage", format!("sandbox-routing-key={group_key}"))],
        "frontend/frontend-v2 -> backend/backend-v2",
    )
    .await?;
    demo.request(
        "backend-v2's own key still forks only the backend",
        &[("baggage", baggage.clone())],
        "frontend/baseline -> backend/backend-v2",
    )
    .await?;

    step("What the control service knows about the proxies:");
    demo.cli(&["status"])?;

    step("Nobody can route a request anywhere they like:");
    demo.request(
        "client sends Envoy's routing headers itself",
        &[
            ("x-envoy-original-dst-host", backend_v2.to_string()),
            ("x-sandbox-router-route", "1".into()),
        ],
        "frontend/baseline -> backend/baseline",
    )
    .await?;
    demo.request_from_public(
        "a valid routing key, sent from outside without the edge credential",
        &[("baggage", baggage.clone())],
        "frontend/baseline -> backend/baseline",
    )
    .await?;
    demo.request(
        "a routing key nobody created",
        &[("baggage", "sandbox-routing-key=guessed-key")],
        "frontend/baseline -> backend/baseline",
    )
    .await?;

    step("The control service is killed (SIGKILL): the Envoys keep routing by the last table.");
    demo.control.kill();
    demo.request(
        "routing key in baggage, control service down",
        &[("baggage", baggage.clone())],
        "frontend/baseline -> backend/backend-v2",
    )
    .await?;
    demo.control.restart().await?;
    println!("  (restarted on the same store)\n");

    step("Delete the backend sandbox: its key falls back to the baseline.");
    demo.cli(&["sandbox", "delete", "backend-v2"])?;
    demo.until_routed(&key, "frontend/baseline -> backend/baseline")
        .await?;
    demo.request(
        "routing key of the deleted sandbox",
        &[("baggage", baggage)],
        "frontend/baseline -> backend/baseline",
    )
    .await?;

    step("A message hop: the frontend publishes a job to a Redis stream (the `jobs` stream), with the tracing context it received. Every worker, the baseline and the sandboxed one, reads every job through its own consumer group; only the sandboxed worker processes the job that carries its key.");
    queue::message_hop(&mut demo).await?;

    let prefix = host.stat_prefix();
    step(&format!("Filter counters (Envoy admin /stats, {prefix}*):"));
    for (name, envoy) in [("edge", &demo.edge), ("frontend's sidecar", &demo.sidecar)] {
        let stats = envoy.stats().await?;
        let moved: Vec<String> = stats
            .all()
            .iter()
            .filter(|(n, v)| n.starts_with(prefix) && **v > 0)
            .map(|(n, v)| format!("{}={v}", n.trim_start_matches(prefix)))
            .collect();
        println!("  {name:<20} {}", moved.join(" "));
    }
    println!();
    if demo.unexpected > 0 {
        bail!("{} request(s) did not land where expected", demo.unexpected);
    }
    println!("Done: every request landed where expected. Stopping the Envoys, the control service and the demo services.");
    Ok(())
}

impl Demo {
    async fn start() -> Result<Demo> {
        let binary = testbed::sibling_binary("sandbox-router")?;
        let control = ControlService::start(&binary, None).await?;
        println!(
            "  control service  {} (SQLite store {})",
            control.url(),
            control.db().display()
        );
        let broker = RedisBroker::start()?;
        println!("  message broker   redis-server on {}", broker.url());

        // Backends: the baseline, and a changed version that gets no normal traffic.
        let backend = EchoService::start("backend", "baseline").await?;
        let backend_v2 = EchoService::start("backend", "backend-v2").await?;
        let filter_config = shipped_config("filter-config.json")?;
        // Testers get a credential for the edge; the edge config holds its digest.
        step("Make the testers' credential for the edge Envoy (edge mode):");
        println!("  $ sandbox-router edge-credential --output json");
        let output = control.cli(&["--output", "json", "edge-credential"])?;
        let made: serde_json::Value = serde_json::from_slice(&output.stdout)
            .map_err(|e| anyhow!("edge-credential printed no JSON: {e}"))?;
        let (Some(credential), Some(sha256)) =
            (made["credential"].as_str(), made["sha256"].as_str())
        else {
            bail!("edge-credential printed {made}");
        };
        println!("    credential {credential}, sha256 {sha256}\n");
        let credential = credential.to_owned();
        let edge_filter_config = testbed::render(
            &shipped_config("filter-config-edge.json")?,
            &[("EDGE_CREDENTIAL_SHA256", sha256)],
        )?;
        // The frontend's sidecar routes its calls to `backend`.
        let sidecar_ports = SidecarPorts {
            backend_baseline: backend.addr().port(),
            frontend_baseline: 1,
            control: control.addr().port(),
        };
        let sidecar = Envoy::start(
            &sidecar_config("frontend-sidecar", &sidecar_ports, &filter_config)?,
            1,
        )
        .await?;
        let sidecar_listener = sidecar.listener("outbound").await?;
        let next = Some(NextHop {
            via: format!("http://{sidecar_listener}"),
            host: "backend".into(),
        });
        let frontend = EchoService::start_calling("frontend", "baseline", next.clone()).await?;
        let frontend_v2 = EchoService::start_calling("frontend", "frontend-v2", next).await?;
        // The edge routes client requests to `frontend`.
        let edge_ports = SidecarPorts {
            backend_baseline: 1,
            frontend_baseline: frontend.addr().port(),
            control: control.addr().port(),
        };
        let edge = Envoy::start(
            &sidecar_config("edge", &edge_ports, &edge_filter_config)?,
            1,
        )
        .await?;
        let edge_listener = edge.listener("outbound").await?;
        let http = reqwest::Client::builder().no_proxy().build()?;
        wait_for_filter(&sidecar, &http, sidecar_listener, "backend").await?;
        wait_for_filter(&edge, &http, edge_listener, "frontend").await?;
        println!(
            "  edge Envoy       pid {}, listening on {}",
            edge.pid(),
            edge_listener
        );
        println!(
            "  frontend         baseline on {}, frontend-v2 on {}",
            frontend.addr(),
            frontend_v2.addr()
        );
        println!(
            "  frontend sidecar pid {}, listening on {}",
            sidecar.pid(),
            sidecar_listener
        );
        println!(
            "  backend          baseline on {}, backend-v2 on {}\n",
            backend.addr(),
            backend_v2.addr()
        );
        Ok(Demo {
            control,
            broker,
            edge,
            edge_listener,
            credential,
            sidecar,
            http,
            unexpected: 0,
            _services: vec![backend, backend_v2, frontend, frontend_v2],
        })
    }

    /// Sends `GET / Host: frontend` to the edge as a tester (with the edge
    /// credential) and checks who answered.
    async fn request<N: AsRef<str>, V: AsRef<str>>(
        &mut self,
        what: &str,
        headers: &[(N, V)],
        expect: &str,
    ) -> Result<Reply> {
        self.send(what, headers, expect, true).await
    }

    /// [`Demo::request`] as anyone on the outside: without the credential.
    async fn request_from_public<N: AsRef<str>, V: AsRef<str>>(
        &mut self,
        what: &str,
        headers: &[(N, V)],
        expect: &str,
    ) -> Result<Reply> {
        self.send(what, headers, expect, false).await
    }

    async fn send<N: AsRef<str>, V: AsRef<str>>(
        &mut self,
        what: &str,
        headers: &[(N, V)],
        expect: &str,
        as_tester: bool,
    ) -> Result<Reply> {
        let mut refs: Vec<(&str, &[u8])> = headers
            .iter()
            .map(|(n, v)| (n.as_ref(), v.as_ref().as_bytes()))
            .collect();
        if as_tester {
            refs.push((CREDENTIAL_HEADER, self.credential.as_bytes()));
        }
        let reply = get_via(&self.http, self.edge_listener, "frontend", &refs).await?;
        self.report(what, headers, &reply.served_by(), expect);
        Ok(reply)
    }

    /// A gRPC `Echo/Say` to the frontend through the edge, as a tester.
    async fn grpc_say<N: AsRef<str>, V: AsRef<str>>(
        &mut self,
        what: &str,
        metadata: &[(N, V)],
        expect: &str,
    ) -> Result<()> {
        let client = self.grpc_client()?;
        let refs = self.as_tester(metadata);
        let served = match testbed::grpc::say(&client, &refs).await {
            Ok(answer) => answer.chain(),
            Err(e) => format!("error: {e}"),
        };
        self.report(what, metadata, &served, expect);
        Ok(())
    }

    /// A gRPC `Echo/Count` of `n` answers to the frontend through the edge,
    /// as a tester; every answer must come from `expect`.
    async fn grpc_count<N: AsRef<str>, V: AsRef<str>>(
        &mut self,
        what: &str,
        metadata: &[(N, V)],
        n: u32,
        expect: &str,
    ) -> Result<()> {
        let client = self.grpc_client()?;
        let refs = self.as_tester(metadata);
        let served = match testbed::grpc::count(&client, &refs, n).await {
            Ok(answers) if answers.len() == n as usize => {
                let mut chains: Vec<String> = answers.iter().map(|a| a.chain()).collect();
                chains.dedup();
                match chains.as_slice() {
                    [one] => format!("{one} (x{n})"),
                    _ => chains.join(" | "),
                }
            }
            Ok(answers) => format!("{} answers instead of {n}", answers.len()),
            Err(e) => format!("error: {e}"),
        };
        self.report(what, metadata, &served, &format!("{expect} (x{n})"));
        Ok(())
    }

    fn grpc_client(
        &self,
    ) -> Result<testbed::echo_proto::echo_client::EchoClient<testbed::grpc::Channel>> {
        testbed::grpc_client(&format!("http://{}", self.edge_listener), "frontend")
    }

    /// `metadata` plus the testers' edge credential, as byte values.
    fn as_tester<'a, N: AsRef<str>, V: AsRef<str>>(
        &'a self,
        metadata: &'a [(N, V)],
    ) -> Vec<(&'a str, &'a [u8])> {
        let mut refs: Vec<(&str, &[u8])> = metadata
            .iter()
            .map(|(n, v)| (n.as_ref(), v.as_ref().as_bytes()))
            .collect();
        refs.push((CREDENTIAL_HEADER, self.credential.as_bytes()));
        refs
    }

    /// Prints one checked answer (what was sent, who answered, ok or
    /// UNEXPECTED) and counts an unexpected one.
    fn report<N: AsRef<str>, V: AsRef<str>>(
        &mut self,
        what: &str,
        metadata: &[(N, V)],
        served: &str,
        expect: &str,
    ) {
        let verdict = if served == expect { "ok" } else { "UNEXPECTED" };
        if served != expect {
            self.unexpected += 1;
        }
        println!("  {what}");
        for (name, value) in metadata {
            println!(
                "      {}: {}",
                name.as_ref() as &str,
                shorten(value.as_ref())
            );
        }
        println!("    -> {served}  [{verdict}]\n");
    }

    /// Prints one checked outcome that is not a request's answer (the
    /// message hop), and counts an unexpected one.
    fn report_line(&mut self, what: &str, got: &str, expect: &str) {
        let verdict = if got == expect { "ok" } else { "UNEXPECTED" };
        if got != expect {
            self.unexpected += 1;
        }
        println!("  {what}\n    -> {got}  [{verdict}]\n");
    }

    /// Polls until a request with `key` is answered by `expect`; returns how long it took.
    async fn until_routed(&self, key: &str, expect: &str) -> Result<Duration> {
        let start = Instant::now();
        let value = format!("sandbox-routing-key={key}");
        poll_until(
            &format!("requests with {key} to reach {expect}"),
            Duration::from_secs(10),
            || async {
                let reply = get_via(
                    &self.http,
                    self.edge_listener,
                    "frontend",
                    &[
                        ("baggage", value.as_bytes()),
                        (CREDENTIAL_HEADER, self.credential.as_bytes()),
                    ],
                )
                .await
                .ok()?;
                (reply.served_by() == expect).then_some(())
            },
        )
        .await?;
        Ok(start.elapsed())
    }

    /// `sandbox-router sandbox create NAME --fork FORK` (shown); returns the
    /// routing key it printed.
    fn create_sandbox(&self, name: &str, fork: &str) -> Result<String> {
        let out = self.cli(&["sandbox", "create", name, "--fork", fork])?;
        out.lines()
            .find_map(|l| l.trim().strip_prefix("routing key: "))
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("no routing key in:\n{out}"))
    }

    /// Runs the CLI and shows the command and its output.
    fn cli(&self, args: &[&str]) -> Result<String> {
        println!("  $ sandbox-router {}", args.join(" "));
        let output = self.control.cli(args)?;
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        for line in text.lines() {
            println!("    {line}");
        }
        if !output.status.success() {
            bail!(
                "sandbox-router {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        println!();
        Ok(text)
    }
}

use sandbox_router_routing::edge::DEFAULT_CREDENTIAL_HEADER as CREDENTIAL_HEADER;

fn step(text: &str) {
    println!("== {text}\n");
}

fn format_name(format: Source) -> &'static str {
    match format {
        Source::Baggage => "W3C baggage (OpenTelemetry)",
        Source::OtBaggage => "ot-baggage-* (OpenTracing)",
        Source::Uberctx => "uberctx-* (Jaeger)",
        Source::Tracestate => "W3C tracestate, with a valid traceparent",
        Source::XOtSpanContext => "x-ot-span-context (OpenTracing binary carrier, base64)",
        // Sources the demo does not send (they are off unless configured).
        other => other.as_str(),
    }
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

//! The filter's cost against the alternatives, on one Envoy (`--concurrency
//! 1`, pinned to CPU 0; the load generator, wrk and the upstream on CPU 1):
//!
//! 1. `plain`: no filter (the physical limit);
//! 2. `native-N`: N header-match routes on `baggage`, as Istio routes sandboxes;
//! 3. `lua`: an equivalent Lua filter (no-context and routed traffic);
//! 4. `wasm-noop`: a Wasm filter that does nothing (the runtime's floor);
//!    `sr-static-*`: sandbox-router in the same layout as 4 (static table of
//!    10, no singleton), so the difference to 4 is the filter's own work;
//!    `module-noop`: a native dynamic module that does nothing (the native
//!    floor, `bench/noop-module`); `sr-native-static-*`: sandbox-router's
//!    native module in that layout, static table of 10;
//! 5. `sr-M-nocontext`, `sr-native-M-nocontext`: sandbox-router (Wasm,
//!    native) on the shipped sidecar of its host, pushed table of M
//!    sandboxes, no routing context;
//! 6. `sr-M-routed`, `sr-native-M-routed`: the same, every request routed to a sandbox.
//!
//! `--hosts` picks the hosts of sandbox-router measured (both by default).
//!
//! Per variant, at a fixed request rate: Envoy CPU microseconds per request
//! (kernel run time of Envoy's threads / requests), of which user-mode (the
//! part the filter runs in; on this VM most of the total is the kernel's
//! network path, and noisy), latency p50/p99, then the saturated rate (wrk)
//! and RSS. Variants are interleaved: each round visits
//! all of them, in a rotated order; figures are medians over rounds.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use clap::Args as ClapArgs;
use serde_json::json;
use testbed::{poll_until, render, shipped_config, ControlService, Envoy, Host};

use crate::hosts;
use crate::load::{self, Latencies};

#[derive(ClapArgs, Clone)]
pub struct Args {
    /// Smoke run: one short round of a few variants (checks the harness, not timings).
    #[arg(long)]
    quick: bool,
    #[arg(long, default_value_t = 6)]
    rounds: usize,
    /// Requests per second sent to the Envoy under test.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// Seconds measured per variant per round (8000 requests: the user-CPU
    /// clock ticks every 10 ms, i.e. 1.25 µs per request).
    #[arg(long, default_value_t = 8)]
    seconds: u64,
    /// Sandboxes in the pushed table for the sandbox-router variants.
    #[arg(long, value_delimiter = ',', default_values_t = vec![10, 10_000, 100_000])]
    tables: Vec<usize>,
    /// Measure only these variants (comma-separated names), e.g. for a focused A/B.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Routes for the native header-match variants.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1, 100, 1000])]
    native_routes: Vec<usize>,
    /// The hosts of sandbox-router measured: wasm, native.
    #[arg(long, value_delimiter = ',', value_parser = hosts::parse_host, default_values = ["wasm", "native"])]
    hosts: Vec<Host>,
}

/// One measured configuration: an Envoy and the traffic sent to it.
struct Variant {
    name: String,
    what: String,
    envoy: usize,
    /// Extra request headers (the routing key for routed traffic).
    headers: Vec<(String, String)>,
    /// Whether every request must take the ORIGINAL_DST (sandbox) route.
    routed: bool,
}

#[derive(Default, Clone)]
struct Figures {
    cpu_us: Vec<f64>,
    user_us: Vec<f64>,
    p50_us: Vec<f64>,
    p99_us: Vec<f64>,
    saturated_rps: Vec<f64>,
    rss_mb: Vec<f64>,
}

pub async fn run(mut args: Args, out: &Path) -> Result<()> {
    if args.quick {
        args.rounds = 1;
        args.seconds = 1;
        args.rate = 500;
        args.tables = vec![10];
        args.native_routes = vec![10];
    }
    // Counted before this process pins itself to one CPU.
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    pin_self_to_cpu("1")?;
    let wasm_dir = testbed::filter_wasm()
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let noop_wasm = wasm_dir.join("noop_filter.wasm");
    if !noop_wasm.exists() {
        bail!("no {} (run `make wasm`)", noop_wasm.display());
    }

    let upstream = Envoy::start_on(
        &render(
            &shipped_config("bench/upstream.yaml")?,
            &[("ADMIN_PORT", "0"), ("LISTEN_PORT", "0")],
        )?,
        1,
        Some("1"),
    )
    .await?;
    let upstream_addr = upstream.listener("upstream").await?;
    let upstream_port = upstream_addr.port().to_string();

    let mut envoys: Vec<Envoy> = Vec::new();
    let mut variants: Vec<Variant> = Vec::new();
    let mut keep_alive: Vec<ControlService> = Vec::new();
    let template = shipped_config("bench/envoy.yaml")?;
    let variant_envoy = |filters: &str, routes: &str| {
        render(
            &template,
            &[
                ("ADMIN_PORT", "0"),
                ("LISTEN_PORT", "0"),
                ("UPSTREAM_PORT", &upstream_port),
                ("HTTP_FILTERS", filters),
                ("EXTRA_ROUTES", routes),
            ],
        )
    };

    // 1. plain
    envoys.push(Envoy::start_on(&variant_envoy("", "")?, 1, Some("0")).await?);
    variants.push(variant("plain", "Envoy, no filter", envoys.len() - 1, None));
    // 2. native header-match routes
    let route = shipped_config("bench/native-route.yaml")?;
    for n in &args.native_routes {
        let mut routes = String::new();
        for i in 0..*n {
            routes.push_str(&render(&route, &[("KEY", &format!("native-key-{i:07}"))])?);
        }
        envoys.push(Envoy::start_on(&variant_envoy("", &routes)?, 1, Some("0")).await?);
        let what = format!("{n} native header-match routes (Istio style), no-context traffic");
        variants.push(variant(
            &format!("native-{n}"),
            &what,
            envoys.len() - 1,
            None,
        ));
    }
    // 3. Lua peer, with 10 routing keys.
    let lua_routes: String = (0..10)
        .map(|i| format!("[\"lua-key-{i}\"] = \"{upstream_addr}\",\n"))
        .collect();
    let lua = render(
        &shipped_config("bench/lua-filter.yaml")?,
        &[("LUA_ROUTES", &lua_routes)],
    )?;
    envoys.push(
        Envoy::start_on(
            &variant_envoy(&lua, &shipped_config("bench/marker-route.yaml")?)?,
            1,
            Some("0"),
        )
        .await?,
    );
    variants.push(variant(
        "lua-nocontext",
        "equivalent Lua filter, no-context traffic",
        envoys.len() - 1,
        None,
    ));
    variants.push(variant(
        "lua-routed",
        "equivalent Lua filter, routed traffic",
        envoys.len() - 1,
        Some("lua-key-5"),
    ));
    // 4. Wasm no-op, and one that only copies the headers into the VM.
    for (name, config, what) in [
        ("wasm-noop", "", "Wasm filter that does nothing"),
        (
            "wasm-read-headers",
            "read-headers",
            "Wasm filter that only copies the request headers into the VM",
        ),
    ] {
        let noop = render(
            &shipped_config("bench/noop-filter.yaml")?,
            &[
                ("NOOP_WASM_PATH", &noop_wasm.display().to_string()),
                ("NOOP_CONFIG", config),
            ],
        )?;
        envoys.push(Envoy::start_on(&variant_envoy(&noop, "")?, 1, Some("0")).await?);
        variants.push(variant(name, what, envoys.len() - 1, None));
    }
    // 4b. The native floor: a dynamic module that does nothing (bench/noop-module).
    if args.hosts.contains(&Host::Native) {
        let noop = hosts::bench_filter("module-noop", upstream_addr)?;
        envoys.push(Envoy::start_on(&variant_envoy(&noop, "")?, 1, Some("0")).await?);
        variants.push(variant(
            "module-noop",
            "native dynamic module that does nothing",
            envoys.len() - 1,
            None,
        ));
    }
    // sandbox-router in its floor's layout (wasm-noop, module-noop): the
    // shipped configuration with a static table of 10, no control service.
    for host in &args.hosts {
        let (filter, layout) = match host {
            Host::Wasm => (
                hosts::bench_filter("sr-static-wasm", upstream_addr)?,
                "wasm-noop",
            ),
            Host::Native => (
                hosts::bench_filter("sr-static-native", upstream_addr)?,
                "module-noop",
            ),
        };
        envoys.push(
            Envoy::start_on(
                &variant_envoy(&filter, &shipped_config("bench/marker-route.yaml")?)?,
                1,
                Some("0"),
            )
            .await?,
        );
        let what = |traffic| {
            format!(
                "sandbox-router {} in the {layout} layout (static table of 10), {traffic} traffic",
                host_label(*host)
            )
        };
        variants.push(variant(
            &hosts::sr_name(*host, "static", "nocontext"),
            &what("no-context"),
            envoys.len() - 1,
            None,
        ));
        variants.push(variant(
            &hosts::sr_name(*host, "static", "routed"),
            &what("routed"),
            envoys.len() - 1,
            Some(hosts::STATIC_KEY),
        ));
    }
    // 5 and 6. sandbox-router on the shipped sidecar of each host, pushed
    // tables of M sandboxes (one control service per table, watched by both).
    let binary = testbed::sibling_binary("sandbox-router")?;
    let stores = tempfile::tempdir()?;
    for m in &args.tables {
        let db = stores.path().join(format!("{m}.db"));
        let key = hosts::write_store(&db, *m, upstream_addr)?;
        let control = ControlService::start_with_store(&binary, &db, None).await?;
        for host in &args.hosts {
            let envoy = Envoy::start_on(
                &hosts::sidecar(
                    *host,
                    &format!("bench-{}-{m}", host.name()),
                    control.addr().port(),
                    upstream_addr.port(),
                )?,
                1,
                Some("0"),
            )
            .await?;
            poll_until(
                &format!("the {m}-sandbox table in the {} Envoy", host.name()),
                Duration::from_secs(120),
                || async {
                    let stats = envoy.stats().await.ok()?;
                    (stats.filter("sync.routing_keys") == *m as u64).then_some(())
                },
            )
            .await?;
            envoys.push(envoy);
            let i = envoys.len() - 1;
            let label = host_label(*host);
            variants.push(variant(
                &hosts::sr_name(*host, &m.to_string(), "nocontext"),
                &format!("sandbox-router {label}, {m} sandboxes, no-context traffic"),
                i,
                None,
            ));
            variants.push(variant(
                &hosts::sr_name(*host, &m.to_string(), "routed"),
                &format!("sandbox-router {label}, {m} sandboxes, routed traffic"),
                i,
                Some(&key),
            ));
        }
        keep_alive.push(control);
    }

    if !args.only.is_empty() {
        variants.retain(|v| args.only.contains(&v.name) || v.name == "plain");
    }
    // Each variant takes the path it claims (and warms up).
    for v in &variants {
        check_path(v, &envoys[v.envoy])
            .await
            .with_context(|| format!("variant {}", v.name))?;
    }

    let mut figures = vec![Figures::default(); variants.len()];
    for round in 0..args.rounds {
        for k in 0..variants.len() {
            let i = (k + round) % variants.len();
            let v = &variants[i];
            let envoy = &envoys[v.envoy];
            let listener = envoy.listener("outbound").await?;
            let headers = load::headers(&v.headers)?;
            let (before, user_before) = (envoy.cpu_time()?, envoy.user_cpu_time()?);
            let lat: Latencies = load::fixed_rate(
                listener,
                headers,
                args.rate,
                Duration::from_secs(args.seconds),
            )
            .await?;
            let cpu = envoy.cpu_time()?.saturating_sub(before);
            let user = envoy.user_cpu_time()?.saturating_sub(user_before);
            let ok = lat.micros.len();
            if lat.failed > 0 || ok == 0 {
                bail!("{}: {} of {} requests failed", v.name, lat.failed, lat.sent);
            }
            let f = &mut figures[i];
            f.cpu_us.push(cpu.as_secs_f64() * 1e6 / ok as f64);
            f.user_us.push(user.as_secs_f64() * 1e6 / ok as f64);
            f.p50_us.push(lat.percentile(0.50));
            f.p99_us.push(lat.percentile(0.99));
            let seconds = if args.quick { 1 } else { 2 };
            if let Some(rps) = load::saturate(listener, &v.headers, seconds, "1")? {
                f.saturated_rps.push(rps);
            }
            f.rss_mb.push(envoy.rss_bytes()? as f64 / 1_048_576.0);
        }
        eprintln!("round {} of {} done", round + 1, args.rounds);
    }
    drop(keep_alive);

    report(&args, cpus, &variants, &figures, out)
}

/// How a variant's description names the host.
fn host_label(host: Host) -> &'static str {
    match host {
        Host::Wasm => "(Wasm)",
        Host::Native => "(native module)",
    }
}

fn variant(name: &str, what: &str, envoy: usize, key: Option<&str>) -> Variant {
    Variant {
        name: name.to_owned(),
        what: what.to_owned(),
        envoy,
        headers: key
            .map(|k| vec![("baggage".to_owned(), format!("sandbox-routing-key={k}"))])
            .unwrap_or_default(),
        routed: key.is_some(),
    }
}

/// Sends 200 requests and checks how many took the ORIGINAL_DST route.
async fn check_path(v: &Variant, envoy: &Envoy) -> Result<()> {
    let before = envoy
        .stats()
        .await?
        .get("cluster.sandbox_original_dst.upstream_rq_total");
    let listener = envoy.listener("outbound").await?;
    let lat = load::fixed_rate(
        listener,
        load::headers(&v.headers)?,
        400,
        Duration::from_millis(500),
    )
    .await?;
    if lat.failed > 0 {
        bail!("{} of {} warm-up requests failed", lat.failed, lat.sent);
    }
    let routed = envoy
        .stats()
        .await?
        .get("cluster.sandbox_original_dst.upstream_rq_total")
        - before;
    let expected = if v.routed { lat.sent as u64 } else { 0 };
    if routed != expected {
        bail!(
            "{routed} of {} requests took the sandbox route, expected {expected}",
            lat.sent
        );
    }
    Ok(())
}

fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

fn report(
    args: &Args,
    cpus: usize,
    variants: &[Variant],
    figures: &[Figures],
    out: &Path,
) -> Result<()> {
    let med = |i: usize, f: fn(&Figures) -> &Vec<f64>| median(f(&figures[i]));
    let index = |name: &str| variants.iter().position(|v| v.name == name);
    let of = |name: &str, f: fn(&Figures) -> &Vec<f64>| index(name).and_then(|i| med(i, f));
    let plain = of("plain", |f| &f.cpu_us).unwrap_or(f64::NAN);
    let plain_user = of("plain", |f| &f.user_us).unwrap_or(f64::NAN);
    let plain_rps = of("plain", |f| &f.saturated_rps);

    let mut rows = Vec::new();
    let mut md = String::from(
        "| variant | what | CPU µs/req | × plain | user µs/req | × plain | p50 µs | p99 µs | saturated req/s | × plain | RSS MB |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (i, v) in variants.iter().enumerate() {
        let cpu = med(i, |f| &f.cpu_us).unwrap_or(f64::NAN);
        let user = med(i, |f| &f.user_us).unwrap_or(f64::NAN);
        let rps = med(i, |f| &f.saturated_rps);
        rows.push(json!({
            "variant": v.name,
            "what": v.what,
            "cpu_us_per_request": cpu,
            "cpu_ratio_to_plain": cpu / plain,
            "user_cpu_us_per_request": user,
            "user_cpu_ratio_to_plain": user / plain_user,
            "p50_us": med(i, |f| &f.p50_us),
            "p99_us": med(i, |f| &f.p99_us),
            "saturated_rps": rps,
            "saturated_ratio_to_plain": rps.zip(plain_rps).map(|(a, b)| a / b),
            "rss_mb": med(i, |f| &f.rss_mb),
            "rounds_cpu_us": figures[i].cpu_us,
            "rounds_user_us": figures[i].user_us,
        }));
        md.push_str(&format!(
            "| {} | {} | {:.1} | {:.3} | {:.1} | {:.3} | {:.0} | {:.0} | {} | {} | {:.0} |\n",
            v.name,
            v.what,
            cpu,
            cpu / plain,
            user,
            user / plain_user,
            med(i, |f| &f.p50_us).unwrap_or(f64::NAN),
            med(i, |f| &f.p99_us).unwrap_or(f64::NAN),
            rps.map_or("-".to_owned(), |r| format!("{r:.0}")),
            rps.zip(plain_rps)
                .map_or("-".to_owned(), |(a, b)| format!("{:.3}", a / b)),
            med(i, |f| &f.rss_mb).unwrap_or(f64::NAN),
        ));
    }

    // The issues' targets, and how far each is met, in CPU time (total, and
    // user CPU where the filter's own work is). On a shared VM these move by
    // ±15%: the instruction counts of `make bench-instructions` are the
    // evidence for ratios this close to 1; these are the same targets in time.
    let mut targets = Vec::new();
    let mut check = |what: String, met: Option<bool>| {
        let verdict = match met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "not measured",
        };
        targets.push(json!({ "target": what, "verdict": verdict }));
    };
    let total = |n: &str| of(n, |f| &f.cpu_us);
    let user = |n: &str| of(n, |f| &f.user_us);
    let rss = |n: &str| of(n, |f| &f.rss_mb);
    let kinds: [(&str, Getter<'_>); 2] = [("CPU", &total), ("user CPU", &user)];
    let present = |n: &str| index(n).is_some();
    for host in &args.hosts {
        let name = |table: &str, traffic: &str| hosts::sr_name(*host, table, traffic);
        let floor = match host {
            Host::Wasm => "wasm-noop",
            Host::Native => "module-noop",
        };
        // Over the host's floor: the filter's own cost.
        for traffic in ["nocontext", "routed"] {
            let ours = name("static", traffic);
            for (kind, get) in kinds {
                let own = get(&ours).zip(get(floor)).map(|(a, b)| a - b);
                check(
                    format!(
                        "{ours}: own cost ({kind} minus {floor}) {} µs < 3 µs",
                        fmt(own)
                    ),
                    own.map(|o| o < 3.0),
                );
            }
        }
        // × plain Envoy: Wasm (issue 1) within 1.15; native (issue 12) no
        // context within 1.03, routed within 1.15.
        let mut tables = vec!["static".to_owned()];
        tables.extend(args.tables.iter().map(usize::to_string));
        for table in &tables {
            for traffic in ["nocontext", "routed"] {
                let limit = match (host, traffic) {
                    (Host::Native, "nocontext") => 1.03,
                    _ => 1.15,
                };
                let ours = name(table, traffic);
                let ratio = total(&ours).map(|c| c / plain);
                check(
                    format!("{ours}: {} × plain CPU <= {limit}", fmt(ratio)),
                    ratio.map(|r| r <= limit),
                );
            }
        }
        // Against the peers.
        let single_route = args
            .native_routes
            .first()
            .map(|n| format!("native-{n}"))
            .unwrap_or_default();
        let mut peers = vec![
            (name("static", "routed"), "lua-routed".to_owned()),
            (name("static", "nocontext"), "lua-nocontext".to_owned()),
        ];
        match host {
            Host::Wasm => peers.push((name("static", "nocontext"), "native-100".to_owned())),
            Host::Native => peers.push((name("static", "nocontext"), single_route)),
        }
        for (ours, theirs) in peers.iter().filter(|(_, t)| present(t)) {
            for (kind, get) in kinds {
                let (a, b) = (get(ours), get(theirs));
                check(
                    format!(
                        "{ours} cheaper than {theirs} ({kind}): {} vs {} µs",
                        fmt(a),
                        fmt(b)
                    ),
                    a.zip(b).map(|(a, b)| a < b),
                );
            }
        }
        // Flat in the table's size; RSS at the largest table.
        if let (Some(first), Some(last)) = (args.tables.first(), args.tables.last()) {
            for traffic in ["nocontext", "routed"] {
                for (kind, get) in kinds {
                    let ratio = get(&name(&first.to_string(), traffic))
                        .zip(get(&name(&last.to_string(), traffic)))
                        .map(|(s, l)| s / l);
                    check(
                        format!(
                            "{}: {kind} at {first} / at {last} sandboxes = {} >= 0.98",
                            name("M", traffic),
                            fmt(ratio)
                        ),
                        ratio.map(|r| r >= 0.98),
                    );
                }
            }
            let at_last = rss(&name(&last.to_string(), "routed"));
            let over = at_last.zip(rss("plain")).map(|(a, p)| a - p);
            check(
                format!(
                    "{}: RSS {} MB = plain + {} MB <= plain + 60 MB",
                    name(&last.to_string(), "routed"),
                    fmt(at_last),
                    fmt(over)
                ),
                over.map(|o| o <= 60.0),
            );
        }
    }

    let envoy_version = std::process::Command::new(testbed::envoy_binary())
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let machine = json!({
        "cpus": cpus,
        "cpu_model": std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default().lines().find_map(|l| l.strip_prefix("model name\t: ").map(str::to_owned)),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "envoy": envoy_version,
    });
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let result = json!({
        "benchmark": "filter cost",
        "command": command,
        "machine": machine,
        "method": {
            "rounds": args.rounds, "rate_rps": args.rate, "seconds_per_measurement": args.seconds,
            "envoy_under_test": "--concurrency 1, pinned to CPU 0",
            "load": "fixed-rate open-loop generator over 8 keep-alive connections, wrk -t1 -c16 for saturation; both pinned to CPU 1 with the upstream",
            "cpu": "Envoy threads' run time from /proc/PID/task/*/schedstat over the fixed-rate window / requests",
            "user_cpu": "Envoy threads' utime from /proc/PID/task/*/stat (10 ms ticks) over the same window / requests",
        },
        "variants": rows,
        "targets": targets,
    });
    let mut text = format!(
        "## Filter cost (`{command}`)\n\nMachine: {} CPUs, {}; kernel {}; {}.\nMethod: {} rounds, {} req/s for {} s per variant per round, variants interleaved, medians; Envoy `--concurrency 1` on CPU 0, load generator / wrk / upstream on CPU 1.\n\n{md}\nTargets:\n",
        machine["cpus"], machine["cpu_model"].as_str().unwrap_or("?"), machine["kernel"].as_str().unwrap_or("?"), machine["envoy"].as_str().unwrap_or("?"),
        args.rounds, args.rate, args.seconds,
    );
    for t in result["targets"].as_array().into_iter().flatten() {
        text.push_str(&format!(
            "- {}: {}\n",
            t["target"].as_str().unwrap_or(""),
            t["verdict"].as_str().unwrap_or("")
        ));
    }
    println!("{text}");
    std::fs::create_dir_all(out)?;
    std::fs::write(
        out.join("cost.json"),
        serde_json::to_string_pretty(&result)? + "\n",
    )?;
    std::fs::write(out.join("cost.md"), text)?;
    println!("written to {}", out.join("cost.{json,md}").display());
    Ok(())
}

/// A variant's median figure by name.
type Getter<'a> = &'a dyn Fn(&str) -> Option<f64>;

fn fmt(v: Option<f64>) -> String {
    v.map_or("-".to_owned(), |v| format!("{v:.2}"))
}

/// Pins this process (all its threads) to `cpus`, so the load generator stays
/// off the Envoy under test's core.
fn pin_self_to_cpu(cpus: &str) -> Result<()> {
    let status = std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &std::process::id().to_string()])
        .stdout(std::process::Stdio::null())
        .status()?;
    if !status.success() {
        bail!("taskset failed");
    }
    Ok(())
}

//! The shipped sidecar (`envoy-config/sidecar.yaml`) running for real: one
//! Envoy with the built filter, baseline `backend` and `frontend` echo services,
//! and sandboxed echo services the test's table points at.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use crate::{
    native_control_section, native_module_config, poll_until, render, shipped_config, EchoReply,
    EchoService, Envoy, Host, NATIVE_SIDECAR,
};

pub struct SidecarOptions {
    /// The Wasm filter or the native module (default: `$SANDBOX_ROUTER_HOST`).
    pub host: Host,
    /// Sandboxed workloads to start, as (service, sandbox name).
    pub sandboxes: Vec<(String, String)>,
    pub concurrency: usize,
    /// Envoy's node id (what `sandbox-router status` shows).
    pub node_id: String,
    /// Where the control service listens; `None`: nowhere (a static table is
    /// configured, and the singleton's reconnect attempts fail harmlessly).
    pub control: Option<SocketAddr>,
    /// The singleton's configuration; `None`: [`DEFAULT_SYNC_CONFIG`]. The
    /// native module takes its `token` and backoff in its `control` section.
    pub sync_config: Option<String>,
    /// Another build of the filter (e.g. [`crate::trap_filter_wasm`]); Wasm only.
    pub wasm: Option<PathBuf>,
    /// Another build of the native module (e.g. [`crate::test_hooks_module`]).
    pub module: Option<PathBuf>,
    /// The HTTP filter's `failure_policy` instead of the shipped one; Wasm only.
    pub failure_policy: Option<&'static str>,
    /// Turn the debug header on (unless the configuration says otherwise) and
    /// check every answer's decision against `sandbox-router explain` on the
    /// same request: the filter and the CLI run one plan and must agree.
    pub compare_with_explain: bool,
}

/// The failure policy `envoy-config/sidecar.yaml` ships with.
pub const SHIPPED_FAILURE_POLICY: &str = "failure_policy: FAIL_RELOAD";

impl Default for SidecarOptions {
    fn default() -> Self {
        SidecarOptions {
            // An unknown value fails at `Sidecar::start`.
            host: Host::from_env().unwrap_or(Host::Wasm),
            sandboxes: Vec::new(),
            concurrency: 1,
            node_id: "sidecar".to_owned(),
            control: None,
            sync_config: None,
            wasm: None,
            module: None,
            failure_policy: None,
            compare_with_explain: true,
        }
    }
}

/// Values for the placeholders of `envoy-config/sidecar.yaml`.
pub struct SidecarPorts {
    pub backend_baseline: u16,
    pub frontend_baseline: u16,
    /// Port 1 (nothing listens there) when there is no control service.
    pub control: u16,
}

pub struct Sidecar {
    pub envoy: Envoy,
    pub backend_baseline: EchoService,
    pub frontend_baseline: EchoService,
    pub sandboxes: Vec<EchoService>,
    /// The outbound listener.
    pub listener: SocketAddr,
    http: reqwest::Client,
    /// The filter configuration, for `explain` (when comparing).
    explain: Option<Explain>,
}

/// What `sandbox-router explain` needs to plan a request as this sidecar does.
struct Explain {
    config: tempfile::NamedTempFile,
    /// The control service, for a configuration without a static table.
    control: Option<SocketAddr>,
    compared: std::sync::atomic::AtomicUsize,
}

/// One answer through the sidecar.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    /// The echo service's answer, when an echo service answered.
    pub echo: Option<EchoReply>,
    /// `x-sandbox-router-decision`, when the debug header is on.
    pub decision: Option<String>,
}

impl Reply {
    /// `service/version` of whoever answered (then ` -> ` and the next
    /// hops', when the service called on), or `status NNN`.
    pub fn served_by(&self) -> String {
        match &self.echo {
            Some(echo) => echo.chain(),
            None => format!("status {}", self.status),
        }
    }
}

/// `envoy-config/sidecar.yaml` (or, with `SANDBOX_ROUTER_HOST=native`,
/// `envoy-config/native/sidecar.yaml`) rendered on loopback, on free ports,
/// with this filter configuration.
pub fn sidecar_config(node_id: &str, ports: &SidecarPorts, filter_config: &str) -> Result<String> {
    sidecar_config_with_sync(node_id, ports, filter_config, DEFAULT_SYNC_CONFIG)
}

/// The singleton's configuration when a test gives none.
pub const DEFAULT_SYNC_CONFIG: &str = r#"{"control_cluster": "sandbox_router_control"}"#;

/// [`sidecar_config`] with the singleton's JSON configuration `sync_config`.
pub fn sidecar_config_with_sync(
    node_id: &str,
    ports: &SidecarPorts,
    filter_config: &str,
    sync_config: &str,
) -> Result<String> {
    sidecar_config_for(
        Host::from_env()?,
        node_id,
        ports,
        filter_config,
        sync_config,
    )
}

/// [`sidecar_config_with_sync`] for `host`. For the native module, whatever
/// the Wasm build's singleton takes (the control service, the node id,
/// `sync_config`'s token and backoff) becomes the `control` section of its
/// configuration (none with a static table).
pub fn sidecar_config_for(
    host: Host,
    node_id: &str,
    ports: &SidecarPorts,
    filter_config: &str,
    sync_config: &str,
) -> Result<String> {
    let (template, built, filter_config) = match host {
        Host::Wasm => (
            shipped_config("sidecar.yaml")?,
            crate::filter_wasm(),
            filter_config.to_owned(),
        ),
        Host::Native => {
            let server = format!("http://127.0.0.1:{}", ports.control);
            let control = native_control_section(&server, node_id, sync_config)?;
            (
                shipped_config(NATIVE_SIDECAR)?,
                crate::native_module(),
                native_module_config(filter_config, &control),
            )
        }
    };
    if !built.exists() {
        anyhow::bail!(
            "no {} host at {} (run `make build`)",
            host.name(),
            built.display()
        );
    }
    let built = built.display().to_string();
    render(
        &template,
        &[
            ("NODE_ID", node_id),
            ("ADMIN_PORT", "0"),
            ("LISTEN_ADDRESS", "127.0.0.1"),
            ("LISTEN_PORT", "0"),
            ("CLUSTER_TYPE", "STATIC"),
            ("BACKEND_BASELINE_ADDRESS", "127.0.0.1"),
            ("BACKEND_BASELINE_PORT", &ports.backend_baseline.to_string()),
            ("FRONTEND_BASELINE_ADDRESS", "127.0.0.1"),
            (
                "FRONTEND_BASELINE_PORT",
                &ports.frontend_baseline.to_string(),
            ),
            ("CONTROL_ADDRESS", "127.0.0.1"),
            ("CONTROL_PORT", &ports.control.to_string()),
            ("WASM_PATH", &built),
            ("MODULE_PATH", &built),
            ("FILTER_CONFIG", &filter_config),
            ("SYNC_CONFIG", sync_config),
        ],
    )
}

impl Sidecar {
    /// Starts the services, renders the sidecar with the filter configuration
    /// `filter_config(sandbox addresses)`, starts Envoy, and waits until a
    /// request has passed through the filter.
    pub async fn start(
        options: SidecarOptions,
        filter_config: impl FnOnce(&[SocketAddr]) -> Result<String>,
    ) -> Result<Sidecar> {
        let backend_baseline = EchoService::start("backend", "baseline").await?;
        let frontend_baseline = EchoService::start("frontend", "baseline").await?;
        let mut sandboxes = Vec::new();
        for (service, sandbox) in &options.sandboxes {
            sandboxes.push(EchoService::start(service, sandbox).await?);
        }
        let addrs: Vec<SocketAddr> = sandboxes.iter().map(EchoService::addr).collect();
        let ports = SidecarPorts {
            backend_baseline: backend_baseline.addr().port(),
            frontend_baseline: frontend_baseline.addr().port(),
            control: options.control.map_or(1, |c| c.port()),
        };
        let mut filter_config = filter_config(&addrs)?;
        let explain = if options.compare_with_explain {
            filter_config = with_debug_header(&filter_config)?;
            let mut file = tempfile::NamedTempFile::new()?;
            std::io::Write::write_all(&mut file, filter_config.as_bytes())?;
            Some(Explain {
                config: file,
                control: options.control,
                compared: Default::default(),
            })
        } else {
            None
        };
        Host::from_env()?;
        let mut config = sidecar_config_for(
            options.host,
            &options.node_id,
            &ports,
            &filter_config,
            options
                .sync_config
                .as_deref()
                .unwrap_or(DEFAULT_SYNC_CONFIG),
        )?;
        if options.host == Host::Native
            && (options.wasm.is_some() || options.failure_policy.is_some())
        {
            anyhow::bail!("another .wasm and failure_policy are Wasm-only options");
        }
        if let Some(module) = &options.module {
            if !module.exists() {
                anyhow::bail!("no module at {} (run `make module-test`)", module.display());
            }
            let shipped = crate::native_module().display().to_string();
            config = config.replace(&shipped, &module.display().to_string());
        }
        if let Some(wasm) = &options.wasm {
            if !wasm.exists() {
                anyhow::bail!("no filter at {} (run `make wasm-trap`)", wasm.display());
            }
            let shipped = crate::filter_wasm().display().to_string();
            config = config.replace(&shipped, &wasm.display().to_string());
        }
        if let Some(policy) = options.failure_policy {
            if !config.contains(SHIPPED_FAILURE_POLICY) {
                anyhow::bail!("sidecar.yaml no longer says {SHIPPED_FAILURE_POLICY}");
            }
            config = config.replace(SHIPPED_FAILURE_POLICY, &format!("failure_policy: {policy}"));
        }
        let envoy = Envoy::start(&config, options.concurrency).await?;
        let listener = envoy.listener("outbound").await?;
        let sidecar = Sidecar {
            envoy,
            backend_baseline,
            frontend_baseline,
            sandboxes,
            listener,
            http: reqwest::Client::builder().no_proxy().build()?,
            explain,
        };
        sidecar.wait_until_filter_runs().await?;
        Ok(sidecar)
    }

    /// Ready means a request went through the filter to the baseline and the
    /// filter counted it, not merely that a port is open.
    async fn wait_until_filter_runs(&self) -> Result<()> {
        wait_for_filter(&self.envoy, &self.http, self.listener, "backend").await
    }

    /// `GET /` for `host` through the sidecar with extra headers (values as
    /// bytes; a name given twice is sent twice).
    pub async fn get(&self, host: &str, headers: &[(&str, &[u8])]) -> Result<Reply> {
        self.get_path(host, "/", headers).await
    }

    /// [`Sidecar::get`] of `path` (with its query).
    pub async fn get_path(
        &self,
        host: &str,
        path: &str,
        headers: &[(&str, &[u8])],
    ) -> Result<Reply> {
        let reply = get_path_via(&self.http, self.listener, host, path, headers).await?;
        self.agrees_with_explain(host, path, headers, reply.decision.as_deref())
            .await?;
        Ok(reply)
    }

    /// With [`SidecarOptions::compare_with_explain`]: fails unless
    /// `sandbox-router explain`, given the request (`host` and `headers`, from
    /// loopback), plans the `decision` the filter answered. A request the CLI
    /// cannot express (a value that is not UTF-8) is not compared.
    pub async fn agrees_with_explain(
        &self,
        host: &str,
        path: &str,
        headers: &[(&str, &[u8])],
        decision: Option<&str>,
    ) -> Result<()> {
        let Some(explain) = &self.explain else {
            return Ok(());
        };
        let Some(decision) = decision else {
            anyhow::bail!("no {} in the answer", sandbox_router_routing::DEBUG_HEADER);
        };
        let mut command = tokio::process::Command::new(crate::sibling_binary("sandbox-router")?);
        command.args([
            "--output",
            "json",
            "explain",
            "--source-address",
            "127.0.0.1",
        ]);
        command.arg("--config").arg(explain.config.path());
        command.args(["--service", host, "--path", path]);
        command.args(["--cluster", &baseline_cluster(host)]);
        if let Some(control) = explain.control {
            command.args(["--server", &format!("http://{control}")]);
        }
        for (name, value) in headers {
            let Ok(value) = std::str::from_utf8(value) else {
                return Ok(());
            };
            command.arg("-H").arg(format!("{name}: {value}"));
        }
        let output = command.output().await?;
        anyhow::ensure!(
            output.status.success(),
            "explain failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let planned: serde_json::Value = serde_json::from_slice(&output.stdout)?;
        let planned = planned["decision_header"].as_str().unwrap_or_default();
        anyhow::ensure!(
            planned == decision,
            "the filter answered {decision:?}, explain plans {planned:?} for {host} {:?}",
            headers
                .iter()
                .map(|(n, v)| format!("{n}: {}", String::from_utf8_lossy(v)))
                .collect::<Vec<_>>()
        );
        explain
            .compared
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// How many answers [`Sidecar::agrees_with_explain`] has compared.
    pub fn compared_with_explain(&self) -> usize {
        self.explain
            .as_ref()
            .map_or(0, |e| e.compared.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Polls until a request for `host` with `key` in baggage is answered by
    /// `expected` (`service/version`, see [`Reply::served_by`]).
    pub async fn until_served(
        &self,
        host: &str,
        key: &str,
        expected: &str,
        deadline: Duration,
    ) -> Result<()> {
        let value = format!("sandbox-routing-key={key}");
        poll_until(
            &format!("{host} with key {key} served by {expected}"),
            deadline,
            || async {
                let reply = self
                    .get(host, &[("baggage", value.as_bytes())])
                    .await
                    .ok()?;
                (reply.served_by() == expected).then_some(())
            },
        )
        .await
    }

    /// Sends raw bytes to the listener (for requests an HTTP library will not
    /// build) and returns the status code of the answer.
    pub async fn raw_status(&self, request: &[u8]) -> Result<u16> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(self.listener).await?;
        stream.write_all(request).await?;
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(2).any(|w| w == b"\r\n") {
            let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await??;
            if n == 0 {
                break;
            }
            head.extend_from_slice(buf.get(..n).unwrap_or_default());
        }
        let line = String::from_utf8_lossy(&head);
        line.split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .with_context(|| format!("no status line in {line:?}"))
    }
}

/// Waits until a request for `host` through `listener` has passed the filter
/// (answered 200, and counted by the filter: as a request without context,
/// or, on a sandbox's sidecar that stamps its key, as stamped).
pub async fn wait_for_filter(
    envoy: &Envoy,
    http: &reqwest::Client,
    listener: SocketAddr,
    host: &str,
) -> Result<()> {
    poll_until(
        "a request through the filter",
        Duration::from_secs(30),
        || async {
            let reply = get_via(http, listener, host, &[]).await.ok()?;
            let stats = envoy.stats().await.ok()?;
            let counted = stats.filter("baseline.no_context") + stats.filter("stamped");
            (reply.status == 200 && counted > 0).then_some(())
        },
    )
    .await
    .with_context(|| envoy.log_tail())
}

/// `GET /` for `host` through the Envoy listener at `listener`, with extra
/// headers (values as bytes; a name given twice is sent twice).
pub async fn get_via(
    http: &reqwest::Client,
    listener: SocketAddr,
    host: &str,
    headers: &[(&str, &[u8])],
) -> Result<Reply> {
    get_path_via(http, listener, host, "/", headers).await
}

/// [`get_via`] of `path` (with its query).
pub async fn get_path_via(
    http: &reqwest::Client,
    listener: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &[u8])],
) -> Result<Reply> {
    let mut map = HeaderMap::new();
    map.insert(reqwest::header::HOST, HeaderValue::from_str(host)?);
    for (name, value) in headers {
        map.append(
            HeaderName::from_bytes(name.as_bytes())?,
            HeaderValue::from_bytes(value)?,
        );
    }
    let response = http
        .get(format!("http://{listener}{path}"))
        .headers(map)
        .send()
        .await?;
    let status = response.status().as_u16();
    let decision = response
        .headers()
        .get(sandbox_router_routing::DEBUG_HEADER)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let body = response.bytes().await?;
    Ok(Reply {
        status,
        echo: serde_json::from_slice(&body).ok(),
        decision,
    })
}

/// The example preview domain of `envoy-config/sidecar.yaml`'s front end.
pub const PREVIEW_DOMAIN: &str = ".preview.example.com";

/// The cluster `envoy-config/sidecar.yaml` routes `host` to: `HOST_baseline`,
/// and `frontend_baseline` for a preview host.
fn baseline_cluster(host: &str) -> String {
    let name = host.split(':').next().unwrap_or(host);
    if name.ends_with(PREVIEW_DOMAIN) {
        "frontend_baseline".to_owned()
    } else {
        format!("{name}_baseline")
    }
}

/// The filter configuration with `debug_header` on, unless it says otherwise.
fn with_debug_header(filter_config: &str) -> Result<String> {
    let mut config: serde_json::Value = if filter_config.trim().is_empty() {
        serde_json::json!({})
    } else {
        serde_json::from_str(filter_config).context("filter configuration")?
    };
    if let Some(object) = config.as_object_mut() {
        object
            .entry("debug_header")
            .or_insert(serde_json::Value::Bool(true));
    }
    Ok(config.to_string())
}

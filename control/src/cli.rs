//! Command line: `serve`, and clients of its API.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use sandbox_router_control::access::Access;
use sandbox_router_control::control::now_ms;
use sandbox_router_control::ServeOptions;
use sandbox_router_proto::v1::{r#override::Target, Override, Overrides};
use sandbox_router_routing::mint::{self, Carried};
use sandbox_router_routing::{
    plan, BaselineReason, Decision, HeaderEdit, HostPattern, RequestFacts, RoutingContext,
    RoutingTable, Settings, Source, DEBUG_HEADER,
};
use serde_json::{json, Value};

/// `println!` that ignores a closed stdout (`sandbox-router ... | head`)
/// instead of panicking.
macro_rules! out {
    () => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock());
    }};
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

#[derive(Parser)]
#[command(
    name = "sandbox-router",
    version,
    about = "Per-request sandboxes for Envoy: the control service and its CLI."
)]
pub struct Cli {
    /// Control service URL for client commands.
    #[arg(
        long,
        global = true,
        env = "SANDBOX_ROUTER_SERVER",
        default_value = "http://127.0.0.1:7070"
    )]
    server: String,
    /// Bearer token: required by `serve` for writes when set; sent by client commands.
    #[arg(
        long,
        global = true,
        env = "SANDBOX_ROUTER_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    /// Output for people, or JSON for scripts.
    #[arg(long, global = true, value_enum, default_value_t = Output::Human)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the control service (HTTP/JSON API and gRPC watch on one port).
    Serve(ServeArgs),
    /// Create, list, show, change and delete sandboxes.
    Sandbox {
        #[command(subcommand)]
        command: SandboxCommand,
    },
    /// Create, list, show, change and delete route groups.
    Group {
        #[command(subcommand)]
        command: GroupCommand,
    },
    /// Connected proxies and the table version each has applied.
    Status,
    /// Print header lines that carry a routing key (and/or overrides), exactly as the filter reads them.
    Header(HeaderArgs),
    /// Show what the filter would decide for a request, and why.
    Explain(ExplainArgs),
    /// Make a credential for an edge Envoy: prints it, and the SHA-256 digest
    /// that goes into the edge filter configuration (`edge.credential_sha256`).
    EdgeCredential,
    /// Print the Sandbox and RouteGroup CRDs of `serve --kubernetes`
    /// (`sandbox-router crds | kubectl apply -f -`).
    Crds,
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on (loopback by default).
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: String,
    /// SQLite store file (created if missing). Not used with --kubernetes.
    #[arg(long, env = "SANDBOX_ROUTER_DB", default_value = "sandbox-router.db")]
    db: PathBuf,
    /// Kubernetes mode: Sandbox and RouteGroup resources in the cluster are
    /// the state (in-cluster service account, or the kubeconfig); the API
    /// is read-only.
    #[arg(long)]
    kubernetes: bool,
    /// With --kubernetes: watch this namespace only (default: all).
    #[arg(long, requires = "kubernetes")]
    namespace: Option<String>,
    /// Bearer token the proxies' watch streams must send (the sync plugin's
    /// `token`); without it any proxy that reaches the port can watch.
    #[arg(long, env = "SANDBOX_ROUTER_WATCH_TOKEN", hide_env_values = true)]
    watch_token: Option<String>,
    /// The filter .wasm to serve at /v1/filter.wasm, where the proxies'
    /// singletons can fetch it (the Istio install does).
    #[arg(long, env = "SANDBOX_ROUTER_FILTER_WASM")]
    filter_wasm: Option<PathBuf>,
    /// The edge's `preview_host` pattern (e.g. `{sandbox}.preview.example.com`):
    /// every sandbox is shown with its preview URL.
    #[arg(long, value_name = "PATTERN")]
    preview_host: Option<String>,
    /// The edge's `cookie.name`: every sandbox is shown with a ready cookie.
    #[arg(long, value_name = "NAME")]
    preview_cookie: Option<String>,
    /// The `query.param` the proxies read: every sandbox is shown with the
    /// query that routes a webhook or callback URL to it.
    #[arg(long, value_name = "NAME")]
    query_param: Option<String>,
}

impl ServeArgs {
    fn options(&self, write_token: Option<String>) -> Result<ServeOptions, Failure> {
        let filter_wasm = match &self.filter_wasm {
            Some(path) => Some(Arc::from(std::fs::read(path).map_err(|e| {
                Failure::unreachable(format!("reading {}: {e}", path.display()))
            })?)),
            None => None,
        };
        let preview_host = match &self.preview_host {
            Some(pattern) => Some(HostPattern::parse(pattern).ok_or_else(|| {
                Failure::refused(format!(
                    "--preview-host {pattern:?}: expected a lowercase host with one {{sandbox}}, e.g. {{sandbox}}.preview.example.com"
                ))
            })?),
            None => None,
        };
        for (flag, name) in [
            ("--preview-cookie", &self.preview_cookie),
            ("--query-param", &self.query_param),
        ] {
            if let Some(name) = name {
                if !sandbox_router_routing::key::is_valid_context_key_name(name) {
                    return Err(Failure::refused(format!(
                        "{flag} {name:?}: expected a-z 0-9 - _, starting with a letter"
                    )));
                }
            }
        }
        Ok(ServeOptions {
            write_token,
            watch_token: self.watch_token.clone(),
            filter_wasm,
            access: Access {
                preview_host,
                cookie: self.preview_cookie.clone(),
                query_param: self.query_param.clone(),
            },
        })
    }
}

#[derive(Subcommand)]
enum SandboxCommand {
    /// Create a sandbox; prints its routing key and ready-to-use headers.
    Create {
        name: String,
        /// SERVICE=IP:PORT; repeat for more services or endpoints.
        #[arg(long = "fork", required = true, value_name = "SERVICE=IP:PORT")]
        forks: Vec<String>,
        /// KEY=VALUE label; repeat.
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
        /// Delete automatically after this long: 90s, 30m, 2h, 7d.
        #[arg(long)]
        ttl: Option<String>,
    },
    List,
    Get {
        name: String,
    },
    /// Replace a sandbox's forks.
    SetForks {
        name: String,
        #[arg(long = "fork", required = true, value_name = "SERVICE=IP:PORT")]
        forks: Vec<String>,
    },
    Delete {
        name: String,
    },
}

#[derive(Subcommand)]
enum GroupCommand {
    /// Create a route group combining sandboxes (by name and/or labels) under its own routing key.
    Create {
        name: String,
        #[arg(long = "member", value_name = "SANDBOX")]
        members: Vec<String>,
        #[arg(long = "selector", value_name = "KEY=VALUE")]
        selector: Vec<String>,
    },
    List,
    Get {
        name: String,
    },
    /// Replace a route group's members and selector.
    Update {
        name: String,
        #[arg(long = "member", value_name = "SANDBOX")]
        members: Vec<String>,
        #[arg(long = "selector", value_name = "KEY=VALUE")]
        selector: Vec<String>,
    },
    Delete {
        name: String,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Baggage,
    OtBaggage,
    Uberctx,
    Tracestate,
    XOtSpanContext,
}

impl From<Format> for Source {
    fn from(format: Format) -> Source {
        match format {
            Format::Baggage => Source::Baggage,
            Format::OtBaggage => Source::OtBaggage,
            Format::Uberctx => Source::Uberctx,
            Format::Tracestate => Source::Tracestate,
            Format::XOtSpanContext => Source::XOtSpanContext,
        }
    }
}

#[derive(Args)]
struct HeaderArgs {
    /// The routing key (optional when overrides are given).
    key: Option<String>,
    #[arg(long, value_enum, default_value_t = Format::Baggage)]
    format: Format,
    /// SERVICE=SANDBOX, SERVICE=key:ROUTING_KEY, SERVICE=@IP:PORT or SERVICE=SANDBOX@IP:PORT; repeat.
    #[arg(long = "override", value_name = "SERVICE=TARGET")]
    overrides: Vec<String>,
    /// The routing key's name, if the filter is configured with another.
    #[arg(long, default_value = sandbox_router_routing::DEFAULT_KEY)]
    key_name: String,
    #[arg(long, default_value = sandbox_router_routing::DEFAULT_OVERRIDES_KEY)]
    overrides_key: String,
}

#[derive(Args)]
struct ExplainArgs {
    /// A request header, 'NAME: VALUE'; repeat.
    #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// The request's authority (host), e.g. the service called.
    #[arg(long, alias = "authority")]
    service: String,
    /// The request's path and query, for the `query` source (e.g.
    /// `/stripe?sandbox-routing-key=KEY`).
    #[arg(long, default_value = "/")]
    path: String,
    /// The route's cluster name, when the filter names services by cluster.
    #[arg(long)]
    cluster: Option<String>,
    /// The downstream address (`IP` or `IP:PORT`), for an edge configuration's
    /// trusted CIDRs; default: none, i.e. untrusted unless a credential says otherwise.
    #[arg(long)]
    source_address: Option<String>,
    /// The filter configuration (JSON); default: the built-in defaults.
    #[arg(long)]
    config: Option<PathBuf>,
}

/// What `explain` knows of a request besides its headers: what its flags say.
struct ExplainFacts<'a>(&'a ExplainArgs);

impl RequestFacts for ExplainFacts<'_> {
    fn source_address(&self) -> Option<Vec<u8>> {
        self.0.source_address.clone().map(String::into_bytes)
    }

    fn cluster_name(&self) -> Option<Vec<u8>> {
        self.0.cluster.clone().map(String::into_bytes)
    }
}

/// A failure with its exit code.
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    fn refused(message: impl Into<String>) -> Self {
        Failure {
            code: 1,
            message: message.into(),
        }
    }

    fn unreachable(message: impl Into<String>) -> Self {
        Failure {
            code: 3,
            message: message.into(),
        }
    }
}

pub async fn run(cli: Cli) -> Result<(), Failure> {
    let client = Client::new(&cli)?;
    match cli.command {
        Command::Serve(args) => serve(args, cli.token).await,
        Command::Sandbox { command } => sandbox(&client, command).await,
        Command::Group { command } => group(&client, command).await,
        Command::Status => status(&client).await,
        Command::Header(args) => header(&client, args),
        Command::Explain(args) => explain(&client, args).await,
        Command::EdgeCredential => edge_credential(&client),
        Command::Crds => crds(),
    }
}

fn crds() -> Result<(), Failure> {
    use std::io::Write as _;
    let yaml = sandbox_router_control::kubernetes::crds_yaml().map_err(Failure::unreachable)?;
    // Like `out!`: a closed stdout (`| head`) is no reason to panic.
    let _ = std::io::stdout().lock().write_all(yaml.as_bytes());
    Ok(())
}

async fn serve(args: ServeArgs, token: Option<String>) -> Result<(), Failure> {
    if args.kubernetes {
        return serve_kubernetes(args, token).await;
    }
    let options = args.options(token)?;
    let control = sandbox_router_control::open(&args.db)
        .map_err(|e| Failure::unreachable(format!("opening {}: {e}", args.db.display())))?;
    let listener = bind(&args.listen)
        .map_err(|e| Failure::unreachable(format!("listening on {}: {e}", args.listen)))?;
    let local = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or(args.listen);
    let (sandboxes, groups, version) =
        control.read(|m, v| (m.sandboxes().count(), m.groups().count(), v));
    out!(
        "sandbox-router control service on http://{local} (store {}: {sandboxes} sandboxes, {groups} route groups, table version {version}; writes {}; watch streams {})",
        args.db.display(),
        if options.write_token.is_some() { "need the bearer token" } else { "are open: set --token to require one" },
        if args.watch_token.is_some() { "need the watch token" } else { "are open: set --watch-token to require one" },
    );
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    sandbox_router_control::serve(listener, control, options, shutdown)
        .await
        .map_err(|e| Failure::unreachable(format!("serving: {e}")))
}

/// `serve --kubernetes`: the controller feeds the model; API writes get 405.
async fn serve_kubernetes(args: ServeArgs, token: Option<String>) -> Result<(), Failure> {
    let options = args.options(token)?;
    let client = kube::Client::try_default().await.map_err(|e| {
        Failure::unreachable(format!(
            "--kubernetes: no Kubernetes API to use (neither an in-cluster service account nor a kubeconfig): {e}"
        ))
    })?;
    let listener = bind(&args.listen)
        .map_err(|e| Failure::unreachable(format!("listening on {}: {e}", args.listen)))?;
    let local = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or(args.listen);
    let scope = match &args.namespace {
        Some(ns) => format!("namespace {ns}"),
        None => "all namespaces".to_owned(),
    };
    out!(
        "sandbox-router control service on http://{local} (Kubernetes mode: Sandbox and RouteGroup resources in {scope}; the API is read-only, edit the resources with kubectl; watch streams {})",
        if args.watch_token.is_some() { "need the watch token" } else { "are open: set --watch-token to require one" },
    );
    let control = sandbox_router_control::Control::external();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let controller = tokio::spawn(sandbox_router_control::kubernetes::run(
        client,
        args.namespace,
        std::sync::Arc::clone(&control),
        ready_tx,
    ));
    // Proxies are served only once the table is whole: one that connected
    // sooner would get an empty snapshot and drop the routes it holds.
    out!("waiting for the first list of Sandboxes, RouteGroups and their Pods");
    tokio::select! {
        synced = ready_rx => synced.map_err(|_| Failure::unreachable("the Kubernetes controller stopped"))?,
        _ = tokio::signal::ctrl_c() => return Ok(()),
    }
    let (sandboxes, groups, version) =
        control.read(|m, v| (m.sandboxes().count(), m.groups().count(), v));
    out!(
        "serving: {sandboxes} sandboxes and {groups} route groups routed, table version {version}"
    );
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let served = sandbox_router_control::serve(listener, control, options, shutdown).await;
    controller.abort();
    served.map_err(|e| Failure::unreachable(format!("serving: {e}")))
}

/// Binds with SO_REUSEADDR, so a restarted service gets its port back at once
/// (after a crash the old connections linger in TIME_WAIT).
fn bind(listen: &str) -> std::io::Result<tokio::net::TcpListener> {
    let addr: std::net::SocketAddr = listen.parse().map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{listen:?}: {e} (expected IP:PORT)"),
        )
    })?;
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
    output: Output,
}

impl Client {
    fn new(cli: &Cli) -> Result<Self, Failure> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| Failure::unreachable(e.to_string()))?;
        Ok(Client {
            base: cli.server.trim_end_matches('/').to_owned(),
            token: cli.token.clone(),
            http,
            output: cli.output,
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, Failure> {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|e| {
            Failure::unreachable(format!(
                "cannot reach the control service at {}: {e}",
                self.base
            ))
        })?;
        let status = response.status();
        let value: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(value);
        }
        let field = value["error"]["field"].as_str();
        let reason = value["error"]["reason"]
            .as_str()
            .unwrap_or("no reason given");
        let message = match field {
            Some(field) => format!("{status}: {field}: {reason}"),
            None => format!("{status}: {reason}"),
        };
        Err(if status.is_client_error() {
            Failure::refused(message)
        } else {
            Failure::unreachable(message)
        })
    }

    fn print(&self, value: &Value, human: impl FnOnce(&Value)) {
        match self.output {
            Output::Json => out!(
                "{}",
                serde_json::to_string_pretty(value).unwrap_or_default()
            ),
            Output::Human => human(value),
        }
    }
}

async fn sandbox(client: &Client, command: SandboxCommand) -> Result<(), Failure> {
    use reqwest::Method;
    match command {
        SandboxCommand::Create {
            name,
            forks,
            labels,
            ttl,
        } => {
            let mut body = json!({ "name": name, "forks": parse_forks(&forks)?, "labels": parse_pairs("--label", &labels)? });
            if let Some(ttl) = ttl {
                body["ttl_seconds"] = json!(parse_duration(&ttl)?);
            }
            let created = client
                .call(Method::POST, "/v1/sandboxes", Some(body))
                .await?;
            client.print(&created, |s| {
                out!(
                    "Created sandbox {} (table version {}).",
                    s["name"].as_str().unwrap_or(""),
                    s["version"]
                );
                print_sandbox(s);
                print_usage(s["routing_key"].as_str().unwrap_or(""));
            });
        }
        SandboxCommand::List => {
            let list = client.call(Method::GET, "/v1/sandboxes", None).await?;
            client.print(&list, |l| {
                let items = l["items"].as_array().cloned().unwrap_or_default();
                if items.is_empty() {
                    out!("No sandboxes (table version {}).", l["version"]);
                }
                for s in items {
                    out!(
                        "{:<24} {:<26} {}  {}",
                        s["name"].as_str().unwrap_or(""),
                        s["routing_key"].as_str().unwrap_or(""),
                        forks_text(&s),
                        expiry_text(&s)
                    );
                }
            });
        }
        SandboxCommand::Get { name } => {
            let s = client
                .call(Method::GET, &format!("/v1/sandboxes/{name}"), None)
                .await?;
            client.print(&s, |s| {
                out!("Sandbox {}", s["name"].as_str().unwrap_or(""));
                print_sandbox(s);
                print_usage(s["routing_key"].as_str().unwrap_or(""));
            });
        }
        SandboxCommand::SetForks { name, forks } => {
            let body = json!({ "forks": parse_forks(&forks)? });
            let s = client
                .call(
                    Method::PUT,
                    &format!("/v1/sandboxes/{name}/forks"),
                    Some(body),
                )
                .await?;
            client.print(&s, |s| {
                out!(
                    "Updated sandbox {} (table version {}).",
                    s["name"].as_str().unwrap_or(""),
                    s["version"]
                );
                print_sandbox(s);
            });
        }
        SandboxCommand::Delete { name } => {
            let done = client
                .call(Method::DELETE, &format!("/v1/sandboxes/{name}"), None)
                .await?;
            client.print(&done, |d| {
                out!("Deleted sandbox {name} (table version {}).", d["version"])
            });
        }
    }
    Ok(())
}

async fn group(client: &Client, command: GroupCommand) -> Result<(), Failure> {
    use reqwest::Method;
    match command {
        GroupCommand::Create {
            name,
            members,
            selector,
        } => {
            let body = json!({ "name": name, "members": members, "selector": parse_pairs("--selector", &selector)? });
            let g = client
                .call(Method::POST, "/v1/routegroups", Some(body))
                .await?;
            client.print(&g, |g| {
                out!(
                    "Created route group {} (table version {}).",
                    g["name"].as_str().unwrap_or(""),
                    g["version"]
                );
                print_group(g);
                print_usage(g["routing_key"].as_str().unwrap_or(""));
            });
        }
        GroupCommand::List => {
            let list = client.call(Method::GET, "/v1/routegroups", None).await?;
            client.print(&list, |l| {
                let items = l["items"].as_array().cloned().unwrap_or_default();
                if items.is_empty() {
                    out!("No route groups (table version {}).", l["version"]);
                }
                for g in items {
                    out!(
                        "{:<24} {:<26} members {}",
                        g["name"].as_str().unwrap_or(""),
                        g["routing_key"].as_str().unwrap_or(""),
                        g["members"]
                    );
                }
            });
        }
        GroupCommand::Get { name } => {
            let g = client
                .call(Method::GET, &format!("/v1/routegroups/{name}"), None)
                .await?;
            client.print(&g, |g| {
                out!("Route group {}", g["name"].as_str().unwrap_or(""));
                print_group(g);
                print_usage(g["routing_key"].as_str().unwrap_or(""));
            });
        }
        GroupCommand::Update {
            name,
            members,
            selector,
        } => {
            let body =
                json!({ "members": members, "selector": parse_pairs("--selector", &selector)? });
            let g = client
                .call(Method::PUT, &format!("/v1/routegroups/{name}"), Some(body))
                .await?;
            client.print(&g, |g| {
                out!(
                    "Updated route group {} (table version {}).",
                    g["name"].as_str().unwrap_or(""),
                    g["version"]
                );
                print_group(g);
            });
        }
        GroupCommand::Delete { name } => {
            let done = client
                .call(Method::DELETE, &format!("/v1/routegroups/{name}"), None)
                .await?;
            client.print(&done, |d| {
                out!(
                    "Deleted route group {name} (table version {}).",
                    d["version"]
                )
            });
        }
    }
    Ok(())
}

async fn status(client: &Client) -> Result<(), Failure> {
    let status = client
        .call(reqwest::Method::GET, "/v1/proxies", None)
        .await?;
    client.print(&status, |s| {
        let version = s["version"].as_u64().unwrap_or(0);
        let proxies = s["proxies"].as_array().cloned().unwrap_or_default();
        out!(
            "Table version {version}; {} proxies connected.",
            proxies.len()
        );
        if !proxies.is_empty() {
            out!(
                "{:<28} {:<22} {:>8} {:>8}  state",
                "node",
                "peer",
                "sent",
                "applied"
            );
        }
        for p in proxies {
            let applied = p["applied_version"].as_u64().unwrap_or(0);
            let state = match p["error"].as_str() {
                Some(err) if !err.is_empty() => format!("error: {err}"),
                _ if applied == version => "in sync".to_owned(),
                _ => "behind".to_owned(),
            };
            out!(
                "{:<28} {:<22} {:>8} {:>8}  {state}",
                p["node_id"].as_str().unwrap_or(""),
                p["peer"].as_str().unwrap_or(""),
                p["sent_version"],
                applied
            );
        }
    });
    Ok(())
}

fn header(client: &Client, args: HeaderArgs) -> Result<(), Failure> {
    let overrides = parse_overrides(&args.overrides)?;
    if args.key.is_none() && overrides.is_none() {
        return Err(Failure::refused(
            "give a routing key, or --override, or both",
        ));
    }
    let format: Source = args.format.into();
    if format == Source::Tracestate && args.key.is_none() {
        return Err(Failure::refused(
            "tracestate carries a routing key only, not overrides",
        ));
    }
    let lines = mint::headers(
        format,
        &Carried {
            key_name: &args.key_name,
            key: args.key.as_deref(),
            overrides_key: &args.overrides_key,
            overrides: overrides.as_ref(),
        },
    );
    let value = json!({ "headers": lines.iter().map(|(n, v)| json!({ "name": n, "value": v })).collect::<Vec<_>>() });
    client.print(&value, |_| {
        for (name, value) in &lines {
            out!("{name}: {value}");
        }
    });
    Ok(())
}

fn edge_credential(client: &Client) -> Result<(), Failure> {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes)
        .map_err(|e| Failure::unreachable(format!("no randomness from the OS: {e}")))?;
    let credential: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let sha256 = sandbox_router_routing::edge::credential_sha256(credential.as_bytes());
    let value = json!({
        "credential": credential,
        "header": sandbox_router_routing::edge::DEFAULT_CREDENTIAL_HEADER,
        "sha256": sha256,
    });
    client.print(&value, |_| {
        out!("credential: {credential}");
        out!(
            "send it as: {}: {credential}",
            sandbox_router_routing::edge::DEFAULT_CREDENTIAL_HEADER
        );
        out!("edge filter configuration: \"credential_sha256\": [\"{sha256}\"]");
    });
    Ok(())
}

async fn explain(client: &Client, args: ExplainArgs) -> Result<(), Failure> {
    let settings = match &args.config {
        Some(path) => {
            let bytes = std::fs::read(path)
                .map_err(|e| Failure::refused(format!("{}: {e}", path.display())))?;
            Settings::from_json(&bytes)
                .map_err(|e| Failure::refused(format!("{}: {e}", path.display())))?
        }
        None => Settings::from_json(b"").map_err(|e| Failure::refused(e.to_string()))?,
    };
    // The table: the configuration's own, else the one the control service pushes.
    let (table, table_from) = if let Some(table) = &settings.table {
        (table.clone(), "the configuration".to_owned())
    } else {
        let raw = client.call(reqwest::Method::GET, "/v1/table", None).await?;
        let spec: sandbox_router_routing::TableSpec = serde_json::from_value(raw)
            .map_err(|e| Failure::unreachable(format!("table from server: {e}")))?;
        let table = RoutingTable::compile(&spec.into(), "table")
            .map_err(|e| Failure::unreachable(e.to_string()))?;
        let from = format!(
            "control service {} (version {})",
            client.base,
            table.version()
        );
        (table, from)
    };
    let mut headers: Vec<(String, Vec<u8>)> = vec![
        (":authority".to_owned(), args.service.clone().into_bytes()),
        (":path".to_owned(), args.path.clone().into_bytes()),
    ];
    for line in &args.headers {
        let (name, value) = line.split_once(':').ok_or_else(|| {
            Failure::refused(format!("--header {line:?}: expected 'NAME: VALUE'"))
        })?;
        headers.push((
            name.trim().to_ascii_lowercase(),
            value.trim().as_bytes().to_vec(),
        ));
    }
    let scanned = settings.scan(headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())));
    // The filter's own plan: the same edits, decision and counters.
    let plan = settings.plan(&scanned, &ExplainFacts(&args), &table, 0);
    let outcome = &plan.outcome;
    let context = match &outcome.extracted.context {
        _ if outcome.decision == Decision::Baseline(BaselineReason::Untrusted) => {
            "routing context from an untrusted source: removed (edge mode)".to_owned()
        }
        RoutingContext::None => {
            "none of the enabled sources carries a routing key or overrides".to_owned()
        }
        RoutingContext::Named { source, sandbox } => {
            format!("sandbox {sandbox:?} named by the {}", source.as_str())
        }
        RoutingContext::Malformed { source, why } => format!(
            "{} carries our name but it is unusable: {why}",
            source.as_str()
        ),
        RoutingContext::Found {
            source,
            key,
            overrides,
        } => {
            let mut parts = Vec::new();
            if let Some(key) = key {
                parts.push(format!("routing key {key:?}"));
            }
            if let Some(o) = overrides {
                parts.push(format!("{} override(s)", o.overrides.len()));
            }
            format!("{} from {}", parts.join(" and "), source.as_str())
        }
    };
    let edits: Vec<String> = plan.edits.iter().map(describe_edit).collect();
    let counters: Vec<&str> = plan.counters.iter().map(|c| c.name()).collect();
    let decision_header = plan::describe(outcome);
    let (decision, why) = match outcome.decision {
        Decision::Route(endpoint) => (
            format!("route to sandbox endpoint {endpoint}"),
            "the table registers this endpoint for the service".to_owned(),
        ),
        Decision::Baseline(reason) => (
            format!("baseline ({})", reason.as_str()),
            reason_text(reason).to_owned(),
        ),
    };
    let value = json!({
        "context": context,
        "baggage_over_limit": outcome.extracted.baggage_over_limit,
        "service": outcome.service,
        "decision": match outcome.decision { Decision::Route(e) => json!({"route": e.to_string()}), Decision::Baseline(r) => json!({"baseline": r.as_str()}) },
        "why": why,
        "table": table_from,
        "edits": edits,
        "counters": counters,
        "decision_header": decision_header,
    });
    client.print(&value, |_| {
        out!("routing context: {context}");
        if outcome.extracted.baggage_over_limit {
            out!("                 (baggage past 64 members / 8192 bytes: the rest was not read)");
        }
        out!(
            "service:         {}",
            outcome
                .service
                .as_deref()
                .unwrap_or("(not needed, or not nameable)")
        );
        out!("table:           {table_from}");
        out!("decision:        {decision}");
        out!("why:             {why}");
        for edit in &edits {
            out!("header edit:     {edit}");
        }
        out!("counters:        {}", counters.join(", "));
        out!("debug header:    {DEBUG_HEADER}: {decision_header}");
    });
    Ok(())
}

/// `remove baggage`, `set x-envoy-original-dst-host: 10.0.0.7:8080`.
fn describe_edit(edit: &HeaderEdit) -> String {
    match edit {
        HeaderEdit::Remove(name) => format!("remove {name}"),
        HeaderEdit::Replace(name, value) => {
            format!("set {name}: {}", String::from_utf8_lossy(value))
        }
    }
}

fn reason_text(reason: sandbox_router_routing::BaselineReason) -> &'static str {
    use sandbox_router_routing::BaselineReason::*;
    match reason {
        NoContext => "the request carries no routing context, so it takes the normal route",
        UnknownKey => {
            "no sandbox or route group has this routing key (deleted, expired, or mistyped?)"
        }
        NoForkForService => {
            "the key's sandbox does not fork this service; other hops may still route"
        }
        Malformed => "the routing context could not be decoded",
        UnregisteredEndpoint => {
            "an override names an endpoint the table does not register for this service"
        }
        NoDestination => "the destination service could not be named from the request",
        Untrusted => {
            "an edge Envoy removed the routing context: the request came from an untrusted source"
        }
    }
}

fn parse_forks(forks: &[String]) -> Result<BTreeMap<String, Vec<String>>, Failure> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for fork in forks {
        let (service, endpoint) = fork.split_once('=').ok_or_else(|| {
            Failure::refused(format!("--fork {fork:?}: expected SERVICE=IP:PORT"))
        })?;
        out.entry(service.to_owned())
            .or_default()
            .push(endpoint.to_owned());
    }
    Ok(out)
}

fn parse_pairs(flag: &str, pairs: &[String]) -> Result<BTreeMap<String, String>, Failure> {
    pairs
        .iter()
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| Failure::refused(format!("{flag} {p:?}: expected KEY=VALUE")))
        })
        .collect()
}

fn parse_overrides(overrides: &[String]) -> Result<Option<Overrides>, Failure> {
    if overrides.is_empty() {
        return Ok(None);
    }
    let mut out = Vec::new();
    for text in overrides {
        let bad = || {
            Failure::refused(format!("--override {text:?}: expected SERVICE=SANDBOX, SERVICE=key:KEY, SERVICE=@IP:PORT or SERVICE=SANDBOX@IP:PORT"))
        };
        let (service, target) = text.split_once('=').ok_or_else(bad)?;
        let (target, endpoint) = match target.split_once('@') {
            Some((t, e)) => (t, e.to_owned()),
            None => (target, String::new()),
        };
        let target = match target {
            "" if endpoint.is_empty() => return Err(bad()),
            "" => None,
            t => Some(match t.strip_prefix("key:") {
                Some(key) => Target::RoutingKey(key.to_owned()),
                None => Target::Sandbox(t.to_owned()),
            }),
        };
        out.push(Override {
            service: service.to_owned(),
            target,
            endpoint,
        });
    }
    Ok(Some(Overrides { overrides: out }))
}

/// `90`, `90s`, `30m`, `2h`, `7d` -> seconds.
fn parse_duration(text: &str) -> Result<u64, Failure> {
    let bad = || {
        Failure::refused(format!(
            "--ttl {text:?}: expected a duration like 90s, 30m, 2h or 7d"
        ))
    };
    let (digits, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(bad()),
    };
    n.checked_mul(scale).ok_or_else(bad)
}

fn forks_text(s: &Value) -> String {
    s["forks"]
        .as_object()
        .map(|forks| {
            forks
                .iter()
                .map(|(service, endpoints)| {
                    let list: Vec<&str> = endpoints
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect();
                    format!("{service} -> {}", list.join(", "))
                })
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_default()
}

fn expiry_text(s: &Value) -> String {
    match s["expires_at_ms"].as_u64() {
        Some(at) => {
            let left = at.saturating_sub(now_ms()) / 1000;
            format!(
                "expires in {}h{:02}m{:02}s",
                left / 3600,
                left / 60 % 60,
                left % 60
            )
        }
        None => String::new(),
    }
}

fn print_sandbox(s: &Value) {
    out!("  routing key: {}", s["routing_key"].as_str().unwrap_or(""));
    out!("  forks:       {}", forks_text(s));
    if let Some(labels) = s["labels"].as_object().filter(|l| !l.is_empty()) {
        let text: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
            .collect();
        out!("  labels:      {}", text.join(", "));
    }
    let expiry = expiry_text(s);
    if !expiry.is_empty() {
        out!("  expiry:      {expiry}");
    }
    print_access(s);
}

/// The ways in besides headers that the control service knows the edge offers.
fn print_access(item: &Value) {
    let access = &item["access"];
    if let Some(url) = access["preview_url"].as_str() {
        out!("  preview:     {url}");
    }
    if let Some(cookie) = access["cookie"].as_str() {
        out!("  cookie:      document.cookie = \"{cookie}\"");
    }
    if let Some(query) = access["query"].as_str() {
        out!("  webhooks:    add ?{query} to the callback URL");
    }
}

fn print_group(g: &Value) {
    out!("  routing key: {}", g["routing_key"].as_str().unwrap_or(""));
    out!("  members:     {}", g["members"]);
    if let Some(selector) = g["selector"].as_object().filter(|s| !s.is_empty()) {
        out!("  selector:    {}", Value::Object(selector.clone()));
    }
    print_access(g);
}

/// Ready-to-paste headers and a curl line for a routing key.
fn print_usage(key: &str) {
    out!();
    out!("Send requests with any one of these headers; the apps must propagate it to every hop:");
    for format in Source::DEFAULT_ORDER {
        for (name, value) in mint::headers(format, &Carried::default_names(Some(key), None)) {
            out!("  {name}: {value}");
        }
    }
    out!();
    out!("For example:");
    out!(
        "  curl -H 'baggage: {}={key}' http://frontend/",
        sandbox_router_routing::DEFAULT_KEY
    );
}

/// Every `sandbox-router ...` line the README and docs tell a user to type
/// parses with this CLI, so a renamed command or flag fails here first.
#[cfg(test)]
mod documented_commands {
    use clap::error::ErrorKind;
    use clap::Parser;
    use testbed::docs;

    #[test]
    fn every_documented_invocation_parses() {
        let mut checked = 0;
        let mut refused = Vec::new();
        for path in docs::documentation_files() {
            let doc = docs::read(&path).unwrap();
            for (line, args) in docs::commands(&doc, "sandbox-router") {
                checked += 1;
                let argv = std::iter::once("sandbox-router".to_string()).chain(args.clone());
                match super::Cli::try_parse_from(argv) {
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
                        ) => {}
                    Err(e) => refused.push(format!(
                        "{}:{line}: sandbox-router {}\n  {}",
                        path.display(),
                        args.join(" "),
                        e.render().to_string().lines().next().unwrap_or_default()
                    )),
                }
            }
        }
        assert!(checked > 5, "only {checked} documented invocations found");
        assert!(refused.is_empty(), "{}", refused.join("\n"));
    }

    #[test]
    fn a_renamed_flag_would_be_caught() {
        let doc = docs::parse(
            std::path::Path::new("t.md"),
            "```sh\nsandbox-router sandbox create a --forks b=1.2.3.4:5\n```\n",
        );
        let (_, args) = &docs::commands(&doc, "sandbox-router")[0];
        let argv = std::iter::once("sandbox-router".to_string()).chain(args.clone());
        assert!(super::Cli::try_parse_from(argv).is_err());
    }
}

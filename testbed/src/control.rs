//! The real control service (`sandbox-router serve`) as a child process, so a
//! test can SIGKILL it and start it again on the same port and store.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use anyhow::{anyhow, Context as _, Result};

use crate::poll_until;

pub struct ControlService {
    binary: PathBuf,
    db: PathBuf,
    token: Option<String>,
    /// More `serve` arguments (e.g. `--watch-token`).
    serve_args: Vec<String>,
    addr: SocketAddr,
    child: Option<Child>,
    http: reqwest::Client,
    _dir: Option<tempfile::TempDir>,
}

impl ControlService {
    /// Starts `binary serve` on a free port with a fresh store in a temp dir.
    pub async fn start(binary: &Path, token: Option<&str>) -> Result<ControlService> {
        Self::start_with_args(binary, token, &[]).await
    }

    /// [`ControlService::start`] with more `serve` arguments.
    pub async fn start_with_args(
        binary: &Path,
        token: Option<&str>,
        serve_args: &[&str],
    ) -> Result<ControlService> {
        let dir = tempfile::Builder::new()
            .prefix("sandbox-router-control-")
            .tempdir()?;
        let db = dir.path().join("store.db");
        let mut control = Self::new(binary, &db, token)?;
        control.serve_args = serve_args.iter().map(|a| (*a).to_owned()).collect();
        control._dir = Some(dir);
        control.spawn().await?;
        Ok(control)
    }

    /// Starts `binary serve` with the store at `db` (kept by the caller).
    pub async fn start_with_store(
        binary: &Path,
        db: &Path,
        token: Option<&str>,
    ) -> Result<ControlService> {
        let mut control = Self::new(binary, db, token)?;
        control.spawn().await?;
        Ok(control)
    }

    fn new(binary: &Path, db: &Path, token: Option<&str>) -> Result<ControlService> {
        Ok(ControlService {
            binary: binary.to_owned(),
            db: db.to_owned(),
            token: token.map(str::to_owned),
            serve_args: Vec::new(),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            child: None,
            http: reqwest::Client::builder().no_proxy().build()?,
            _dir: None,
        })
    }

    async fn spawn(&mut self) -> Result<()> {
        let mut command = Command::new(&self.binary);
        command
            .arg("serve")
            .arg("--listen")
            .arg(self.addr.to_string())
            .arg("--db")
            .arg(&self.db)
            .args(&self.serve_args)
            .env_remove("SANDBOX_ROUTER_TOKEN")
            .env_remove("SANDBOX_ROUTER_WATCH_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(token) = &self.token {
            command.arg("--token").arg(token);
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        self.child = Some(child);
        // The first line says where it listens ("... on http://IP:PORT (...");
        // the thread keeps draining stdout so the service never blocks on it.
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next().and_then(Result::ok));
            for _ in lines {}
        });
        let first = tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .context("control service did not start")??
            .ok_or_else(|| anyhow!("control service exited before listening"))?;
        let addr = first
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .ok_or_else(|| anyhow!("unexpected first line: {first}"))?;
        self.addr = addr.parse()?;
        let url = format!("{}/healthz", self.url());
        let http = self.http.clone();
        poll_until("control service /healthz", Duration::from_secs(30), || {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let response = http.get(url).send().await.ok()?;
                response.status().is_success().then_some(())
            }
        })
        .await
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn db(&self) -> &Path {
        &self.db
    }

    /// SIGKILL: no shutdown, nothing flushed beyond what was committed.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same port and store.
    pub async fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn().await
    }

    /// Calls the HTTP API; returns the status and the JSON body.
    pub async fn api(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(u16, serde_json::Value)> {
        let mut request = self.http.request(method, format!("{}{path}", self.url()));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let value = response.json().await.unwrap_or(serde_json::Value::Null);
        Ok((status, value))
    }

    /// Runs the CLI: `binary --server URL [--token T] ARGS...`.
    pub fn cli(&self, args: &[&str]) -> Result<Output> {
        let mut command = Command::new(&self.binary);
        command
            .arg("--server")
            .arg(self.url())
            .env_remove("SANDBOX_ROUTER_TOKEN");
        if let Some(token) = &self.token {
            command.arg("--token").arg(token);
        }
        Ok(command.args(args).output()?)
    }
}

impl Drop for ControlService {
    fn drop(&mut self) {
        self.kill();
    }
}

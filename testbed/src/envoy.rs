//! A real Envoy process on free ports.
//!
//! Ports are never guessed: the config asks for port 0, Envoy writes its
//! admin address to `--admin-address-path`, and listener addresses are read
//! back from `/listeners`. `--use-dynamic-base-id` lets many Envoys run at once.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};

use crate::{poll_until, Host};

pub struct Envoy {
    child: Child,
    admin: SocketAddr,
    dir: tempfile::TempDir,
    http: reqwest::Client,
    /// Which host of sandbox-router the config loads, if exactly one.
    host: Option<Host>,
}

impl Envoy {
    /// Starts Envoy on `config` (YAML) and waits until its admin endpoint
    /// answers and every listener is bound.
    pub async fn start(config: &str, concurrency: usize) -> Result<Envoy> {
        Self::start_on(config, concurrency, None).await
    }

    /// Like `start`, pinned to `cpus` (a `taskset` CPU list such as "0").
    pub async fn start_on(config: &str, concurrency: usize, cpus: Option<&str>) -> Result<Envoy> {
        let binary = crate::envoy_binary();
        if !binary.exists() {
            bail!(
                "no Envoy at {} (run `make envoy`, or set ENVOY_BIN)",
                binary.display()
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("sandbox-router-envoy-")
            .tempdir()?;
        let config_path = dir.path().join("envoy.yaml");
        std::fs::write(&config_path, config)?;
        let admin_path = dir.path().join("admin-address");
        let log_path = dir.path().join("envoy.log");
        let mut command = match cpus {
            // taskset execs Envoy, so the child's pid is Envoy's.
            Some(cpus) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(cpus).arg(&binary);
                c
            }
            None => Command::new(&binary),
        };
        let child = command
            .arg("-c")
            .arg(&config_path)
            .arg("--use-dynamic-base-id")
            .arg("--admin-address-path")
            .arg(&admin_path)
            .arg("--log-path")
            .arg(&log_path)
            // The log file within 100 ms (Envoy's default: every 10 s), for
            // tests that look for a log line.
            .args(["--file-flush-interval-msec", "100"])
            .args(["-l", "info", "--concurrency", &concurrency.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let http = reqwest::Client::builder().no_proxy().build()?;
        let mut envoy = Envoy {
            child,
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            dir,
            http,
            host: Host::loaded_by(config),
        };
        let admin = poll_until("Envoy's admin address", Duration::from_secs(30), || {
            let exited = envoy.child.try_wait().ok().flatten();
            let text = std::fs::read_to_string(&admin_path).ok();
            async move {
                if exited.is_some() {
                    return Some(None);
                }
                text.and_then(|t| t.trim().parse::<SocketAddr>().ok())
                    .map(Some)
            }
        })
        .await
        .map_err(|e| anyhow!("{e}\n{}", tail(&log_path)))?;
        envoy.admin =
            admin.ok_or_else(|| anyhow!("Envoy exited during start-up:\n{}", tail(&log_path)))?;
        // Envoy may still refuse a listener's configuration (and exit) after
        // its admin endpoint came up.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if envoy.child.try_wait()?.is_some() {
                bail!("Envoy exited during start-up:\n{}", tail(&log_path));
            }
            let bound = envoy.listeners().await.ok();
            if bound.is_some_and(|l| l.values().all(|a| a.port() != 0)) {
                return Ok(envoy);
            }
            if std::time::Instant::now() > deadline {
                bail!(
                    "timed out after 30s waiting for Envoy listeners\n{}",
                    tail(&log_path)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Runs `envoy --mode validate` on `config`: `Ok(output)` when Envoy
    /// accepts it, `Err(output)` when it does not.
    pub fn validate(config: &str) -> Result<std::result::Result<String, String>> {
        Self::validate_with_env(config, &[])
    }

    /// [`Envoy::validate`] with extra environment variables for Envoy.
    pub fn validate_with_env(
        config: &str,
        env: &[(&str, &str)],
    ) -> Result<std::result::Result<String, String>> {
        let dir = tempfile::Builder::new()
            .prefix("sandbox-router-validate-")
            .tempdir()?;
        let path = dir.path().join("envoy.yaml");
        std::fs::write(&path, config)?;
        let output = Command::new(crate::envoy_binary())
            .args(["--mode", "validate", "-l", "info", "-c"])
            .arg(&path)
            .envs(env.iter().copied())
            .output()
            .context("running envoy --mode validate")?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(if output.status.success() {
            Ok(text)
        } else {
            Err(text)
        })
    }

    pub fn admin(&self) -> SocketAddr {
        self.admin
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("envoy.log")
    }

    /// The last lines of Envoy's log, for error messages.
    pub fn log_tail(&self) -> String {
        tail(&self.log_path())
    }

    /// Bound address of each listener, by name.
    pub async fn listeners(&self) -> Result<BTreeMap<String, SocketAddr>> {
        let url = format!("http://{}/listeners?format=json", self.admin);
        let body: serde_json::Value = self.http.get(url).send().await?.json().await?;
        let mut out = BTreeMap::new();
        for listener in body["listener_statuses"].as_array().into_iter().flatten() {
            let name = listener["name"].as_str().unwrap_or_default().to_owned();
            let socket = &listener["local_address"]["socket_address"];
            let ip = socket["address"].as_str().unwrap_or_default();
            let port = socket["port_value"].as_u64().unwrap_or_default();
            out.insert(name, format!("{ip}:{port}").parse()?);
        }
        Ok(out)
    }

    pub async fn listener(&self, name: &str) -> Result<SocketAddr> {
        self.listeners()
            .await?
            .remove(name)
            .ok_or_else(|| anyhow!("Envoy has no listener named {name}"))
    }

    /// All counters and gauges.
    pub async fn stats(&self) -> Result<Stats> {
        let url = format!("http://{}/stats", self.admin);
        let text = self.http.get(url).send().await?.text().await?;
        let values = text
            .lines()
            .filter_map(|line| {
                let (name, value) = line.split_once(": ")?;
                Some((name.to_owned(), value.trim().parse().ok()?))
            })
            .collect();
        Ok(Stats {
            values,
            host: self.host,
        })
    }

    /// CPU time Envoy's threads have run, from `/proc/PID/task/*/schedstat`
    /// (the kernel's accounting behind `/proc/PID/stat` utime+stime, in ns).
    pub fn cpu_time(&self) -> Result<Duration> {
        let mut total = 0u64;
        for task in std::fs::read_dir(format!("/proc/{}/task", self.pid()))? {
            let stat = std::fs::read_to_string(task?.path().join("schedstat")).unwrap_or_default();
            total += stat
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
        Ok(Duration::from_nanos(total))
    }

    /// User-mode CPU time of Envoy's threads (`utime` of `/proc/PID/task/*/stat`,
    /// in clock ticks of 10 ms): the part of the CPU time the filter's own code
    /// is in, without the kernel's network processing.
    pub fn user_cpu_time(&self) -> Result<Duration> {
        const TICK: Duration = Duration::from_millis(10); // USER_HZ on Linux
        let mut ticks = 0u64;
        for task in std::fs::read_dir(format!("/proc/{}/task", self.pid()))? {
            let stat = std::fs::read_to_string(task?.path().join("stat")).unwrap_or_default();
            // Fields after the parenthesised command name; utime is field 14.
            let after = stat
                .rsplit_once(')')
                .map(|(_, rest)| rest)
                .unwrap_or_default();
            ticks += after
                .split_whitespace()
                .nth(11)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
        Ok(TICK * u32::try_from(ticks).unwrap_or(u32::MAX))
    }

    /// Resident memory (VmRSS) in bytes.
    pub fn rss_bytes(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let kb = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| anyhow!("no VmRSS"))?;
        Ok(kb * 1024)
    }

    /// Stops Envoy (SIGKILL: tests and the demo own everything it serves).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A snapshot of Envoy's stats.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    values: BTreeMap<String, u64>,
    /// The host the Envoy runs: its filter's stats are read under that
    /// host's prefix only, so a host counting under the other's fails.
    host: Option<Host>,
}

impl Stats {
    pub fn get(&self, name: &str) -> u64 {
        self.values.get(name).copied().unwrap_or(0)
    }

    /// Every stat, by full name.
    pub fn all(&self) -> &BTreeMap<String, u64> {
        &self.values
    }

    /// The prefixes the filter's stats are read under: the host's
    /// (`wasmcustom.sandbox_router.` for the Wasm filter, `sandbox_router.`
    /// for the native module), or both for an Envoy that loads neither or both.
    fn prefixes(&self) -> impl Iterator<Item = &'static str> + '_ {
        let hosts = match &self.host {
            Some(host) => std::slice::from_ref(host),
            None => &Host::ALL[..],
        };
        hosts.iter().map(|host| host.stat_prefix())
    }

    /// The filter's stat `<name>` under the host's prefix.
    pub fn filter(&self, name: &str) -> u64 {
        self.prefixes()
            .map(|prefix| self.get(&format!("{prefix}{name}")))
            .sum()
    }

    /// The filter's per-request counters that changed since `before`, as
    /// `name -> delta` (the watch's `sync.*` stats are left out).
    pub fn filter_delta(&self, before: &Stats) -> BTreeMap<String, u64> {
        self.values
            .iter()
            .filter_map(|(name, value)| {
                let short = self
                    .prefixes()
                    .find_map(|prefix| name.strip_prefix(prefix))?;
                if short.starts_with("sync.") {
                    return None;
                }
                let delta = value.saturating_sub(before.get(name));
                (delta > 0).then(|| (short.to_owned(), delta))
            })
            .collect()
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

//! A real message broker for the queue tests and `make demo`: Redis
//! (`redis-server` from Debian, installed by `make deps`), whose Streams give
//! one consumer group per consumer (`XREADGROUP`). It listens on a Unix
//! socket in a temp dir (no port to race for), keeps nothing on disk, and is
//! ready when it answers `PING`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

/// The `redis-server` to run: `$REDIS_SERVER` or the one on `PATH`.
pub fn redis_server_binary() -> PathBuf {
    std::env::var_os("REDIS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("redis-server"))
}

pub struct RedisBroker {
    socket: PathBuf,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl RedisBroker {
    /// Starts `redis-server` and waits (up to 10 s) until it answers `PING`.
    pub fn start() -> Result<RedisBroker> {
        let dir = tempfile::Builder::new()
            .prefix("sandbox-router-redis-")
            .tempdir()?;
        let socket = dir.path().join("redis.sock");
        let binary = redis_server_binary();
        let child = Command::new(&binary)
            .args(["--port", "0", "--unixsocket"])
            .arg(&socket)
            .args([
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--daemonize", "no", "--loglevel", "warning", "--dir"])
            .arg(dir.path())
            .arg("--logfile")
            .arg(dir.path().join("redis.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (Debian's redis-server; `make deps` installs it)",
                    binary.display()
                )
            })?;
        let mut broker = RedisBroker {
            socket,
            child: Some(child),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if ping(&broker.socket) {
                return Ok(broker);
            }
            if let Some(child) = broker.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    bail!("redis-server exited at start ({status})");
                }
            }
            if Instant::now() > deadline {
                bail!("redis-server did not answer PING within 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The URL clients connect to: `unix:///...redis.sock`.
    pub fn url(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisBroker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// True when Redis answers `PING` on the socket.
fn ping(socket: &Path) -> bool {
    let Ok(mut stream) = UnixStream::connect(socket) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}

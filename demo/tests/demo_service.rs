//! `demo-service` (the demo's echo service as its own process, for the
//! containers of envoy-config/compose/): answers with its service and
//! version, calls its next hop passing the tracing context on, and stops on
//! SIGTERM as `docker stop` sends it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use testbed::EchoReply;

/// A running `demo-service`, killed when dropped.
struct Running {
    child: Child,
    addr: String,
}

impl Running {
    fn start(args: &[&str]) -> Running {
        let mut child = Command::new(env!("CARGO_BIN_EXE_demo-service"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        let Some(addr) = line
            .split(" listening on ")
            .nth(1)
            .and_then(|rest| rest.split([',', '\n']).next())
        else {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!(
                "demo-service {args:?} printed {line:?}; stderr:\n{}",
                String::from_utf8_lossy(&output.stderr)
            )
        };
        let addr = addr.to_owned();
        Running { child, addr }
    }

    /// Sends SIGTERM and returns whether the process exited successfully.
    fn terminate(&mut self) -> bool {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            assert!(Instant::now() < deadline, "no exit 10 s after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn demo_service_answers_calls_its_next_hop_and_stops_on_sigterm() {
    let mut backend = Running::start(&[
        "--service",
        "backend",
        "--version",
        "backend-v2",
        "--listen",
        "127.0.0.1:0",
    ]);
    let next_hop = format!("http://{}", backend.addr);
    let mut frontend = Running::start(&[
        "--service",
        "frontend",
        "--listen",
        "127.0.0.1:0",
        "--next-hop",
        &next_hop,
        "--next-host",
        "backend",
    ]);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let reply: EchoReply = http
        .get(format!("http://{}/", frontend.addr))
        .header("baggage", "sandbox-routing-key=k1")
        .header("x-not-propagated", "1")
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(reply.chain(), "frontend/baseline -> backend/backend-v2");
    let downstream = reply.downstream.unwrap();
    assert_eq!(downstream.headers["host"], "backend");
    assert_eq!(downstream.headers["baggage"], "sandbox-routing-key=k1");
    assert!(!downstream.headers.contains_key("x-not-propagated"));

    assert!(frontend.terminate());
    assert!(backend.terminate());
}

#[test]
fn demo_service_refuses_a_next_hop_that_is_not_a_url() {
    let output = Command::new(env!("CARGO_BIN_EXE_demo-service"))
        .args([
            "--service",
            "frontend",
            "--listen",
            "127.0.0.1:0",
            "--next-hop",
            "frontend-sidecar:15001",
            "--next-host",
            "backend",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("--next-hop must be an http:// URL"),
        "{output:?}"
    );
}

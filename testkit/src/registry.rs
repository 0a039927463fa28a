//! A plain-HTTP `docker-registry`.

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::process::{Lifetime, Proc, absolute, free_port, port_free};
use crate::{POLL, READY_TIMEOUT};

/// A `docker-registry` (distribution 2.8) on 127.0.0.1:<port>, plain HTTP, filesystem storage in
/// `<dir>/storage`, config `<dir>/config.yml`, log `<dir>/registry.log`.
pub struct Registry {
    dir: PathBuf,
    port: u16,
    reused: bool,
    proc: Proc,
}

impl Registry {
    /// Start on a free port and wait until `GET /v2/` answers 200. Killed on drop.
    pub fn start(dir: &Path) -> Registry {
        Self::launch(dir, Lifetime::Owned)
    }

    /// Like `start`, but detached (outlives this process). Reuses a healthy registry already
    /// running from `dir`; otherwise prefers the port it used last time, so image refs written
    /// elsewhere (images.yaml) stay valid.
    pub fn start_detached(dir: &Path) -> Registry {
        let dir = absolute(dir);
        let mut proc = Proc::new("registry", &dir, Lifetime::Detached);
        if proc.adopt(&dir.join("config.yml"))
            && let Some(port) = read_port(&dir)
            && http_v2_ok(port, &registry_id(&dir))
        {
            return Registry {
                dir,
                port,
                reused: true,
                proc,
            };
        }
        proc.kill(); // alive but unhealthy: replace it
        Self::launch(&dir, Lifetime::Detached)
    }

    /// Stop a detached registry started from `dir` (SIGTERM, then SIGKILL) and remove its pid
    /// file. Returns the pid it stopped, if one was running.
    pub fn stop_detached(dir: &Path) -> Option<u32> {
        let dir = std::path::absolute(dir).expect("absolute path");
        let mut proc = Proc::new("registry", &dir, Lifetime::Detached);
        let pid = proc
            .adopt(&dir.join("config.yml"))
            .then(|| proc.pid())
            .flatten();
        proc.kill();
        pid
    }

    fn launch(dir: &Path, lifetime: Lifetime) -> Registry {
        let dir = absolute(dir);
        fs::create_dir_all(dir.join("storage")).expect("create registry storage");
        let mut reg = Registry {
            proc: Proc::new("registry", &dir, lifetime),
            dir,
            port: 0,
            reused: false,
        };
        // The free port is only reserved until we close the probe socket; a parallel test can
        // take it in between, so retry with a new one when the bind fails.
        for attempt in 1..=5 {
            reg.port = match read_port(&reg.dir) {
                Some(p) if port_free(p) => p,
                _ => free_port(),
            };
            fs::write(reg.dir.join("port"), reg.port.to_string()).expect("write port file");
            reg.write_config();
            reg.spawn();
            match reg.wait_ready() {
                Ok(()) => return reg,
                Err(e) if attempt < 5 && e.contains("address already in use") => {
                    reg.proc.kill();
                    let _ = fs::remove_file(reg.dir.join("port"));
                }
                Err(e) => panic!("{e}"),
            }
        }
        unreachable!()
    }

    fn write_config(&self) {
        let config = format!(
            "\
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:{port}
  # Fixed, so upload URLs stay valid across a restart (the default is random per start).
  secret: prepuller-test-harness
  # Lets the readiness check tell this registry from another test's that won a port race.
  headers:
    {REGISTRY_ID_HEADER}: ['{id}']
",
            storage = self.dir.join("storage").display(),
            port = self.port,
            id = registry_id(&self.dir),
        );
        fs::write(self.dir.join("config.yml"), config).expect("write registry config");
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new("docker-registry");
        cmd.arg("serve").arg(self.dir.join("config.yml"));
        self.proc.spawn(cmd);
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let start = Instant::now();
        let id = registry_id(&self.dir);
        loop {
            if http_v2_ok(self.port, &id) {
                return Ok(());
            }
            if let Some(status) = self.proc.exited() {
                return Err(format!(
                    "registry on port {} exited ({status}) before it was ready\n{}",
                    self.port,
                    self.proc.log_tail()
                ));
            }
            if start.elapsed() > READY_TIMEOUT {
                return Err(format!(
                    "registry on port {} not ready after {READY_TIMEOUT:?}\n{}",
                    self.port,
                    self.proc.log_tail()
                ));
            }
            std::thread::sleep(POLL);
        }
    }

    /// "127.0.0.1:PORT"
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// "http://127.0.0.1:PORT"
    pub fn url(&self) -> String {
        format!("http://{}", self.host())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn log_path(&self) -> &Path {
        &self.proc.log
    }

    pub fn log_tail(&self) -> String {
        self.proc.log_tail()
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }

    /// True if `start_detached` found it already running and reused it.
    pub fn reused(&self) -> bool {
        self.reused
    }

    /// Kill the process (connections now get "connection refused"); storage is kept.
    pub fn stop(&mut self) {
        self.proc.kill();
    }

    /// Start again on the same port with the same storage and wait until ready.
    pub fn restart(&mut self) {
        self.proc.kill();
        self.spawn();
        if let Err(e) = self.wait_ready() {
            panic!("registry restart: {e}");
        }
    }
}

fn read_port(dir: &Path) -> Option<u16> {
    fs::read_to_string(dir.join("port"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

const REGISTRY_ID_HEADER: &str = "X-Harness-Registry";

/// Unique per registry dir (sent back in `REGISTRY_ID_HEADER`).
fn registry_id(dir: &Path) -> String {
    dir.display().to_string()
}

/// `GET /v2/` answers 200 and comes from the registry with this id. A raw HTTP/1.0 request:
/// sync, so `start` works inside or outside a runtime.
fn http_v2_ok(port: u16, id: &str) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let req = format!("GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut resp = Vec::new();
    let _ = s.take(64 << 10).read_to_end(&mut resp);
    let resp = String::from_utf8_lossy(&resp);
    let head = resp.split("\r\n\r\n").next().unwrap_or_default();
    let want = format!("{REGISTRY_ID_HEADER}: {id}").to_ascii_lowercase();
    head.starts_with("HTTP/1.") // "HTTP/1.x 200 OK"
        && head.get(9..12) == Some("200")
        && head.lines().any(|l| l.to_ascii_lowercase() == want)
}

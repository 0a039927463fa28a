//! Integration-test harness: a real `docker-registry` and a real `containerd`, each started as a
//! plain process with all of its files (config, storage, sockets, log) in one directory.
//!
//! Tests own their processes (`start`): dropping the owner kills and reaps them. `make demo`
//! (examples/sandbox.rs) starts the same processes detached (`start_detached`) with pid files.

// Every test binary uses a different part of this module; the rest would warn as dead code.
#![allow(dead_code)]

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_cri::v1::ListImagesRequest;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use sha2::{Digest, Sha256};
use tonic::transport::{Channel, Endpoint};

pub mod faults;

/// Generous: the machine has 2 CPUs shared with parallel builds and tests; normal starts take <1 s.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(20);
const LOG_TAIL_LINES: usize = 40;

/// Path of the built `prepuller` binary: `support::prepuller_bin!()`. A macro because Cargo
/// sets `CARGO_BIN_EXE_prepuller` only while compiling integration tests (not examples).
#[allow(unused_macros)]
macro_rules! prepuller_bin {
    () => {
        ::std::path::PathBuf::from(env!("CARGO_BIN_EXE_prepuller"))
    };
}
#[allow(unused_imports)]
pub(crate) use prepuller_bin;

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

/// Whether a process dies with its Rust owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifetime {
    /// Killed (SIGKILL) and reaped when the owner is dropped. Same process group as the test,
    /// so a Ctrl-C on `cargo test` also reaches it.
    Owned,
    /// Own process group, pid file in the dir, outlives the owner; stop with `stop_detached`.
    Detached,
}

/// One child process with its log file and (when detached) pid file.
struct Proc {
    name: &'static str,
    log: PathBuf,
    pid_file: PathBuf,
    lifetime: Lifetime,
    child: Option<Child>,
    /// Pid of a detached process adopted from a pid file (no `Child` handle for it).
    adopted: Option<u32>,
}

impl Proc {
    fn new(name: &'static str, dir: &Path, lifetime: Lifetime) -> Proc {
        Proc {
            name,
            log: dir.join(format!("{name}.log")),
            pid_file: dir.join(format!("{name}.pid")),
            lifetime,
            child: None,
            adopted: None,
        }
    }

    fn spawn(&mut self, mut cmd: Command) {
        // Append: keeps the history across restarts, which is what a failing fault test needs.
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("open {}: {e}", self.log.display()));
        let _ = writeln!(log, "--- harness: starting {} ---", self.name);
        let log2 = log.try_clone().expect("clone log fd");
        cmd.stdin(Stdio::null()).stdout(log).stderr(log2);
        if self.lifetime == Lifetime::Detached {
            // Out of the caller's process group: Ctrl-C or the end of `cargo run` must not reach it.
            cmd.process_group(0);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {} ({cmd:?}): {e}", self.name));
        if self.lifetime == Lifetime::Detached {
            fs::write(&self.pid_file, format!("{}\n", child.id())).expect("write pid file");
        }
        self.child = Some(child);
        self.adopted = None;
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id).or(self.adopted)
    }

    /// `Some(reason)` once the process is gone.
    fn exited(&mut self) -> Option<String> {
        if let Some(child) = &mut self.child {
            return match child.try_wait() {
                Ok(None) => None,
                Ok(Some(status)) => Some(status.to_string()),
                Err(e) => Some(format!("wait failed: {e}")),
            };
        }
        match self.adopted {
            Some(pid) if pid_alive(pid) => None,
            Some(_) => Some("exited".into()),
            None => Some("not running".into()),
        }
    }

    /// SIGKILL and reap our own child (a crash, as fault tests want); a detached process gets a
    /// graceful SIGTERM first.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if self.lifetime == Lifetime::Detached {
                terminate_pid(child.id());
            }
            let _ = child.kill();
            let _ = child.wait();
        } else if let Some(pid) = self.adopted.take() {
            terminate_pid(pid);
        }
        if self.lifetime == Lifetime::Detached {
            let _ = fs::remove_file(&self.pid_file);
        }
    }

    fn log_tail(&self) -> String {
        log_tail(&self.log, LOG_TAIL_LINES)
    }

    /// Adopt a detached process from its pid file if it is alive and its command line mentions
    /// `marker` (our config path), so a recycled pid is never mistaken for ours.
    fn adopt(&mut self, marker: &Path) -> bool {
        let Some(pid) = read_pid(&self.pid_file) else {
            return false;
        };
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let marker = marker.to_string_lossy();
        if pid_alive(pid) && String::from_utf8_lossy(&cmdline).contains(marker.as_ref()) {
            self.adopted = Some(pid);
            true
        } else {
            false
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.lifetime == Lifetime::Owned {
            self.kill();
        }
    }
}

fn read_pid(pid_file: &Path) -> Option<u32> {
    fs::read_to_string(pid_file).ok()?.trim().parse().ok()
}

/// Alive = /proc entry exists and is not a zombie (a detached process is reaped by init, later).
fn pid_alive(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the parenthesised command name, which may itself contain spaces.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, Some('Z' | 'X') | None)
}

/// SIGTERM, wait up to 10 s, then SIGKILL. For processes that are not our children.
fn terminate_pid(pid: u32) {
    let signal = |sig: &str| {
        let _ = Command::new("kill")
            .args([sig, &pid.to_string()])
            .stderr(Stdio::null())
            .status();
    };
    signal("-TERM");
    let deadline = Instant::now() + Duration::from_secs(10);
    while pid_alive(pid) && Instant::now() < deadline {
        std::thread::sleep(POLL);
    }
    if pid_alive(pid) {
        signal("-KILL");
        let deadline = Instant::now() + Duration::from_secs(2);
        while pid_alive(pid) && Instant::now() < deadline {
            std::thread::sleep(POLL);
        }
    }
}

/// Last `lines` lines of a log file, for panic messages.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned());
    match text {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            let tail = all[all.len().saturating_sub(lines)..].join("\n");
            format!("--- last {lines} lines of {} ---\n{tail}", path.display())
        }
        Err(e) => format!("--- no log at {}: {e} ---", path.display()),
    }
}

fn absolute(dir: &Path) -> PathBuf {
    fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    std::path::absolute(dir).expect("absolute path")
}

/// Quote a path for a TOML basic string.
fn toml_str(path: &Path) -> String {
    let s = path.to_str().expect("UTF-8 path");
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

fn port_free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

// ---------------------------------------------------------------------------------------------
// Registry
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// containerd
// ---------------------------------------------------------------------------------------------

/// Snapshotter for the CRI plugin. overlayfs works on this machine (ext4 root inside a
/// Firecracker VM, kernel overlay module present: checked with a manual overlay mount and a
/// CRI pull). Set PREPULLER_TEST_SNAPSHOTTER=native where overlay mounts are not allowed.
fn snapshotter() -> String {
    std::env::var("PREPULLER_TEST_SNAPSHOTTER").unwrap_or_else(|_| "overlayfs".into())
}

/// containerd 1.6 with its own root, state, sockets, opt dir and `certs.d`, all under `dir`;
/// log `<dir>/containerd.log`.
pub struct Containerd {
    dir: PathBuf,
    reused: bool,
    proc: Proc,
}

impl Containerd {
    /// Start and wait until the CRI image service answers. Killed on drop.
    pub fn start(dir: &Path) -> Containerd {
        let mut c = Containerd::prepare(dir, Lifetime::Owned);
        c.spawn_and_wait("start");
        c
    }

    /// Like `start`, but detached; reuses a healthy containerd already running from `dir`.
    pub fn start_detached(dir: &Path) -> Containerd {
        let mut c = Containerd::prepare(dir, Lifetime::Detached);
        if c.proc.adopt(&c.config_path()) && cri_probe(&c.socket()).is_ok() {
            c.reused = true;
            return c;
        }
        c.proc.kill();
        c.spawn_and_wait("start");
        c
    }

    /// Stop a detached containerd started from `dir`; returns the pid it stopped, if any.
    pub fn stop_detached(dir: &Path) -> Option<u32> {
        let dir = std::path::absolute(dir).expect("absolute path");
        let mut proc = Proc::new("containerd", &dir, Lifetime::Detached);
        let pid = proc
            .adopt(&dir.join("config.toml"))
            .then(|| proc.pid())
            .flatten();
        proc.kill();
        pid
    }

    fn prepare(dir: &Path, lifetime: Lifetime) -> Containerd {
        let dir = absolute(dir);
        let c = Containerd {
            proc: Proc::new("containerd", &dir, lifetime),
            dir,
            reused: false,
        };
        // sun_path is 108 bytes; containerd fails with a less obvious error past that.
        let ttrpc = c.dir.join("containerd-ttrpc.sock");
        assert!(
            ttrpc.as_os_str().len() < 100,
            "socket path too long for a unix socket: {}",
            ttrpc.display()
        );
        fs::create_dir_all(c.certs_dir()).expect("create certs.d");
        fs::write(c.config_path(), c.config()).expect("write containerd config");
        c
    }

    fn config(&self) -> String {
        let d = &self.dir;
        format!(
            r#"version = 2
root = {root}
state = {state}
# Snapshotters that can't work here, and tracing: fewer plugins, faster start. Debian's 1.6.20
# has no tracing plugins compiled in (unknown IDs are ignored); upstream builds do.
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = {sock}

[ttrpc]
  address = {ttrpc}

[plugins."io.containerd.internal.v1.opt"]
  path = {opt}

[plugins."io.containerd.grpc.v1.cri"]
  # "0": a random port. The default 10010 makes a second instance die with "address in use".
  stream_server_port = "0"

[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "{snapshotter}"

# Kept away from the host's CNI config; missing CNI only logs an error, pulls work.
[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = {cni_bin}
  conf_dir = {cni_conf}

# hosts.toml files go in certs.d/<host:port>/; loopback registries are plain HTTP without one.
# Don't add registry.mirrors next to config_path: that disables the CRI plugin.
[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = {certs}
"#,
            root = toml_str(&d.join("root")),
            state = toml_str(&d.join("state")),
            sock = toml_str(&self.socket()),
            ttrpc = toml_str(&d.join("containerd-ttrpc.sock")),
            opt = toml_str(&d.join("opt")),
            snapshotter = snapshotter(),
            cni_bin = toml_str(&d.join("cni/bin")),
            cni_conf = toml_str(&d.join("cni/net.d")),
            certs = toml_str(&self.certs_dir()),
        )
    }

    fn spawn_and_wait(&mut self, what: &str) {
        let mut cmd = Command::new("containerd");
        cmd.arg("--config").arg(self.config_path());
        self.proc.spawn(cmd);
        let start = Instant::now();
        let mut last_err = String::from("socket not created");
        loop {
            if let Some(status) = self.proc.exited() {
                panic!(
                    "containerd {what}: exited ({status}) before CRI was ready\n{}",
                    self.proc.log_tail()
                );
            }
            // Before the socket exists there is nothing to probe; a stale one from a killed
            // instance gets "connection refused" until containerd replaces it.
            if self.socket().exists() {
                match cri_probe(&self.socket()) {
                    Ok(()) => return,
                    Err(e) => last_err = e,
                }
            }
            if start.elapsed() > READY_TIMEOUT {
                panic!(
                    "containerd {what}: CRI not ready after {READY_TIMEOUT:?} (last error: {last_err})\n{}",
                    self.proc.log_tail()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// "unix:///abs/dir/containerd.sock"
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    /// `certs.d` dir (registry `config_path`): write `<host:port>/hosts.toml` here; re-read per pull.
    pub fn certs_dir(&self) -> PathBuf {
        self.dir.join("certs.d")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config.toml")
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

    /// CRI channel to this containerd.
    pub async fn channel(&self) -> Channel {
        cri_channel(&self.socket())
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}\n{}", self.endpoint(), self.log_tail()))
    }

    pub async fn image_client(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(self.channel().await)
    }

    /// Removes an image through CRI `RemoveImage`, as the kubelet's image GC and `crictl rmi` do.
    pub async fn cri_remove_image(&self, name: &str) {
        use k8s_cri::v1::{ImageSpec, RemoveImageRequest};
        self.image_client()
            .await
            .remove_image(RemoveImageRequest {
                image: Some(ImageSpec {
                    image: name.to_string(),
                    ..Default::default()
                }),
            })
            .await
            .unwrap_or_else(|e| panic!("CRI RemoveImage {name}: {e}"));
    }

    pub async fn runtime_client(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.channel().await)
    }

    /// Every name in the CRI (`k8s.io` namespace) image store. A pulled image appears under its
    /// tag ref, its `repo@sha256:` digest ref and its image id (`sha256:<config digest>`).
    pub fn image_refs(&self) -> Vec<String> {
        let out = self.ctr(&["images", "ls", "-q"]);
        String::from_utf8_lossy(&out)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect()
    }

    /// `ctr images rm <name>`: removes that one name (not the other refs of the same image);
    /// the CRI plugin sees it through containerd's events. Panics if the name doesn't exist
    /// (ctr itself only warns and exits 0), so a typo can't make a test vacuous.
    pub fn remove_image(&self, name: &str) {
        let out = self.ctr_output(&["images", "rm", name]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && !stderr.contains("not found"),
            "ctr images rm {name}: {} {}",
            out.status,
            stderr.trim()
        );
    }

    /// Run `ctr` against the `k8s.io` namespace; panics with stderr on failure.
    pub fn ctr(&self, args: &[&str]) -> Vec<u8> {
        let out = self.ctr_output(args);
        assert!(
            out.status.success(),
            "ctr {args:?} failed ({}): {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            self.log_tail()
        );
        out.stdout
    }

    fn ctr_output(&self, args: &[&str]) -> std::process::Output {
        Command::new("ctr")
            .arg("--address")
            .arg(self.socket())
            .args(["--namespace", "k8s.io"])
            .args(args)
            .output()
            .expect("run ctr")
    }

    /// SIGKILL (a crash): clients get UNAVAILABLE; root, state and socket path are kept.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// Start again with the same config, root and socket; wait until CRI answers.
    pub fn restart(&mut self) {
        self.proc.kill();
        self.spawn_and_wait("restart");
    }
}

/// A tonic channel to a CRI server on a unix socket.
pub async fn cri_channel(socket: &Path) -> Result<Channel, tonic::transport::Error> {
    let socket = socket.to_path_buf();
    // The URI is required by tonic but unused: the connector always dials the socket.
    Endpoint::try_from("http://[::]")?
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await
}

/// One CRI `ListImages` call. While starting, containerd answers UNAVAILABLE, then UNKNOWN
/// "server is not initialized yet", then OK. Runs its own runtime on a scratch thread so it
/// works from sync code and from inside a test's runtime alike.
fn cri_probe(socket: &Path) -> Result<(), String> {
    let socket = socket.to_path_buf();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async {
            let probe = async {
                let channel = cri_channel(&socket).await.map_err(|e| format!("{e:?}"))?;
                ImageServiceClient::new(channel)
                    .list_images(ListImagesRequest::default())
                    .await
                    .map(drop)
                    .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
            };
            tokio::time::timeout(Duration::from_secs(2), probe)
                .await
                .unwrap_or_else(|_| Err("CRI probe timed out".into()))
        })
    })
    .join()
    .unwrap_or_else(|_| Err("CRI probe thread panicked".into()))
}

// ---------------------------------------------------------------------------------------------
// Sandbox
// ---------------------------------------------------------------------------------------------

/// A temp dir with a registry (`<dir>/registry`) and a containerd (`<dir>/containerd`).
/// Field order is drop order: both processes die before the dir is removed.
pub struct Sandbox {
    pub containerd: Containerd,
    pub registry: Registry,
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    /// Both processes start in parallel; a panic in either kills the other.
    pub fn start() -> Sandbox {
        let dir = tempfile::Builder::new()
            .prefix("prepuller-it-")
            .tempdir()
            .expect("create temp dir");
        let (registry, containerd) = std::thread::scope(|s| {
            let registry = s.spawn(|| Registry::start(&dir.path().join("registry")));
            let containerd = Containerd::start(&dir.path().join("containerd"));
            let registry = registry
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p));
            (registry, containerd)
        });
        Sandbox {
            containerd,
            registry,
            dir,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// "127.0.0.1:PORT/<repo>:<tag>"
    pub fn image_ref(&self, repo: &str, tag: &str) -> String {
        format!("{}/{repo}:{tag}", self.registry.host())
    }

    /// Keep the dir (and its logs) after the test, e.g. to debug a failure; returns its path.
    pub fn keep(self) -> PathBuf {
        let Sandbox {
            containerd,
            registry,
            dir,
        } = self;
        drop(containerd);
        drop(registry);
        dir.keep()
    }
}

// ---------------------------------------------------------------------------------------------
// Images
// ---------------------------------------------------------------------------------------------

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Uncompressed layers: the blob digest is also the diff_id.
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

/// An image built in memory, ready to push.
pub struct TestImage {
    pub manifest: Vec<u8>,
    /// "sha256:..." of `manifest`: what the registry reports and CRI shows in repo digests.
    pub digest: String,
    pub config: Vec<u8>,
    /// "sha256:..." of `config`: containerd's image id (CRI `image_ref`).
    pub config_digest: String,
    pub layers: Vec<Vec<u8>>,
    /// "sha256:..." of each layer (computed once: SHA-256 is slow in unoptimized builds).
    pub layer_digests: Vec<String>,
}

pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// OCI architecture name of this machine (the platform containerd's CRI pulls for).
pub fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Two uncompressed tar layers holding `layer_bytes` random bytes in total (split in halves),
/// plus a small file naming the seed. Deterministic in `seed`: same seed, same digests.
pub fn build_image(seed: u64, layer_bytes: usize) -> TestImage {
    let mut rng = SplitMix64(seed);
    let sizes = [layer_bytes / 2, layer_bytes - layer_bytes / 2];
    let layers: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &size)| {
            let mut data = vec![0u8; size];
            rng.fill(&mut data);
            let mut tar = tar::Builder::new(Vec::with_capacity(size + 4096));
            let dir = format!("layer{i}");
            append_tar(&mut tar, &format!("{dir}/"), &[], tar::EntryType::Directory);
            let seed_text = format!("seed {seed}, layer {i}\n");
            append_tar(
                &mut tar,
                &format!("{dir}/seed"),
                seed_text.as_bytes(),
                tar::EntryType::Regular,
            );
            append_tar(
                &mut tar,
                &format!("{dir}/data"),
                &data,
                tar::EntryType::Regular,
            );
            tar.into_inner().expect("finish tar")
        })
        .collect();
    let layer_digests: Vec<String> = layers.iter().map(|l| sha256_digest(l)).collect();
    let config = serde_json::to_vec(&serde_json::json!({
        "created": "1970-01-01T00:00:00Z",
        "architecture": oci_arch(),
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/layer0/data"],
        },
        // Uncompressed layers: diff_id == blob digest.
        "rootfs": {"type": "layers", "diff_ids": layer_digests},
    }))
    .expect("config json");
    let config_digest = sha256_digest(&config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config.len()},
        "layers": layers.iter().zip(&layer_digests).map(|(l, d)| serde_json::json!({
            "mediaType": OCI_LAYER_TAR, "digest": d, "size": l.len(),
        })).collect::<Vec<_>>(),
    }))
    .expect("manifest json");
    TestImage {
        digest: sha256_digest(&manifest),
        manifest,
        config,
        config_digest,
        layers,
        layer_digests,
    }
}

/// Tiny PRNG with a fixed algorithm: ~10x faster than `StdRng` in unoptimized test builds, and
/// digests can't change with a `rand` upgrade.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for chunk in &mut chunks {
            chunk.copy_from_slice(&self.next().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next().to_le_bytes();
        rest.copy_from_slice(&last[..rest.len()]);
    }
}

fn append_tar(tar: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8], kind: tar::EntryType) {
    let mut h = tar::Header::new_ustar();
    h.set_path(path).expect("tar path");
    h.set_entry_type(kind);
    h.set_size(data.len() as u64);
    h.set_mode(if kind == tar::EntryType::Directory {
        0o755
    } else {
        0o644
    });
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_cksum();
    tar.append(&h, data).expect("tar append");
}

/// Build (see `build_image`) and push an image to `registry_host` as `repo:tag`. Returns the
/// manifest digest. Same seed => same digest; a new seed on an existing tag makes tag drift.
pub async fn push_image(
    registry_host: &str,
    repo: &str,
    tag: &str,
    seed: u64,
    layer_bytes: usize,
) -> String {
    let image = tokio::task::spawn_blocking(move || build_image(seed, layer_bytes))
        .await
        .expect("build image");
    push_built(registry_host, repo, tag, &image).await;
    image.digest
}

/// Push an image with no tag (manifest PUT by digest), for `repo@sha256:...` references.
pub async fn push_image_by_digest(
    registry_host: &str,
    repo: &str,
    seed: u64,
    layer_bytes: usize,
) -> String {
    let image = tokio::task::spawn_blocking(move || build_image(seed, layer_bytes))
        .await
        .expect("build image");
    push_built(registry_host, repo, &image.digest, &image).await;
    image.digest
}

/// An HTTP client for the tests' own requests. reqwest brings no crypto provider (the tests must
/// not link one the shipped binary lacks) and panics without one, even for plain HTTP: it gets
/// ring, the binary's, here, rather than as a process-wide default that could hide a missing
/// one in library code under test.
pub fn http_client() -> reqwest::Client {
    use tokio_rustls::rustls;
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .no_proxy()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("http client")
}

/// Push blobs (skipping ones the registry has) then the manifest under `reference` (tag or digest).
pub async fn push_built(registry_host: &str, repo: &str, reference: &str, image: &TestImage) {
    let http = http_client();
    let base = format!("http://{registry_host}/v2/{repo}");
    push_blob(&http, &base, &image.config, &image.config_digest).await;
    for (blob, digest) in image.layers.iter().zip(&image.layer_digests) {
        push_blob(&http, &base, blob, digest).await;
    }
    let resp = http
        .put(format!("{base}/manifests/{reference}"))
        .header(reqwest::header::CONTENT_TYPE, OCI_MANIFEST)
        .body(image.manifest.clone())
        .send()
        .await
        .unwrap_or_else(|e| panic!("PUT manifest {repo}:{reference}: {e}"));
    let status = resp.status();
    let got = resp
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    assert_eq!(
        status,
        reqwest::StatusCode::CREATED,
        "PUT manifest {repo}:{reference}: {}",
        resp.text().await.unwrap_or_default()
    );
    assert_eq!(
        got.as_deref(),
        Some(image.digest.as_str()),
        "registry digest differs"
    );
}

async fn push_blob(http: &reqwest::Client, base: &str, blob: &[u8], digest: &str) {
    let head = http
        .head(format!("{base}/blobs/{digest}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("HEAD blob {digest}: {e}"));
    if head.status().is_success() {
        return;
    }
    let resp = http
        .post(format!("{base}/blobs/uploads/"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST upload: {e}"));
    assert_eq!(
        resp.status(),
        reqwest::StatusCode::ACCEPTED,
        "POST {base}/blobs/uploads/"
    );
    let location = resp
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .expect("upload Location header");
    // Location may be relative; it already carries query state (_state=...).
    let mut url = resp.url().join(location).expect("upload URL");
    url.query_pairs_mut().append_pair("digest", digest);
    let resp = http
        .put(url)
        .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
        .body(blob.to_vec())
        .send()
        .await
        .unwrap_or_else(|e| panic!("PUT blob {digest}: {e}"));
    let status = resp.status();
    assert_eq!(
        status,
        reqwest::StatusCode::CREATED,
        "PUT blob {digest}: {}",
        resp.text().await.unwrap_or_default()
    );
}

/// Delete a manifest by digest (all tags pointing at it disappear): "image gone" tests.
pub async fn delete_manifest(registry_host: &str, repo: &str, digest: &str) {
    let resp = http_client()
        .delete(format!(
            "http://{registry_host}/v2/{repo}/manifests/{digest}"
        ))
        .send()
        .await
        .unwrap_or_else(|e| panic!("DELETE manifest {repo}@{digest}: {e}"));
    assert_eq!(
        resp.status(),
        reqwest::StatusCode::ACCEPTED,
        "DELETE manifest {repo}@{digest}"
    );
}

/// Digest the registry currently serves for `repo:reference`, None on 404.
pub async fn manifest_digest(registry_host: &str, repo: &str, reference: &str) -> Option<String> {
    let resp = http_client()
        .head(format!(
            "http://{registry_host}/v2/{repo}/manifests/{reference}"
        ))
        .header(reqwest::header::ACCEPT, OCI_MANIFEST)
        .send()
        .await
        .unwrap_or_else(|e| panic!("HEAD manifest {repo}:{reference}: {e}"));
    if resp.status() == reqwest::StatusCode::NOT_FOUND {
        return None;
    }
    assert!(
        resp.status().is_success(),
        "HEAD manifest {repo}:{reference}: {}",
        resp.status()
    );
    resp.headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .map(String::from)
}

/// A mounted ConfigMap as the kubelet writes it: each key is a link into `..data`, which links to
/// a timestamped directory; an update writes a new directory and renames a new `..data` over the
/// old one, so readers never see a half-written set.
pub struct ConfigMapDir {
    pub dir: PathBuf,
    version: u32,
}

impl ConfigMapDir {
    /// `keys`: file name and content of each key.
    pub fn create(dir: &Path, keys: &[(&str, &str)]) -> ConfigMapDir {
        fs::create_dir_all(dir).unwrap();
        let mut c = ConfigMapDir {
            dir: dir.to_path_buf(),
            version: 0,
        };
        c.update(keys);
        for (name, _) in keys {
            std::os::unix::fs::symlink(format!("..data/{name}"), dir.join(name)).unwrap();
        }
        c
    }

    /// Swaps in new contents for the same keys.
    pub fn update(&mut self, keys: &[(&str, &str)]) {
        self.version += 1;
        let version = format!("..2026_11_23_00_00_{:02}.000000001", self.version);
        let old = fs::read_link(self.dir.join("..data")).ok();
        fs::create_dir(self.dir.join(&version)).unwrap();
        for (name, text) in keys {
            fs::write(self.dir.join(&version).join(name), text).unwrap();
        }
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&version, &tmp).unwrap();
        fs::rename(&tmp, self.dir.join("..data")).unwrap();
        if let Some(old) = old {
            fs::remove_dir_all(self.dir.join(old)).unwrap();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A registry with TLS and basic auth
// ---------------------------------------------------------------------------------------------

/// A second `docker-registry` serving the storage of a plain one over TLS (a CA made here) with
/// htpasswd (bcrypt) basic auth, on 127.0.0.2 (loopback hosts default to plain HTTP in
/// containerd). Images are pushed through the plain registry; pulls go through this one.
/// distribution loads htpasswd once, so changing users restarts it.
pub struct SecureRegistry {
    dir: PathBuf,
    storage: PathBuf,
    port: u16,
    proc: Proc,
}

pub const SECURE_REGISTRY_IP: &str = "127.0.0.2";

impl SecureRegistry {
    /// Serves `plain`'s storage; `users` are (name, password); trusted by `containerd` through
    /// `certs.d/<host>/hosts.toml` with `ca` on both the server and the host entry.
    pub fn start(
        dir: &Path,
        plain: &Registry,
        containerd: &Containerd,
        users: &[(&str, &str)],
    ) -> SecureRegistry {
        let dir = absolute(dir);
        fs::create_dir_all(&dir).expect("create secure registry dir");
        let port = {
            let l = TcpListener::bind((SECURE_REGISTRY_IP, 0)).expect("bind 127.0.0.2:0");
            l.local_addr().unwrap().port()
        };
        let mut reg = SecureRegistry {
            proc: Proc::new("secure-registry", &dir, Lifetime::Owned),
            storage: plain.dir().join("storage"),
            dir,
            port,
        };
        reg.write_certs();
        let host = reg.host();
        let certs = containerd.certs_dir().join(&host);
        fs::create_dir_all(&certs).expect("create certs.d host dir");
        let ca = reg.ca_path();
        fs::write(
            certs.join("hosts.toml"),
            format!(
                "server = \"https://{host}\"\nca = {ca}\n\n[host.\"https://{host}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = {ca}\n",
                ca = toml_str(&ca)
            ),
        )
        .expect("write hosts.toml");
        reg.set_users(users);
        reg
    }

    /// Replaces the accepted users (a password rotation on the registry side) and restarts.
    pub fn set_users(&mut self, users: &[(&str, &str)]) {
        let mut htpasswd = String::new();
        for (user, password) in users {
            let out = Command::new("htpasswd")
                .args(["-nbB", user, password])
                .output()
                .expect("run htpasswd (apache2-utils)");
            assert!(out.status.success(), "htpasswd failed");
            htpasswd.push_str(String::from_utf8_lossy(&out.stdout).trim());
            htpasswd.push('\n');
        }
        fs::write(self.dir.join("htpasswd"), htpasswd).expect("write htpasswd");
        self.write_config();
        self.proc.kill();
        let mut cmd = Command::new("docker-registry");
        cmd.arg("serve").arg(self.dir.join("config.yml"));
        self.proc.spawn(cmd);
        self.wait_ready();
    }

    /// "127.0.0.2:PORT"
    pub fn host(&self) -> String {
        format!("{SECURE_REGISTRY_IP}:{}", self.port)
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    fn write_certs(&self) {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "prepuller test CA");
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![SECURE_REGISTRY_IP.to_string()])
            .unwrap()
            .signed_by(&key, &Issuer::new(ca_params, &ca_key))
            .unwrap();
        fs::write(self.ca_path(), ca_cert.pem()).unwrap();
        fs::write(self.dir.join("server.crt"), cert.pem()).unwrap();
        fs::write(self.dir.join("server.key"), key.serialize_pem()).unwrap();
    }

    fn write_config(&self) {
        let config = format!(
            "\
version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: {storage}
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: {host}
  secret: prepuller-test-harness
  tls:
    certificate: {dir}/server.crt
    key: {dir}/server.key
auth:
  htpasswd:
    realm: prepuller-test
    path: {dir}/htpasswd
",
            storage = self.storage.display(),
            host = self.host(),
            dir = self.dir.display(),
        );
        fs::write(self.dir.join("config.yml"), config).expect("write registry config");
    }

    /// Ready when `/v2/` asks for credentials over TLS (checked with curl, trusting our CA).
    fn wait_ready(&mut self) {
        let start = Instant::now();
        let url = format!("https://{}/v2/", self.host());
        loop {
            let code = Command::new("curl")
                .args([
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "--max-time",
                    "2",
                ])
                .arg("--cacert")
                .arg(self.ca_path())
                .arg(&url)
                .output()
                .expect("run curl");
            if String::from_utf8_lossy(&code.stdout) == "401" {
                return;
            }
            if let Some(status) = self.proc.exited() {
                panic!(
                    "secure registry exited ({status}) before it was ready\n{}",
                    self.proc.log_tail()
                );
            }
            assert!(
                start.elapsed() < READY_TIMEOUT,
                "secure registry not ready\n{}",
                self.proc.log_tail()
            );
            std::thread::sleep(POLL);
        }
    }

    /// The registry's log: what it was sent (never passwords; checked by the tests).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.proc.log).unwrap_or_default()
    }
}

/// A docker config (`{"auths": …}`) with one `auth` entry per (key, user, password).
pub fn dockerconfigjson(entries: &[(&str, &str, &str)]) -> String {
    use base64::Engine;
    let auths: Vec<String> = entries
        .iter()
        .map(|(key, user, password)| {
            let auth =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            format!("\"{key}\": {{\"auth\": \"{auth}\"}}")
        })
        .collect();
    format!("{{\"auths\": {{{}}}}}", auths.join(", "))
}

/// A Node's `ImagesPrePulled` condition (as JSON from the fake API), or null.
pub fn images_prepulled_condition(node: &serde_json::Value) -> serde_json::Value {
    node["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "ImagesPrePulled"))
        .cloned()
        .unwrap_or(serde_json::Value::Null)
}

/// The keys of a Node's taints (as JSON from the fake API).
pub fn taint_keys(node: &serde_json::Value) -> Vec<String> {
    node["spec"]["taints"]
        .as_array()
        .map(|t| {
            t.iter()
                .map(|t| t["key"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

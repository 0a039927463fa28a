//! containerd with its CRI plugin, and tonic channels to CRI servers on unix sockets.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_cri::v1::ListImagesRequest;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint};

use crate::process::{Lifetime, Proc, absolute, toml_str};
use crate::{POLL, READY_TIMEOUT};

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
        unix_channel(&self.socket())
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

/// A tonic channel to a gRPC server (CRI, the agent API) on a unix socket; tonic dials
/// `unix://` endpoints itself.
pub async fn unix_channel(socket: &Path) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_shared(format!("unix://{}", socket.display()))?
        .connect()
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
                let channel = unix_channel(&socket).await.map_err(|e| format!("{e:?}"))?;
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

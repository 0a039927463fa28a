//! Processes: spawn with a log file, own (killed and reaped on drop) or detach (pid file,
//! adopted again by a later run), and the small helpers around them.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{LOG_TAIL_LINES, POLL};

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
pub(crate) struct Proc {
    name: &'static str,
    pub(crate) log: PathBuf,
    pid_file: PathBuf,
    lifetime: Lifetime,
    child: Option<Child>,
    /// Pid of a detached process adopted from a pid file (no `Child` handle for it).
    adopted: Option<u32>,
}

impl Proc {
    pub(crate) fn new(name: &'static str, dir: &Path, lifetime: Lifetime) -> Proc {
        Proc {
            name,
            log: dir.join(format!("{name}.log")),
            pid_file: dir.join(format!("{name}.pid")),
            lifetime,
            child: None,
            adopted: None,
        }
    }

    pub(crate) fn spawn(&mut self, mut cmd: Command) {
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

    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id).or(self.adopted)
    }

    /// `Some(reason)` once the process is gone.
    pub(crate) fn exited(&mut self) -> Option<String> {
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
    pub(crate) fn kill(&mut self) {
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

    pub(crate) fn log_tail(&self) -> String {
        log_tail(&self.log, LOG_TAIL_LINES)
    }

    /// Adopt a detached process from its pid file if it is alive and its command line mentions
    /// `marker` (our config path), so a recycled pid is never mistaken for ours.
    pub(crate) fn adopt(&mut self, marker: &Path) -> bool {
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

pub(crate) fn read_pid(pid_file: &Path) -> Option<u32> {
    fs::read_to_string(pid_file).ok()?.trim().parse().ok()
}

/// Alive = /proc entry exists and is not a zombie (a detached process is reaped by init, later).
pub(crate) fn pid_alive(pid: u32) -> bool {
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
pub(crate) fn terminate_pid(pid: u32) {
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

pub(crate) fn absolute(dir: &Path) -> PathBuf {
    fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    std::path::absolute(dir).expect("absolute path")
}

/// Quote a path for a TOML basic string.
pub(crate) fn toml_str(path: &Path) -> String {
    let s = path.to_str().expect("UTF-8 path");
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

pub(crate) fn port_free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

/// Resident memory of a process in KiB (`VmRSS` in /proc/PID/status).
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS").expect("VmRSS in /proc/PID/status")
}

/// A memory figure of /proc/PID/status in KiB (`VmRSS`, `VmHWM`, …); None once the process is
/// gone.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

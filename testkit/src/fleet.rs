//! A fleet on one machine, for the fleet simulation (`make fleet-sim`) and its short e2e test:
//! K nodes, each its own containerd (root, state, socket, `certs.d`) and its own
//! `prepuller agent` (`NODE_NAME` = the node's name, its own kubeconfig), all pulling from one
//! registry through a [`Front`] that tells them apart. The Kubernetes API is the caller's (the
//! fake API in-process or as its own process): it hands each node a kubeconfig and seeds the
//! Node objects.
//!
//! "Warm" is the agent's own `/readyz` answering 200 (every required image present), so a
//! node's warm-up is timed even while the API is down.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::front::Front;
use crate::{AgentProc, AgentSpec, Containerd, prepuller_bin};

/// One node: its containerd, its agent once started, and when it became warm.
pub struct FleetNode {
    pub name: String,
    pub dir: PathBuf,
    pub agent: Option<AgentProc>,
    /// Seconds of CPU (user + system) its agent used, read before the agent ends.
    pub agent_cpu: Option<Duration>,
    pub warm_after: Option<Duration>,
    /// Field order is drop order: the agent dies before its containerd.
    pub containerd: Containerd,
}

/// K nodes behind one front. Dropping it kills every agent and containerd, then removes the
/// directory.
pub struct Fleet {
    pub nodes: Vec<FleetNode>,
    pub front: Front,
    pub started: Option<Instant>,
    pub dir: tempfile::TempDir,
}

impl Fleet {
    /// K containerds named `node-1`..`node-K`, each configured to send its name to a new
    /// front before `upstream` ("host:port" of the registry). Image references use
    /// [`Front::host`].
    pub fn start(upstream: &str, k: usize) -> Fleet {
        let dir = tempfile::Builder::new()
            .prefix("prepuller-fleet-")
            .tempdir()
            .expect("create temp dir");
        let front = Front::start(upstream);
        let names: Vec<String> = (1..=k).map(|i| format!("node-{i}")).collect();
        // In parallel: each start waits for its CRI to answer.
        let nodes = std::thread::scope(|s| {
            let handles: Vec<_> = names
                .iter()
                .map(|name| {
                    let node_dir = dir.path().join(name);
                    let front = &front;
                    s.spawn(move || {
                        let containerd = Containerd::start(&node_dir.join("containerd"));
                        front.configure_node(&containerd.certs_dir(), name);
                        FleetNode {
                            name: name.clone(),
                            dir: node_dir,
                            agent: None,
                            agent_cpu: None,
                            warm_after: None,
                            containerd,
                        }
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        });
        Fleet {
            nodes,
            front,
            started: None,
            dir,
        }
    }

    /// `<front>/<repo>` for an image reference.
    pub fn image(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.front.host())
    }

    /// Starts every node's agent with `config`, `kubeconfig(node name)`, and `env`; the clock
    /// of [`Self::wait_warm`] starts now.
    pub fn start_agents(
        &mut self,
        config: &Path,
        kubeconfig: impl Fn(&str) -> PathBuf,
        env: &[(&str, &str)],
    ) {
        let bin = prepuller_bin();
        for node in &mut self.nodes {
            node.agent = Some(start_agent(
                node,
                &bin,
                config,
                &kubeconfig(&node.name),
                env,
            ));
        }
        self.started = Some(Instant::now());
    }

    /// Starts node `i`'s agent again (after [`Self::kill_agent`]).
    pub fn restart_agent(
        &mut self,
        i: usize,
        config: &Path,
        kubeconfig: &Path,
        env: &[(&str, &str)],
    ) {
        let node = &mut self.nodes[i];
        node.agent = Some(start_agent(node, &prepuller_bin(), config, kubeconfig, env));
    }

    /// SIGKILL of node `i`'s agent (a crash or an OOM kill); its CPU so far is kept.
    pub async fn kill_agent(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        if let Some(mut agent) = node.agent.take() {
            let before = agent.child.id().and_then(cpu_time).unwrap_or_default();
            node.agent_cpu = Some(node.agent_cpu.unwrap_or_default() + before);
            let _ = agent.child.start_kill();
            let _ = agent.child.wait().await;
        }
    }

    /// SIGTERM to node `i`'s agent (its pod deleted, a rolling update), without waiting for it
    /// to exit; returns the instant just before the signal.
    pub fn terminate_agent(&mut self, i: usize) -> Instant {
        let agent = self.nodes[i].agent.as_ref().expect("an agent running");
        let pid = agent.child.id().expect("the agent not reaped yet");
        let at = Instant::now();
        // SAFETY: kill(2) on our own child's pid; it is not reaped (`id()` is Some) so the pid is
        // still its own.
        let r = unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        assert_eq!(
            r,
            0,
            "SIGTERM to {pid}: {}",
            std::io::Error::last_os_error()
        );
        at
    }

    /// An agent that exited on its own (a config it refuses, say): (node, its log).
    pub fn exited_agent(&mut self) -> Option<(String, String)> {
        for node in &mut self.nodes {
            if let Some(agent) = node.agent.as_mut()
                && let Ok(Some(_)) = agent.child.try_wait()
            {
                return Some((node.name.clone(), agent.log()));
            }
        }
        None
    }

    /// Polls every agent's `/readyz` until all are warm or `timeout` passes; records each
    /// node's time to warm (from `start_agents`). Returns whether all became warm.
    pub async fn wait_warm(&mut self, timeout: Duration) -> bool {
        let started = self.started.expect("start_agents first");
        loop {
            if self.poll_warm().await {
                return true;
            }
            if started.elapsed() > timeout || self.exited_agent().is_some() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// One look at every agent not yet warm; records the time of those now warm. True when
    /// every node has been warm.
    pub async fn poll_warm(&mut self) -> bool {
        let started = self.started.expect("start_agents first");
        let mut all = true;
        for node in &mut self.nodes {
            if node.warm_after.is_some() {
                continue;
            }
            let warm = match &node.agent {
                Some(agent) => matches!(agent.get("/readyz").await, Some((200, _))),
                None => false,
            };
            if warm {
                node.warm_after = Some(started.elapsed());
            } else {
                all = false;
            }
        }
        all
    }

    /// Reads the CPU each running agent has used so far into `agent_cpu` (call before drop).
    pub fn read_agent_cpu(&mut self) {
        for node in &mut self.nodes {
            if let Some(agent) = &node.agent
                && let Some(cpu) = agent.child.id().and_then(cpu_time)
            {
                node.agent_cpu = Some(node.agent_cpu.unwrap_or_default() + cpu);
            }
        }
    }

    /// Times to warm, sorted; nodes that never became warm are left out.
    pub fn warm_times(&self) -> Vec<Duration> {
        let mut t: Vec<Duration> = self.nodes.iter().filter_map(|n| n.warm_after).collect();
        t.sort();
        t
    }
}

fn start_agent(
    node: &FleetNode,
    bin: &Path,
    config: &Path,
    kubeconfig: &Path,
    env: &[(&str, &str)],
) -> AgentProc {
    AgentProc::spawn(
        &AgentSpec {
            bin,
            dir: &node.dir,
            endpoint: &node.containerd.endpoint(),
            config,
            node: Some(&node.name),
            kubeconfig,
        },
        env,
    )
}

/// User + system CPU time of a process, from `/proc/<pid>/stat` (fields 14 and 15, in clock
/// ticks of 1/100 s on Linux).
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after it follow the last ')'.
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

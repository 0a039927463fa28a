//! The registry front of the fleet simulation: an HTTP reverse proxy on 127.0.0.1 in front of a
//! registry that tells the nodes of a simulated fleet apart and measures what "the registry"
//! sees from them: manifest GETs (HEADs apart) per node and repository, blob bytes per node,
//! how many nodes pull at once, and 429s answered during rate-limit windows. It can also
//! throttle the total bandwidth (all connections together, as an uplink or a NAT gateway does)
//! and answer 429 for a window in the style of Docker Hub, GHCR or Quay.
//!
//! Which node: each containerd gets a `hosts.toml` for the front that adds the header
//! [`NODE_HEADER`] (containerd 1.6 `[host."…".header]`, and `[header]` for the `server` it falls
//! back to after an error, see [`Front::hosts_toml`]); a request without it counts for node `"-"`.
//!
//! "Pulling" here means having at least one blob GET in flight (from its request to its last
//! byte): the peak is of nodes, not connections (containerd fetches layers of one image in
//! parallel). Manifests and HEADs are small and do not count as pulling.
//!
//! Like [`crate::faults::FaultProxy`], every request is made to close its connection
//! (`Connection: close`), so each connection carries one request; plain threads, stopped on drop.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::faults::{forward_request, read_head};

/// The request header that names the node (set per containerd in its `hosts.toml`).
pub const NODE_HEADER: &str = "X-Prepuller-Node";

const POLL: Duration = Duration::from_millis(20);
const CHUNK: usize = 16 * 1024;

/// How a rate-limited registry answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RateLimitStyle {
    /// 429 with a JSON `TOOMANYREQUESTS` body and no Retry-After; only manifest GETs are
    /// limited (Docker Hub does not count HEAD).
    DockerHub,
    /// 429 with `retry-after: <seconds left in the window>` on every registry request.
    Ghcr,
    /// 429 with an HTML body on every registry request.
    Quay,
}

/// One rate-limit window and what was answered in it.
#[derive(Clone, Debug)]
pub struct Window {
    pub style: RateLimitStyle,
    pub from: Instant,
    pub until: Instant,
    /// 429s answered during it.
    pub answered: u64,
    /// Nodes that got at least one.
    pub nodes: Vec<String>,
    /// The nodes it applies to (one node's IP address rate-limited, say); `None`: every node.
    pub only: Option<Vec<String>>,
}

/// What the front has seen so far (a snapshot).
#[derive(Clone, Debug, Default)]
pub struct FrontStats {
    /// Manifest GETs that reached the registry (not answered 429), by (node, repository).
    pub manifest_gets: BTreeMap<(String, String), u64>,
    /// Manifest HEADs that reached the registry, by (node, repository).
    pub manifest_heads: BTreeMap<(String, String), u64>,
    /// Blob body bytes sent, by node.
    pub blob_bytes: BTreeMap<String, u64>,
    /// The most nodes with a blob GET in flight at once.
    pub peak_pulling_nodes: usize,
    /// Nodes with a blob GET in flight now.
    pub pulling_now: usize,
    /// By node: when its first blob GET arrived and when its last blob transfer ended.
    pub pull_spans: BTreeMap<String, (Instant, Instant)>,
    /// By node: when its first request for a manifest or a blob arrived, answered 429 or not.
    pub first_request: BTreeMap<String, Instant>,
    pub windows: Vec<Window>,
}

impl FrontStats {
    /// The manifest GETs of `node` for `repo`.
    pub fn gets(&self, node: &str, repo: &str) -> u64 {
        self.manifest_gets
            .get(&(node.to_string(), repo.to_string()))
            .copied()
            .unwrap_or(0)
    }

    /// 429s answered, in all windows.
    pub fn answered_429(&self) -> u64 {
        self.windows.iter().map(|w| w.answered).sum()
    }
}

#[derive(Default)]
struct State {
    stats: FrontStats,
    /// Blob GETs in flight, by node.
    in_flight: BTreeMap<String, usize>,
    /// Total bytes per second over all connections; None: unlimited.
    throttle: Option<u64>,
    /// When the throttled link is next free.
    next_free: Option<Instant>,
}

impl State {
    /// The window open at `now`, if any.
    fn window(&mut self, now: Instant) -> Option<&mut Window> {
        self.stats
            .windows
            .iter_mut()
            .rev()
            .find(|w| w.from <= now && now < w.until)
    }
}

/// The front, on 127.0.0.1:<port>, forwarding to `upstream` ("host:port"). Stops on drop.
pub struct Front {
    port: u16,
    stop: Arc<AtomicBool>,
    state: Arc<Mutex<State>>,
}

impl Front {
    pub fn start(upstream: &str) -> Front {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind the front");
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let state = Arc::new(Mutex::new(State::default()));
        let (flag, shared) = (stop.clone(), state.clone());
        let upstream = upstream.to_string();
        thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let (upstream, state) = (upstream.clone(), shared.clone());
                        thread::spawn(move || {
                            let _ = serve_one(client, &upstream, &state);
                        });
                    }
                    Err(_) => thread::sleep(POLL),
                }
            }
        });
        Front { port, stop, state }
    }

    /// "127.0.0.1:PORT": the registry host in image references.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The `hosts.toml` that makes a containerd send `node` in [`NODE_HEADER`] to the front.
    /// Both entries carry it: containerd tries the `server` after a `[host]` that failed (a
    /// 429, say), and a node must not turn anonymous there (one node's address stays one).
    pub fn hosts_toml(&self, node: &str) -> String {
        let url = format!("http://{}", self.host());
        format!(
            "server = \"{url}\"\n\n[header]\n  {NODE_HEADER} = [\"{node}\"]\n\n[host.\"{url}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  [host.\"{url}\".header]\n    {NODE_HEADER} = [\"{node}\"]\n"
        )
    }

    /// Writes [`Self::hosts_toml`] into a containerd's `certs.d`.
    pub fn configure_node(&self, certs_dir: &Path, node: &str) {
        let dir = certs_dir.join(self.host());
        std::fs::create_dir_all(&dir).expect("create certs.d/<front>");
        std::fs::write(dir.join("hosts.toml"), self.hosts_toml(node)).expect("write hosts.toml");
    }

    /// Limits the total bandwidth to `bytes_per_second` (None: unlimited), from now on.
    pub fn throttle(&self, bytes_per_second: Option<u64>) {
        let mut s = self.state.lock().unwrap();
        s.throttle = bytes_per_second;
        s.next_free = None;
    }

    /// Answers 429 in `style` from now for `length`; a window still open ends now.
    pub fn rate_limit(&self, style: RateLimitStyle, length: Duration) {
        self.open_window(style, length, None);
    }

    /// [`Self::rate_limit`] for `nodes` only: the others pass (a registry that limits by IP
    /// address, one node's address over its limit).
    pub fn rate_limit_nodes(&self, style: RateLimitStyle, length: Duration, nodes: &[&str]) {
        let nodes = nodes.iter().map(|n| n.to_string()).collect();
        self.open_window(style, length, Some(nodes));
    }

    fn open_window(&self, style: RateLimitStyle, length: Duration, only: Option<Vec<String>>) {
        let now = Instant::now();
        let mut s = self.state.lock().unwrap();
        for w in &mut s.stats.windows {
            w.until = w.until.min(now);
        }
        s.stats.windows.push(Window {
            style,
            from: now,
            until: now + length,
            answered: 0,
            nodes: Vec::new(),
            only,
        });
    }

    pub fn stats(&self) -> FrontStats {
        let s = self.state.lock().unwrap();
        let mut stats = s.stats.clone();
        stats.pulling_now = s.in_flight.values().filter(|n| **n > 0).count();
        stats
    }

    /// The nodes with a blob GET in flight now.
    pub fn pulling_nodes(&self) -> Vec<String> {
        let s = self.state.lock().unwrap();
        s.in_flight
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(node, _)| node.clone())
            .collect()
    }

    /// Forgets everything counted so far (windows, counts, the peak); keeps the throttle.
    pub fn reset(&self) {
        self.state.lock().unwrap().stats = FrontStats::default();
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// What a request is for: (is manifest, is blob, repository).
fn classify(path: &str) -> (bool, bool, String) {
    let path = path.split('?').next().unwrap_or_default();
    let rest = path.strip_prefix("/v2/").unwrap_or_default();
    for (marker, manifest) in [("/manifests/", true), ("/blobs/", false)] {
        if let Some(i) = rest.find(marker) {
            // Uploads (`/blobs/uploads/`) are not pulls.
            if !manifest && rest[i + marker.len()..].starts_with("uploads") {
                break;
            }
            return (manifest, !manifest, rest[..i].to_string());
        }
    }
    (false, false, String::new())
}

fn too_many(client: &mut TcpStream, style: RateLimitStyle, left: Duration, head_only: bool) {
    let (ctype, extra, body) = match style {
        RateLimitStyle::DockerHub => (
            "application/json",
            String::new(),
            r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"You have reached your pull rate limit. You may increase the limit by authenticating and upgrading: https://www.docker.com/increase-rate-limit"}]}"#.to_string(),
        ),
        RateLimitStyle::Ghcr => (
            "application/json",
            format!("retry-after: {}\r\n", left.as_secs().max(1)),
            r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"retry-after: rate limit exceeded"}]}"#
                .to_string(),
        ),
        RateLimitStyle::Quay => (
            "text/html",
            String::new(),
            "<html><head><title>429 Too Many Requests</title></head><body><center><h1>429 Too Many Requests</h1></center></body></html>".to_string(),
        ),
    };
    let mut out = format!(
        "HTTP/1.1 429 Too Many Requests\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
        body.len()
    );
    if !head_only {
        out.push_str(&body);
    }
    let _ = client.write_all(out.as_bytes());
    let _ = client.shutdown(Shutdown::Write);
}

/// Decrements the node's in-flight count when the blob transfer ends, however it ends.
struct InFlight<'a> {
    state: &'a Mutex<State>,
    node: String,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut s = self.state.lock().unwrap();
        if let Some(span) = s.stats.pull_spans.get_mut(&self.node) {
            span.1 = Instant::now();
        }
        if let Some(n) = s.in_flight.get_mut(&self.node) {
            *n = n.saturating_sub(1);
        }
    }
}

fn serve_one(mut client: TcpStream, upstream: &str, state: &Mutex<State>) -> std::io::Result<()> {
    client.set_nonblocking(false)?;
    let (head, rest) = read_head(&mut client)?;
    let text = String::from_utf8_lossy(&head).into_owned();
    let request_line = text.lines().next().unwrap_or_default().to_string();
    let mut parts = request_line.split(' ');
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let node = text
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case(NODE_HEADER))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "-".to_string());
    let (manifest, blob, repo) = classify(&path);
    let head_only = method == "HEAD";
    let now = Instant::now();

    let _in_flight = {
        let mut s = state.lock().unwrap();
        if manifest || blob {
            s.stats.first_request.entry(node.clone()).or_insert(now);
        }
        if let Some(w) = s.window(now) {
            let limited = match w.style {
                RateLimitStyle::DockerHub => manifest && !head_only,
                RateLimitStyle::Ghcr | RateLimitStyle::Quay => manifest || blob,
            } && w.only.as_ref().is_none_or(|only| only.contains(&node));
            if limited {
                w.answered += 1;
                if !w.nodes.contains(&node) {
                    w.nodes.push(node.clone());
                }
                let (style, left) = (w.style, w.until - now);
                drop(s);
                too_many(&mut client, style, left, head_only);
                return Ok(());
            }
        }
        if manifest {
            let map = if head_only {
                &mut s.stats.manifest_heads
            } else {
                &mut s.stats.manifest_gets
            };
            *map.entry((node.clone(), repo)).or_default() += 1;
            None
        } else if blob && method == "GET" {
            *s.in_flight.entry(node.clone()).or_default() += 1;
            s.stats.pull_spans.entry(node.clone()).or_insert((now, now));
            let pulling = s.in_flight.values().filter(|n| **n > 0).count();
            s.stats.peak_pulling_nodes = s.stats.peak_pulling_nodes.max(pulling);
            Some(InFlight {
                state,
                node: node.clone(),
            })
        } else {
            None
        }
    };

    let mut server = forward_request(&client, upstream, &text, &rest)?;
    let (response_head, body_start) = read_head(&mut server)?;
    client.write_all(&response_head)?;
    let count = blob && method == "GET";
    let send = |client: &mut TcpStream, data: &[u8]| -> std::io::Result<()> {
        for piece in data.chunks(CHUNK) {
            pace(state, piece.len());
            client.write_all(piece)?;
            if count {
                *state
                    .lock()
                    .unwrap()
                    .stats
                    .blob_bytes
                    .entry(node.clone())
                    .or_default() += piece.len() as u64;
            }
        }
        Ok(())
    };
    send(&mut client, &body_start)?;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = server.read(&mut buf)?;
        if n == 0 {
            break;
        }
        send(&mut client, &buf[..n])?;
    }
    let _ = client.shutdown(Shutdown::Write);
    Ok(())
}

/// Waits until the shared link can carry `bytes` more (no-op when unthrottled).
fn pace(state: &Mutex<State>, bytes: usize) {
    let wait = {
        let mut s = state.lock().unwrap();
        let Some(rate) = s.throttle else { return };
        let now = Instant::now();
        let start = s.next_free.map_or(now, |t| t.max(now));
        let done = start + Duration::from_secs_f64(bytes as f64 / rate.max(1) as f64);
        s.next_free = Some(done);
        done - now
    };
    thread::sleep(wait);
}

#[cfg(test)]
mod tests {
    use super::classify;

    #[test]
    fn requests_are_classified_by_path() {
        assert_eq!(
            classify("/v2/team/app/manifests/v1"),
            (true, false, "team/app".into())
        );
        assert_eq!(
            classify("/v2/app/blobs/sha256:abc"),
            (false, true, "app".into())
        );
        assert_eq!(
            classify("/v2/app/blobs/uploads/?x=1"),
            (false, false, String::new())
        );
        assert_eq!(classify("/v2/"), (false, false, String::new()));
    }
}

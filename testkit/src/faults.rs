//! Faults the real stack can be put through: a runtime socket that accepts and never answers,
//! and a proxy in front of a registry that passes, stalls blob bodies, throttles, resets
//! connections or answers 429/503, switched while it runs. Plain threads, so any
//! test binary (async or not) can use them; both stop when dropped.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_millis(20);

/// A unix socket that accepts connections and never reads or answers: what a hung runtime
/// looks like to a CRI client (every call waits for its deadline).
pub struct HungSocket {
    path: PathBuf,
    stop: Arc<AtomicBool>,
}

impl HungSocket {
    pub fn start(path: &Path) -> HungSocket {
        let listener = UnixListener::bind(path).expect("bind the hung socket");
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        thread::spawn(move || {
            let mut held: Vec<UnixStream> = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => held.push(s),
                    Err(_) => thread::sleep(POLL),
                }
            }
        });
        HungSocket {
            path: path.to_path_buf(),
            stop,
        }
    }

    /// "unix:///abs/path"
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.path.display())
    }
}

impl Drop for HungSocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What a [`FaultProxy`] does with the requests it receives; switchable while it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fault {
    /// Forwards everything.
    Pass,
    /// Forwards, but for `GET …/blobs/…` passes only the response headers, then holds the
    /// connection open: containerd (no progress timeout) waits until the pull's deadline.
    Stall,
    /// Resets the connection once the request has arrived (RST, not FIN): "connection reset
    /// by peer" at the client.
    Reset,
    /// Answers `429 Too Many Requests` with a `toomanyrequests` body, as Docker Hub does.
    TooManyRequests,
    /// Answers `503 Service Unavailable`.
    Unavailable,
    /// Forwards, sending each response at this many bytes per second (per connection:
    /// containerd fetches layers in parallel).
    Throttle(u64),
}

/// What a request asked for, by its path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    Manifest,
    Blob,
    Other,
}

/// One request the proxy received.
#[derive(Clone, Copy, Debug)]
pub struct Seen {
    pub at: Instant,
    pub fault: Fault,
    pub target: Target,
}

/// The proxy's switch and its record of requests, shared with its connection threads.
struct Shared {
    fault: Mutex<Fault>,
    seen: Mutex<Vec<Seen>>,
}

impl Shared {
    fn fault(&self) -> Fault {
        *self.fault.lock().unwrap()
    }
}

/// An HTTP-aware TCP proxy on 127.0.0.1:<port> in front of `upstream` (a registry), applying
/// the current [`Fault`] to each request and recording every request it receives (when, under
/// which fault, manifest or blob), so a test can count the attempts that reach "the registry".
///
/// Each request is made to close its connection (`Connection: close`), so every connection
/// carries exactly one request and the proxy only has to read request heads.
pub struct FaultProxy {
    port: u16,
    stop: Arc<AtomicBool>,
    shared: Arc<Shared>,
}

impl FaultProxy {
    pub fn start(upstream: &str, fault: Fault) -> FaultProxy {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind the proxy");
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared {
            fault: Mutex::new(fault),
            seen: Mutex::new(Vec::new()),
        });
        let (flag, state) = (stop.clone(), shared.clone());
        let upstream = upstream.to_string();
        thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let (upstream, flag, state) =
                            (upstream.clone(), flag.clone(), state.clone());
                        thread::spawn(move || {
                            let _ = proxy_one(client, &upstream, &flag, &state);
                        });
                    }
                    Err(_) => thread::sleep(POLL),
                }
            }
        });
        FaultProxy { port, stop, shared }
    }

    /// "127.0.0.1:PORT": use it as the registry host in image references.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Applies `fault` to the requests that arrive from now on.
    pub fn set(&self, fault: Fault) {
        *self.shared.fault.lock().unwrap() = fault;
    }

    /// Every request received so far, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// How many requests for `target` arrived under `fault`.
    pub fn count(&self, fault: Fault, target: Target) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.fault == fault && s.target == target)
            .count()
    }

    /// How many requests for `target` arrived in `[from, to)`.
    pub fn count_between(&self, target: Target, from: Instant, to: Instant) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.target == target && s.at >= from && s.at < to)
            .count()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The blob-stalling proxy of the first fault tests: a [`FaultProxy`] fixed on [`Fault::Stall`].
pub struct StallProxy(FaultProxy);

impl StallProxy {
    pub fn start(upstream: &str) -> StallProxy {
        StallProxy(FaultProxy::start(upstream, Fault::Stall))
    }

    pub fn host(&self) -> String {
        self.0.host()
    }
}

/// Sends the request whose head is `text` (and whatever of its body came with it, `rest`) to
/// `upstream`, as `Connection: close` instead of its own Connection header, and copies the rest
/// of the client's bytes after it on a thread. Returns the connection to read the answer from.
pub(crate) fn forward_request(
    client: &TcpStream,
    upstream: &str,
    text: &str,
    rest: &[u8],
) -> std::io::Result<TcpStream> {
    let mut rewritten = String::new();
    for (n, line) in text.split("\r\n").enumerate() {
        if line.is_empty() || (n > 0 && line.to_ascii_lowercase().starts_with("connection:")) {
            continue;
        }
        rewritten.push_str(line);
        rewritten.push_str("\r\n");
        if n == 0 {
            rewritten.push_str("Connection: close\r\n");
        }
    }
    rewritten.push_str("\r\n");
    let mut server = TcpStream::connect(upstream)?;
    server.write_all(rewritten.as_bytes())?;
    server.write_all(rest)?;
    // Request bodies (blob uploads are not proxied by the tests, but be complete) go through.
    let (mut c2s_from, mut c2s_to) = (client.try_clone()?, server.try_clone()?);
    thread::spawn(move || {
        let _ = std::io::copy(&mut c2s_from, &mut c2s_to);
        let _ = c2s_to.shutdown(Shutdown::Write);
    });
    Ok(server)
}

/// Reads up to the end of an HTTP head; returns the head and any bytes read past it.
pub(crate) fn read_head(s: &mut TcpStream) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Ok((buf, rest));
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn target_of(request_line: &str) -> Target {
    if request_line.contains("/manifests/") {
        Target::Manifest
    } else if request_line.contains("/blobs/") {
        Target::Blob
    } else {
        Target::Other
    }
}

/// A registry-style error answer (the distribution spec's `errors` body); none for HEAD.
fn answer(client: &mut TcpStream, head_only: bool, status: &str, code: &str, message: &str) {
    let body = format!(r#"{{"errors":[{{"code":"{code}","message":"{message}"}}]}}"#);
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Docker-Distribution-Api-Version: registry/2.0\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if !head_only {
        out.push_str(&body);
    }
    let _ = client.write_all(out.as_bytes());
    let _ = client.shutdown(Shutdown::Write);
}

fn proxy_one(
    mut client: TcpStream,
    upstream: &str,
    stop: &AtomicBool,
    shared: &Shared,
) -> std::io::Result<()> {
    client.set_nonblocking(false)?;
    let fault = shared.fault();
    if fault == Fault::Reset {
        // Close with the request unread: the kernel answers with RST, not FIN.
        thread::sleep(POLL); // let the request head arrive
        let mut peeked = [0u8; 1024];
        let n = client.peek(&mut peeked)?;
        let text = String::from_utf8_lossy(&peeked[..n]);
        shared.seen.lock().unwrap().push(Seen {
            at: Instant::now(),
            fault,
            target: target_of(text.lines().next().unwrap_or_default()),
        });
        return Ok(());
    }
    let (head, rest) = read_head(&mut client)?;
    let text = String::from_utf8_lossy(&head).into_owned();
    let request_line = text.lines().next().unwrap_or_default().to_string();
    let target = target_of(&request_line);
    shared.seen.lock().unwrap().push(Seen {
        at: Instant::now(),
        fault,
        target,
    });
    let head_only = request_line.starts_with("HEAD ");
    match fault {
        Fault::TooManyRequests => {
            answer(
                &mut client,
                head_only,
                "429 Too Many Requests",
                "TOOMANYREQUESTS",
                "toomanyrequests: You have reached your pull rate limit.",
            );
            return Ok(());
        }
        Fault::Unavailable => {
            answer(
                &mut client,
                head_only,
                "503 Service Unavailable",
                "UNAVAILABLE",
                "service unavailable",
            );
            return Ok(());
        }
        _ => {}
    }
    let stall = fault == Fault::Stall && request_line.starts_with("GET ") && target == Target::Blob;
    let mut server = forward_request(&client, upstream, &text, &rest)?;
    if let Fault::Throttle(rate) = fault {
        // A tenth of the rate every 100 ms.
        let step = Duration::from_millis(100);
        let mut chunk = vec![0u8; usize::try_from(rate / 10).unwrap_or(usize::MAX).max(1)];
        loop {
            let n = server.read(&mut chunk)?;
            if n == 0 {
                break;
            }
            client.write_all(&chunk[..n])?;
            thread::sleep(step);
        }
        let _ = client.shutdown(Shutdown::Write);
        return Ok(());
    }
    if !stall {
        std::io::copy(&mut server, &mut client)?;
        let _ = client.shutdown(Shutdown::Write);
        return Ok(());
    }
    let (head, _body) = read_head(&mut server)?;
    client.write_all(&head)?;
    // Stalled: the headers promised a body that never comes. Hold both ends open.
    while !stop.load(Ordering::Relaxed) {
        thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

//! Faults the real stack can be put through: a runtime socket that accepts and never answers,
//! and a TCP proxy in front of a registry that stalls blob downloads. Plain threads, so any
//! test binary (async or not) can use them; both stop when dropped.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

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

/// A TCP proxy on 127.0.0.1:<port> in front of `upstream` (a registry) that forwards
/// everything except the bodies of blob downloads: for `GET /v2/…/blobs/…` it passes the
/// response headers, then stalls, holding the connection open. containerd (which has no
/// progress timeout) then waits until the pull's deadline: a real stalled registry.
///
/// Each request is made to close its connection (`Connection: close`), so every connection
/// carries exactly one request and the proxy only has to read request heads.
pub struct StallProxy {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl StallProxy {
    pub fn start(upstream: &str) -> StallProxy {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind the proxy");
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let upstream = upstream.to_string();
        thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let (upstream, flag) = (upstream.clone(), flag.clone());
                        thread::spawn(move || {
                            let _ = proxy_one(client, &upstream, &flag);
                        });
                    }
                    Err(_) => thread::sleep(POLL),
                }
            }
        });
        StallProxy { port, stop }
    }

    /// "127.0.0.1:PORT": use it as the registry host in image references.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for StallProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Reads up to the end of an HTTP head; returns the head and any bytes read past it.
fn read_head(s: &mut TcpStream) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
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

fn proxy_one(mut client: TcpStream, upstream: &str, stop: &AtomicBool) -> std::io::Result<()> {
    client.set_nonblocking(false)?;
    let (head, rest) = read_head(&mut client)?;
    let text = String::from_utf8_lossy(&head).into_owned();
    let request_line = text.lines().next().unwrap_or_default().to_string();
    let stall = request_line.starts_with("GET ") && request_line.contains("/blobs/");
    // The same head, without its own Connection header and with `Connection: close`.
    let mut rewritten = String::new();
    for (n, line) in text.split("\r\n").enumerate() {
        if line.is_empty() {
            continue;
        }
        if n > 0 && line.to_ascii_lowercase().starts_with("connection:") {
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
    server.write_all(&rest)?;
    // Request bodies (blob uploads are not proxied by the tests, but be complete) go through.
    let (mut c2s_from, mut c2s_to) = (client.try_clone()?, server.try_clone()?);
    thread::spawn(move || {
        let _ = std::io::copy(&mut c2s_from, &mut c2s_to);
        let _ = c2s_to.shutdown(Shutdown::Write);
    });
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

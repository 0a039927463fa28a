//! A hostile HTTP client: what any pod on the network can do to a listener. Idle connections,
//! half-sent requests and slowloris drips, each reporting when the server closed them.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

/// What a hostile connection sends after connecting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hostile {
    /// Nothing at all.
    Idle,
    /// A request line and 4 KiB of a header, never finished.
    HalfSent,
}

/// The outcome of opening a batch of hostile connections.
pub struct Flood {
    /// Connections the kernel completed (served, or waiting in the server's accept queue).
    pub connected: usize,
    /// Attempts that did not connect within the connect timeout (the server's queue was full).
    pub not_connected: usize,
    /// Per connected socket: how long after connecting the server closed it (None: still open
    /// when the flood was released).
    tasks: JoinSet<Option<Duration>>,
    release: tokio::sync::watch::Sender<bool>,
}

impl Flood {
    /// Opens `count` connections to `addr` at once, their kinds taken from `kinds` in turn, each
    /// given `connect_timeout` to connect. Each connection is held (reading, so the server's close is seen) until the
    /// server closes it or the flood is released.
    pub async fn open(
        addr: SocketAddr,
        count: usize,
        kinds: &[Hostile],
        connect_timeout: Duration,
    ) -> Flood {
        let (release, released) = tokio::sync::watch::channel(false);
        let mut connecting = JoinSet::new();
        for &kind in kinds.iter().cycle().take(count) {
            connecting.spawn(async move {
                tokio::time::timeout(connect_timeout, connect(addr, kind)).await
            });
        }
        let mut tasks = JoinSet::new();
        let (mut connected, mut not_connected) = (0, 0);
        while let Some(r) = connecting.join_next().await {
            match r.unwrap() {
                Ok(Some(stream)) => {
                    connected += 1;
                    let mut released = released.clone();
                    tasks.spawn(async move {
                        let start = Instant::now();
                        tokio::select! {
                            _ = closed_by_peer(stream) => Some(start.elapsed()),
                            _ = released.wait_for(|r| *r) => None,
                        }
                    });
                }
                _ => not_connected += 1,
            }
        }
        Flood {
            connected,
            not_connected,
            tasks,
            release,
        }
    }

    /// Waits up to `within` for the server to close every connected socket; returns how long
    /// each one it closed stayed open. The rest are released (closed by us).
    pub async fn closed_by_server_within(mut self, within: Duration) -> Vec<Duration> {
        let deadline = tokio::time::Instant::now() + within;
        let mut closed = Vec::new();
        loop {
            match tokio::time::timeout_at(deadline, self.tasks.join_next()).await {
                Ok(Some(r)) => closed.extend(r.unwrap()),
                Ok(None) => break,
                Err(_) => {
                    let _ = self.release.send(true);
                    while self.tasks.join_next().await.is_some() {}
                    break;
                }
            }
        }
        closed
    }
}

async fn connect(addr: SocketAddr, kind: Hostile) -> Option<TcpStream> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    if kind == Hostile::HalfSent {
        let mut head = b"GET /status HTTP/1.1\r\nHost: agent\r\nX-Pad: ".to_vec();
        head.resize(head.len() + 4096, b'a');
        stream.write_all(&head).await.ok()?;
    }
    Some(stream)
}

/// Resolves when the peer closes (EOF or reset); any bytes it sends first are discarded.
async fn closed_by_peer(mut stream: TcpStream) {
    let mut buf = [0u8; 1024];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            return;
        }
    }
}

/// A slowloris client: starts a request, then sends one more byte of a header every `drip`,
/// forever. Returns how long the connection stayed open before the server closed it, or None
/// when it was still open after `give_up`.
pub async fn slowloris(addr: SocketAddr, drip: Duration, give_up: Duration) -> Option<Duration> {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let start = Instant::now();
    stream
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: agent\r\nX-Slow: ")
        .await
        .ok()?;
    let (mut rd, mut wr) = stream.into_split();
    let drip_forever = async move {
        loop {
            tokio::time::sleep(drip).await;
            if wr.write_all(b"a").await.is_err() {
                // Writing to a closed connection fails; the read side sees the close too.
                std::future::pending::<()>().await;
            }
        }
    };
    let closed = async move {
        let mut buf = [0u8; 1024];
        while let Ok(n) = rd.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    };
    tokio::select! {
        _ = closed => Some(start.elapsed()),
        _ = drip_forever => unreachable!(),
        _ = tokio::time::sleep(give_up) => None,
    }
}

/// Raises this process's soft limit on open files to its hard limit (what an unprivileged
/// process may); returns the limit in force.
pub fn raise_open_files() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
    }
    lim.rlim_cur
}

/// Sends `head` (a request head, written as given) and reads the answer to its end: the status
/// code, or None when the server closed without one.
pub async fn raw(addr: SocketAddr, head: &[u8]) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    stream.write_all(head).await.ok()?;
    let mut response = Vec::new();
    // A server refusing a head may close before reading all of it: a reset after the answer.
    let _ = stream.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// One plain `GET` (HTTP/1.1, `Connection: close`), as a probe or a scrape sends it: the
/// status code and the body, or None when the server did not answer.
pub async fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.ok()?;
    let text = String::from_utf8_lossy(&response);
    let code = text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((code, body))
}

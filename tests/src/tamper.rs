//! A man in the middle: an HTTP forwarder in front of `edgeferry serve`
//! that changes one byte of the body of `GET /join.sh` (pull mode's tests)
//! or of the first response whose path holds a given text (sync's), or
//! sends only half of such a body and then holds the connection (a
//! transfer to kill mid-way), and passes everything else through byte for
//! byte.
//!
//! One thread per connection, one request per connection: the request's
//! `Connection` headers are replaced by `Connection: close`, its body (by
//! `Content-Length`) forwarded, and the response read to its end (by
//! `Content-Length`, else to EOF) before it is sent on. The changed byte is
//! a letter in the first comment line after the shebang, case flipped, so
//! the tampered script would still run the same if nothing checked it:
//! only the sha256 check can stop it.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};

/// The longest request or response head the proxy accepts.
const MAX_HEAD: usize = 64 * 1024;
const TIMEOUT: Duration = Duration::from_secs(30);

/// What the proxy does to responses.
#[derive(Clone, Debug)]
pub enum Rule {
    /// Flip a byte of every `GET /join.sh` body.
    JoinScript,
    /// Flip a byte of the first 200 body whose path contains this.
    FlipFirst(String),
    /// Send the first half of the first 200 body whose path contains
    /// this, then nothing more until the proxy is dropped.
    StallFirst(String),
}

struct Shared {
    upstream: String,
    rule: Rule,
    /// Body bytes sent of the stalled response.
    stalled: std::sync::atomic::AtomicU64,
    stop: AtomicBool,
    tampered: AtomicUsize,
    /// `METHOD target -> status`, one per forwarded request.
    seen: Mutex<Vec<String>>,
}

/// A running tamper proxy; stopped (its accept loop joined) on drop.
pub struct TamperProxy {
    addr: String,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl TamperProxy {
    /// Listens on `ip` (a port the OS picks; e.g. a test-host bridge's
    /// control address) and forwards to `upstream` (`host:port`).
    pub fn start(ip: &str, upstream: &str) -> Result<TamperProxy> {
        TamperProxy::start_with(ip, upstream, Rule::JoinScript)
    }

    /// As [`TamperProxy::start`], doing what `rule` says.
    pub fn start_with(ip: &str, upstream: &str, rule: Rule) -> Result<TamperProxy> {
        let listener = TcpListener::bind(format!("{ip}:0"))
            .with_context(|| format!("tamper proxy: binding {ip}:0"))?;
        let addr = listener.local_addr()?.to_string();
        let shared = Arc::new(Shared {
            upstream: upstream.to_string(),
            rule,
            stalled: std::sync::atomic::AtomicU64::new(0),
            stop: AtomicBool::new(false),
            tampered: AtomicUsize::new(0),
            seen: Mutex::new(Vec::new()),
        });
        let thread = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("tamper-proxy".into())
                .spawn(move || {
                    for conn in listener.incoming() {
                        if shared.stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let Ok(conn) = conn else { continue };
                        let shared = Arc::clone(&shared);
                        let _ = std::thread::Builder::new()
                            .name("tamper-conn".into())
                            .spawn(move || {
                                if let Err(e) = forward(conn, &shared) {
                                    eprintln!("tamper proxy: {e:#}");
                                }
                            });
                    }
                })?
        };
        Ok(TamperProxy {
            addr,
            shared,
            thread: Some(thread),
        })
    }

    /// `ip:port` the proxy listens on.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Body bytes sent of the response [`Rule::StallFirst`] holds (0 until then).
    pub fn stalled_bytes(&self) -> u64 {
        self.shared.stalled.load(Ordering::SeqCst)
    }

    /// How many responses were changed (or stalled) so far.
    pub fn tampered(&self) -> usize {
        self.shared.tampered.load(Ordering::SeqCst)
    }

    /// Every forwarded request so far, as `METHOD target -> status`.
    pub fn seen(&self) -> Vec<String> {
        self.shared
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for TamperProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wakes the blocking accept; the loop sees the flag and returns.
        if let Ok(addr) = self.addr.parse() {
            let _ = TcpStream::connect_timeout(&addr, Duration::from_secs(1));
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Changes one byte of a script: a letter of the first comment line after
/// the first line flips case (else the middle byte flips its lowest bit).
/// Returns the changed offset.
pub fn tamper(body: &mut [u8]) -> Option<usize> {
    if body.is_empty() {
        return None;
    }
    let mut at = None;
    let mut i = 0;
    while let Some(nl) = body[i..].iter().position(|&b| b == b'\n') {
        let line = i + nl + 1;
        if body.get(line) == Some(&b'#') {
            let end = body[line..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(body.len(), |e| line + e);
            at = (line..end).find(|&j| body[j].is_ascii_alphabetic());
            if at.is_some() {
                break;
            }
        }
        i = line;
    }
    match at {
        Some(j) => body[j] ^= 0x20,
        None => {
            let j = body.len() / 2;
            body[j] ^= 0x01;
            at = Some(j);
        }
    }
    at
}

fn forward(mut client: TcpStream, shared: &Shared) -> Result<()> {
    client.set_read_timeout(Some(TIMEOUT))?;
    client.set_write_timeout(Some(TIMEOUT))?;
    let (head, mut rest) = read_head(&mut client).context("reading the request head")?;
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_string();
    let mut parts = request_line.split(' ');
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    let mut out = format!("{request_line}\r\n");
    let mut length = 0usize;
    for line in lines.filter(|l| !l.is_empty()) {
        let name = line
            .split_once(':')
            .map_or("", |(n, _)| n)
            .trim()
            .to_ascii_lowercase();
        if name == "content-length" {
            length = line
                .split_once(':')
                .and_then(|(_, v)| v.trim().parse().ok())
                .unwrap_or(0);
        }
        if matches!(
            name.as_str(),
            "connection" | "keep-alive" | "proxy-connection"
        ) {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    // The request body: what came with the head, then the rest.
    if rest.len() < length {
        let mut more = vec![0u8; length - rest.len()];
        client
            .read_exact(&mut more)
            .context("reading the request body")?;
        rest.extend_from_slice(&more);
    }
    rest.truncate(length);

    let mut upstream = TcpStream::connect(&shared.upstream)
        .with_context(|| format!("connecting to {}", shared.upstream))?;
    upstream.set_read_timeout(Some(TIMEOUT))?;
    upstream.set_write_timeout(Some(TIMEOUT))?;
    upstream.write_all(out.as_bytes())?;
    upstream.write_all(&rest)?;

    let (response_head, mut body) =
        read_head(&mut upstream).context("reading the response head")?;
    let text = String::from_utf8_lossy(&response_head).into_owned();
    let status: u16 = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let response_length = text.split("\r\n").find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())?
    });
    let no_body =
        method == "HEAD" || status == 204 || status == 304 || (100..200).contains(&status);
    match (no_body, response_length) {
        (true, _) => body.clear(),
        (false, Some(n)) => {
            if body.len() < n {
                let mut more = vec![0u8; n - body.len()];
                upstream
                    .read_exact(&mut more)
                    .context("reading the response body")?;
                body.extend_from_slice(&more);
            }
            body.truncate(n);
        }
        (false, None) => {
            upstream
                .read_to_end(&mut body)
                .context("reading the response body")?;
        }
    }
    let path = target.split('?').next().unwrap_or_default();
    let first = |text: &str| {
        method == "GET"
            && status == 200
            && path.contains(text)
            && shared
                .tampered
                .compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
    };
    match &shared.rule {
        Rule::JoinScript => {
            if method == "GET" && path == "/join.sh" && status == 200 && tamper(&mut body).is_some()
            {
                shared.tampered.fetch_add(1, Ordering::SeqCst);
            }
        }
        Rule::FlipFirst(text) => {
            if first(text) {
                tamper(&mut body);
            }
        }
        Rule::StallFirst(text) => {
            if first(text) {
                let half = body.len() / 2;
                client.write_all(&response_head)?;
                client.write_all(&body[..half])?;
                client.flush()?;
                shared.stalled.store(half as u64, Ordering::SeqCst);
                while !shared.stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                return Ok(());
            }
        }
    }
    shared
        .seen
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(format!("{method} {target} -> {status}"));
    client.write_all(&response_head)?;
    client.write_all(&body)?;
    client.flush()?;
    let _ = client.shutdown(Shutdown::Write);
    Ok(())
}

/// Reads up to and including the blank line that ends an HTTP head:
/// (head, whatever came after it).
fn read_head(conn: &mut TcpStream) -> io::Result<(Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Ok((buf, rest));
        }
        if buf.len() > MAX_HEAD {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "head too long"));
        }
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed in the head",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::tamper;

    #[test]
    fn flips_a_comment_letter() {
        let mut s = b"#!/bin/sh\nset -eu\n# join this node\necho hi\n".to_vec();
        let at = tamper(&mut s).unwrap();
        assert_eq!(
            String::from_utf8(s).unwrap(),
            "#!/bin/sh\nset -eu\n# Join this node\necho hi\n"
        );
        assert_eq!(at, 20);
        let mut plain = b"abc".to_vec();
        tamper(&mut plain).unwrap();
        assert_eq!(plain, b"acc");
    }
}

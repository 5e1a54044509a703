//! `edgeferry serve`: the accept loop that puts the mirror (`mirror/`)
//! and, with `--site-dir`, pull mode (`pull/`) on the LAN, over HTTPS
//! (`tls`) unless `--plain-http`. Everything is bounded: a connection cap
//! (and a share of it per source address), a TLS handshake timeout, a
//! header-read timeout, an idle timeout (no bytes moving either way) but
//! no whole-request timeout, so multi-GB pulls finish. Every request gets
//! one access-log line.

use std::collections::{BTreeSet, HashMap};
use std::convert::Infallible;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::body::Body;
use axum::http::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::config::Config;
use crate::mirror::{self, Snapshot};
use crate::node::hosts::{self, Mirror, Mirrors, MIRROR_CA_PATH};
use crate::node::offer;
use crate::printer::Printer;
use crate::pull;
use crate::tls;

pub struct Server {
    snapshot: RwLock<Arc<Snapshot>>,
    log: Mutex<Box<dyn Write + Send>>,
    /// Pull mode (`--site-dir`): /join.sh, /v1/enroll, /v1/report.
    site: Option<pull::Site>,
    /// `https://host:port` when TLS is on, for the plain-HTTP refusal.
    https_url: Option<String>,
    out: Printer,
}

impl Server {
    fn snapshot(&self) -> Arc<Snapshot> {
        Arc::clone(&self.snapshot.read().expect("snapshot lock"))
    }

    /// Picks up a store that a load swapped in while we were serving.
    fn reload_if_changed(&self) {
        let current = self.snapshot();
        if mirror::state_stamp(&current.store) != current.stamp {
            match Snapshot::read(&current.store) {
                Ok(fresh) => {
                    if let Some(site) = &self.site {
                        match site.rebuild(&fresh.state) {
                            Ok(true) => self.out.note(&format!(
                                "mirror: the store changed; join script sha256 is now {}; {}",
                                site.script_sha256(),
                                match site.upgrade_script() {
                                    Ok((sha, to)) => {
                                        format!("upgrade script (to {to}) sha256 is now {sha}")
                                    }
                                    Err(why) => format!("no upgrade script: {why}"),
                                }
                            )),
                            Ok(false) => {}
                            Err(e) => self
                                .out
                                .warn(&format!("mirror: join script not rebuilt: {e:#}")),
                        }
                    }
                    *self.snapshot.write().expect("snapshot lock") = Arc::new(fresh)
                }
                Err(e) => self.out.warn(&format!(
                    "mirror: keeping the previous view of the store: {e:#}"
                )),
            }
        }
    }
}

pub struct ServeOptions {
    pub store: PathBuf,
    pub listen: SocketAddr,
    /// host:port nodes use to reach us, for the printed hosts.toml.
    pub advertise: Option<String>,
    /// `--peer-mirror`: the site's other mirrors (host:port), listed after
    /// this one in the printed hosts.toml and in `/join.sh`.
    pub peers: Vec<String>,
    /// `--node-mirror`: a node-local mirror listed ahead of all of them.
    pub node_mirror: Option<String>,
    pub access_log: Option<PathBuf>,
    /// Pull mode: a directory with site.yaml; enrollments and reports go there.
    pub site_dir: Option<PathBuf>,
    pub tls: TlsChoice,
}

/// HTTPS (the default) or plain HTTP.
pub enum TlsChoice {
    /// `--plain-http`.
    Plain,
    /// The site key and certificate beside the store ([`tls::site_dir`]),
    /// covering the listen address, `--advertise` and these names.
    Site { names: Vec<String> },
    /// `--tls-cert`, `--tls-key` and optionally `--tls-ca`.
    Files {
        cert: PathBuf,
        key: PathBuf,
        ca: Option<PathBuf>,
    },
}

/// The names the site certificate must cover: the listen address unless it
/// is every interface, the host of `--advertise`, and `--tls-name`s.
fn certificate_names(
    local: SocketAddr,
    advertise: Option<&str>,
    extra: &[String],
) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    if !local.ip().is_unspecified() {
        names.insert(local.ip().to_canonical().to_string());
    }
    if let Some(a) = advertise {
        let host = a.rsplit_once(':').map_or(a, |(h, _)| h);
        names.insert(
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
        );
    }
    names.extend(
        extra
            .iter()
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty()),
    );
    names
}

/// Runs the mirror until SIGINT or SIGTERM.
pub fn serve(options: ServeOptions, config: &Config, out: &Printer) -> Result<()> {
    let out = *out;
    let snapshot = Snapshot::read(&options.store)?;
    if snapshot.state.bundles.is_empty() {
        anyhow::bail!(
            "{} holds no bundle: run `edgeferry load` first",
            options.store.display()
        );
    }
    crate::sys::raise_fd_limit(config.max_connections as u64 + 64);
    let log: Box<dyn Write + Send> = match &options.access_log {
        Some(path) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening access log {}", path.display()))?,
        ),
        None => Box::new(std::io::stdout()),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .event_interval(config.io_event_interval)
        .worker_threads(config.mirror_workers)
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(options.listen)
            .await
            .with_context(|| {
                format!("listening on {}: is another server there?", options.listen)
            })?;
        let local = listener.local_addr()?;
        let identity = match &options.tls {
            TlsChoice::Plain => None,
            TlsChoice::Site { names } => Some(tls::site_identity(
                &tls::site_dir(&options.store),
                &certificate_names(local, options.advertise.as_deref(), names),
            )?),
            TlsChoice::Files { cert, key, ca } => {
                Some(tls::from_files(cert, key, ca.as_deref())?)
            }
        };
        let acceptor = match &identity {
            Some(identity) => {
                if let Some(note) = &identity.note {
                    out.note(note);
                }
                Some(tokio_rustls::TlsAcceptor::from(tls::server_config(identity)?))
            }
            None => None,
        };
        // Where nodes reach us, for everything printed and for /join.sh.
        let address = match &options.advertise {
            Some(a) => a.clone(),
            None if local.ip().is_unspecified() => format!("<this-host-lan-ip>:{}", local.port()),
            None => local.to_string(),
        };
        let endpoint = Mirror {
            address,
            ca_pem: identity.as_ref().map(|i| i.ca_pem.clone()),
        };
        // This mirror first, then its peers: a node that reaches this one
        // pulls from it and falls through to the others. One site CA for
        // all (docs/scale.md says how peers share it).
        if let Some(n) = options.node_mirror.as_deref().filter(|n| n.contains(hosts::NODE_HOST)) {
            anyhow::bail!("--node-mirror {n}: serve prints one set of files for every node, so it cannot put each node's own address in; give the address every node reaches its node-local mirror at (edgeferry join fills {} in per node)", hosts::NODE_HOST);
        }
        let values: Vec<String> = std::iter::once(endpoint.url())
            .chain(options.peers.iter().cloned())
            .collect();
        let mirrors = offer::mirrors_from(
            &values,
            options.node_mirror.as_deref(),
            endpoint.ca_pem.clone(),
        )?;
        let site = match &options.site_dir {
            None => None,
            Some(dir) => {
                if options.advertise.is_none() && local.ip().is_unspecified() {
                    anyhow::bail!(
                        "pull mode needs the address nodes reach this mirror at: pass --advertise HOST:PORT"
                    );
                }
                if identity.is_none() {
                    out.warn(
                        "WARNING: pull mode over plain HTTP: enrollment codes, the join token and node reports cross the LAN in cleartext, where anyone on it can read them; serve without --plain-http",
                    );
                }
                Some(pull::Site::open(dir, &mirrors, &snapshot.state, config, out)?)
            }
        };
        if local.ip().is_unspecified() {
            out.warn(&format!(
                "WARNING: listening on all interfaces ({local}): every network this host is on can pull from it; pass --listen <LAN IP>:{} to limit that, and --advertise to print exact node settings",
                local.port()
            ));
        }
        let mut text = banner(&snapshot, local, &mirrors, identity.as_ref());
        if let Some(site) = &site {
            let pin = identity.as_ref().map(|i| i.pin.as_str());
            text.push_str(&format!(
                "join script: {}/join.sh sha256 {}\none-liner: {}\n(codes: edgeferry enroll create --site-dir {})\n",
                endpoint.url(),
                site.script_sha256(),
                pull::one_liner(&endpoint, pin, "join.sh", &site.script_sha256()),
                site.dir.display()
            ));
            match site.upgrade_script() {
                Ok((sha, to)) => text.push_str(&format!(
                    "upgrade script: {}/upgrade.sh sha256 {sha} (to KubeEdge {to})\nupgrade one-liner: {}\n(upgrade codes: edgeferry enroll create --upgrade --site-dir {})\n",
                    endpoint.url(),
                    pull::one_liner(&endpoint, pin, "upgrade.sh", &sha),
                    site.dir.display()
                )),
                Err(why) => text.push_str(&format!("upgrade script: none: {why}\n")),
            }
        }
        out.note(&text);
        let mirror = Arc::new(Server {
            snapshot: RwLock::new(Arc::new(snapshot)),
            log: Mutex::new(log),
            site,
            https_url: identity.is_some().then(|| endpoint.url()),
            out,
        });
        run(listener, mirror, config.clone(), acceptor).await
    })
}

/// What nodes need to pull through this mirror (at `endpoint`), printed
/// when it starts.
fn banner(
    snapshot: &Snapshot,
    local: SocketAddr,
    mirrors: &Mirrors,
    identity: Option<&tls::Identity>,
) -> String {
    let endpoint = mirrors.first();
    let scheme = if endpoint.tls() { "https" } else { "http" };
    let mut s = format!(
        "edgeferry mirror: serving {} on {scheme}://{local} ({} images, {} files, read-only)\n",
        snapshot.store.display(),
        snapshot.state.images.len(),
        snapshot.state.files.len()
    );
    if let Some(identity) = identity {
        s.push_str(&format!(
            "TLS: certificate {}; key pin {} (curl --pinnedpubkey)\n",
            identity.origin, identity.pin
        ));
    }
    s.push_str("\nOn each node, containerd needs these files (edgeferry join writes them):\n");
    if mirrors.site.len() > 1 {
        s.push_str("(This mirror first, then its peers: give a node that fetches from a peer the peer's own files. edgeferry join rotates the order per node.)\n");
    }
    if let Some(pem) = &endpoint.ca_pem {
        s.push_str(&format!("=== {MIRROR_CA_PATH} (the mirror's CA)\n{pem}"));
        if !pem.ends_with('\n') {
            s.push('\n');
        }
    }
    for file in hosts::hosts_files(mirrors, &snapshot.registries()) {
        s.push_str(&format!(
            "--- /etc/containerd/certs.d/{}/hosts.toml\n{}",
            file.dir, file.content
        ));
    }
    let versions: BTreeSet<&str> = snapshot
        .state
        .bundles
        .values()
        .map(|b| b.kubeedge_version.as_str())
        .collect();
    for version in versions {
        s.push_str(&format!(
            "\nkeadm join flags for KubeEdge {version}: --kubeedge-version={version}   (with the hosts.toml above, images keep their upstream names; without them add --image-repository={}/kubeedge)\n", endpoint.address
        ));
    }
    let url = endpoint.url();
    s.push_str(&format!(
        "release files: {url}/files/  checksums: {url}/SHA256SUMS  index: {url}/index.json\n"
    ));
    s
}

async fn run(
    listener: tokio::net::TcpListener,
    mirror: Arc<Server>,
    config: Config,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
) -> Result<()> {
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let out = mirror.out;
    tokio::spawn(async move {
        shutdown_signal().await;
        out.note(&format!(
            "mirror: shutting down, letting transfers in flight finish (up to {:?})",
            config.shutdown_grace
        ));
        let _ = shutdown_tx.send(true);
    });
    {
        let mirror = Arc::clone(&mirror);
        let interval = config.state_reload_interval;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                mirror.reload_if_changed();
            }
        });
    }
    let permits = Arc::new(tokio::sync::Semaphore::new(config.max_connections));
    let clients = Clients::default();
    let started = Instant::now();
    let mut shutdown = shutdown_rx.clone();
    loop {
        let permit = tokio::select! {
            _ = shutdown.changed() => break,
            permit = Arc::clone(&permits).acquire_owned() => permit.expect("semaphore open"),
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors or the like: back off, keep serving.
                    out.warn(&format!("mirror: accept failed: {e}"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Some(slot) = clients.take(peer.ip(), config.max_connections_per_client) else {
            // Over its share: told so in one write that cannot block, then
            // closed, and its permit is free for another client.
            let _ = stream.try_write(TOO_MANY_FROM_CLIENT);
            continue;
        };
        let _ = stream.set_nodelay(true);
        crate::sys::set_send_buffer(&stream, config.send_buffer_bytes);
        let mirror = Arc::clone(&mirror);
        let config = config.clone();
        let shutdown = shutdown_rx.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            match acceptor {
                None => {
                    connection(
                        Plain(stream),
                        peer,
                        mirror,
                        config,
                        shutdown,
                        started,
                        false,
                    )
                    .await
                }
                Some(acceptor) => {
                    tls_connection(acceptor, stream, peer, mirror, config, shutdown, started).await
                }
            }
            drop(slot);
            drop(permit);
        });
    }
    drop(listener);
    // Wait for connections to drain: every permit back, or the grace period.
    let all = u32::try_from(config.max_connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(config.shutdown_grace, permits.acquire_many(all)).await;
    Ok(())
}

/// The answer to a connection over `max_connections_per_client`.
const TOO_MANY_FROM_CLIENT: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 56\r\nConnection: close\r\nRetry-After: 1\r\n\r\ntoo many connections from your address: retry after one\n";

/// Connections open per source address.
#[derive(Clone, Default)]
struct Clients(Arc<Mutex<HashMap<IpAddr, usize>>>);

impl Clients {
    /// A slot for one more connection from `ip`, or `None` when it already
    /// holds `cap`. An IPv4-mapped IPv6 address counts as its IPv4 one.
    fn take(&self, ip: IpAddr, cap: usize) -> Option<ClientSlot> {
        let ip = ip.to_canonical();
        let mut open = self.0.lock().expect("client table lock");
        let count = open.entry(ip).or_insert(0);
        if *count >= cap {
            return None;
        }
        *count += 1;
        Some(ClientSlot {
            clients: self.clone(),
            ip,
        })
    }
}

/// One open connection counted against its address; released on drop.
struct ClientSlot {
    clients: Clients,
    ip: IpAddr,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self.clients.0.lock().expect("client table lock");
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// A connection to the TLS port: a TLS handshake, finished within the
/// handshake timeout or dropped (its slot and permit held until then, so
/// the caps bound handshakes too); or a plain-HTTP request, answered with
/// the one-line refusal.
async fn tls_connection(
    acceptor: tokio_rustls::TlsAcceptor,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    mirror: Arc<Server>,
    config: Config,
    shutdown: tokio::sync::watch::Receiver<bool>,
    started: Instant,
) {
    /// The first byte of every TLS connection: a handshake record.
    const HANDSHAKE: u8 = 0x16;
    let mut first = [0u8; 1];
    let peeked = tokio::time::timeout(config.tls_handshake_timeout, stream.peek(&mut first)).await;
    match peeked {
        Ok(Ok(1)) if first[0] == HANDSHAKE => {}
        Ok(Ok(1)) => {
            return connection(stream, peer, mirror, config, shutdown, started, true).await;
        }
        _ => return,
    }
    let accepted =
        tokio::time::timeout(config.tls_handshake_timeout, acceptor.accept(stream)).await;
    if let Ok(Ok(tls)) = accepted {
        connection(tls, peer, mirror, config, shutdown, started, false).await;
    }
}

/// Serves HTTP/1.1 on `io`; `refuse_plain`: plain HTTP reached the TLS
/// port, and every request gets the refusal.
async fn connection<S>(
    stream: S,
    peer: SocketAddr,
    mirror: Arc<Server>,
    config: Config,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    started: Instant,
    refuse_plain: bool,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(AtomicU64::new(started.elapsed().as_millis() as u64));
    let io = TokioIo::new(Activity {
        inner: stream,
        last: Arc::clone(&activity),
        started,
    });
    let service = hyper::service::service_fn(move |request| {
        let mirror = Arc::clone(&mirror);
        async move { Ok::<_, Infallible>(handle(mirror, peer, request, refuse_plain).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .keep_alive(!refuse_plain)
        .serve_connection(io, service);
    tokio::pin!(conn);
    let idle_ms = config.idle_timeout.as_millis() as u64;
    let tick = (config.idle_timeout / 4).max(Duration::from_millis(50));
    loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = shutdown.changed() => {
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(config.shutdown_grace, conn.as_mut()).await;
                return;
            }
            _ = tokio::time::sleep(tick) => {
                let now = started.elapsed().as_millis() as u64;
                if now.saturating_sub(activity.load(Ordering::Relaxed)) > idle_ms {
                    // No byte moved either way for the idle timeout: close.
                    return;
                }
            }
        }
    }
}

/// A plain-HTTP connection's socket. A write of a slice of a stored file
/// (a blob or release-file body: the mirror hands them out as slices of
/// one shared mapping, [`mirror::file_behind`]) goes out with sendfile(2):
/// the kernel queues the page-cache pages, nothing is copied, and the
/// worker is free again at once, as nginx's are. Everything else (headers,
/// manifests and other in-memory bodies) is written as usual. Over TLS
/// the bytes must pass through the cipher, so TLS connections do not use it.
struct Plain(tokio::net::TcpStream);

/// Slices shorter than this are written, not looked up: headers and
/// small bodies cost less to copy than to find.
const SENDFILE_MIN: usize = 16 << 10;

impl Plain {
    /// The file behind `part`, when it is worth a sendfile.
    fn file_behind(part: &[u8]) -> Option<mirror::FileSlice> {
        if part.len() < SENDFILE_MIN {
            return None;
        }
        mirror::file_behind(part)
    }

    /// Sends `len` bytes of `slice`'s file, as many as the socket takes.
    fn poll_sendfile(
        &self,
        cx: &mut TaskContext<'_>,
        slice: &mirror::FileSlice,
        len: usize,
    ) -> Poll<std::io::Result<usize>> {
        loop {
            std::task::ready!(self.0.poll_write_ready(cx))?;
            let sent = self.0.try_io(tokio::io::Interest::WRITABLE, || {
                crate::sys::sendfile(&self.0, slice.mapping.file(), slice.offset, len)
            });
            match sent {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                other => return Poll::Ready(other),
            }
        }
    }
}

impl AsyncRead for Plain {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Plain {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match Plain::file_behind(buf) {
            Some(slice) => self.poll_sendfile(cx, &slice, buf.len()),
            None => Pin::new(&mut self.0).poll_write(cx, buf),
        }
    }
    /// The slices in order: a leading stored-file slice by sendfile, else
    /// everything before the next one (the response head, say) by writev.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let Some(first) = bufs.iter().position(|b| !b.is_empty()) else {
            return Poll::Ready(Ok(0));
        };
        if let Some(slice) = Plain::file_behind(&bufs[first]) {
            return self.poll_sendfile(cx, &slice, bufs[first].len());
        }
        let end = bufs[first + 1..]
            .iter()
            .position(|b| Plain::file_behind(b).is_some())
            .map_or(bufs.len(), |at| first + 1 + at);
        Pin::new(&mut self.0).poll_write_vectored(cx, &bufs[first..end])
    }
    fn is_write_vectored(&self) -> bool {
        true
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Records when bytes last moved on a connection, for the idle timeout.
struct Activity<S> {
    inner: S,
    last: Arc<AtomicU64>,
    started: Instant,
}

impl<S> Activity<S> {
    fn touch(&self) {
        self.last
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Activity<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Activity<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        result
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        result
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

async fn handle(
    mirror: Arc<Server>,
    peer: SocketAddr,
    request: Request<hyper::body::Incoming>,
    refuse_plain: bool,
) -> Response<LoggedBody> {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let query = request.uri().query().map(str::to_string);
    let response = if refuse_plain {
        plain_refused(&mirror, &path)
    } else {
        let snapshot = mirror.snapshot();
        let (parts, body) = request.into_parts();
        let pulled = match &mirror.site {
            Some(site) => pull::route(site, &method, &path, &parts.headers, body, peer).await,
            None => None,
        };
        match pulled {
            Some(response) => response,
            None => {
                mirror::route(&snapshot, &method, &path, query.as_deref(), &parts.headers).await
            }
        }
    };
    let status = response.status();
    let path = match &query {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    response.map(|body| LoggedBody {
        inner: body,
        bytes: 0,
        record: Some(LogRecord {
            mirror,
            peer,
            method,
            path,
            status,
            started,
        }),
    })
}

/// The answer to plain HTTP on the TLS port, whatever the path: with TLS
/// on, nothing (an enrollment, a report, a blob) is served in cleartext.
fn plain_refused(mirror: &Server, path: &str) -> Response<Body> {
    let url = mirror.https_url.as_deref().unwrap_or("https://<mirror>");
    Response::builder()
        .status(StatusCode::BAD_REQUEST)
        .header(axum::http::header::CONTENT_TYPE, "text/plain")
        .header(axum::http::header::CONNECTION, "close")
        .body(Body::from(format!(
            "plain HTTP refused: this mirror speaks HTTPS only, so enrollment codes, the join token and reports never cross the LAN in cleartext: use {url}{}\n",
            if path.starts_with('/') && path.len() <= 256 { path } else { "/" }
        )))
        .expect("valid response")
}

struct LogRecord {
    mirror: Arc<Server>,
    peer: SocketAddr,
    method: Method,
    path: String,
    status: StatusCode,
    started: Instant,
}

/// A response body that counts what it sent and writes the access-log line
/// when it is done or dropped (a client that hangs up mid-blob included).
pub struct LoggedBody {
    inner: Body,
    bytes: u64,
    record: Option<LogRecord>,
}

impl http_body::Body for LoggedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.bytes += data.len() as u64;
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        if let Some(r) = self.record.take() {
            let line = serde_json::json!({
                "client": r.peer.to_string(),
                "method": r.method.as_str(),
                "path": r.path,
                "status": r.status.as_u16(),
                "bytes": self.bytes,
                "duration_ms": r.started.elapsed().as_secs_f64() * 1000.0,
            });
            if let Ok(mut log) = r.mirror.log.lock() {
                let _ = writeln!(log, "{line}");
                let _ = log.flush();
            }
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{Buf, Bytes};
    use std::collections::VecDeque;
    use std::io::IoSlice;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Stored-file slices go out by sendfile, in order with the memory
    /// around them (a response head, say), byte for byte what the file
    /// holds at their offsets, through partial sends of a small buffer.
    #[tokio::test]
    async fn a_plain_connection_sends_stored_slices_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        let content: Vec<u8> = (0..(3u32 << 20) + 4567)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        std::fs::write(&path, &content).unwrap();
        let mapped = mirror::map_file(&path).unwrap();
        let (a, b) = (12_345, (2 << 20) + 77);
        let pieces = [
            Bytes::from_static(b"HTTP/1.1 206 Partial Content\r\n\r\n"),
            mapped.slice(a..b),
            Bytes::from_static(b"--"),
            mapped.slice(b..),
        ];
        assert!(Plain::file_behind(&pieces[0]).is_none());
        assert_eq!(Plain::file_behind(&pieces[1]).unwrap().offset, a as u64);
        assert_eq!(Plain::file_behind(&pieces[3]).unwrap().offset, b as u64);
        let whole = mapped.slice(5..);
        assert_eq!(Plain::file_behind(&whole).unwrap().offset, 5);

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let reader = tokio::spawn(async move {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let mut got = Vec::new();
            stream.read_to_end(&mut got).await.unwrap();
            got
        });
        let (stream, _) = listener.accept().await.unwrap();
        crate::sys::set_send_buffer(&stream, 64 << 10);
        let mut plain = Plain(stream);
        // As hyper writes a response: vectored, advancing by what each
        // call took.
        let mut queue: VecDeque<Bytes> = pieces.iter().cloned().collect();
        while !queue.is_empty() {
            let mut n = {
                let slices: Vec<IoSlice<'_>> = queue.iter().map(|b| IoSlice::new(b)).collect();
                plain.write_vectored(&slices).await.unwrap()
            };
            assert!(n > 0, "a write took nothing");
            while n > 0 {
                let front = queue.front_mut().unwrap();
                if n >= front.len() {
                    n -= front.len();
                    queue.pop_front();
                } else {
                    front.advance(n);
                    n = 0;
                }
            }
        }
        // And one slice by plain write calls.
        plain.write_all(&whole).await.unwrap();
        plain.shutdown().await.unwrap();
        drop(plain);

        let mut expected: Vec<u8> = pieces.iter().flat_map(|p| p.iter().copied()).collect();
        expected.extend_from_slice(&content[5..]);
        let got = reader.await.unwrap();
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "the bytes sent differ from the file's");
    }
}

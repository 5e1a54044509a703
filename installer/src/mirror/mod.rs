//! `edgeferry serve`: the store, read-only, as plain files and as an OCI
//! registry containerd can use as a mirror. Everything is bounded: a
//! connection cap, a header-read timeout, an idle timeout (no bytes moving
//! either way) but no whole-request timeout, so multi-GB pulls finish.

mod body;
pub mod hosts;
mod registry;

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::body::Body;
use axum::http::{header, HeaderMap, Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::config::Config;
use crate::store::{self, State};

/// What one request sees: the store's state at one moment.
pub struct Snapshot {
    pub store: PathBuf,
    pub state: State,
    pub repos: registry::Repos,
    /// Every manifest and index, in memory: small, immutable, and the
    /// requests a pull waits on, so they never queue behind blob reads.
    pub manifest_bytes: std::collections::BTreeMap<String, bytes::Bytes>,
    index_json: String,
    /// `SHA256SUMS` and its digest (the ETag), read once per snapshot.
    sums: (bytes::Bytes, String),
    stamp: Option<(u64, i64, u64)>,
}

impl Snapshot {
    pub fn read(store: &Path) -> Result<Snapshot> {
        let stamp = state_stamp(store);
        let state = State::read(store)?;
        let index = serde_json::json!({
            "files": state.files.iter().map(|(name, f)| serde_json::json!({
                "name": name, "size": f.size, "sha256": f.sha256, "url": format!("/files/{name}"),
            })).collect::<Vec<_>>(),
            "images": state.images.iter().map(|(reference, i)| serde_json::json!({
                "reference": reference, "digest": i.digest, "platforms": i.platforms.keys().collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "bundles": state.bundles.iter().map(|(id, b)| serde_json::json!({
                "id": id, "kubeedge_version": b.kubeedge_version, "arch": b.arch, "sample": b.sample,
            })).collect::<Vec<_>>(),
        });
        let mut manifest_bytes = std::collections::BTreeMap::new();
        for digest in state.manifests.keys() {
            let path = store::blob_path(store, digest);
            let bytes = std::fs::read(&path).with_context(|| {
                format!(
                    "reading manifest {}: the store is damaged, load its bundles again",
                    path.display()
                )
            })?;
            manifest_bytes.insert(digest.clone(), bytes::Bytes::from(bytes));
        }
        Ok(Snapshot {
            manifest_bytes,
            store: store.to_path_buf(),
            repos: registry::Repos::from_state(&state),
            state,
            index_json: serde_json::to_string_pretty(&index)?,
            sums: {
                let bytes = std::fs::read(store.join("SHA256SUMS")).unwrap_or_default();
                let digest = format!("sha256:{}", edgeferry_bundle::hashing::sha256_hex(&bytes));
                (bytes::Bytes::from(bytes), digest)
            },
            stamp,
        })
    }

    pub fn registries(&self) -> BTreeSet<String> {
        self.state
            .images
            .keys()
            .map(|r| hosts::registry_of(r).to_string())
            .collect()
    }
}

fn state_stamp(store: &Path) -> Option<(u64, i64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(store.join(store::STATE_FILE))
        .ok()
        .map(|m| (m.ino(), m.mtime_nsec() + m.mtime() * 1_000_000_000, m.len()))
}

pub struct Mirror {
    snapshot: RwLock<Arc<Snapshot>>,
    log: Mutex<Box<dyn Write + Send>>,
    /// Pull mode (`--site-dir`): /join.sh, /v1/enroll, /v1/report.
    site: Option<crate::pull::Site>,
}

impl Mirror {
    fn snapshot(&self) -> Arc<Snapshot> {
        Arc::clone(&self.snapshot.read().expect("snapshot lock"))
    }

    /// Picks up a store that a load swapped in while we were serving.
    fn reload_if_changed(&self) {
        let current = self.snapshot();
        if state_stamp(&current.store) != current.stamp {
            match Snapshot::read(&current.store) {
                Ok(fresh) => {
                    if let Some(site) = &self.site {
                        match site.rebuild(&fresh.state) {
                            Ok(true) => eprintln!(
                                "mirror: the store changed; join script sha256 is now {}",
                                site.script_sha256()
                            ),
                            Ok(false) => {}
                            Err(e) => eprintln!("mirror: join script not rebuilt: {e:#}"),
                        }
                    }
                    *self.snapshot.write().expect("snapshot lock") = Arc::new(fresh)
                }
                Err(e) => eprintln!("mirror: keeping the previous view of the store: {e:#}"),
            }
        }
    }
}

pub struct ServeOptions {
    pub store: PathBuf,
    pub listen: SocketAddr,
    /// host:port nodes use to reach us, for the printed hosts.toml.
    pub advertise: Option<String>,
    pub access_log: Option<PathBuf>,
    /// Pull mode: a directory with site.yaml; enrollments and reports go there.
    pub site_dir: Option<PathBuf>,
}

/// Runs the mirror until SIGINT or SIGTERM.
pub fn serve(options: ServeOptions, config: &Config) -> Result<()> {
    let snapshot = Snapshot::read(&options.store)?;
    if snapshot.state.bundles.is_empty() {
        anyhow::bail!(
            "{} holds no bundle: run `edgeferry load` first",
            options.store.display()
        );
    }
    raise_fd_limit(config.max_connections as u64 + 64);
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
        let site = match &options.site_dir {
            None => None,
            Some(dir) => {
                let address = match &options.advertise {
                    Some(a) => a.clone(),
                    None if local.ip().is_unspecified() => anyhow::bail!(
                        "pull mode needs the address nodes reach this mirror at: pass --advertise HOST:PORT"
                    ),
                    None => local.to_string(),
                };
                Some(crate::pull::Site::open(dir, &address, &snapshot.state, config)?)
            }
        };
        print_banner(&snapshot, local, options.advertise.as_deref());
        if let Some(site) = &site {
            let address = options.advertise.clone().unwrap_or_else(|| local.to_string());
            eprintln!(
                "join script: http://{address}/join.sh sha256 {}",
                site.script_sha256()
            );
            eprintln!("one-liner: {}", crate::pull::one_liner(&address, &site.script_sha256()));
            eprintln!("(codes: edgeferry enroll create --site-dir {})\n", site.dir.display());
        }
        let mirror = Arc::new(Mirror {
            snapshot: RwLock::new(Arc::new(snapshot)),
            log: Mutex::new(log),
            site,
        });
        run(listener, mirror, config.clone()).await
    })
}

fn print_banner(snapshot: &Snapshot, local: SocketAddr, advertise: Option<&str>) {
    let advertised = match advertise {
        Some(a) => a.to_string(),
        None if local.ip().is_unspecified() => format!("<this-host-lan-ip>:{}", local.port()),
        None => local.to_string(),
    };
    eprintln!(
        "edgeferry mirror: serving {} on http://{local} ({} images, {} files, read-only)",
        snapshot.store.display(),
        snapshot.state.images.len(),
        snapshot.state.files.len()
    );
    if local.ip().is_unspecified() {
        eprintln!(
            "WARNING: listening on all interfaces ({local}): every network this host is on can pull from it; pass --listen <LAN IP>:{} to limit that, and --advertise to print exact node settings",
            local.port()
        );
    }
    eprintln!("\nOn each node, containerd needs these files (edgeferry join writes them):");
    for file in hosts::hosts_files(&advertised, &snapshot.registries()) {
        eprintln!("--- /etc/containerd/certs.d/{}/hosts.toml", file.dir);
        eprint!("{}", file.content);
    }
    let versions: BTreeSet<&str> = snapshot
        .state
        .bundles
        .values()
        .map(|b| b.kubeedge_version.as_str())
        .collect();
    for version in versions {
        eprintln!(
            "\nkeadm join flags for KubeEdge {version}: --kubeedge-version={version}   (with the hosts.toml above, images keep their upstream names; without them add --image-repository={advertised}/kubeedge)"
        );
    }
    eprintln!("release files: http://{advertised}/files/  checksums: http://{advertised}/SHA256SUMS  index: http://{advertised}/index.json\n");
}

async fn run(listener: tokio::net::TcpListener, mirror: Arc<Mirror>, config: Config) -> Result<()> {
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        eprintln!(
            "mirror: shutting down, letting transfers in flight finish (up to {:?})",
            config.shutdown_grace
        );
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
                    eprintln!("mirror: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        set_send_buffer(&stream, config.send_buffer_bytes);
        let mirror = Arc::clone(&mirror);
        let config = config.clone();
        let shutdown = shutdown_rx.clone();
        tokio::spawn(async move {
            connection(stream, peer, mirror, config, shutdown, started).await;
            drop(permit);
        });
    }
    drop(listener);
    // Wait for connections to drain: every permit back, or the grace period.
    let all = u32::try_from(config.max_connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(config.shutdown_grace, permits.acquire_many(all)).await;
    Ok(())
}

async fn connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    mirror: Arc<Mirror>,
    config: Config,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    started: Instant,
) {
    let activity = Arc::new(AtomicU64::new(started.elapsed().as_millis() as u64));
    let io = TokioIo::new(Activity {
        inner: stream,
        last: Arc::clone(&activity),
        started,
    });
    let service = hyper::service::service_fn(move |request| {
        let mirror = Arc::clone(&mirror);
        async move { Ok::<_, Infallible>(handle(mirror, peer, request).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .keep_alive(true)
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

/// Records when bytes last moved on a connection, for the idle timeout.
struct Activity {
    inner: tokio::net::TcpStream,
    last: Arc<AtomicU64>,
    started: Instant,
}

impl Activity {
    fn touch(&self) {
        self.last
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl AsyncRead for Activity {
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

impl AsyncWrite for Activity {
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
    mirror: Arc<Mirror>,
    peer: SocketAddr,
    request: Request<hyper::body::Incoming>,
) -> Response<LoggedBody> {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let query = request.uri().query().map(str::to_string);
    let snapshot = mirror.snapshot();
    let (parts, body) = request.into_parts();
    let pulled = match &mirror.site {
        Some(site) => {
            crate::pull::route(
                site,
                &method,
                &path,
                &parts.headers,
                body,
                &peer.to_string(),
            )
            .await
        }
        None => None,
    };
    let response = match pulled {
        Some(response) => response,
        None => route(&snapshot, &method, &path, query.as_deref(), &parts.headers).await,
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

async fn route(
    snapshot: &Snapshot,
    method: &Method,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Response<Body> {
    if path == "/v2" || path.starts_with("/v2/") {
        return registry::handle(snapshot, method, path, query, headers).await;
    }
    if method != Method::GET && method != Method::HEAD {
        return Response::builder()
            .status(StatusCode::METHOD_NOT_ALLOWED)
            .header(header::ALLOW, "GET, HEAD")
            .body(Body::from("read-only mirror\n"))
            .expect("valid response");
    }
    match path {
        "/healthz" => text(method, "ok\n", "text/plain"),
        "/index.json" => text(method, &snapshot.index_json, "application/json"),
        "/SHA256SUMS" => {
            let (bytes, digest) = &snapshot.sums;
            let stored = body::Stored {
                source: body::Source::Memory(bytes),
                digest,
                content_type: "text/plain",
                registry: false,
                immutable: false,
            };
            body::serve(method, headers, stored)
                .await
                .unwrap_or_else(not_found)
        }
        "/files/" | "/files" => {
            let listing: String = snapshot
                .state
                .files
                .keys()
                .map(|name| format!("{name}\n"))
                .collect();
            text(method, &listing, "text/plain")
        }
        _ => match path.strip_prefix("/files/") {
            Some(name) if snapshot.state.files.contains_key(name) => {
                let record = &snapshot.state.files[name];
                let digest = format!("sha256:{}", record.sha256);
                serve_file(
                    method,
                    headers,
                    &store::blob_path(&snapshot.store, &record.sha256),
                    &digest,
                    "application/octet-stream",
                )
                .await
            }
            _ => not_found(),
        },
    }
}

async fn serve_file(
    method: &Method,
    headers: &HeaderMap,
    path: &Path,
    digest: &str,
    content_type: &str,
) -> Response<Body> {
    let stored = body::Stored {
        source: body::Source::File(path),
        digest,
        content_type,
        registry: false,
        immutable: false,
    };
    body::serve(method, headers, stored)
        .await
        .unwrap_or_else(not_found)
}

fn text(method: &Method, body: &str, content_type: &str) -> Response<Body> {
    Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_LENGTH, body.len())
        .body(if method == Method::HEAD {
            Body::empty()
        } else {
            Body::from(body.to_string())
        })
        .expect("valid response")
}

fn not_found() -> Response<Body> {
    Response::builder()
        .status(StatusCode::NOT_FOUND)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from("not found\n"))
        .expect("valid response")
}

struct LogRecord {
    mirror: Arc<Mirror>,
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

fn set_send_buffer(stream: &tokio::net::TcpStream, bytes: usize) {
    use std::os::unix::io::AsRawFd;
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: setsockopt on a descriptor we own, with a c_int value.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Each connection is a descriptor; the default soft limit (1024) is lower
/// than the connection cap.
fn raise_fd_limit(wanted: u64) {
    // SAFETY: getrlimit/setrlimit on a zeroed struct we own.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && (limit.rlim_cur as u64) < wanted
        {
            limit.rlim_cur = (wanted as libc::rlim_t).min(limit.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

//! Fixtures for the online builder's tests: a real `docker-registry` on
//! loopback (anonymous or htpasswd), filled with skopeo; a small HTTP
//! server for release assets with Range support, a request log, and a mode
//! that cuts one download mid-file; and hand-made OCI layouts for cases the
//! sample does not have. Every process is killed by its pid on drop.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{require_tool, run_ok, sha256_hex};

/// A child process killed (by pid) and reaped when dropped.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding a loopback port")
}

/// One HTTP/1.1 GET on a fresh connection; the status line's code, or
/// `None` if nothing answered.
pub fn raw_get(addr: &str, path: &str, user_agent: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: {user_agent}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).ok()?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A request the registry logged.
#[derive(Clone, Debug)]
pub struct Logged {
    pub method: String,
    pub uri: String,
    /// 0 when the registry logged no status (it logs a 401 as a warning).
    pub status: u64,
    pub user_agent: String,
    pub message: String,
}

/// `docker-registry serve` on 127.0.0.1 with filesystem storage in `dir`,
/// its JSON log in `dir/registry.log`.
pub struct Registry {
    _process: KillOnDrop,
    /// `127.0.0.1:<port>`.
    pub addr: String,
    log: PathBuf,
    credentials: Option<(String, String)>,
    sentinel: AtomicU64,
}

impl Registry {
    /// Anonymous pulls and pushes.
    pub fn start(dir: &Path) -> Registry {
        Registry::start_with(dir, None)
    }

    /// Basic auth for everything, against an `htpasswd -B` file.
    pub fn start_with_basic_auth(dir: &Path, user: &str, password: &str) -> Registry {
        Registry::start_with(dir, Some((user, password)))
    }

    fn start_with(dir: &Path, credentials: Option<(&str, &str)>) -> Registry {
        require_tool("docker-registry", "docker-registry");
        require_tool("skopeo", "skopeo");
        std::fs::create_dir_all(dir).unwrap();
        let auth = match credentials {
            Some((user, password)) => {
                require_tool("htpasswd", "apache2-utils");
                let line = run_ok(Command::new("htpasswd").args(["-Bbn", user, password])).stdout;
                let path = dir.join("htpasswd");
                std::fs::write(&path, line.trim_end().to_string() + "\n").unwrap();
                format!(
                    "auth:\n  htpasswd:\n    realm: edgeferry-test\n    path: {}\n",
                    path.display()
                )
            }
            None => String::new(),
        };
        let log = dir.join("registry.log");
        // A port picked by binding :0 may be taken again before the
        // registry binds it; try a few.
        for _ in 0..5 {
            let addr = format!("127.0.0.1:{}", free_port());
            let config = dir.join("config.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: info\n  formatter: json\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n  secret: edgeferry-test-secret\n{auth}",
                    dir.join("data").display()
                ),
            )
            .unwrap();
            let log_file = std::fs::File::create(&log).unwrap();
            let mut process = KillOnDrop(
                Command::new("docker-registry")
                    .arg("serve")
                    .arg(&config)
                    .stdin(Stdio::null())
                    .stdout(log_file.try_clone().unwrap())
                    .stderr(log_file)
                    .spawn()
                    .expect("starting docker-registry"),
            );
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if raw_get(&addr, "/v2/", "edgeferry-tests-ready").is_some() {
                    return Registry {
                        _process: process,
                        addr,
                        log,
                        credentials: credentials.map(|(u, p)| (u.to_string(), p.to_string())),
                        sentinel: AtomicU64::new(0),
                    };
                }
                if process.0.try_wait().unwrap().is_some() || Instant::now() > deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if !text.contains("address already in use") {
                panic!("docker-registry did not start on {addr}:\n{text}");
            }
        }
        panic!("docker-registry found no free port");
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `skopeo copy --all --preserve-digests oci:<layout> docker://<addr>/<name>`.
    pub fn push(&self, layout: &Path, name: &str) {
        self.push_with(layout, name, &["--all"]);
    }

    /// As [`Registry::push`], with other skopeo copy flags instead of `--all`.
    pub fn push_with(&self, layout: &Path, name: &str, flags: &[&str]) {
        let mut cmd = Command::new("skopeo");
        cmd.args([
            "copy",
            "-q",
            "--preserve-digests",
            "--dest-tls-verify=false",
        ])
        .args(flags);
        if let Some((user, password)) = &self.credentials {
            cmd.arg("--dest-creds").arg(format!("{user}:{password}"));
        }
        cmd.arg(format!("oci:{}", layout.display()))
            .arg(format!("docker://{}/{name}", self.addr));
        run_ok(&mut cmd);
    }

    /// Every request the registry logged from `edgeferry-builder`, after
    /// making sure requests made before this call are in the log.
    pub fn builder_requests(&self) -> Vec<Logged> {
        let n = self.sentinel.fetch_add(1, Ordering::SeqCst);
        let mark = format!("edgeferry-tests-sentinel-{n}");
        raw_get(&self.addr, "/v2/", &mark).expect("the registry answers");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap();
            if text.contains(&mark) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the registry never logged {mark}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // Requests are logged when they complete; give stragglers a moment.
        std::thread::sleep(Duration::from_millis(100));
        std::fs::read_to_string(&self.log)
            .unwrap()
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter_map(|v| {
                let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
                let logged = Logged {
                    method: s("http.request.method"),
                    uri: s("http.request.uri"),
                    status: v
                        .get("http.response.status")
                        .and_then(|x| x.as_u64())
                        .unwrap_or(0),
                    user_agent: s("http.request.useragent"),
                    message: s("msg"),
                };
                (logged.user_agent.starts_with("edgeferry-builder") && !logged.method.is_empty())
                    .then_some(logged)
            })
            .collect()
    }

    /// Successful blob GETs by the builder, as `sha256:<hex>` digests.
    pub fn blob_gets(&self) -> Vec<String> {
        self.builder_requests()
            .into_iter()
            .filter(|r| r.method == "GET" && (200..300).contains(&r.status))
            .filter_map(|r| r.uri.split("/blobs/").nth(1).map(str::to_string))
            .collect()
    }
}

/// One request the release server answered.
#[derive(Clone, Debug)]
pub struct ServedRequest {
    pub method: String,
    pub path: String,
    /// `N` of a `Range: bytes=N-` header.
    pub range_start: Option<u64>,
    pub status: u16,
    /// Body bytes written.
    pub bytes: u64,
}

struct ServerState {
    root: PathBuf,
    log: Mutex<Vec<ServedRequest>>,
    /// The next GET of this path sends only this many body bytes, then
    /// closes the connection.
    cut: Mutex<Option<(String, u64)>>,
}

/// Serves files below `root` over HTTP/1.1 on 127.0.0.1 (GET and HEAD,
/// `Range: bytes=N-`), one thread per connection, `Connection: close`.
pub struct ReleaseServer {
    pub addr: String,
    state: Arc<ServerState>,
    _acceptor: Acceptor,
}

impl ReleaseServer {
    pub fn start(root: &Path) -> ReleaseServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let state = Arc::new(ServerState {
            root: root.to_path_buf(),
            log: Mutex::new(Vec::new()),
            cut: Mutex::new(None),
        });
        ReleaseServer {
            _acceptor: Acceptor::start(listener, Arc::clone(&state), serve_one),
            addr,
            state,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The next GET of `path` sends `after` body bytes (with the full
    /// Content-Length) and then closes the connection.
    pub fn cut_once(&self, path: &str, after: u64) {
        *self.state.cut.lock().unwrap() = Some((path.to_string(), after));
    }

    pub fn requests(&self) -> Vec<ServedRequest> {
        self.state.log.lock().unwrap().clone()
    }

    /// Requests for one path.
    pub fn requests_for(&self, path: &str) -> Vec<ServedRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }
}

fn serve_one(mut stream: TcpStream, state: &ServerState) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) if head.len() < 16 * 1024 => head.push(byte[0]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.lines();
    let mut request = lines.next().unwrap_or("").split_whitespace();
    let method = request.next().unwrap_or("").to_string();
    let path = request.next().unwrap_or("").to_string();
    let range_start = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("range"))
        .and_then(|(_, v)| {
            v.trim()
                .strip_prefix("bytes=")?
                .strip_suffix('-')?
                .parse()
                .ok()
        });

    let log = |status: u16, bytes: u64| {
        state.log.lock().unwrap().push(ServedRequest {
            method: method.clone(),
            path: path.clone(),
            range_start,
            status,
            bytes,
        });
    };
    let file = (!path.contains("..") && path.starts_with('/'))
        .then(|| state.root.join(&path[1..]))
        .and_then(|p| std::fs::read(p).ok());
    let Some(data) = file else {
        let _ = stream.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot found",
        );
        log(404, 0);
        return;
    };
    let len = data.len() as u64;
    let (status, start) = match range_start {
        Some(n) if n >= len => {
            let _ = write!(
                stream,
                "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            log(416, 0);
            return;
        }
        Some(n) => (206, n),
        None => (200, 0),
    };
    let body = &data[start as usize..];
    let mut header = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n",
        if status == 206 { "Partial Content" } else { "OK" },
        body.len()
    );
    if status == 206 {
        header.push_str(&format!(
            "Content-Range: bytes {start}-{}/{len}\r\n",
            len - 1
        ));
    }
    header.push_str("\r\n");
    if stream.write_all(header.as_bytes()).is_err() {
        return;
    }
    if method == "HEAD" {
        log(status, 0);
        return;
    }
    let cut = {
        let mut cut = state.cut.lock().unwrap();
        match cut.as_ref() {
            Some((p, after)) if *p == path => {
                let after = *after;
                *cut = None;
                Some(after)
            }
            _ => None,
        }
    };
    let send = cut.map_or(body.len(), |after| (after as usize).min(body.len()));
    let ok = stream.write_all(&body[..send]).is_ok();
    let _ = stream.flush();
    if cut.is_some() {
        // Let the bytes sent so far arrive, then end the connection early.
        let _ = stream.shutdown(Shutdown::Write);
        std::thread::sleep(Duration::from_millis(50));
    }
    log(status, if ok { send as u64 } else { 0 });
}

/// An HTTP CONNECT proxy on 127.0.0.1 that tunnels to any target and
/// remembers each `host:port` it was asked for.
pub struct ConnectProxy {
    pub addr: String,
    targets: Arc<Mutex<Vec<String>>>,
    _acceptor: Acceptor,
}

impl ConnectProxy {
    pub fn start() -> ConnectProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let targets = Arc::new(Mutex::new(Vec::new()));
        ConnectProxy {
            _acceptor: Acceptor::start(listener, Arc::clone(&targets), tunnel),
            addr,
            targets,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every `host:port` a client asked to be connected to.
    pub fn targets(&self) -> Vec<String> {
        self.targets.lock().unwrap().clone()
    }
}

fn tunnel(mut client: TcpStream, targets: &Mutex<Vec<String>>) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match client.read(&mut byte) {
            Ok(1) if head.len() < 16 * 1024 => head.push(byte[0]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut first = head.lines().next().unwrap_or("").split_whitespace();
    if first.next() != Some("CONNECT") {
        let _ = client.write_all(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n");
        return;
    }
    let target = first.next().unwrap_or("").to_string();
    targets.lock().unwrap().push(target.clone());
    let Ok(server) = TcpStream::connect(&target) else {
        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n");
        return;
    };
    if client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .is_err()
    {
        return;
    }
    let (Ok(mut client_read), Ok(mut server_write)) = (client.try_clone(), server.try_clone())
    else {
        return;
    };
    let upstream = std::thread::spawn(move || {
        let _ = std::io::copy(&mut client_read, &mut server_write);
        let _ = server_write.shutdown(Shutdown::Write);
    });
    let (mut server_read, mut client_write) = (server, client);
    let _ = std::io::copy(&mut server_read, &mut client_write);
    let _ = client_write.shutdown(Shutdown::Write);
    let _ = upstream.join();
}

/// A file tree for release assets as `<base>/<version>/<asset>`: copies
/// `files` (a sample's `files/`) into `root/<version>/`.
pub fn release_tree(files: &Path, root: &Path, version: &str) {
    let dir = root.join(version);
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(files).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
}

// ---------------------------------------------------------------------------
// Hand-made OCI layouts

fn put_blob(layout: &Path, bytes: &[u8]) -> (String, u64) {
    let hex = sha256_hex(bytes);
    let dir = layout.join("blobs/sha256");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(&hex), bytes).unwrap();
    (format!("sha256:{hex}"), bytes.len() as u64)
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut child = Command::new("gzip")
        .args(["-n", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting gzip");
    let mut stdin = child.stdin.take().unwrap();
    let data = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success());
    out.stdout
}

fn layer(files: &[(&str, Vec<u8>)]) -> (Vec<u8>, String) {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut header = tar::Header::new_ustar();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_cksum();
        builder.append_data(&mut header, name, &data[..]).unwrap();
    }
    let tar = builder.into_inner().unwrap();
    let diff_id = format!("sha256:{}", sha256_hex(&tar));
    (gzip(&tar), diff_id)
}

/// An OCI layout at `layout` holding one multi-arch image named
/// `reference` for `arches` (GOARCH names), whose platform manifests share
/// their first (base) layer and differ in the second. Returns the shared
/// layer's digest.
pub fn write_shared_base_image(layout: &Path, reference: &str, arches: &[&str]) -> String {
    let _ = std::fs::remove_dir_all(layout);
    let base_data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let (base_gz, base_diff) = layer(&[("base/data.bin", base_data)]);
    let (base_digest, base_size) = put_blob(layout, &base_gz);
    let mut manifests = Vec::new();
    for arch in arches {
        let (top_gz, top_diff) = layer(&[("etc/arch", format!("{arch}\n").into_bytes())]);
        let (top_digest, top_size) = put_blob(layout, &top_gz);
        let config = serde_json::json!({
            "architecture": arch,
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [base_diff, top_diff]},
        });
        let (config_digest, config_size) = put_blob(layout, &serde_json::to_vec(&config).unwrap());
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": base_digest, "size": base_size},
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": top_digest, "size": top_size},
            ],
        });
        let (digest, size) = put_blob(layout, &serde_json::to_vec(&manifest).unwrap());
        manifests.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest,
            "size": size,
            "platform": {"architecture": arch, "os": "linux"},
        }));
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    });
    let (digest, size) = put_blob(layout, &serde_json::to_vec(&index).unwrap());
    write_layout_index(layout, reference, &digest, size);
    base_digest
}

fn write_layout_index(layout: &Path, reference: &str, digest: &str, size: u64) {
    let top = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": digest,
            "size": size,
            "annotations": {
                "io.containerd.image.name": reference,
                "org.opencontainers.image.ref.name": reference,
            },
        }],
    });
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
}

/// Rewrites the multi-arch index of a one-image layout without the
/// platform manifests of `arch` (a GOARCH name).
pub fn drop_platform(layout: &Path, arch: &str) {
    let top: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let entry = &top["manifests"][0];
    let digest = entry["digest"].as_str().unwrap();
    let reference = entry["annotations"]["io.containerd.image.name"]
        .as_str()
        .unwrap()
        .to_string();
    let path = layout.join("blobs/sha256").join(&digest[7..]);
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    index["manifests"]
        .as_array_mut()
        .unwrap()
        .retain(|m| m["platform"]["architecture"] != arch);
    let (digest, size) = put_blob(layout, &serde_json::to_vec(&index).unwrap());
    write_layout_index(layout, &reference, &digest, size);
}

/// A loopback accept loop, one thread per connection, stopped and joined on drop.
struct Acceptor {
    addr: String,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Acceptor {
    fn start<S: Send + Sync + 'static>(
        listener: TcpListener,
        state: Arc<S>,
        handle: fn(TcpStream, &S),
    ) -> Acceptor {
        let addr = listener.local_addr().unwrap().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let state = Arc::clone(&state);
                    std::thread::spawn(move || handle(stream, &state));
                }
            })
        };
        Acceptor {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept so the loop sees the flag.
        let _ = TcpStream::connect(&self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

//! Shared pieces of the integration tests: find the real binaries, run
//! real tools, and fail loudly (never skip) when something is missing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace binaries the tests drive, and their packages.
const BINARIES: &[(&str, &str)] = &[
    ("edgeferry", "edgeferry"),
    ("edgeferry-builder", "edgeferry-builder"),
];

/// A binary of this workspace, built in the same profile and target
/// directory as the running test binary. The first call in a process runs
/// `cargo build --bins` for the packages of both binaries (cargo does no
/// work when they are fresh), so a test never drives a stale or missing
/// binary: what `[[test]]` in the binary's own package gives, for tests
/// that drive several packages' binaries. `cargo test` releases its build
/// lock before it runs tests, so the nested build does not wait for it.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    assert!(
        BINARIES.iter().any(|(bin, _)| *bin == name),
        "{name} is not one of the binaries the tests build: {BINARIES:?}"
    );
    let path = BUILT.get_or_init(build_binaries).join(name);
    assert!(
        path.exists(),
        "cargo built the binaries but {} is missing",
        path.display()
    );
    path
}

/// `cargo build --bins -p <each of BINARIES>` into the running test
/// binary's profile directory (target/<profile>/deps/<test> ->
/// target/<profile>); returns that directory. Quiet unless it fails.
fn build_binaries() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps")
        .to_path_buf();
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .expect("profile directory name");
    // target/<profile>, or target/<triple>/<profile> with --target.
    let mut target_dir = profile_dir.parent().expect("target directory");
    let mut triple = None;
    if !target_dir.join("CACHEDIR.TAG").exists() {
        if let Some(parent) = target_dir.parent() {
            if parent.join("CACHEDIR.TAG").exists() {
                triple = target_dir.file_name();
                target_dir = parent;
            }
        }
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace");
    // Cargo sets CARGO for the processes it runs; outside cargo, PATH's.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .args(["build", "--quiet", "--bins"])
        .arg("--manifest-path")
        .arg(workspace.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir);
    // The dev profile's directory is "debug"; every other profile's is
    // its name ("release" for --release and for the bench profile).
    if profile != "debug" {
        cmd.args(["--profile", profile]);
    }
    if let Some(triple) = triple {
        cmd.arg("--target").arg(triple);
    }
    for (_, package) in BINARIES {
        cmd.args(["-p", package]);
    }
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): the tests drive the binaries it builds\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    profile_dir
}

/// Panics with what to install when a stock tool is missing.
pub fn require_tool(command: &str, debian_package: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {command}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "missing `{command}`: apt-get install {debian_package} (`cargo xtask ci` installs it)"
    );
}

pub struct Ran {
    pub ok: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

pub fn run(cmd: &mut Command) -> Ran {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd
        .output()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    Ran {
        ok: status.success(),
        code: status.code(),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// Runs and asserts success, showing everything the command said if not.
pub fn run_ok(cmd: &mut Command) -> Ran {
    let ran = run(cmd);
    assert!(
        ran.ok,
        "{cmd:?} failed ({:?})\nstdout: {}\nstderr: {}",
        ran.code, ran.stdout, ran.stderr
    );
    ran
}

pub fn builder() -> Command {
    let mut cmd = Command::new(bin("edgeferry-builder"));
    cmd.env_remove("EDGEFERRY_KEY_PASSWORD");
    cmd
}

pub fn edgeferry() -> Command {
    Command::new(bin("edgeferry"))
}

/// An unencrypted test key pair in `dir`: (secret, public).
pub fn keygen(dir: &Path) -> (PathBuf, PathBuf) {
    run_ok(
        builder()
            .args(["keygen", "--unencrypted", "--out"])
            .arg(dir),
    );
    (dir.join("edgeferry.key"), dir.join("edgeferry.pub"))
}

/// Builds a sample bundle and returns its path.
pub fn sample_bundle(arch: &str, version: &str, key: &Path, out: &Path, epoch: u64) -> PathBuf {
    run_ok(
        builder()
            .args([
                "bundle",
                "--sample",
                "--json",
                "--arch",
                arch,
                "--kubeedge-version",
                version,
            ])
            .arg("--key")
            .arg(key)
            .arg("--out")
            .arg(out)
            .env("SOURCE_DATE_EPOCH", epoch.to_string()),
    );
    out.join(format!("edgeferry-kubeedge-{version}-linux-{arch}.tar.zst"))
}

/// A sample bundle for `arch` built with a fresh key in `dir` and loaded
/// into `dir/store`: what the join and pull tests start from.
pub fn loaded_sample_store(dir: &Path, arch: &str, version: &str) -> PathBuf {
    let (key, public) = keygen(dir);
    let bundle = sample_bundle(arch, version, &key, &dir.join("out"), 1_700_000_000);
    let store = dir.join("store");
    run_ok(
        edgeferry()
            .arg("load")
            .arg(&bundle)
            .arg("--key")
            .arg(&public)
            .arg("--store")
            .arg(&store),
    );
    store
}

/// A finished command's status and output, for assertion messages.
pub fn said(out: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Every file below `dir`, relative, sorted.
pub fn list_files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(read) = std::fs::read_dir(dir) {
        for entry in read.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                out.extend(list_files(&path).into_iter().map(|f| format!("{name}/{f}")));
            } else {
                out.push(name);
            }
        }
    }
    out.sort();
    out
}

/// Every file, directory and link below `dir` with a digest of its
/// content: two equal snapshots mean a byte-identical tree.
pub fn snapshot(dir: &Path) -> std::collections::BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut std::collections::BTreeMap<String, String>) {
        let Ok(read) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in read.flatten() {
            let path = entry.path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.file_type().is_symlink() {
                out.insert(
                    rel,
                    format!("link {}", std::fs::read_link(&path).unwrap().display()),
                );
            } else if meta.is_dir() {
                out.insert(rel.clone(), "dir".into());
                walk(root, &path, out);
            } else {
                out.insert(rel, sha256_hex(&std::fs::read(&path).unwrap()));
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Names directly in `dir`, to show nothing appeared beside a store.
pub fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// A tiny deterministic PRNG (xorshift), so mutation tests are repeatable.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// A child process killed (by its pid) and reaped when dropped, so a
/// failing test never leaves it running.
pub struct Reaped(pub std::process::Child);

impl Reaped {
    pub fn spawn(cmd: &mut Command) -> Reaped {
        Reaped(
            cmd.spawn()
                .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}")),
        )
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Waits up to `timeout` for the process to exit on its own.
    pub fn wait_timeout(
        &mut self,
        timeout: std::time::Duration,
    ) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.0.try_wait().expect("polling a child") {
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `done` until it holds, panicking with `what` after `timeout`.
pub fn wait_for(what: &str, timeout: std::time::Duration, done: impl FnMut() -> bool) {
    assert!(
        eventually(timeout, done),
        "timed out after {timeout:?} waiting for {what}"
    );
}

/// Polls `done` until it holds (true) or `timeout` passes (false), for
/// callers that explain the failure themselves.
pub fn eventually(timeout: std::time::Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A running `edgeferry serve` on 127.0.0.1 with a port the OS picked;
/// killed and reaped on drop.
pub struct Served {
    pub process: Reaped,
    /// `127.0.0.1:<port>`, parsed from the start-up line.
    pub addr: String,
    /// `http` or `https`, from the start-up line.
    pub scheme: String,
    /// What it printed on stderr up to the end of the start-up banner.
    pub banner: String,
    stdout: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Served {
    /// `edgeferry serve --store <store> --listen 127.0.0.1:0`, access log on stdout.
    pub fn start(store: &Path) -> Served {
        Served::start_with(store, std::iter::empty::<&std::ffi::OsStr>())
    }

    /// As [`Served::start`], with more arguments (e.g. `--access-log FILE`).
    /// Returns once the banner is printed, so the port is listening.
    pub fn start_with<I, S>(store: &Path, extra: I) -> Served
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        Served::start_on(store, "127.0.0.1", extra)
    }

    /// As [`Served::start_with`], listening on `ip` (e.g. a test-host
    /// bridge address) with a port the OS picks. Plain HTTP
    /// (`--plain-http`): see [`Served::start_https`] for the default.
    pub fn start_on<I, S>(store: &Path, ip: &str, extra: I) -> Served
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        Served::start_listening(store, ip, Some("--plain-http"), extra)
    }

    /// As [`Served::start_on`], over HTTPS (serve's default): the site
    /// certificate beside the store, unless `extra` names another.
    pub fn start_https<I, S>(store: &Path, ip: &str, extra: I) -> Served
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        Served::start_listening(store, ip, None, extra)
    }

    fn start_listening<I, S>(store: &Path, ip: &str, scheme: Option<&str>, extra: I) -> Served
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut cmd = edgeferry();
        cmd.arg("serve")
            .arg("--store")
            .arg(store)
            .arg("--listen")
            .arg(format!("{ip}:0"))
            .args(scheme)
            .args(extra);
        Served::spawn(cmd, ip, "release files:")
    }

    /// `edgeferry serve --store <store> --listen <ip>:0 --site-dir <site_dir>
    /// --plain-http <extra>` with `env` added to its environment (e.g. the
    /// variable site.yaml names for the token): the mirror for pull mode.
    /// Returns once the banner's `one-liner:` line is printed; see
    /// [`Served::one_liner`] and [`Served::join_script`].
    pub fn start_site(
        store: &Path,
        ip: &str,
        site_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Served {
        let mut with_plain = vec!["--plain-http"];
        with_plain.extend_from_slice(extra);
        Served::start_site_https(store, ip, site_dir, &with_plain, env)
    }

    /// As [`Served::start_site`], over HTTPS (serve's default).
    pub fn start_site_https(
        store: &Path,
        ip: &str,
        site_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Served {
        let mut cmd = edgeferry();
        cmd.arg("serve")
            .arg("--store")
            .arg(store)
            .arg("--listen")
            .arg(format!("{ip}:0"))
            .arg("--site-dir")
            .arg(site_dir)
            .args(extra)
            .envs(env.iter().copied());
        Served::spawn(cmd, ip, "one-liner:")
    }

    /// Starts `cmd` (an `edgeferry serve … --listen <ip>:0`) and reads its
    /// stderr into the banner up to the line starting with `last`.
    fn spawn(mut cmd: Command, ip: &str, last: &str) -> Served {
        use std::io::{BufRead, Read};
        use std::sync::{Arc, Mutex};
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut process = Reaped::spawn(&mut cmd);
        let mut out = process.0.stdout.take().expect("piped stdout");
        let err = process.0.stderr.take().expect("piped stderr");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        {
            let stdout = Arc::clone(&stdout);
            readers.push(std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                while let Ok(n) = out.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    stdout.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            }));
        }
        let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
        {
            let stderr = Arc::clone(&stderr);
            readers.push(std::thread::spawn(move || {
                let mut reader = std::io::BufReader::new(err);
                let mut line = Vec::new();
                loop {
                    line.clear();
                    match reader.read_until(b'\n', &mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            let text = String::from_utf8_lossy(&line).into_owned();
                            stderr.lock().unwrap().push_str(&text);
                            let _ = lines_tx.send(text);
                        }
                    }
                }
            }));
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let mut banner = String::new();
        let mut addr = None;
        let mut scheme = String::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    banner.push_str(&line);
                    if let Some(rest) = line.strip_prefix("edgeferry mirror: serving ") {
                        let (s, after) = ["http", "https"]
                            .into_iter()
                            .find_map(|s| {
                                rest.split_once(&format!(" on {s}://")).map(|(_, a)| (s, a))
                            })
                            .unwrap_or_else(|| panic!("no address in {line:?}"));
                        scheme = s.to_string();
                        let found = after.split_once(' ').map_or(after, |(a, _)| a).trim();
                        addr = Some(found.to_string());
                    }
                    if line.starts_with(last) {
                        break;
                    }
                }
                Err(e) => {
                    let status = process.0.try_wait().ok().flatten();
                    panic!(
                        "edgeferry serve was not ready ({e}; exit {status:?})\nstderr: {}",
                        stderr.lock().unwrap()
                    );
                }
            }
        }
        let addr = addr.unwrap_or_else(|| panic!("no start-up line in:\n{banner}"));
        assert!(
            addr.starts_with(&format!("{ip}:")) && !addr.ends_with(":0"),
            "listening on {addr}, wanted {ip}:<port>"
        );
        Served {
            process,
            addr,
            scheme,
            banner,
            stdout,
            stderr,
            readers,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme, self.addr)
    }

    /// From the banner's `join script: <url> sha256 <hex>` line (pull
    /// mode, [`Served::start_site`]): (url, sha256).
    pub fn join_script(&self) -> Option<(String, String)> {
        let line = self
            .banner
            .lines()
            .find_map(|l| l.strip_prefix("join script: "))?;
        let (url, sha) = line.split_once(" sha256 ")?;
        Some((url.trim().to_string(), sha.trim().to_string()))
    }

    /// The banner's `one-liner: <command>` (pull mode), with its literal
    /// `<CODE>` placeholder.
    pub fn one_liner(&self) -> Option<String> {
        self.banner
            .lines()
            .find_map(|l| l.strip_prefix("one-liner: "))
            .map(|l| l.trim().to_string())
    }

    /// Everything on stdout so far: the access log unless `--access-log`.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    /// Everything on stderr so far, banner included.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// SIGTERM, then waits up to `timeout`: the exit status and how long it
    /// took. Once it has exited, [`Served::stdout`] and [`Served::stderr`]
    /// hold everything it wrote.
    pub fn terminate(
        &mut self,
        timeout: std::time::Duration,
    ) -> (Option<std::process::ExitStatus>, std::time::Duration) {
        let started = std::time::Instant::now();
        run_ok(
            Command::new("sh")
                .arg("-c")
                .arg(format!("kill -TERM {}", self.process.pid())),
        );
        let status = self.process.wait_timeout(timeout);
        let took = started.elapsed();
        if status.is_some() {
            for reader in self.readers.drain(..) {
                let _ = reader.join();
            }
        }
        (status, took)
    }
}

/// Access-log JSON lines, each parsed (panics on a line that is not JSON).
pub fn access_log(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("access log line {l:?}: {e}")))
        .collect()
}

/// The containerd `hosts.toml` files `edgeferry serve` printed in its
/// banner: (directory under `certs.d`, content).
pub fn printed_hosts_files(banner: &str) -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in banner.lines() {
        if let Some(rest) = line.strip_prefix("--- /etc/containerd/certs.d/") {
            files.extend(current.take());
            let dir = rest
                .strip_suffix("/hosts.toml")
                .unwrap_or_else(|| panic!("unexpected hosts.toml header {line:?}"));
            current = Some((dir.to_string(), String::new()));
        } else if line.starts_with("keadm join flags") || line.starts_with("release files:") {
            files.extend(current.take());
        } else if let Some((_, content)) = current.as_mut() {
            content.push_str(line);
            content.push('\n');
        }
    }
    files.extend(current.take());
    for (_, content) in &mut files {
        let trimmed = content.trim_end().len();
        content.truncate(trimmed);
        content.push('\n');
    }
    files
}
pub mod crafted;
pub mod crd;
pub mod fetch_fixtures;
pub mod hosts;
pub mod tamper;

pub use edgeferry_bundle::hashing::sha256_hex;

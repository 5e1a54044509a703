//! Shared pieces of the integration tests: find the real binaries, run
//! real tools, and fail loudly (never skip) when something is missing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A binary of this workspace, built in the same profile as the tests.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/it-<hash> -> target/<profile>/<name>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "missing {}: run `cargo build --workspace --bins` before the tests (`cargo xtask ci` does)",
        path.display()
    );
    path
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

pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
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

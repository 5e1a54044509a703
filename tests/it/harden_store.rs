//! The store against rollback by a second key, rot on disk, a full disk
//! and neighbouring loads: each refusal is named and has its exit class.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use edgeferry_tests::*;

const EPOCH: u64 = 1_763_000_000;
const VERSION: &str = "v1.23.1";

fn load_with(bundle: &Path, store: &Path, extra: &[&std::ffi::OsStr]) -> Ran {
    run(edgeferry()
        .arg("load")
        .arg(bundle)
        .arg("--store")
        .arg(store)
        .arg("--json")
        .args(extra))
}

fn key_args<'a>(keys: &'a [&'a Path]) -> Vec<&'a std::ffi::OsStr> {
    keys.iter()
        .flat_map(|k| [std::ffi::OsStr::new("--key"), k.as_os_str()])
        .collect()
}

#[test]
fn a_second_key_or_no_key_cannot_move_an_arch_back_in_time() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (key_a, pub_a) = keygen(&root.join("a"));
    let (key_b, pub_b) = keygen(&root.join("b"));
    let newer = sample_bundle("amd64", VERSION, &key_a, &root.join("new"), EPOCH + 10);
    let older = sample_bundle("amd64", VERSION, &key_b, &root.join("old"), EPOCH);
    let store = root.join("store");
    let both = [pub_a.as_path(), pub_b.as_path()];
    let first = load_with(&newer, &store, &key_args(&both));
    assert!(first.ok, "{}", first.stderr);

    let by_other_key = load_with(&older, &store, &key_args(&both));
    assert_eq!(by_other_key.code, Some(5), "{}", by_other_key.stderr);
    let failed: serde_json::Value = serde_json::from_str(by_other_key.stdout.trim()).unwrap();
    assert_eq!(failed["class"], "policy");
    assert!(
        by_other_key.stderr.contains("downgrade")
            && by_other_key.stderr.contains("--allow-downgrade"),
        "{}",
        by_other_key.stderr
    );

    let unsigned = load_with(
        &older,
        &store,
        &[std::ffi::OsStr::new("--insecure-skip-signature")],
    );
    assert_eq!(unsigned.code, Some(5), "{}", unsigned.stderr);

    let mut forced = key_args(&both);
    forced.push(std::ffi::OsStr::new("--allow-downgrade"));
    let allowed = load_with(&older, &store, &forced);
    assert!(allowed.ok, "{}", allowed.stderr);
}

/// A store with one sample bundle loaded, and what `load` needs again.
struct Loaded {
    _tmp: tempfile::TempDir,
    bundle: PathBuf,
    public: PathBuf,
    store: PathBuf,
}

fn loaded() -> Loaded {
    let tmp = tempfile::tempdir().unwrap();
    let (key, public) = keygen(&tmp.path().join("k"));
    let bundle = sample_bundle("arm64", VERSION, &key, &tmp.path().join("out"), EPOCH);
    let store = tmp.path().join("store");
    let first = load_with(&bundle, &store, &key_args(&[&public]));
    assert!(first.ok, "{}", first.stderr);
    Loaded {
        _tmp: tmp,
        bundle,
        public,
        store,
    }
}

/// Flips one byte in the middle of the blob behind release file `name`
/// (size unchanged, as rot leaves it); returns its sha256.
fn rot_file(store: &Path, name: &str) -> String {
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.join("state.json")).unwrap()).unwrap();
    let sha = state["files"][name]["sha256"].as_str().unwrap().to_string();
    let path = store.join("blobs/sha256").join(&sha);
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    // In place, as a failing disk would: files/<name> is the same inode.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .write_all(&bytes)
        .unwrap();
    sha
}

fn first_file(store: &Path) -> String {
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.join("state.json")).unwrap()).unwrap();
    state["files"]
        .as_object()
        .unwrap()
        .keys()
        .next()
        .unwrap()
        .clone()
}

fn check(store: &Path, extra: &[&std::ffi::OsStr]) -> Ran {
    run(edgeferry()
        .args(["store", "check", "--json", "--store"])
        .arg(store)
        .args(extra))
}

#[test]
fn store_check_finds_rot_and_repair_and_reload_fix_it() {
    let s = loaded();
    let clean = check(&s.store, &[]);
    assert_eq!(clean.code, Some(0), "{}", clean.stderr);
    let report: serde_json::Value = serde_json::from_str(&clean.stdout).unwrap();
    assert_eq!(report["ok"], true);
    assert_eq!(report["damaged"].as_array().unwrap().len(), 0);

    let name = first_file(&s.store);
    let sha = rot_file(&s.store, &name);
    let damaged = check(&s.store, &[]);
    assert_eq!(damaged.code, Some(4), "{}", damaged.stderr);
    let report: serde_json::Value = serde_json::from_str(&damaged.stdout).unwrap();
    assert_eq!(report["ok"], false);
    let listed: Vec<&str> = report["damaged"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["sha256"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [sha.as_str()], "{}", damaged.stdout);
    assert_eq!(report["damaged"][0]["problem"], "hash");

    // --repair takes the good bytes from the bundle.
    let mut repair = vec![std::ffi::OsStr::new("--repair"), s.bundle.as_os_str()];
    let public = [s.public.as_path()];
    repair.extend(key_args(&public));
    let repaired = check(&s.store, &repair);
    assert_eq!(repaired.code, Some(0), "{}", repaired.stderr);
    let report: serde_json::Value = serde_json::from_str(&repaired.stdout).unwrap();
    assert_eq!(report["repaired"], serde_json::json!([sha]));
    let bytes = std::fs::read(s.store.join("files").join(&name)).unwrap();
    assert_eq!(edgeferry_bundle::hashing::sha256_hex(&bytes), sha);

    // Reloading the bundle re-verifies the blobs it would reuse.
    rot_file(&s.store, &name);
    let reload = load_with(&s.bundle, &s.store, &key_args(&[&s.public]));
    assert!(reload.ok, "{}", reload.stderr);
    let report: serde_json::Value = serde_json::from_str(&reload.stdout).unwrap();
    assert_eq!(report["changed"], true, "{}", reload.stdout);
    assert_eq!(report["repaired_blobs"], 1, "{}", reload.stdout);
    assert_eq!(check(&s.store, &[]).code, Some(0));
}

#[test]
fn serve_never_sends_a_release_file_whose_hash_is_wrong() {
    let s = loaded();
    let name = first_file(&s.store);
    rot_file(&s.store, &name);
    let server = Served::start(&s.store);
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(server.url(&format!("/files/{name}")))
        .output()
        .expect("running curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "500");
    let body = Command::new("curl")
        .arg("-s")
        .arg(server.url(&format!("/files/{name}")))
        .output()
        .expect("running curl");
    let body = String::from_utf8_lossy(&body.stdout);
    assert!(
        body.contains("damaged") && body.contains("store check"),
        "{body}"
    );
}

/// A tmpfs of `size` with at most `inodes` files, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, options: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        run_ok(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", options, "tmpfs"])
                .arg(dir),
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_disk_that_fills_mid_load_is_exit_5_no_space_and_the_store_is_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let (key, public) = keygen(&tmp.path().join("k"));
    let bundle = sample_bundle("arm64", VERSION, &key, &tmp.path().join("out"), EPOCH);
    // Bytes to spare, but few inodes: the free-space check passes and the
    // filesystem reports ENOSPC part-way through the blobs.
    let disk = Tmpfs::mount(&tmp.path().join("disk"), "size=256m,nr_inodes=12");
    let store = disk.0.join("store");
    let ran = load_with(&bundle, &store, &key_args(&[&public]));
    assert_eq!(ran.code, Some(5), "{}", ran.stderr);
    let failed: serde_json::Value = serde_json::from_str(ran.stdout.trim()).unwrap();
    assert_eq!(failed["class"], "policy");
    assert!(ran.stderr.contains("no space"), "{}", ran.stderr);
    assert_eq!(ran.stderr.trim().lines().count(), 1, "{}", ran.stderr);
    assert!(!store.exists(), "a half-made store was left");
    let left: Vec<_> = std::fs::read_dir(&disk.0)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().contains(".load-"))
        .collect();
    assert!(left.is_empty(), "work directories left: {left:?}");
}

#[test]
fn loads_into_two_stores_in_one_directory_do_not_block_each_other() {
    let tmp = tempfile::tempdir().unwrap();
    let (key, public) = keygen(&tmp.path().join("k"));
    let bundle = sample_bundle("arm64", VERSION, &key, &tmp.path().join("out"), EPOCH);
    let signature = PathBuf::from(format!("{}.minisig", bundle.display()));
    let site = tmp.path().join("site");
    // A load of store `a` from stdin, stalled before the first byte: it
    // holds its lock until we close stdin.
    let mut stalled = std::process::Command::new(bin("edgeferry"));
    stalled
        .arg("load")
        .arg("-")
        .arg("--signature")
        .arg(&signature)
        .arg("--key")
        .arg(&public)
        .arg("--store")
        .arg(site.join("a"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut stalled = Reaped::spawn(&mut stalled);
    let second_on_a = || load_with(&bundle, &site.join("a"), &key_args(&[&public]));
    // Polled with flock(1), not with loads: a load that won the race
    // against the slow-starting stalled one would fill the store and make
    // every later poll succeed.
    let lock_path = site.join(".a.lock");
    wait_for(
        "the stalled load to hold its lock",
        Duration::from_secs(20),
        || {
            lock_path.exists()
                && run(std::process::Command::new("flock")
                    .args(["--nonblock", "--conflict-exit-code", "75"])
                    .arg(&lock_path)
                    .arg("true"))
                .code
                    == Some(75)
        },
    );
    let blocked = second_on_a();
    assert_eq!(blocked.code, Some(1), "{}", blocked.stderr);
    assert!(
        blocked.stderr.contains("another load holds the lock"),
        "{}",
        blocked.stderr
    );
    let other = load_with(&bundle, &site.join("b"), &key_args(&[&public]));
    assert!(other.ok, "{}", other.stderr);
    // The same store stays locked.
    let same = second_on_a();
    assert_eq!(same.code, Some(1), "{}", same.stderr);
    drop(stalled.0.stdin.take());
    stalled.kill();
}

//! `edgeferry sync` (issue 15, section 2): a site store filled from a hub
//! store's mirror on loopback equals loading the same bundles directly; a
//! delta synced alone brings the blobs it left out; a flipped byte fails
//! the sync by name with the site unchanged; a sync killed mid-transfer
//! resumes with Range; a staged blob whose bytes were lost is fetched
//! again; a hub offering an older bundle is refused.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use edgeferry_tests::tamper::{Rule, TamperProxy};
use edgeferry_tests::*;

const ARCH: &str = "amd64";
const OLD: &str = "v1.22.0";
const NEW: &str = "v1.23.1";
const OLD_EPOCH: u64 = 1_763_000_000;
const NEW_EPOCH: u64 = 1_763_100_000;

/// Built once for every test here: a key, the old bundle, the new one in
/// full and as a delta against the old one.
struct Built {
    public: PathBuf,
    old: PathBuf,
    new_full: PathBuf,
    new_delta: PathBuf,
}

fn built() -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        let (key, public) = keygen(&dir);
        let old = sample_bundle(ARCH, OLD, &key, &dir.join("old"), OLD_EPOCH);
        let new_full = sample_bundle(ARCH, NEW, &key, &dir.join("full"), NEW_EPOCH);
        run_ok(
            builder()
                .args(["bundle", "--sample", "--json", "--arch", ARCH])
                .args(["--kubeedge-version", NEW])
                .arg("--key")
                .arg(&key)
                .arg("--out")
                .arg(dir.join("delta"))
                .arg("--base")
                .arg(&old)
                .env("SOURCE_DATE_EPOCH", NEW_EPOCH.to_string()),
        );
        let new_delta = dir
            .join("delta")
            .join(format!("edgeferry-kubeedge-{NEW}-linux-{ARCH}.tar.zst"));
        Built {
            public,
            old,
            new_full,
            new_delta,
        }
    })
}

fn load(bundle: &Path, store: &Path) {
    run_ok(
        edgeferry()
            .arg("load")
            .arg(bundle)
            .arg("--key")
            .arg(&built().public)
            .arg("--store")
            .arg(store),
    );
}

fn sync(from: &str, store: &Path, extra: &[&str]) -> Ran {
    run(edgeferry()
        .args(["sync", "--json", "--from", from])
        .arg("--key")
        .arg(&built().public)
        .arg("--store")
        .arg(store)
        .args(extra))
}

fn json(ran: &Ran) -> serde_json::Value {
    serde_json::from_str(&ran.stdout).unwrap_or_else(|e| panic!("{e}: {}", ran.stdout))
}

/// A snapshot without the kept signed manifests.
fn content(store: &Path) -> std::collections::BTreeMap<String, String> {
    let mut s = snapshot(store);
    s.retain(|path, _| !path.starts_with("bundles"));
    s
}

#[test]
fn a_sync_equals_loading_the_same_bundles_and_a_delta_alone_brings_what_it_left_out() {
    let b = built();
    let root = tempfile::tempdir().unwrap();
    let hub = root.path().join("hub");
    load(&b.old, &hub);
    load(&b.new_delta, &hub);
    let served = Served::start(&hub);
    let from = format!("http://{}", served.addr);

    // The plan changes nothing.
    let site = root.path().join("site");
    let ran = sync(&from, &site, &["--dry-run"]);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let plan = json(&ran);
    let actions: Vec<(&str, &str)> = plan["bundles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["kubeedge_version"].as_str().unwrap(),
                b["action"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(actions, [(OLD, "load"), (NEW, "load")]);
    assert_eq!(plan["bundles"][1]["delta"], true);
    assert!(!site.exists());
    assert_eq!(names_in(root.path()), [".hub.lock", "hub"]);

    // The sync; the same bundles loaded directly; byte for byte the same,
    // the kept signed manifests included.
    let ran = sync(&from, &site, &[]);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let done = json(&ran);
    assert_eq!(done["loaded"].as_array().unwrap().len(), 2);
    assert_eq!(done["fetched_bytes"], plan["fetch_bytes"]);
    let direct = root.path().join("direct");
    load(&b.old, &direct);
    load(&b.new_delta, &direct);
    assert_eq!(snapshot(&site), snapshot(&direct));
    assert_eq!(snapshot(&hub), snapshot(&direct));
    assert_eq!(
        names_in(root.path()),
        [
            ".direct.lock",
            ".hub.lock",
            ".site.lock",
            "direct",
            "hub",
            "site"
        ]
    );

    // Again: nothing to fetch, nothing changes.
    let ran = sync(&from, &site, &[]);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let again = json(&ran);
    assert_eq!(again["loaded"].as_array().unwrap().len(), 0);
    assert_eq!(again["fetched_bytes"], 0);
    assert_eq!(snapshot(&site), snapshot(&direct));

    // The delta alone (--only): its left-out blobs come from the hub too,
    // and the store holds what the full bundle would give (the signed
    // manifest it keeps is the delta's, as the hub's).
    let only = root.path().join("only");
    let ran = sync(&from, &only, &["--only", "v1.23", "--arch", ARCH]);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert_eq!(json(&ran)["plan"]["skipped"], 1);
    let full = root.path().join("full");
    load(&b.new_full, &full);
    assert_eq!(content(&only), content(&full));
    let kept = |store: &Path| {
        snapshot(store)
            .into_iter()
            .filter(|(p, _)| p.starts_with("bundles/"))
            .collect::<Vec<_>>()
    };
    let hub_new: Vec<_> = kept(&hub)
        .into_iter()
        .filter(|(p, _)| kept(&only).iter().any(|(q, _)| q == p))
        .collect();
    assert_eq!(kept(&only), hub_new);
    assert_eq!(kept(&only).len(), 3, "{:?}", kept(&only));
}

#[test]
fn a_flipped_byte_fails_the_sync_by_name_and_leaves_the_site_unchanged() {
    let b = built();
    let root = tempfile::tempdir().unwrap();
    let hub = root.path().join("hub");
    load(&b.old, &hub);
    load(&b.new_full, &hub);
    let served = Served::start(&hub);
    let site = root.path().join("site");
    load(&b.old, &site);
    let before = snapshot(&site);

    let proxy =
        TamperProxy::start_with("127.0.0.1", &served.addr, Rule::FlipFirst("/blobs/".into()))
            .unwrap();
    let ran = sync(&format!("http://{}", proxy.addr()), &site, &[]);
    assert_eq!(proxy.tampered(), 1);
    assert_eq!(ran.code, Some(4), "{}", ran.stderr);
    let failed = json(&ran);
    assert_eq!(failed["ok"], false);
    assert_eq!(failed["class"], "integrity");
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.contains("sent other bytes than the signed manifest names")
            && error.contains("entry images/blobs/sha256/")
            && error.contains("expected sha256"),
        "{error}"
    );
    assert_eq!(snapshot(&site), before);
}

#[test]
fn a_sync_killed_mid_transfer_resumes_with_range_and_completes() {
    let b = built();
    let root = tempfile::tempdir().unwrap();
    let hub = root.path().join("hub");
    load(&b.old, &hub);
    let served = Served::start(&hub);
    let site = root.path().join("site");
    let staging = root.path().join(".site.sync");

    // Half of the first blob arrives, then the hub's link hangs: kill -9.
    let proxy = TamperProxy::start_with(
        "127.0.0.1",
        &served.addr,
        Rule::StallFirst("/blobs/".into()),
    )
    .unwrap();
    let mut killed = Reaped::spawn(
        edgeferry()
            .args(["sync", "--json", "--from"])
            .arg(format!("http://{}", proxy.addr()))
            .arg("--key")
            .arg(&b.public)
            .arg("--store")
            .arg(&site)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    );
    let partial_len = || -> u64 {
        std::fs::read_dir(staging.join("blobs/sha256"))
            .map(|r| {
                r.flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".partial"))
                    .map(|e| e.metadata().unwrap().len())
                    .sum()
            })
            .unwrap_or(0)
    };
    wait_for("half a blob staged", Duration::from_secs(60), || {
        proxy.stalled_bytes() > 0 && partial_len() == proxy.stalled_bytes()
    });
    killed.kill();
    let stalled = proxy.stalled_bytes();
    assert!(!site.exists(), "a killed sync created the store");

    // The rerun re-hashes what was staged and asks only for the rest.
    let ran = sync(&format!("http://{}", served.addr), &site, &[]);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let done = json(&ran);
    assert_eq!(done["resumed_bytes"], stalled);
    let plan = &done["plan"];
    let fetch = plan["fetch_bytes"].as_u64().unwrap();
    let staged = plan["staged_bytes"].as_u64().unwrap();
    assert!(staged >= stalled);
    assert_eq!(done["fetched_bytes"].as_u64().unwrap(), fetch - staged);
    let direct = root.path().join("direct");
    load(&b.old, &direct);
    assert_eq!(snapshot(&site), snapshot(&direct));
    assert!(!staging.exists());
}

/// A staged blob is not synced to disk when it is renamed into place (the
/// commit syncs the filesystem once, before its swap): after a crash its
/// bytes may be lost. The rerun re-hashes every staged blob and fetches a
/// damaged one again.
#[test]
fn a_staged_blob_whose_bytes_were_lost_is_fetched_again() {
    let b = built();
    let root = tempfile::tempdir().unwrap();
    let hub = root.path().join("hub");
    load(&b.old, &hub);
    let served = Served::start(&hub);
    let site = root.path().join("site");

    // What a power cut after the rename leaves: the name, no bytes.
    let (hex, size) = std::fs::read_dir(hub.join("blobs/sha256"))
        .unwrap()
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().len(),
            )
        })
        .max_by_key(|(_, size)| *size)
        .unwrap();
    let staged = root.path().join(".site.sync/blobs/sha256");
    std::fs::create_dir_all(&staged).unwrap();
    std::fs::write(staged.join(&hex), vec![0u8; size as usize]).unwrap();

    let ran = sync(&format!("http://{}", served.addr), &site, &[]);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let done = json(&ran);
    assert_eq!(done["plan"]["staged_bytes"], size);
    assert_eq!(done["staged_blobs"], 0);
    assert_eq!(done["resumed_bytes"], 0);
    assert_eq!(done["fetched_bytes"], done["plan"]["fetch_bytes"]);
    let direct = root.path().join("direct");
    load(&b.old, &direct);
    assert_eq!(snapshot(&site), snapshot(&direct));
    assert!(!root.path().join(".site.sync").exists());
}

#[test]
fn a_hub_offering_an_older_bundle_is_refused() {
    let b = built();
    let root = tempfile::tempdir().unwrap();
    let hub = root.path().join("hub");
    load(&b.old, &hub);
    let served = Served::start(&hub);
    let site = root.path().join("site");
    load(&b.new_full, &site);
    let before = snapshot(&site);

    let ran = sync(&format!("http://{}", served.addr), &site, &[]);
    assert_eq!(ran.code, Some(5), "{}", ran.stderr);
    let error = json(&ran)["error"].as_str().unwrap().to_string();
    assert!(
        error.contains("offers a bundle older than") && error.contains("refusing a downgrade"),
        "{error}"
    );
    assert_eq!(snapshot(&site), before);
    assert_eq!(
        names_in(root.path()),
        [".hub.lock", ".site.lock", "hub", "site"]
    );
}

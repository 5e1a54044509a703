//! `edgeferry diff A B`: bundle vs bundle, store vs bundle (compared on the
//! bundle's arch only), store vs store, and identical inputs. Every
//! expectation is computed here from the bundles' signed manifests, not
//! from the installer's code.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use edgeferry_tests::*;
use serde_json::{json, Value};

const EPOCH: u64 = 1_763_000_000;

/// What the test reads from one bundle's signed manifest.
struct Content {
    /// (reference, platform) → platform manifest digest.
    images: BTreeMap<(String, String), String>,
    /// Release file name → (sha256, size).
    files: BTreeMap<String, (String, u64)>,
    /// sha256 → size of every image blob and release file.
    blobs: BTreeMap<String, u64>,
}

fn content(bundle: &Path) -> Content {
    let text = run_ok(
        Command::new("tar")
            .arg("--zstd")
            .arg("-xOf")
            .arg(bundle)
            .arg("manifest.json"),
    )
    .stdout;
    let manifest: Value = serde_json::from_str(&text).unwrap();
    let mut c = Content {
        images: BTreeMap::new(),
        files: BTreeMap::new(),
        blobs: BTreeMap::new(),
    };
    for image in manifest["images"].as_array().unwrap() {
        c.images.insert(
            (
                image["reference"].as_str().unwrap().to_string(),
                image["platform"].as_str().unwrap().to_string(),
            ),
            image["manifest_digest"].as_str().unwrap().to_string(),
        );
    }
    for entry in manifest["entries"].as_array().unwrap() {
        let path = entry["path"].as_str().unwrap();
        let sha = entry["sha256"].as_str().unwrap().to_string();
        let size = entry["size"].as_u64().unwrap();
        if let Some(name) = path.strip_prefix("files/") {
            c.files.insert(name.to_string(), (sha.clone(), size));
        }
        if path.starts_with("files/") || path.starts_with("images/blobs/") {
            c.blobs.insert(sha, size);
        }
    }
    c
}

/// A store loaded with `contents` in order: later images replace earlier
/// ones of the same tag and platform, files and blobs add up.
fn merged(contents: &[&Content]) -> Content {
    let mut m = Content {
        images: BTreeMap::new(),
        files: BTreeMap::new(),
        blobs: BTreeMap::new(),
    };
    for c in contents {
        m.images.extend(c.images.clone());
        m.files.extend(c.files.clone());
        m.blobs.extend(c.blobs.clone());
    }
    m
}

/// The `diff --json` fields the test predicts: images, files, added blobs
/// and bytes, identical.
fn expected(a: &Content, b: &Content, have: &BTreeMap<String, u64>) -> Value {
    let mut images = (Vec::new(), Vec::new(), Vec::new());
    let keys: BTreeSet<_> = a.images.keys().chain(b.images.keys()).collect();
    for key in keys {
        let (old, new) = (a.images.get(key), b.images.get(key));
        let change =
            json!({"reference": key.0, "platform": key.1, "old_digest": old, "new_digest": new});
        match (old, new) {
            (None, Some(_)) => images.0.push(change),
            (Some(_), None) => images.1.push(change),
            (Some(o), Some(n)) if o != n => images.2.push(change),
            _ => {}
        }
    }
    let mut files = (Vec::new(), Vec::new(), Vec::new());
    let names: BTreeSet<_> = a.files.keys().chain(b.files.keys()).collect();
    for name in names {
        let (old, new) = (a.files.get(name), b.files.get(name));
        let change = json!({
            "name": name,
            "old_sha256": old.map(|f| &f.0), "new_sha256": new.map(|f| &f.0),
            "old_size": old.map(|f| f.1), "new_size": new.map(|f| f.1),
        });
        match (old, new) {
            (None, Some(_)) => files.0.push(change),
            (Some(_), None) => files.1.push(change),
            (Some(o), Some(n)) if o != n => files.2.push(change),
            _ => {}
        }
    }
    let added: Vec<u64> = b
        .blobs
        .iter()
        .filter(|(sha, _)| !have.contains_key(*sha))
        .map(|(_, size)| *size)
        .collect();
    let identical = images.0.is_empty()
        && images.1.is_empty()
        && images.2.is_empty()
        && files.0.is_empty()
        && files.1.is_empty()
        && files.2.is_empty()
        && added.is_empty();
    json!({
        "identical": identical,
        "images": {"added": images.0, "removed": images.1, "changed": images.2},
        "files": {"added": files.0, "removed": files.1, "changed": files.2},
        "added_blobs": added.len(),
        "added_bytes": added.iter().sum::<u64>(),
    })
}

fn diff(a: &Path, b: &Path, public: &Path, json: bool) -> Ran {
    let mut cmd = edgeferry();
    cmd.arg("diff").arg(a).arg(b).arg("--key").arg(public);
    if json {
        cmd.arg("--json");
    }
    let ran = run(&mut cmd);
    assert_eq!(ran.code, Some(0), "diff: {}{}", ran.stdout, ran.stderr);
    ran
}

fn diff_json(a: &Path, b: &Path, public: &Path) -> Value {
    serde_json::from_str(&diff(a, b, public, true).stdout).unwrap()
}

/// The predicted part of a `diff --json` result.
fn compared(result: &Value) -> Value {
    json!({
        "identical": result["identical"],
        "images": result["images"],
        "files": result["files"],
        "added_blobs": result["added_blobs"],
        "added_bytes": result["added_bytes"],
    })
}

fn store_with(dir: &Path, bundles: &[&Path], public: &Path) -> PathBuf {
    for bundle in bundles {
        run_ok(
            edgeferry()
                .arg("load")
                .arg(bundle)
                .arg("--key")
                .arg(public)
                .arg("--store")
                .arg(dir)
                .arg("--no-sync"),
        );
    }
    dir.to_path_buf()
}

#[test]
fn diff_of_bundles_and_stores_says_exactly_what_changed() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (key, public) = keygen(&root.join("keys"));
    let old_amd64 = sample_bundle("amd64", "v1.22.0", &key, &root.join("old"), EPOCH);
    let old_arm64 = sample_bundle("arm64", "v1.22.0", &key, &root.join("old"), EPOCH);
    let new_amd64 = sample_bundle("amd64", "v1.23.1", &key, &root.join("new"), EPOCH + 100);
    let (old, old_arm, new) = (
        content(&old_amd64),
        content(&old_arm64),
        content(&new_amd64),
    );

    // Bundle vs bundle.
    let want = expected(&old, &new, &old.blobs);
    let result = diff_json(&old_amd64, &new_amd64, &public);
    assert_eq!(compared(&result), want);
    assert_eq!(result["compared_arch"], Value::Null);
    assert_eq!(result["a"]["kind"], "bundle");
    assert_eq!(result["a"]["kubeedge_versions"], json!(["v1.22.0"]));
    assert_eq!(result["b"]["kubeedge_versions"], json!(["v1.23.1"]));
    assert_eq!(want["identical"], false);
    // The installation-package moves tag; the release files are renamed.
    let added = want["images"]["added"].as_array().unwrap();
    assert!(added.iter().any(|c| c["reference"]
        == "docker.io/kubeedge/installation-package:v1.23.1"
        && c["platform"] == "linux/amd64"));
    assert!(want["files"]["added"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["name"] == "keadm-v1.23.1-linux-amd64.tar.gz"));
    assert!(want["added_bytes"].as_u64().unwrap() > 0);

    // The same, as text: one line per change, the bytes last.
    let text = diff(&old_amd64, &new_amd64, &public, false).stdout;
    let mut lines = vec![
        format!(
            "A: bundle {} id {} (KubeEdge v1.22.0; amd64)",
            old_amd64.display(),
            result["a"]["bundle_id"].as_str().unwrap()
        ),
        format!(
            "B: bundle {} id {} (KubeEdge v1.23.1; amd64)",
            new_amd64.display(),
            result["b"]["bundle_id"].as_str().unwrap()
        ),
        "images:".to_string(),
    ];
    let s = |v: &Value| v.as_str().unwrap().to_string();
    for (sign, list) in [("+", "added"), ("-", "removed"), ("~", "changed")] {
        for c in want["images"][list].as_array().unwrap() {
            let digests = match sign {
                "+" => s(&c["new_digest"]),
                "-" => s(&c["old_digest"]),
                _ => format!("{} -> {}", s(&c["old_digest"]), s(&c["new_digest"])),
            };
            lines.push(format!(
                "  {sign} {}  {}  {digests}",
                s(&c["reference"]),
                s(&c["platform"])
            ));
        }
    }
    lines.push("files:".to_string());
    for (sign, list) in [("+", "added"), ("-", "removed"), ("~", "changed")] {
        for c in want["files"][list].as_array().unwrap() {
            let digests = match sign {
                "+" => s(&c["new_sha256"]),
                "-" => s(&c["old_sha256"]),
                _ => format!("{} -> {}", s(&c["old_sha256"]), s(&c["new_sha256"])),
            };
            lines.push(format!("  {sign} {}  sha256 {digests}", s(&c["name"])));
        }
    }
    lines.push(format!(
        "B adds {} blobs, {} bytes",
        want["added_blobs"], want["added_bytes"]
    ));
    assert_eq!(text.lines().collect::<Vec<_>>(), lines);

    // A store holding amd64 and arm64 vs an amd64 bundle: only amd64 is
    // compared (arm64 is not listed as removed), and what B adds counts
    // every blob the store has.
    let both = store_with(&root.join("both"), &[&old_amd64, &old_arm64], &public);
    let result = diff_json(&both, &new_amd64, &public);
    let have = merged(&[&old, &old_arm]).blobs;
    assert_eq!(compared(&result), expected(&old, &new, &have));
    assert_eq!(result["compared_arch"], "amd64");
    assert_eq!(result["a"]["kind"], "store");
    assert_eq!(result["a"]["arches"], json!(["amd64", "arm64"]));
    let text = diff(&both, &new_amd64, &public, false).stdout;
    assert_eq!(
        text.lines().nth(2),
        Some("comparing linux/amd64 only: the bundle holds that arch alone")
    );
    assert!(
        text.lines()
            .filter(|l| l.starts_with("  "))
            .all(|l| !l.contains("arm64")),
        "{text}"
    );

    // Store vs store: the site before and after loading the new bundle.
    let before = store_with(&root.join("before"), &[&old_amd64], &public);
    let after = store_with(&root.join("after"), &[&old_amd64, &new_amd64], &public);
    let result = diff_json(&before, &after, &public);
    assert_eq!(
        compared(&result),
        expected(&old, &merged(&[&old, &new]), &old.blobs)
    );
    assert_eq!(result["compared_arch"], Value::Null);
    assert_eq!(
        result["b"]["kubeedge_versions"],
        json!(["v1.22.0", "v1.23.1"])
    );

    // Identical inputs: an empty diff, exit 0.
    for (a, b) in [(&new_amd64, &new_amd64), (&after, &after)] {
        let result = diff_json(a, b, &public);
        assert_eq!(result["identical"], true);
        assert_eq!(result["added_bytes"], 0);
        assert_eq!(result["images"]["changed"], json!([]));
        let text = diff(a, b, &public, false).stdout;
        assert_eq!(text.lines().last(), Some("no differences"));
        assert_eq!(text.lines().count(), 3);
    }
}

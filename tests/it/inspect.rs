//! `edgeferry inspect`: verified first, then exactly what the signed
//! manifest says (read here independently from the tar), as JSON and as
//! text, from a bundle file and from a directory of volumes; it writes
//! nothing.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use edgeferry_bundle::format::Manifest;
use edgeferry_tests::*;

const VERSION: &str = "v1.23.1";
const EPOCH: u64 = 1_763_000_000;

/// The tar entries of a bundle, by path.
fn entries_of(bundle: &Path) -> BTreeMap<String, Vec<u8>> {
    let file = std::fs::File::open(bundle).unwrap();
    let mut archive = tar::Archive::new(zstd::Decoder::new(file).unwrap());
    let mut out = BTreeMap::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        out.insert(path, data);
    }
    out
}

fn inspect(target: &Path, public: &Path, json: bool) -> Ran {
    let mut cmd = edgeferry();
    cmd.arg("inspect").arg(target).arg("--key").arg(public);
    if json {
        cmd.arg("--json");
    }
    run(&mut cmd)
}

#[test]
fn inspect_shows_what_the_signed_manifest_says_from_a_file_and_from_volumes() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (key, public) = keygen(&root.join("keys"));
    let bundle = sample_bundle("arm64", VERSION, &key, &root.join("out"), EPOCH);
    let key_id = std::fs::read_to_string(&public)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .rsplit(' ')
        .next()
        .unwrap()
        .to_string();

    // Independently: the manifest and the image manifests from the tar.
    let entries = entries_of(&bundle);
    let m: Manifest = serde_json::from_slice(&entries["manifest.json"]).unwrap();
    let size_of = |digest: &str| {
        let hex = digest.strip_prefix("sha256:").unwrap();
        let bytes = &entries[&format!("images/blobs/sha256/{hex}")];
        let doc: serde_json::Value = serde_json::from_slice(bytes).unwrap();
        let parts: u64 = std::iter::once(&doc["config"])
            .chain(doc["layers"].as_array().unwrap())
            .map(|d| d["size"].as_u64().unwrap())
            .sum();
        bytes.len() as u64 + parts
    };

    let before = snapshot(root);
    let ran = inspect(&bundle, &public, true);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let got: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(got["ok"], true);
    assert_eq!(got["signer"], key_id.as_str());
    assert_eq!(got["bundle_id"], m.bundle_id.as_str());
    assert_eq!(got["format_version"], 2);
    assert_eq!(got["kubeedge_version"], VERSION);
    assert_eq!(got["arch"], "arm64");
    assert_eq!(got["sequence"], EPOCH);
    assert_eq!(got["created"], "2025-11-13T02:13:20Z");
    assert_eq!(got["sample"], true);
    assert_eq!(got["delta"], serde_json::Value::Null);
    let images = got["images"].as_array().unwrap();
    assert_eq!(images.len(), m.images.len());
    assert_eq!(m.images.len(), 5);
    for (shown, record) in images.iter().zip(&m.images) {
        assert_eq!(shown["reference"], record.reference.as_str());
        assert_eq!(shown["platform"], "linux/arm64");
        assert_eq!(shown["manifest_digest"], record.manifest_digest.as_str());
        assert_eq!(shown["size"], size_of(&record.manifest_digest));
    }
    let files: Vec<(String, u64, String, bool)> = got["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap().to_string(),
                f["size"].as_u64().unwrap(),
                f["sha256"].as_str().unwrap().to_string(),
                f["omitted"].as_bool().unwrap(),
            )
        })
        .collect();
    let mut expected: Vec<(String, u64, String, bool)> = m
        .entries
        .iter()
        .filter(|e| e.path.starts_with("files/"))
        .map(|e| (e.path.clone(), e.size, e.sha256.clone(), false))
        .collect();
    expected.sort();
    assert_eq!(files, expected);
    assert_eq!(files.len(), 4);
    let keadm = format!("files/keadm-{VERSION}-linux-arm64.tar.gz");
    let record = m.files.iter().find(|f| f.path == keadm).unwrap();
    let shown = got["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == keadm.as_str())
        .unwrap();
    assert_eq!(shown["sha512"], record.sha512.as_deref().unwrap());
    assert_eq!(got["entries"], m.entries.len());

    // Text: one line per image and per file, the signer and the version.
    let ran = inspect(&bundle, &public, false);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let text = ran.stdout;
    assert!(
        text.starts_with(&format!(
            "bundle {} (format 2)  KubeEdge {VERSION} linux/arm64  sequence {EPOCH}  created 2025-11-13T02:13:20Z  SAMPLE",
            m.bundle_id
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("signed by key {key_id}\n")),
        "{text}"
    );
    for record in &m.images {
        let line = format!(
            "  {}  linux/arm64  {}  {} bytes\n",
            record.reference,
            record.manifest_digest,
            size_of(&record.manifest_digest)
        );
        assert!(text.contains(&line), "{line:?} not in {text}");
    }
    for (path, size, sha, _) in &expected {
        let line = format!("  {path}  {size} bytes  sha256 {sha}\n");
        assert!(text.contains(&line), "{line:?} not in {text}");
    }
    assert_eq!(snapshot(root), before, "inspect writes nothing");

    // From a directory of volumes: the same answer.
    let volumes = root.join("volumes");
    run_ok(
        builder()
            .args([
                "bundle",
                "--sample",
                "--arch",
                "arm64",
                "--kubeedge-version",
                VERSION,
                "--volume-size",
                "400000",
                "--key",
            ])
            .arg(&key)
            .arg("--out")
            .arg(&volumes)
            .env("SOURCE_DATE_EPOCH", EPOCH.to_string()),
    );
    let ran = inspect(&volumes, &public, true);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let from_volumes: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(from_volumes, got);

    // Not verified, nothing shown: another key is a signature failure.
    let (_, other) = keygen(&root.join("other"));
    let ran = inspect(&bundle, &other, true);
    assert_eq!(ran.code, Some(3), "{}", ran.stderr);
    assert!(!ran.stdout.contains("images"), "{}", ran.stdout);
}

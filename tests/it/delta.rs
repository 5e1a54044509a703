//! Delta bundles (issue 14): built from a store inventory and from an
//! older bundle, refused (exit 5, named, store untouched) where the base
//! is missing, equal to the full bundle once loaded, and signed over the
//! list of what they left out; format 1 bundles still verify.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};

use edgeferry_bundle::format::{self, BaseKind, Entry, Manifest};
use edgeferry_bundle::inventory::Inventory;
use edgeferry_bundle::sign::SigningKey;
use edgeferry_tests::crafted::{append_raw, regular, sign_whole, signed_tar};
use edgeferry_tests::*;

const BASE_VERSION: &str = "v1.22.0";
const VERSION: &str = "v1.23.1";
const ARCH: &str = "amd64";
const BASE_EPOCH: u64 = 1_763_000_000;
const EPOCH: u64 = 1_763_100_000;
const POLICY: i32 = 5;

fn bundle_name(version: &str) -> String {
    format!("edgeferry-kubeedge-{version}-linux-{ARCH}.tar.zst")
}

/// Builds the v1.23.1 sample into `out`, with `--base base` when given.
fn build(key: &Path, out: &Path, base: Option<&Path>, extra: &[&str]) -> (PathBuf, Ran) {
    let mut cmd = builder();
    cmd.args([
        "bundle",
        "--sample",
        "--json",
        "--arch",
        ARCH,
        "--kubeedge-version",
        VERSION,
    ])
    .arg("--key")
    .arg(key)
    .arg("--out")
    .arg(out)
    .args(extra)
    .env("SOURCE_DATE_EPOCH", EPOCH.to_string());
    if let Some(base) = base {
        cmd.arg("--base").arg(base);
    }
    (out.join(bundle_name(VERSION)), run(&mut cmd))
}

fn load(bundle: &Path, public: &Path, store: &Path) -> Ran {
    run(edgeferry()
        .arg("load")
        .arg(bundle)
        .arg("--key")
        .arg(public)
        .arg("--store")
        .arg(store))
}

/// The tar entries of a bundle, in stream order.
/// The SHA-256 of every SBOM component marked `edgeferry:omitted`.
fn omitted_marks(sbom: &serde_json::Value) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![sbom];
    while let Some(v) = stack.pop() {
        match v {
            serde_json::Value::Array(items) => stack.extend(items),
            serde_json::Value::Object(map) => {
                let marked = map
                    .get("properties")
                    .and_then(|p| p.as_array())
                    .is_some_and(|props| {
                        props
                            .iter()
                            .any(|p| p["name"] == "edgeferry:omitted" && p["value"] == "true")
                    });
                if marked {
                    for h in map
                        .get("hashes")
                        .and_then(|h| h.as_array())
                        .into_iter()
                        .flatten()
                    {
                        if h["alg"] == "SHA-256" {
                            out.insert(h["content"].as_str().unwrap().to_string());
                        }
                    }
                }
                stack.extend(map.values());
            }
            _ => {}
        }
    }
    out
}

fn entries_of(bundle: &Path) -> Vec<(String, Vec<u8>)> {
    let file = std::fs::File::open(bundle).unwrap();
    let mut archive = tar::Archive::new(zstd::Decoder::new(file).unwrap());
    let mut out = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        out.push((path, data));
    }
    out
}

fn manifest_of(bundle: &Path) -> Manifest {
    let entries = entries_of(bundle);
    assert_eq!(entries[0].0, format::MANIFEST_PATH);
    serde_json::from_slice(&entries[0].1).unwrap()
}

#[test]
fn deltas_from_an_inventory_and_from_an_old_bundle_load_into_exactly_the_full_store() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (key, public) = keygen(&root.join("keys"));
    let base = sample_bundle(ARCH, BASE_VERSION, &key, &root.join("base"), BASE_EPOCH);
    let (full, ran) = build(&key, &root.join("full"), None, &[]);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let (with_delta, with_full) = (root.join("store-a"), root.join("store-b"));
    for store in [&with_delta, &with_full] {
        assert_eq!(load(&base, &public, store).code, Some(0));
    }

    // The inventory: on stdout, or written with -o (same bytes), small.
    let printed = run_ok(
        edgeferry()
            .args(["store", "inventory", "--store"])
            .arg(&with_delta),
    );
    let inventory_path = root.join("site.inventory.json");
    let written = run_ok(
        edgeferry()
            .args(["store", "inventory", "--json", "--store"])
            .arg(&with_delta)
            .arg("-o")
            .arg(&inventory_path),
    );
    let inventory_bytes = std::fs::read(&inventory_path).unwrap();
    assert_eq!(printed.stdout.as_bytes(), &inventory_bytes[..]);
    let inventory = Inventory::parse(&inventory_bytes).unwrap();
    let base_manifest = manifest_of(&base);
    assert_eq!(
        inventory.bundle_ids,
        std::slice::from_ref(&base_manifest.bundle_id)
    );
    assert_eq!(inventory.files.len(), 4, "two assets and their checksums");
    let summary: serde_json::Value = serde_json::from_str(&written.stdout).unwrap();
    assert_eq!(summary["ok"], true);
    assert_eq!(summary["bundles"], 1);
    assert_eq!(summary["blobs"], inventory.blobs.len());
    assert_eq!(summary["files"], 4);
    assert!(
        inventory_bytes.len() < 16 * 1024,
        "{}",
        inventory_bytes.len()
    );
    let key_id = inventory.sequences.keys().next().unwrap().clone();
    assert_eq!(
        inventory.sequences,
        [(key_id.clone(), BASE_EPOCH)].into_iter().collect()
    );
    assert!(key_id.ends_with("/amd64"), "{key_id}");

    // A delta from the inventory, twice (reproducible), and one from the
    // old bundle (verified by the build key's public half by default).
    let (delta, ran) = build(&key, &root.join("delta"), Some(&inventory_path), &[]);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let (again, _) = build(&key, &root.join("again"), Some(&inventory_path), &[]);
    assert_eq!(
        std::fs::read(&delta).unwrap(),
        std::fs::read(&again).unwrap(),
        "same inputs and base, same bytes"
    );
    let (from_bundle, ran) = build(&key, &root.join("from-bundle"), Some(&base), &[]);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let summary: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(summary["delta"]["base"]["kind"], "bundle");

    let full_m = manifest_of(&full);
    let delta_m = manifest_of(&delta);
    let bundle_m = manifest_of(&from_bundle);
    assert_eq!(full_m.format_version, 2);
    assert!(full_m.delta.is_none());
    assert!(!String::from_utf8(entries_of(&full)[0].1.clone())
        .unwrap()
        .contains("\"delta\""));
    // One id for the full bundle and both deltas of the same input.
    assert_eq!(delta_m.bundle_id, full_m.bundle_id);
    assert_eq!(bundle_m.bundle_id, full_m.bundle_id);

    let d = delta_m.delta.as_ref().unwrap();
    assert_eq!(d.base.kind, BaseKind::Inventory);
    assert_eq!(
        d.base.bundle_ids,
        std::slice::from_ref(&base_manifest.bundle_id)
    );
    assert_eq!(d.base.kubeedge_version, None);
    let b = bundle_m.delta.as_ref().unwrap();
    assert_eq!(b.base.kind, BaseKind::Bundle);
    assert_eq!(
        b.base.bundle_ids,
        std::slice::from_ref(&base_manifest.bundle_id)
    );
    assert_eq!(b.base.kubeedge_version.as_deref(), Some(BASE_VERSION));
    assert_eq!(b.base.sequence, Some(BASE_EPOCH));
    // The store holds exactly the base bundle, so both omit the same.
    assert_eq!(d.expected_present, b.expected_present);
    assert!(!d.expected_present.is_empty());

    // What was left out: exactly the full bundle's blobs and files the
    // base has; the rest is in the stream, in the full bundle's order.
    let in_base: BTreeSet<&str> = inventory.blobs.iter().map(|b| b.sha256.as_str()).collect();
    let (omitted, kept): (Vec<&Entry>, Vec<&Entry>) = full_m.entries.iter().partition(|e| {
        (e.path.starts_with("images/blobs/") || e.path.starts_with("files/"))
            && in_base.contains(e.sha256.as_str())
    });
    let mut omitted: Vec<Entry> = omitted.into_iter().cloned().collect();
    omitted.sort_by(|a, b| a.path.cmp(&b.path));
    assert_eq!(d.expected_present, omitted);
    // Every entry but the SBOM, which a delta marks where it omitted.
    let not_sbom = |e: &&Entry| e.path != format::SBOM_PATH;
    assert_eq!(
        delta_m.entries.iter().filter(not_sbom).collect::<Vec<_>>(),
        kept.into_iter().filter(not_sbom).collect::<Vec<_>>()
    );
    // Both SBOMs describe the full content; only the delta's marks
    // components omitted, each one among the omitted entries, and every
    // omitted release file is marked.
    let sbom_of = |bundle: &Path| -> serde_json::Value {
        let entries = entries_of(bundle);
        assert_eq!(
            entries[2].0,
            format::SBOM_PATH,
            "the SBOM is first after the signature"
        );
        serde_json::from_slice(&entries[2].1).unwrap()
    };
    assert!(omitted_marks(&sbom_of(&full)).is_empty());
    let marked = omitted_marks(&sbom_of(&delta));
    let omitted_hex: BTreeSet<&str> = d
        .expected_present
        .iter()
        .map(|e| e.sha256.as_str())
        .collect();
    assert!(!marked.is_empty());
    for hex in &marked {
        assert!(
            omitted_hex.contains(hex.as_str()),
            "{hex} marked omitted but streamed"
        );
    }
    for e in d
        .expected_present
        .iter()
        .filter(|e| e.path.starts_with("files/"))
    {
        assert!(
            marked.contains(&e.sha256),
            "{} omitted but not marked",
            e.path
        );
    }
    let streamed: Vec<String> = entries_of(&delta).into_iter().map(|(p, _)| p).collect();
    for e in &d.expected_present {
        assert!(!streamed.contains(&e.path), "{} is in the stream", e.path);
    }
    assert!(std::fs::metadata(&delta).unwrap().len() < std::fs::metadata(&full).unwrap().len());

    // Verifies on its own; loads; the two stores are the same, byte for
    // byte, state.json included (same bundle id, same records).
    run_ok(
        edgeferry()
            .arg("verify")
            .arg(&delta)
            .arg("--key")
            .arg(&public),
    );
    let ran = load(&delta, &public, &with_delta);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert_eq!(load(&full, &public, &with_full).code, Some(0));
    // The kept signed manifests are each bundle's own (the delta's lists
    // what it left out); everything else is the same.
    let content = |store: &Path| {
        let mut s = snapshot(store);
        s.retain(|path, _| !path.starts_with("bundles/"));
        s
    };
    assert_eq!(content(&with_delta), content(&with_full));
    let kept = |store: &Path, bundle: &Path| {
        let id = manifest_of(bundle).bundle_id;
        std::fs::read(store.join("bundles").join(id).join("manifest.json")).unwrap()
            == entries_of(bundle)[0].1
    };
    assert!(kept(&with_delta, &delta) && kept(&with_full, &full));

    // The old bundle base is verified first: by another key it is refused.
    let (_, other_public) = keygen(&root.join("other"));
    let (_, ran) = build(
        &key,
        &root.join("refused"),
        Some(&base),
        &["--base-key", other_public.to_str().unwrap()],
    );
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
    assert!(
        ran.stderr.contains("refused") && ran.stderr.contains("unknown key"),
        "{}",
        ran.stderr
    );
    assert!(!root.join("refused").join(bundle_name(VERSION)).exists());
}

#[test]
fn a_delta_without_its_base_is_refused_named_and_the_store_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (key, public) = keygen(&root.join("keys"));
    let base = sample_bundle(ARCH, BASE_VERSION, &key, &root.join("base"), BASE_EPOCH);
    let (delta, ran) = build(&key, &root.join("delta"), Some(&base), &[]);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let m = manifest_of(&delta);
    let expected = &m.delta.as_ref().unwrap().expected_present;
    assert!(
        expected.len() > 8,
        "the sample omits more than N: {}",
        expected.len()
    );

    // An empty site: nothing may appear beside the store, not even a lock.
    let sites = root.join("sites");
    std::fs::create_dir(&sites).unwrap();
    let store = sites.join("store");
    let ran = run(edgeferry()
        .arg("load")
        .arg(&delta)
        .arg("--key")
        .arg(&public)
        .arg("--store")
        .arg(&store)
        .arg("--json"));
    assert_eq!(ran.code, Some(POLICY), "{}", ran.stderr);
    let failed: serde_json::Value = serde_json::from_str(ran.stdout.trim()).unwrap();
    assert_eq!(failed["class"], "policy");
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.contains(&format!("needs {} entries it left out", expected.len())),
        "{error}"
    );
    for e in &expected[..8] {
        assert!(error.contains(&format!("sha256:{}", e.sha256)), "{error}");
    }
    for e in &expected[8..] {
        assert!(
            !error.contains(&e.sha256),
            "only the first 8 are named: {error}"
        );
    }
    assert!(
        error.contains(&format!("and {} more", expected.len() - 8)),
        "{error}"
    );
    assert!(names_in(&sites).is_empty(), "{:?}", names_in(&sites));

    // A store with the base but one of its blobs damaged: re-hashed,
    // refused naming that blob alone, the store byte-identical.
    let store = root.join("damaged");
    assert_eq!(load(&base, &public, &store).code, Some(0));
    let victim = expected
        .iter()
        .find(|e| e.path.starts_with("images/blobs/"))
        .unwrap();
    let blob = store.join("blobs/sha256").join(&victim.sha256);
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&blob, &bytes).unwrap();
    let before = snapshot(&store);
    let names_before = names_in(root);
    let ran = load(&delta, &public, &store);
    assert_eq!(ran.code, Some(POLICY), "{}", ran.stderr);
    assert!(ran.stderr.contains("needs 1 entries"), "{}", ran.stderr);
    assert!(
        ran.stderr.contains(&format!("sha256:{}", victim.sha256)),
        "{}",
        ran.stderr
    );
    assert_eq!(snapshot(&store), before);
    assert_eq!(names_in(root), names_before, "no staging dir left");

    // Repaired from the base, the delta loads.
    run_ok(
        edgeferry()
            .args(["store", "check", "--store"])
            .arg(&store)
            .arg("--repair")
            .arg(&base)
            .arg("--key")
            .arg(&public),
    );
    let ran = load(&delta, &public, &store);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
}

#[test]
fn an_edited_omitted_list_is_refused_by_the_signature_and_format_1_still_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (key_path, public) = keygen(&root.join("keys"));
    let key = SigningKey::from_file(&key_path).unwrap();
    let base = sample_bundle(
        ARCH,
        BASE_VERSION,
        &key_path,
        &root.join("base"),
        BASE_EPOCH,
    );
    let (delta, ran) = build(&key_path, &root.join("delta"), Some(&base), &[]);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);

    // Drop one entry from expected_present, re-pack with the original
    // manifest signature, and sign the new file with the same key: only
    // the manifest's own signature can tell.
    let entries = entries_of(&delta);
    let mut manifest: Manifest = serde_json::from_slice(&entries[0].1).unwrap();
    let dropped = manifest.delta.as_mut().unwrap().expected_present.remove(0);
    let mut tar = Vec::new();
    append_raw(
        &mut tar,
        &regular(format::MANIFEST_PATH, &manifest.to_bytes()),
    );
    for (path, data) in &entries[1..] {
        append_raw(&mut tar, &regular(path, data));
    }
    tar.extend_from_slice(&[0u8; 1024]);
    let (bytes, sig) = sign_whole(&key, tar, &manifest.bundle_id);
    let tampered = root.join("tampered.tar.zst");
    std::fs::write(&tampered, bytes).unwrap();
    std::fs::write(root.join("tampered.tar.zst.minisig"), sig).unwrap();
    let ran = run(edgeferry()
        .arg("verify")
        .arg(&tampered)
        .arg("--key")
        .arg(&public)
        .arg("--json"));
    assert_eq!(ran.code, Some(3), "{}", ran.stderr);
    let failed: serde_json::Value = serde_json::from_str(ran.stdout.trim()).unwrap();
    assert_eq!(failed["class"], "signature");
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("does not match the data"),
        "{failed}"
    );
    assert!(dropped.path.starts_with("images/blobs/") || dropped.path.starts_with("files/"));

    // A format 1 bundle (as builders before format 2 wrote them) verifies;
    // a format 1 manifest with a delta field, or format 3, is refused.
    let data = b"keadm".to_vec();
    let v1 = |version: u32, delta: bool| {
        let manifest = Manifest {
            format_version: version,
            bundle_id: String::new(),
            kubeedge_version: VERSION.into(),
            arch: format::Arch::Amd64,
            sequence: 1,
            created: format::rfc3339_utc(BASE_EPOCH),
            builder: "edgeferry-builder 0.1.0".into(),
            sample: true,
            files: Vec::new(),
            images: Vec::new(),
            entries: vec![Entry {
                path: "files/keadm.tar.gz".into(),
                size: data.len() as u64,
                sha256: sha256_hex(&data),
            }],
            delta: delta.then(|| format::Delta {
                base: format::BaseInfo {
                    kind: BaseKind::Inventory,
                    bundle_ids: Vec::new(),
                    kubeedge_version: None,
                    sequence: None,
                },
                expected_present: Vec::new(),
            }),
        };
        let (mut tar, id) = signed_tar(&key, manifest, &[regular("files/keadm.tar.gz", &data)]);
        tar.extend_from_slice(&[0u8; 1024]);
        let (bytes, sig) = sign_whole(&key, tar, &id);
        let path = root.join(format!("v{version}-{delta}.tar.zst"));
        std::fs::write(&path, bytes).unwrap();
        std::fs::write(format!("{}.minisig", path.display()), sig).unwrap();
        run(edgeferry()
            .arg("verify")
            .arg(&path)
            .arg("--key")
            .arg(&public))
    };
    let ran = v1(1, false);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let ran = v1(1, true);
    assert_eq!(ran.code, Some(4), "{}", ran.stderr);
    assert!(
        ran.stderr.contains("a format 1 manifest has a delta field"),
        "{}",
        ran.stderr
    );
    let ran = v1(3, false);
    assert_eq!(ran.code, Some(4), "{}", ran.stderr);
    assert!(
        ran.stderr
            .contains("format version 3 is not one this edgeferry reads"),
        "{}",
        ran.stderr
    );
}

//! The CycloneDX SBOM every bundle carries (`sbom.cdx.json`, first entry
//! after the signature, and beside the bundle): valid by the CycloneDX
//! project's own schema validator, reproducible, equal to the copy beside
//! the bundle, complete against the signed manifest, and covered by the
//! manifest's per-entry hash.

use std::path::{Path, PathBuf};
use std::process::Command;

use edgeferry_bundle::sign::SigningKey;
use edgeferry_tests::crafted::sign_whole;
use edgeferry_tests::*;
use serde_json::Value;

const EPOCH: u64 = 1_763_000_000;
const VERSION: &str = "v1.23.1";
const SBOM_ENTRY: &str = "sbom.cdx.json";

/// The CycloneDX library the validator comes from, as `cargo xtask ci`
/// installs it (xtask/src/util.rs, PYTHON_PACKAGES).
const VALIDATOR_PACKAGE: &str = "cyclonedx-python-lib[json-validation]==11.12.0";

/// Validates with cyclonedx-python-lib's strict JSON schema validator for
/// CycloneDX 1.6. Exit 3: the library is not installed.
const VALIDATE: &str = r#"
import sys
try:
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator
except ImportError as e:
    print(e)
    sys.exit(3)
with open(sys.argv[1]) as f:
    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(f.read())
if error is not None:
    print(error)
    sys.exit(1)
print("valid")
"#;

fn validate(sbom: &Path) -> Ran {
    let ran = run(Command::new("python3").arg("-c").arg(VALIDATE).arg(sbom));
    assert_ne!(
        ran.code,
        Some(3),
        "the CycloneDX validator is missing ({}): pip install '{VALIDATOR_PACKAGE}' (`cargo xtask ci` installs it)",
        ran.stdout.trim()
    );
    ran
}

fn beside(bundle: &Path) -> PathBuf {
    PathBuf::from(format!("{}.sbom.cdx.json", bundle.display()))
}

fn unpack(bundle: &Path, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    run_ok(
        Command::new("tar")
            .arg("--zstd")
            .arg("-xf")
            .arg(bundle)
            .arg("-C")
            .arg(dir),
    );
}

fn property<'a>(component: &'a Value, name: &str) -> Option<&'a str> {
    component["properties"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == name)?["value"]
        .as_str()
}

fn hash<'a>(component: &'a Value, alg: &str) -> Option<&'a str> {
    component["hashes"]
        .as_array()?
        .iter()
        .find(|h| h["alg"] == alg)?["content"]
        .as_str()
}

#[test]
fn every_bundle_carries_a_valid_reproducible_complete_sbom() {
    require_tool("python3", "python3");
    require_tool("zstd", "zstd");
    let tmp = tempfile::tempdir().unwrap();
    let (key, public) = keygen(&tmp.path().join("keys"));
    let first = sample_bundle("arm", VERSION, &key, &tmp.path().join("first"), EPOCH);
    let second = sample_bundle("arm", VERSION, &key, &tmp.path().join("second"), EPOCH);
    let sbom_bytes = std::fs::read(beside(&first)).unwrap();

    // Reproducible: two builds, same SBOM and same bundle, byte for byte.
    assert!(sbom_bytes == std::fs::read(beside(&second)).unwrap());
    assert!(std::fs::read(&first).unwrap() == std::fs::read(&second).unwrap());

    // Valid by the CycloneDX project's validator.
    let ran = validate(&beside(&first));
    assert_eq!(
        ran.code,
        Some(0),
        "the SBOM is not valid CycloneDX 1.6: {}{}",
        ran.stdout,
        ran.stderr
    );

    // The entry right after the signature, equal to the file beside.
    let listing = run_ok(Command::new("tar").arg("--zstd").arg("-tf").arg(&first)).stdout;
    let names: Vec<&str> = listing.lines().take(3).collect();
    assert_eq!(
        names,
        ["manifest.json", "manifest.json.minisig", SBOM_ENTRY]
    );
    let unpacked = tmp.path().join("unpacked");
    unpack(&first, &unpacked);
    assert!(std::fs::read(unpacked.join(SBOM_ENTRY)).unwrap() == sbom_bytes);

    // Complete, checked against the signed manifest (and the image
    // manifests it names), not against the SBOM code.
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(unpacked.join("manifest.json")).unwrap()).unwrap();
    let sbom: Value = serde_json::from_slice(&sbom_bytes).unwrap();
    assert_eq!(sbom["bomFormat"], "CycloneDX");
    assert_eq!(sbom["specVersion"], "1.6");
    assert_eq!(sbom["version"], 1);
    assert_eq!(sbom["metadata"]["timestamp"], manifest["created"]);
    assert_eq!(sbom["metadata"]["timestamp"], "2025-11-13T02:13:20Z");
    assert_eq!(sbom["metadata"]["component"]["name"], "kubeedge");
    assert_eq!(sbom["metadata"]["component"]["version"], VERSION);
    let tool = &sbom["metadata"]["tools"]["components"][0];
    assert_eq!(
        format!(
            "{} {}",
            tool["name"].as_str().unwrap(),
            tool["version"].as_str().unwrap()
        ),
        manifest["builder"].as_str().unwrap()
    );
    let serial = sbom["serialNumber"].as_str().unwrap();
    assert!(
        serial.starts_with("urn:uuid:") && serial.len() == 45,
        "{serial}"
    );
    let components = sbom["components"].as_array().unwrap();

    let entries = manifest["entries"].as_array().unwrap();
    assert_eq!(entries[0]["path"], SBOM_ENTRY);
    assert_eq!(entries[0]["sha256"], sha256_hex(&sbom_bytes));
    let files: Vec<&Value> = entries
        .iter()
        .filter(|e| e["path"].as_str().unwrap().starts_with("files/"))
        .collect();
    assert_eq!(files.len(), 4, "keadm, kubeedge and their checksum files");
    for entry in &files {
        let path = entry["path"].as_str().unwrap();
        let component = components
            .iter()
            .find(|c| c["type"] == "file" && property(c, "edgeferry:path") == Some(path))
            .unwrap_or_else(|| panic!("{path} is not in the SBOM"));
        assert_eq!(component["name"], path.strip_prefix("files/").unwrap());
        assert_eq!(hash(component, "SHA-256"), entry["sha256"].as_str());
        assert_eq!(
            property(component, "edgeferry:size"),
            Some(entry["size"].to_string().as_str())
        );
        let upstream = manifest["files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["path"] == path)
            .map(|f| f["sha512"].as_str().unwrap());
        assert_eq!(hash(component, "SHA-512"), upstream, "{path}");
    }

    let images = manifest["images"].as_array().unwrap();
    assert_eq!(images.len(), 5);
    let containers: Vec<&Value> = components
        .iter()
        .filter(|c| c["type"] == "container")
        .collect();
    assert_eq!(containers.len(), images.len());
    for image in images {
        let reference = image["reference"].as_str().unwrap();
        let digest = image["manifest_digest"].as_str().unwrap();
        let component = containers
            .iter()
            .find(|c| property(c, "edgeferry:reference") == Some(reference))
            .unwrap_or_else(|| panic!("{reference} is not in the SBOM"));
        let (repository, tag) = reference.rsplit_once(':').unwrap();
        let name = repository.rsplit('/').next().unwrap();
        assert_eq!(
            component["purl"].as_str().unwrap(),
            format!(
                "pkg:oci/{name}@sha256%3A{}?arch=arm&repository_url={repository}&tag={tag}",
                &digest[7..]
            )
        );
        assert_eq!(component["version"], digest);
        assert_eq!(hash(component, "SHA-256"), Some(&digest[7..]));
        assert_eq!(
            property(component, "edgeferry:platform"),
            Some("linux/arm/v7")
        );
        assert_eq!(
            property(component, "edgeferry:index-digest"),
            image["index_digest"].as_str()
        );
        // Config and layers: from the image manifest the bundle carries.
        let image_manifest: Value = serde_json::from_slice(
            &std::fs::read(unpacked.join("images/blobs/sha256").join(&digest[7..])).unwrap(),
        )
        .unwrap();
        let expected: Vec<(String, String)> = std::iter::once(&image_manifest["config"])
            .chain(image_manifest["layers"].as_array().unwrap())
            .map(|d| {
                (
                    d["digest"].as_str().unwrap()[7..].to_string(),
                    d["size"].to_string(),
                )
            })
            .collect();
        let nested: Vec<(String, String)> = component["components"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    hash(c, "SHA-256").unwrap().to_string(),
                    property(c, "edgeferry:size").unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(nested, expected, "{reference}: config and layers");
    }
    assert_eq!(
        components.len(),
        files.len() + images.len(),
        "nothing else is listed"
    );
    assert!(!String::from_utf8_lossy(&sbom_bytes).contains("edgeferry:omitted"));

    // The installer verifies it like every entry.
    run_ok(
        edgeferry()
            .arg("verify")
            .arg(&first)
            .arg("--key")
            .arg(&public),
    );
}

/// Offsets of the body of `path` in a plain tar stream.
fn body_of(tar: &[u8], path: &str) -> std::ops::Range<usize> {
    let mut at = 0;
    while at + 512 <= tar.len() {
        let header = &tar[at..at + 512];
        let name = String::from_utf8_lossy(&header[..100])
            .trim_end_matches('\0')
            .to_string();
        let size = usize::from_str_radix(
            std::str::from_utf8(&header[124..135])
                .unwrap()
                .trim_matches('\0'),
            8,
        )
        .unwrap();
        if name == path {
            return at + 512..at + 512 + size;
        }
        at += 512 + size.div_ceil(512) * 512;
    }
    panic!("{path} is not in the tar stream");
}

#[test]
fn a_flipped_byte_in_the_sbom_entry_is_refused_by_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let (key, public) = keygen(&tmp.path().join("keys"));
    let bundle = sample_bundle("amd64", VERSION, &key, &tmp.path().join("out"), EPOCH);
    let mut tar = zstd::decode_all(&std::fs::read(&bundle).unwrap()[..]).unwrap();
    let body = body_of(&tar, SBOM_ENTRY);
    let manifest: Value = serde_json::from_slice(&tar[body_of(&tar, "manifest.json")]).unwrap();
    let id = manifest["bundle_id"].as_str().unwrap().to_string();
    tar[body.start + body.len() / 2] ^= 0x01;
    // A valid whole-file signature over the changed bytes: only the
    // manifest's per-entry hash can catch the change.
    let signer = SigningKey::from_file(&key).unwrap();
    let (mutant, signature) = sign_whole(&signer, tar, &id);
    let path = tmp.path().join("mutant.tar.zst");
    std::fs::write(&path, mutant).unwrap();
    std::fs::write(tmp.path().join("mutant.tar.zst.minisig"), signature).unwrap();
    let ran = run(edgeferry()
        .arg("verify")
        .arg(&path)
        .arg("--key")
        .arg(&public));
    assert_eq!(ran.code, Some(4), "{}{}", ran.stdout, ran.stderr);
    assert_eq!(ran.stderr.lines().count(), 1, "{}", ran.stderr);
    assert!(
        ran.stderr.contains(&format!(
            "entry {SBOM_ENTRY}: expected sha256 {}",
            manifest["entries"][0]["sha256"].as_str().unwrap()
        )),
        "{}",
        ran.stderr
    );
}

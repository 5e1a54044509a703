//! The bundle's SBOM: a CycloneDX 1.6 JSON document listing every release
//! file and every image (with its config and layers) the bundle describes,
//! the KubeEdge version as the described component and the builder as the
//! tool. It is made from plain data, so two builds of the same input give
//! the same bytes: the timestamp is the manifest's `created`, the serial
//! number is derived from the document's own content, and every list keeps
//! the manifest's order.

use std::path::{Path, PathBuf};

use anyhow::Result;
use edgeferry_bundle::format::{Arch, Entry, Manifest};
use edgeferry_bundle::hashing::sha256_hex;
use edgeferry_bundle::pack::PackEntry;
use serde_json::{json, Value};

use crate::oci::{Blob, ResolvedImage};

/// The CycloneDX version written.
pub const SPEC_VERSION: &str = "1.6";
/// Property marking a component whose bytes a delta bundle leaves out.
pub const OMITTED_PROPERTY: &str = "edgeferry:omitted";

/// What the SBOM describes: the full content of a bundle.
#[derive(Clone, Debug)]
pub struct SbomInput {
    pub kubeedge_version: String,
    pub arch: Arch,
    /// RFC 3339 UTC, the manifest's `created`.
    pub created: String,
    /// The builder's own version (without its name).
    pub builder_version: String,
    pub sample: bool,
    pub files: Vec<SbomFile>,
    pub images: Vec<SbomImage>,
}

/// One entry under `files/`.
#[derive(Clone, Debug)]
pub struct SbomFile {
    /// `files/<name>`.
    pub path: String,
    pub size: u64,
    /// Lowercase hex.
    pub sha256: String,
    /// The upstream SHA-512 (lowercase hex), for release assets.
    pub sha512: Option<String>,
}

/// One blob of an image.
#[derive(Clone, Debug)]
pub struct SbomBlob {
    /// `sha256:<hex>`.
    pub digest: String,
    pub size: u64,
    pub media_type: String,
}

/// One image, resolved to the bundle's arch.
#[derive(Clone, Debug)]
pub struct SbomImage {
    /// Full upstream reference, `registry/repository:tag`.
    pub reference: String,
    /// `linux/arm64`, `linux/arm/v7`.
    pub platform: String,
    pub manifest: SbomBlob,
    pub index: Option<SbomBlob>,
    pub config: SbomBlob,
    pub layers: Vec<SbomBlob>,
}

impl SbomInput {
    /// What a build packs: the manifest's identifying fields and files
    /// (sizes and sha256 from the entries) and the resolved images.
    pub fn from_build(
        manifest: &Manifest,
        entries: &[PackEntry],
        images: &[ResolvedImage],
        builder_version: &str,
    ) -> SbomInput {
        let files = entries
            .iter()
            .filter(|e| e.path.starts_with("files/"))
            .map(|e| SbomFile {
                path: e.path.clone(),
                size: e.size,
                sha256: e.sha256.clone(),
                sha512: manifest
                    .files
                    .iter()
                    .find(|f| f.path == e.path)
                    .and_then(|f| f.sha512.clone()),
            })
            .collect();
        let blob = |b: &Blob| SbomBlob {
            digest: b.digest.clone(),
            size: b.size,
            media_type: b.media_type.clone(),
        };
        SbomInput {
            kubeedge_version: manifest.kubeedge_version.clone(),
            arch: manifest.arch,
            created: manifest.created.clone(),
            builder_version: builder_version.to_string(),
            sample: manifest.sample,
            files,
            images: images
                .iter()
                .map(|i| SbomImage {
                    reference: i.reference.clone(),
                    platform: i.platform.clone(),
                    manifest: blob(&i.manifest),
                    index: i.index.as_ref().map(blob),
                    config: blob(&i.config),
                    layers: i.layers.iter().map(blob).collect(),
                })
                .collect(),
        }
    }
}

/// `<bundle file name>.sbom.cdx.json` beside the bundle.
pub fn path_beside(bundle: &Path) -> PathBuf {
    let mut name = bundle.file_name().unwrap_or_default().to_os_string();
    name.push(".sbom.cdx.json");
    bundle.with_file_name(name)
}

/// Writes the SBOM beside the bundle (temp file + rename).
pub fn write_beside(bundle: &Path, sbom: &[u8]) -> Result<PathBuf> {
    let path = path_beside(bundle);
    edgeferry_bundle::atomic::write_file(&path, sbom, 0o644)?;
    Ok(path)
}

/// The SBOM's exact bytes: pretty JSON and a trailing newline. Every
/// component whose sha256 is among `omitted` (empty for a full bundle)
/// carries the property `edgeferry:omitted` = `true`.
pub fn sbom(input: &SbomInput, omitted: &[Entry]) -> Vec<u8> {
    let is_omitted = |sha256: &str| omitted.iter().any(|e| e.sha256 == sha256);
    let mut components = Vec::new();
    for file in &input.files {
        let name = file.path.strip_prefix("files/").unwrap_or(&file.path);
        let mut hashes = vec![hash("SHA-256", &file.sha256)];
        if let Some(sha512) = &file.sha512 {
            hashes.push(hash("SHA-512", sha512));
        }
        let mut properties = vec![
            property("edgeferry:path", &file.path),
            property("edgeferry:size", &file.size.to_string()),
        ];
        if is_omitted(&file.sha256) {
            properties.push(property(OMITTED_PROPERTY, "true"));
        }
        components.push(json!({
            "type": "file",
            "bom-ref": format!("file:{}", file.path),
            "name": name,
            "hashes": hashes,
            "properties": properties,
        }));
    }
    for image in &input.images {
        components.push(image_component(image, input.arch, &is_omitted));
    }

    let mut metadata_properties = vec![
        property("edgeferry:arch", input.arch.as_str()),
        property(
            "edgeferry:sample",
            if input.sample { "true" } else { "false" },
        ),
    ];
    if !omitted.is_empty() {
        metadata_properties.push(property("edgeferry:delta", "true"));
    }
    let mut document = json!({
        "bomFormat": "CycloneDX",
        "specVersion": SPEC_VERSION,
        "serialNumber": "",
        "version": 1,
        "metadata": {
            "timestamp": input.created,
            "tools": {
                "components": [{
                    "type": "application",
                    "name": "edgeferry-builder",
                    "version": input.builder_version,
                }],
            },
            "component": {
                "type": "platform",
                "bom-ref": "kubeedge",
                "name": "kubeedge",
                "version": input.kubeedge_version,
                "purl": format!("pkg:github/kubeedge/kubeedge@{}", input.kubeedge_version),
            },
            "properties": metadata_properties,
        },
        "components": components,
    });
    // Derived from the content: same input, same serial number.
    let digest = sha256_hex(&to_bytes(&document));
    document["serialNumber"] = Value::String(uuid_from_hex(&digest));
    to_bytes(&document)
}

/// The CycloneDX `serialNumber` for a sha256: a version-5-shaped UUID
/// (RFC 9562 name-based layout) from its first 32 hex digits.
fn uuid_from_hex(hex: &str) -> String {
    let mut digits: Vec<char> = hex[..32].chars().collect();
    digits[12] = '5';
    let variant = u8::from_str_radix(&hex[16..17], 16).expect("hex digit");
    digits[16] = char::from_digit(u32::from(0x8 | (variant & 0x3)), 16).expect("digit");
    let s: String = digits.into_iter().collect();
    format!(
        "urn:uuid:{}-{}-{}-{}-{}",
        &s[..8],
        &s[8..12],
        &s[12..16],
        &s[16..20],
        &s[20..32]
    )
}

fn image_component(image: &SbomImage, arch: Arch, is_omitted: &dyn Fn(&str) -> bool) -> Value {
    let (repository, tag) = split_reference(&image.reference);
    let name = repository
        .rsplit('/')
        .next()
        .unwrap_or(repository)
        .to_ascii_lowercase();
    let hex = |digest: &str| digest.strip_prefix("sha256:").unwrap_or(digest).to_string();
    let (architecture, _) = arch.oci_platform();
    // purl-spec, type oci: name is the last path component, version the
    // manifest digest (`:` percent-encoded), qualifiers sorted by key.
    let mut purl = format!(
        "pkg:oci/{name}@{}?arch={architecture}&repository_url={repository}",
        image.manifest.digest.replace(':', "%3A")
    );
    if let Some(tag) = tag {
        purl.push_str(&format!("&tag={tag}"));
    }
    let mut properties = vec![
        property("edgeferry:reference", &image.reference),
        property("edgeferry:platform", &image.platform),
        property("edgeferry:manifest-media-type", &image.manifest.media_type),
        property("edgeferry:size", &image.manifest.size.to_string()),
    ];
    if let Some(index) = &image.index {
        properties.push(property("edgeferry:index-digest", &index.digest));
        properties.push(property("edgeferry:index-media-type", &index.media_type));
        if is_omitted(&hex(&index.digest)) {
            properties.push(property("edgeferry:index-omitted", "true"));
        }
    }
    if is_omitted(&hex(&image.manifest.digest)) {
        properties.push(property(OMITTED_PROPERTY, "true"));
    }
    let blob = |blob: &SbomBlob, role: &str| {
        let mut properties = vec![
            property("edgeferry:role", role),
            property("edgeferry:media-type", &blob.media_type),
            property("edgeferry:size", &blob.size.to_string()),
        ];
        if is_omitted(&hex(&blob.digest)) {
            properties.push(property(OMITTED_PROPERTY, "true"));
        }
        json!({
            "type": "data",
            "name": blob.digest,
            "hashes": [hash("SHA-256", &hex(&blob.digest))],
            "properties": properties,
        })
    };
    let nested: Vec<Value> = std::iter::once(blob(&image.config, "config"))
        .chain(image.layers.iter().map(|l| blob(l, "layer")))
        .collect();
    json!({
        "type": "container",
        "bom-ref": format!("image:{}", image.reference),
        "name": name,
        "version": image.manifest.digest,
        "purl": purl,
        "hashes": [hash("SHA-256", &hex(&image.manifest.digest))],
        "properties": properties,
        "components": nested,
    })
}

/// `registry/path:tag` → (`registry/path`, `tag`); a digest suffix is dropped.
fn split_reference(reference: &str) -> (&str, Option<&str>) {
    let without_digest = reference.split('@').next().unwrap_or(reference);
    let last_slash = without_digest.rfind('/').unwrap_or(0);
    match without_digest[last_slash..].rfind(':') {
        Some(i) => (
            &without_digest[..last_slash + i],
            Some(&without_digest[last_slash + i + 1..]),
        ),
        None => (without_digest, None),
    }
}

fn hash(alg: &str, content: &str) -> Value {
    json!({ "alg": alg, "content": content })
}

fn property(name: &str, value: &str) -> Value {
    json!({ "name": name, "value": value })
}

fn to_bytes(document: &Value) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(document).expect("SBOM serialises");
    bytes.push(b'\n');
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> SbomInput {
        let blob = |c: char, media_type: &str| SbomBlob {
            digest: format!("sha256:{}", c.to_string().repeat(64)),
            size: 10,
            media_type: media_type.into(),
        };
        SbomInput {
            kubeedge_version: "v1.23.1".into(),
            arch: Arch::Arm,
            created: "2025-11-13T02:13:20Z".into(),
            builder_version: "0.1.0".into(),
            sample: true,
            files: vec![SbomFile {
                path: "files/keadm-v1.23.1-linux-arm.tar.gz".into(),
                size: 5,
                sha256: "1".repeat(64),
                sha512: Some("2".repeat(128)),
            }],
            images: vec![SbomImage {
                reference: "docker.io/kubeedge/installation-package:v1.23.1".into(),
                platform: "linux/arm/v7".into(),
                manifest: blob('a', "application/vnd.oci.image.manifest.v1+json"),
                index: None,
                config: blob('b', "application/vnd.oci.image.config.v1+json"),
                layers: vec![blob('c', "application/vnd.oci.image.layer.v1.tar+gzip")],
            }],
        }
    }

    #[test]
    fn deterministic_and_marks_omitted() {
        let full = sbom(&input(), &[]);
        assert_eq!(full, sbom(&input(), &[]));
        let text = String::from_utf8(full.clone()).unwrap();
        assert!(text.ends_with("}\n"));
        assert!(text.contains(&format!(
            "pkg:oci/installation-package@sha256%3A{}?arch=arm&repository_url=docker.io/kubeedge/installation-package&tag=v1.23.1",
            "a".repeat(64)
        )));
        assert!(!text.contains(OMITTED_PROPERTY));
        let omitted = [Entry {
            path: format!("images/blobs/sha256/{}", "c".repeat(64)),
            size: 10,
            sha256: "c".repeat(64),
        }];
        let delta = String::from_utf8(sbom(&input(), &omitted)).unwrap();
        assert_eq!(delta.matches(OMITTED_PROPERTY).count(), 1);
        let doc: Value = serde_json::from_str(&delta).unwrap();
        let serial = doc["serialNumber"].as_str().unwrap();
        assert_eq!(serial.len(), "urn:uuid:".len() + 36);
        assert_eq!(&serial[23..24], "5");
    }

    #[test]
    fn references_split() {
        assert_eq!(
            split_reference("localhost:5000/a/b:v1"),
            ("localhost:5000/a/b", Some("v1"))
        );
        assert_eq!(
            split_reference("localhost:5000/a/b"),
            ("localhost:5000/a/b", None)
        );
    }
}

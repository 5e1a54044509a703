//! Carrying out a [`Plan`]: check every release asset against its upstream
//! checksum, resolve every image to the plan's arch, lay the images out as
//! one OCI layout, and pack it all.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use edgeferry_bundle::format::{self, FileRecord, ImageRecord, Manifest};
use edgeferry_bundle::hashing::hex;
use edgeferry_bundle::pack::{self, PackEntry, PackOptions, Packed, Source};
use edgeferry_bundle::sign::SigningKey;
use serde::Serialize;
use sha2::{Digest, Sha256, Sha512};

use crate::fetch;
use crate::oci::{self, Blob, ResolvedImage};
use crate::plan::{Origin, Plan};
use crate::sample;

pub const BUILDER: &str = concat!("edgeferry-builder ", env!("CARGO_PKG_VERSION"));

/// Runs the plan. `progress` learns the total once known, then each chunk.
pub fn build(plan: &Plan, key: &SigningKey, progress: &mut dyn Progress) -> Result<Packed> {
    // The sample directory lives exactly as long as the build needs it.
    let sample_dir;
    let mut fetched = None;
    let from: PathBuf = match &plan.origin {
        Origin::Dir(dir) => dir.clone(),
        Origin::Sample => {
            sample_dir = tempfile::tempdir().context("creating a temp dir for the sample")?;
            sample::write_sample_dir(sample_dir.path(), &sample_spec(plan))?;
            sample_dir.path().to_path_buf()
        }
        Origin::Online(online) => {
            fetched = Some(fetch::fetch(plan, online, progress.show_downloads())?);
            online.cache.clone()
        }
    };
    let mut entries = Vec::new();
    let mut files = Vec::new();
    for planned in &plan.files {
        let (path, checksum_path) = match &fetched {
            // The fetcher checked what the release has; an optional asset
            // it lacks is simply not there.
            Some(fetched) => match fetched.files.get(&planned.name) {
                Some(f) => (f.path.clone(), f.checksum_path.clone()),
                None => continue,
            },
            None => (
                from.join("files").join(&planned.name),
                from.join("files").join(&planned.checksum),
            ),
        };
        if !path.exists() {
            if planned.required {
                bail!(
                    "missing release asset {}: put it and {} from the KubeEdge {} release into {}",
                    path.display(),
                    planned.checksum,
                    plan.kubeedge_version,
                    from.join("files").display()
                );
            }
            continue;
        }
        let checked = check_release_asset(&path, &checksum_path)?;
        let checksum_bytes = std::fs::read(&checksum_path)?;
        files.push(FileRecord {
            path: format!("files/{}", planned.name),
            checksum_path: Some(format!("files/{}", planned.checksum)),
            sha512: Some(checked.sha512.clone()),
        });
        let asset_path = path.clone();
        entries.push(PackEntry {
            path: format!("files/{}", planned.name),
            size: checked.size,
            sha256: checked.sha256,
            source: Source::Open(Box::new(move || {
                Ok(Box::new(std::fs::File::open(&asset_path)?) as Box<dyn Read + Send>)
            })),
        });
        entries.push(PackEntry::bytes(
            format!("files/{}", planned.checksum),
            checksum_bytes,
        ));
    }

    let resolved = match fetched {
        Some(fetched) => fetched.images,
        None => {
            let catalog = oci::scan(&from.join("images"))?;
            let mut resolved = Vec::new();
            for planned in &plan.images {
                resolved.push(catalog.resolve(&planned.reference, plan.arch)?);
            }
            resolved
        }
    };
    let (layout_entries, images) = image_layout(&resolved)?;
    entries.extend(layout_entries);

    let manifest = Manifest {
        format_version: format::FORMAT_VERSION,
        bundle_id: String::new(),
        kubeedge_version: plan.kubeedge_version.clone(),
        arch: plan.arch,
        sequence: plan.sequence,
        created: plan.created.clone(),
        builder: BUILDER.to_string(),
        sample: matches!(plan.origin, Origin::Sample),
        files,
        images,
        entries: Vec::new(),
    };
    progress.start(entries.iter().map(|e| e.size).sum());
    let options = PackOptions {
        level: plan.level,
        mtime: plan.created_unix,
        ..PackOptions::default()
    };
    let packed = pack::pack(manifest, entries, key, plan.out_dir(), &options, &mut |n| {
        progress.advance(n)
    })?;
    progress.finish();
    Ok(packed)
}

pub trait Progress {
    fn start(&mut self, total_bytes: u64);
    fn advance(&mut self, bytes: u64);
    fn finish(&mut self);
    /// Whether the online origin draws a progress bar per download.
    fn show_downloads(&self) -> bool {
        false
    }
}

/// No progress display (tests, `--json`, non-terminals).
pub struct Silent;

impl Progress for Silent {
    fn start(&mut self, _: u64) {}
    fn advance(&mut self, _: u64) {}
    fn finish(&mut self) {}
}

pub fn sample_spec(plan: &Plan) -> sample::SampleSpec {
    let by_role = |role: &str| {
        plan.images
            .iter()
            .find(|i| i.role == role)
            .map(|i| i.reference.clone())
            .unwrap_or_default()
    };
    sample::SampleSpec {
        kubeedge_version: plan.kubeedge_version.clone(),
        installation_package_image: by_role("installation-package"),
        pause_image: by_role("pause"),
        mosquitto_image: by_role("mqtt"),
        extra_images: plan
            .images
            .iter()
            .filter(|i| i.role == "extra")
            .map(|i| i.reference.clone())
            .collect(),
    }
}

pub struct CheckedAsset {
    pub size: u64,
    pub sha256: String,
    pub sha512: String,
}

/// The digest in an upstream `checksum_<asset>.txt`: the bare lowercase
/// SHA-512 hex KubeEdge writes (a `sha512sum`-style trailing name is
/// tolerated), or `None` if the file holds no such digest.
pub fn parse_checksum_file(text: &str) -> Option<String> {
    let expected = text.split_whitespace().next()?.to_ascii_lowercase();
    (expected.len() == 128 && expected.bytes().all(|b| b.is_ascii_hexdigit())).then_some(expected)
}

/// Streams `path` once through sha512 and sha256 and compares the sha512
/// with the bare hex in the upstream checksum file.
pub fn check_release_asset(path: &Path, checksum_path: &Path) -> Result<CheckedAsset> {
    let text = std::fs::read_to_string(checksum_path).map_err(|e| {
        anyhow::anyhow!(
            "missing or unreadable checksum file {} for {}: {e}: put the checksum file from the same KubeEdge release next to it",
            checksum_path.display(),
            path.display()
        )
    })?;
    let Some(expected) = parse_checksum_file(&text) else {
        bail!(
            "checksum file {} does not hold a SHA-512 hex digest: fetch it again from the KubeEdge release",
            checksum_path.display()
        );
    };
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut sha512 = Sha512::new();
    let mut sha256 = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        sha512.update(&buf[..n]);
        sha256.update(&buf[..n]);
        size += n as u64;
    }
    let actual = hex(&sha512.finalize());
    if actual != expected {
        bail!(
            "release asset {} has sha512 {actual} but {} says {expected}: the download is corrupt or not from this release, fetch both again",
            path.display(),
            checksum_path.display()
        );
    }
    Ok(CheckedAsset {
        size,
        sha256: hex(&sha256.finalize()),
        sha512: actual,
    })
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OciIndex<'a> {
    schema_version: u32,
    media_type: &'a str,
    manifests: Vec<OciDescriptor<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OciDescriptor<'a> {
    media_type: &'a str,
    digest: &'a str,
    size: u64,
    platform: OciPlatform<'a>,
    annotations: BTreeMap<&'a str, &'a str>,
}

#[derive(Serialize)]
struct OciPlatform<'a> {
    architecture: &'a str,
    os: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    variant: Option<&'a str>,
}

/// Annotation on each `index.json` entry naming the upstream index digest.
pub const ANNOTATION_INDEX_DIGEST: &str = "io.edgeferry.upstream-index.digest";

/// One OCI layout for all images: `index.json` lists each image's platform
/// manifest under its full upstream name; every blob (the upstream index
/// included, byte-exact) is stored once.
fn image_layout(resolved: &[ResolvedImage]) -> Result<(Vec<PackEntry>, Vec<ImageRecord>)> {
    let mut blobs: BTreeMap<String, &Blob> = BTreeMap::new();
    let mut descriptors = Vec::new();
    let mut records = Vec::new();
    for image in resolved {
        for blob in image.blobs() {
            blobs.entry(blob.digest.clone()).or_insert(blob);
        }
        let mut parts = image.platform.split('/');
        let (os, architecture, variant) = (parts.next(), parts.next(), parts.next());
        let mut annotations = BTreeMap::new();
        annotations.insert(
            "org.opencontainers.image.ref.name",
            image.reference.as_str(),
        );
        if let Some(index) = &image.index {
            annotations.insert(ANNOTATION_INDEX_DIGEST, index.digest.as_str());
        }
        descriptors.push(OciDescriptor {
            media_type: &image.manifest.media_type,
            digest: &image.manifest.digest,
            size: image.manifest.size,
            platform: OciPlatform {
                architecture: architecture.unwrap_or_default(),
                os: os.unwrap_or_default(),
                variant,
            },
            annotations,
        });
        records.push(ImageRecord {
            reference: image.reference.clone(),
            manifest_digest: image.manifest.digest.clone(),
            manifest_media_type: image.manifest.media_type.clone(),
            index_digest: image.index.as_ref().map(|b| b.digest.clone()),
            index_media_type: image.index.as_ref().map(|b| b.media_type.clone()),
            platform: image.platform.clone(),
        });
    }
    let index = OciIndex {
        schema_version: 2,
        media_type: oci::MEDIA_OCI_INDEX,
        manifests: descriptors,
    };
    let mut index_bytes = serde_json::to_vec(&index)?;
    index_bytes.push(b'\n');
    let mut entries = vec![
        PackEntry::bytes(
            "images/oci-layout",
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ),
        PackEntry::bytes("images/index.json", index_bytes),
    ];
    for (digest, blob) in blobs {
        let path = format::blob_path(&digest)
            .with_context(|| format!("blob digest {digest} is not a sha256 digest"))?;
        let source = blob.source.clone();
        entries.push(PackEntry {
            path,
            size: blob.size,
            sha256: format::sha256_hex_of_digest(&digest)
                .expect("checked above")
                .to_string(),
            source: Source::Open(Box::new(move || source.open())),
        });
    }
    Ok((entries, records))
}

//! Deciding what a bundle will hold, as plain data, before any byte is
//! read: `--dry-run` prints this, and `build` carries it out.

use std::path::{Path, PathBuf};

use anyhow::Result;
use edgeferry_bundle::format::{self, Arch};
use serde::Serialize;

use crate::manifests::{self, VersionManifest};
use crate::oci::normalize_reference;

/// Where the artifacts come from.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// A local artifact directory (`docs/artifact-dir.md`).
    Dir(PathBuf),
    /// The built-in sample set, generated on the fly: stand-ins, not KubeEdge.
    Sample,
    /// Fetched from the KubeEdge release and the image registries.
    Online(crate::fetch::Online),
}

/// What the operator asked for.
#[derive(Clone, Debug)]
pub struct Request {
    pub kubeedge_version: String,
    pub arch: Arch,
    pub origin: Origin,
    pub pause_image: Option<String>,
    pub extra_images: Vec<String>,
    pub out_dir: PathBuf,
    pub level: i32,
    pub sequence: Option<u64>,
    /// `SOURCE_DATE_EPOCH`, or now.
    pub created_unix: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    pub kubeedge_version: String,
    pub arch: Arch,
    pub origin: Origin,
    pub out_file: PathBuf,
    pub sequence: u64,
    pub created: String,
    #[serde(skip)]
    pub created_unix: u64,
    pub level: i32,
    pub files: Vec<PlannedFile>,
    pub images: Vec<PlannedImage>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PlannedFile {
    pub name: String,
    pub checksum: String,
    pub required: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct PlannedImage {
    pub reference: String,
    pub role: String,
}

pub fn plan(request: &Request) -> Result<Plan> {
    let manifest: VersionManifest = manifests::for_version(&request.kubeedge_version)?;
    let version = &request.kubeedge_version;
    let arch = request.arch;
    if !manifest.arches.contains(&arch) {
        anyhow::bail!("KubeEdge {version} is not released for linux/{arch}");
    }
    let files = manifest
        .release_assets
        .iter()
        .map(|asset| PlannedFile {
            name: manifests::expand(&asset.name, version, arch),
            checksum: manifests::expand(&asset.checksum, version, arch),
            required: asset.required,
        })
        .collect();
    let mut images = Vec::new();
    let mut add = |reference: &str, role: &str| -> Result<()> {
        let reference = normalize_reference(&manifests::expand(reference, version, arch))
            .map_err(|e| anyhow::anyhow!("image reference {reference:?}: {e}"))?;
        if !images
            .iter()
            .any(|i: &PlannedImage| i.reference == reference)
        {
            images.push(PlannedImage {
                reference,
                role: role.to_string(),
            });
        }
        Ok(())
    };
    for image in &manifest.images {
        match (&request.pause_image, image.role.as_str()) {
            (Some(pause), "pause") => add(pause, "pause")?,
            _ => add(&image.reference, &image.role)?,
        }
    }
    for extra in manifest.extra_images.iter().chain(&request.extra_images) {
        add(extra, "extra")?;
    }
    Ok(Plan {
        kubeedge_version: version.clone(),
        arch,
        origin: request.origin.clone(),
        out_file: request
            .out_dir
            .join(format::bundle_file_name(version, arch)),
        sequence: request.sequence.unwrap_or(request.created_unix),
        created: format::rfc3339_utc(request.created_unix),
        created_unix: request.created_unix,
        level: request.level,
        files,
        images,
    })
}

impl Plan {
    pub fn out_dir(&self) -> &Path {
        self.out_file.parent().unwrap_or(Path::new("."))
    }
}

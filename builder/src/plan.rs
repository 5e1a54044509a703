//! Deciding what a bundle will hold and every step that makes it, as
//! plain data, before any byte is read: `--dry-run` prints this, and
//! `build` carries out its [`Step`]s in order.
//!
//! This module depends on no other step of the builder (not on `fetch`,
//! `build` or `sample`): they read the plan, never the other way round.

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
    Online(Online),
}

/// `--registry-mirror REGISTRY=URL`: fetch images of REGISTRY from URL.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Mirror {
    /// As it appears in normalized references: `docker.io`, `registry.k8s.io`.
    pub registry: String,
    /// `http(s)://host[:port][/prefix]`, without a trailing slash.
    pub url: String,
}

/// Where and how the online origin fetches. Plain data: `--dry-run --json`
/// prints it. Credentials are read from `docker_config` only when needed
/// and are never part of this.
#[derive(Clone, Debug, Serialize)]
pub struct Online {
    pub release_base_url: String,
    pub registry_mirrors: Vec<Mirror>,
    pub cache: PathBuf,
    /// The docker `config.json` whose `auths` are used, if there is one.
    pub docker_config: Option<PathBuf>,
}

/// What the operator asked for.
#[derive(Clone, Debug)]
pub struct Request {
    pub kubeedge_version: String,
    pub arch: Arch,
    pub origin: Origin,
    /// `--pause-image`: the sandbox images to carry instead of the
    /// manifest's (empty: the manifest's).
    pub pause_images: Vec<String>,
    pub extra_images: Vec<String>,
    pub out_dir: PathBuf,
    pub level: i32,
    pub sequence: Option<u64>,
    /// `SOURCE_DATE_EPOCH`, or now.
    pub created_unix: u64,
    /// `--base`: what the site already has (read by `delta::read_base`);
    /// the bundle leaves it out.
    pub base: Option<PlannedBase>,
}

/// The base of a delta, as `--dry-run` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct PlannedBase {
    /// The `--base` file.
    pub path: PathBuf,
    #[serde(flatten)]
    pub info: format::BaseInfo,
    /// Distinct blobs (by sha256) the base holds and their bytes: the most
    /// the delta can leave out.
    pub blobs: usize,
    pub bytes: u64,
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
    /// `--base`: a delta leaves out what this holds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base: Option<PlannedBase>,
    /// Everything `build` will do, in order: the origin, the fetches (online
    /// only), the checks, the omissions (a delta only), the pack.
    pub steps: Vec<Step>,
}

/// One thing `build` does. Steps are listed, and printed by `--dry-run`,
/// before the first one runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// Generate the built-in sample artifact directory in a temp dir.
    WriteSample,
    /// Read release assets and images from a local artifact directory.
    ReadDir { dir: PathBuf },
    /// Download a release asset, checked against its checksum file while it
    /// streams, into the cache (or find it there). An optional asset the
    /// release lacks is skipped.
    FetchFile {
        name: String,
        checksum: String,
        url: String,
        checksum_url: String,
        required: bool,
    },
    /// Fetch an image for the plan's arch over the OCI distribution API
    /// into the cache (or find it there).
    FetchImage { reference: String },
    /// Check a release asset against its upstream SHA-512 checksum file.
    CheckFile {
        name: String,
        checksum: String,
        required: bool,
    },
    /// Resolve an image to the plan's arch from the directory's `images/`.
    ResolveImage { reference: String },
    /// A delta: leave out every blob and release file the base holds,
    /// listing each in the signed manifest as expected present.
    Omit { base: PathBuf },
    /// Lay the images out as one OCI layout, sign, pack and write the bundle.
    Pack { out_file: PathBuf },
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
    let files: Vec<PlannedFile> = manifest
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
    // --pause-image replaces the manifest's sandbox images, in the place
    // of the first of them.
    let mut pause_done = false;
    for image in &manifest.images {
        match image.role.as_str() {
            "pause" if !request.pause_images.is_empty() => {
                if !pause_done {
                    for pause in &request.pause_images {
                        add(pause, "pause")?;
                    }
                    pause_done = true;
                }
            }
            _ => add(&image.reference, &image.role)?,
        }
    }
    for extra in manifest.extra_images.iter().chain(&request.extra_images) {
        add(extra, "extra")?;
    }
    let out_file = request
        .out_dir
        .join(format::bundle_file_name(version, arch));
    let mut steps = steps(&request.origin, version, &files, &images, &out_file);
    if let Some(base) = &request.base {
        let pack = steps.len() - 1;
        steps.insert(
            pack,
            Step::Omit {
                base: base.path.clone(),
            },
        );
    }
    Ok(Plan {
        kubeedge_version: version.clone(),
        arch,
        origin: request.origin.clone(),
        out_file,
        sequence: request.sequence.unwrap_or(request.created_unix),
        created: format::rfc3339_utc(request.created_unix),
        created_unix: request.created_unix,
        level: request.level,
        files,
        images,
        base: request.base.clone(),
        steps,
    })
}

fn steps(
    origin: &Origin,
    version: &str,
    files: &[PlannedFile],
    images: &[PlannedImage],
    out_file: &Path,
) -> Vec<Step> {
    let mut steps = Vec::new();
    match origin {
        Origin::Sample => steps.push(Step::WriteSample),
        Origin::Dir(dir) => steps.push(Step::ReadDir { dir: dir.clone() }),
        Origin::Online(online) => {
            let base = online.release_base_url.trim_end_matches('/');
            for file in files {
                steps.push(Step::FetchFile {
                    name: file.name.clone(),
                    checksum: file.checksum.clone(),
                    url: format!("{base}/{version}/{}", file.name),
                    checksum_url: format!("{base}/{version}/{}", file.checksum),
                    required: file.required,
                });
            }
            for image in images {
                steps.push(Step::FetchImage {
                    reference: image.reference.clone(),
                });
            }
        }
    }
    for file in files {
        steps.push(Step::CheckFile {
            name: file.name.clone(),
            checksum: file.checksum.clone(),
            required: file.required,
        });
    }
    if !matches!(origin, Origin::Online(_)) {
        for image in images {
            steps.push(Step::ResolveImage {
                reference: image.reference.clone(),
            });
        }
    }
    steps.push(Step::Pack {
        out_file: out_file.to_path_buf(),
    });
    steps
}

impl std::fmt::Display for Step {
    /// One line for `--dry-run`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::WriteSample => write!(f, "write the SAMPLE artifacts to a temp dir"),
            Step::ReadDir { dir } => write!(f, "read artifacts from {}", dir.display()),
            Step::FetchFile {
                url, checksum_url, ..
            } => write!(f, "fetch {url}, checked against {checksum_url}"),
            Step::FetchImage { reference } => write!(f, "fetch image {reference}"),
            Step::CheckFile { name, checksum, .. } => {
                write!(f, "check files/{name} against {checksum}")
            }
            Step::ResolveImage { reference } => write!(f, "resolve image {reference}"),
            Step::Omit { base } => write!(
                f,
                "leave out every blob and release file {} holds (a delta)",
                base.display()
            ),
            Step::Pack { out_file } => write!(f, "pack and sign {}", out_file.display()),
        }
    }
}

impl Plan {
    pub fn out_dir(&self) -> &Path {
        self.out_file.parent().unwrap_or(Path::new("."))
    }

    /// The planned release asset called `name`.
    pub fn file(&self, name: &str) -> Option<&PlannedFile> {
        self.files.iter().find(|f| f.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(origin: Origin) -> Request {
        Request {
            kubeedge_version: "v1.23.1".into(),
            arch: Arch::Arm64,
            origin,
            pause_images: Vec::new(),
            extra_images: vec!["nginx:1.27".into()],
            out_dir: PathBuf::from("out"),
            level: 3,
            sequence: None,
            created_unix: 0,
            base: None,
        }
    }

    fn names(plan: &Plan) -> Vec<String> {
        plan.steps
            .iter()
            .map(|s| {
                serde_json::to_value(s).unwrap()["step"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn every_step_is_listed_before_any_runs() {
        let planned = super::plan(&request(Origin::Dir("artifacts".into()))).unwrap();
        let mut expected = vec!["read_dir"];
        expected.extend(["check_file"; 2]);
        expected.extend(["resolve_image"; 6]);
        expected.push("pack");
        assert_eq!(names(&planned), expected);
        assert_eq!(
            planned.steps.last(),
            Some(&Step::Pack {
                out_file: "out/edgeferry-kubeedge-v1.23.1-linux-arm64.tar.zst".into()
            })
        );

        let online = Online {
            release_base_url: "http://files.lan/kubeedge/".into(),
            registry_mirrors: Vec::new(),
            cache: "cache".into(),
            docker_config: None,
        };
        let planned = super::plan(&request(Origin::Online(online))).unwrap();
        let mut expected = vec!["fetch_file"; 2];
        expected.extend(["fetch_image"; 6]);
        expected.extend(["check_file"; 2]);
        expected.push("pack");
        assert_eq!(names(&planned), expected);
        assert_eq!(
            planned.steps[0],
            Step::FetchFile {
                name: "keadm-v1.23.1-linux-arm64.tar.gz".into(),
                checksum: "checksum_keadm-v1.23.1-linux-arm64.tar.gz.txt".into(),
                url: "http://files.lan/kubeedge/v1.23.1/keadm-v1.23.1-linux-arm64.tar.gz".into(),
                checksum_url:
                    "http://files.lan/kubeedge/v1.23.1/checksum_keadm-v1.23.1-linux-arm64.tar.gz.txt"
                        .into(),
                required: true,
            }
        );
        assert_eq!(
            names(&super::plan(&request(Origin::Sample)).unwrap())[0],
            "write_sample"
        );
    }

    fn images(plan: &Plan) -> Vec<(&str, &str)> {
        plan.images
            .iter()
            .map(|i| (i.reference.as_str(), i.role.as_str()))
            .collect()
    }

    #[test]
    fn pause_images_default_to_containerd_defaults_and_flags_replace_them() {
        let planned = super::plan(&request(Origin::Sample)).unwrap();
        assert_eq!(
            images(&planned),
            [
                (
                    "docker.io/kubeedge/installation-package:v1.23.1",
                    "installation-package"
                ),
                ("registry.k8s.io/pause:3.6", "pause"),
                ("registry.k8s.io/pause:3.8", "pause"),
                ("registry.k8s.io/pause:3.10", "pause"),
                ("docker.io/library/eclipse-mosquitto:1.6.15", "mqtt"),
                ("docker.io/library/nginx:1.27", "extra"),
            ]
        );
        let mut req = request(Origin::Sample);
        req.pause_images = vec![
            "easzlab/pause:3.9".into(),
            "registry.k8s.io/pause:3.6".into(),
        ];
        let planned = super::plan(&req).unwrap();
        assert_eq!(
            images(&planned)[1..3],
            [
                ("docker.io/easzlab/pause:3.9", "pause"),
                ("registry.k8s.io/pause:3.6", "pause"),
            ]
        );
        assert_eq!(planned.images.len(), 5);
    }
}

//! The sample's multi-arch OCI image layouts, written with the shared
//! [`edgeferry_bundle::oci`] model: one index per image over a manifest per
//! arch, each with one reproducible gzip layer.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use edgeferry_bundle::format::{rfc3339_utc, Arch};
use edgeferry_bundle::hashing::sha256_hex;
use edgeferry_bundle::oci::{
    Descriptor, ImageConfig, ImageLayout, Index, Manifest, Platform, RootFs, RunConfig,
    ANNOTATION_CONTAINERD_NAME, ANNOTATION_DESCRIPTION, ANNOTATION_REF_NAME, MEDIA_OCI_CONFIG,
    MEDIA_OCI_INDEX, MEDIA_OCI_LAYER_GZIP, MEDIA_OCI_MANIFEST,
};
use serde::Serialize;

use super::scripts::{edgecore_script, entrypoint_script, keadm_script, pause_script};
use super::tree::{create_dir, gzip, write_file, Node, Tree};
use super::{MTIME, SAMPLE_MARKER};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ImageKind {
    InstallationPackage,
    Pause,
    /// mosquitto and the extra workload images
    Workload,
}

impl ImageKind {
    fn carries_busybox(self) -> bool {
        matches!(self, ImageKind::InstallationPackage | ImageKind::Pause)
    }
}

pub(super) struct SampleImage<'a> {
    pub(super) dir_name: String,
    pub(super) reference: &'a str,
    pub(super) kind: ImageKind,
}

/// Blobs of one OCI image layout, stored under their sha256.
pub(super) struct Blobs {
    dir: PathBuf,
}

impl Blobs {
    fn put(&self, media_type: &str, data: &[u8]) -> Result<Descriptor> {
        let hex = sha256_hex(data);
        write_file(&self.dir.join(&hex), data)?;
        Ok(Descriptor::new(
            media_type,
            format!("sha256:{hex}"),
            data.len() as u64,
        ))
    }

    fn put_json(&self, media_type: &str, value: &impl Serialize) -> Result<Descriptor> {
        self.put(media_type, &serde_json::to_vec(value)?)
    }
}

pub(super) fn platform_name(arch: Arch) -> String {
    Platform::linux(arch).to_string()
}

pub(super) fn description(image: &SampleImage, platform: Option<&str>) -> String {
    let what = match platform {
        Some(p) => format!("{} ({p})", image.reference),
        None => image.reference.to_string(),
    };
    let mut text = format!("edgeferry SAMPLE stand-in for {what}, not the real image.");
    if image.kind.carries_busybox() {
        text.push_str(
            " Images of every arch carry the build host's busybox, since tests execute only amd64.",
        );
    }
    text
}

pub(super) fn sample_annotations(text: String) -> BTreeMap<String, String> {
    BTreeMap::from([
        (ANNOTATION_DESCRIPTION.to_string(), text),
        (SAMPLE_MARKER.to_string(), "true".to_string()),
    ])
}

pub(super) fn layer_tree(
    image: &SampleImage,
    arch: Arch,
    version: &str,
    busybox: &[u8],
) -> Result<Tree> {
    let mut tree = Tree::default();
    // Makes each arch's layer distinct, as in a real multi-arch image, so a
    // consumer that picks the wrong platform is caught.
    tree.file(
        "edgeferry-sample.txt",
        0o644,
        format!("{}\n", description(image, Some(&platform_name(arch)))),
    );
    match image.kind {
        ImageKind::InstallationPackage => {
            tree.exe("bin/busybox", busybox);
            // keadm's copy step runs `/bin/sh -c "sleep infinity"` and `cp`.
            for applet in ["cat", "cp", "sh", "sleep"] {
                tree.add(&format!("bin/{applet}"), Node::Symlink("busybox".into()));
            }
            tree.add("etc/kubeedge", Node::Dir);
            tree.exe("usr/local/bin/edgecore", edgecore_script(version));
            tree.exe("usr/local/bin/keadm", keadm_script(version)?);
        }
        ImageKind::Pause => {
            tree.exe("bin/busybox", busybox);
            tree.add("bin/sh", Node::Symlink("busybox".into()));
            tree.exe("pause", pause_script(image.reference));
        }
        ImageKind::Workload => {
            tree.exe("entrypoint", entrypoint_script(image.reference));
        }
    }
    Ok(tree)
}

pub(super) fn run_config(image: &SampleImage, arch: Arch) -> RunConfig {
    let (cmd, working_dir): (&[&str], &str) = match image.kind {
        ImageKind::InstallationPackage => (&["/bin/sh"], "/etc/kubeedge"),
        ImageKind::Pause => (&["/pause"], ""),
        ImageKind::Workload => (&["/entrypoint"], ""),
    };
    let labels = sample_annotations(description(image, Some(&platform_name(arch))));
    RunConfig {
        env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string()],
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        working_dir: working_dir.to_string(),
        labels,
    }
}

pub(super) fn write_image(
    images: &Path,
    image: &SampleImage,
    version: &str,
    busybox: &[u8],
) -> Result<()> {
    let root = images.join(&image.dir_name);
    let blobs = Blobs {
        dir: root.join("blobs").join("sha256"),
    };
    create_dir(&blobs.dir)?;

    let mut manifests = Vec::new();
    for arch in Arch::ALL {
        let platform = Platform::linux(arch);
        let layer_tar = layer_tree(image, arch, version, busybox)?.to_tar(false)?;
        let layer = blobs.put(MEDIA_OCI_LAYER_GZIP, &gzip(&layer_tar)?)?;
        let config = ImageConfig {
            created: Some(rfc3339_utc(MTIME)),
            platform: platform.clone(),
            config: Some(run_config(image, arch)),
            rootfs: Some(RootFs {
                kind: "layers".to_string(),
                diff_ids: vec![format!("sha256:{}", sha256_hex(&layer_tar))],
            }),
        };
        let manifest = Manifest {
            schema_version: 2,
            media_type: MEDIA_OCI_MANIFEST.to_string(),
            config: blobs.put_json(MEDIA_OCI_CONFIG, &config)?,
            layers: vec![layer],
            annotations: Some(sample_annotations(description(
                image,
                Some(&platform_name(arch)),
            ))),
        };
        let mut descriptor = blobs.put_json(MEDIA_OCI_MANIFEST, &manifest)?;
        descriptor.platform = Some(platform);
        manifests.push(descriptor);
    }

    let index = Index {
        schema_version: 2,
        media_type: Some(MEDIA_OCI_INDEX.to_string()),
        manifests,
        annotations: Some(sample_annotations(description(image, None))),
    };
    let mut top = blobs.put_json(MEDIA_OCI_INDEX, &index)?;
    top.annotations = Some(BTreeMap::from([
        (
            ANNOTATION_CONTAINERD_NAME.to_string(),
            image.reference.to_string(),
        ),
        (ANNOTATION_REF_NAME.to_string(), image.reference.to_string()),
    ]));
    let layout_index = Index {
        schema_version: 2,
        media_type: Some(MEDIA_OCI_INDEX.to_string()),
        manifests: vec![top],
        annotations: None,
    };
    write_file(
        &root.join("index.json"),
        &serde_json::to_vec(&layout_index)?,
    )?;
    write_file(&root.join("oci-layout"), &ImageLayout::bytes())
}

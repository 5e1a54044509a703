//! The OCI (and Docker schema 2) documents edgeferry reads and writes, and
//! every media type and annotation key it uses: one model for the builder
//! (local sources, the registry client, the layout it packs, the sample
//! images) and the installer (the store's own indexes).
//!
//! Our own types rather than the `oci-spec` crate (which was declared but
//! never used), for three reasons:
//! - Upstream indexes and manifests are never re-encoded: their exact bytes
//!   are stored and served, so their digests stay valid. We only *read* a
//!   few fields of them (media types, descriptors, platforms) and ignore
//!   the rest; `oci-spec`'s complete, validating types would refuse
//!   documents we accept today (a descriptor without a `mediaType`, a
//!   config without a platform) for fields we never look at.
//! - What we *write* must keep its bytes from release to release (bundle
//!   ids, the digests of synthesized manifests and of store indexes depend
//!   on them), so the field order and the omitted fields are fixed here,
//!   not by a dependency's next version.
//! - The subset is small: a few structs, against a crate with builders and
//!   getters for the whole specification.
//!
//! Reading is lenient (unknown fields ignored, missing ones defaulted);
//! writing emits fields in the order the structs list them and skips
//! `None`s.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::format::Arch;

pub const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MEDIA_OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MEDIA_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const MEDIA_DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
pub const MEDIA_DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// The `Accept` header for a manifest request: indexes and lists first, so
/// that a registry hands out the multi-arch document when it has one.
pub const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// The name of an `index.json` entry: a full reference, or a bare tag.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// The full reference containerd and Docker 25+ write on `index.json` entries.
pub const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";
pub const ANNOTATION_DESCRIPTION: &str = "org.opencontainers.image.description";
/// BuildKit marks provenance/SBOM manifests in an index this way.
pub const ANNOTATION_DOCKER_REFERENCE_TYPE: &str = "vnd.docker.reference.type";
/// On each `index.json` entry of a bundle: the upstream index's digest.
pub const ANNOTATION_INDEX_DIGEST: &str = "io.edgeferry.upstream-index.digest";

/// The one image layout version we read (any 1.x) and write.
pub const IMAGE_LAYOUT_VERSION: &str = "1.0.0";

/// A content descriptor. `media_type` is optional on reading (OCI allows
/// untyped descriptors) and always set by our writers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

impl Descriptor {
    pub fn new(media_type: &str, digest: impl Into<String>, size: u64) -> Descriptor {
        Descriptor {
            media_type: Some(media_type.to_string()),
            digest: digest.into(),
            size,
            platform: None,
            annotations: None,
        }
    }

    /// The descriptor's media type, or `default` when it names none.
    pub fn media_type_or(&self, default: &str) -> String {
        self.media_type
            .clone()
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| default.to_string())
    }

    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.as_ref()?.get(key).map(String::as_str)
    }
}

/// A descriptor in Docker's own field order (`mediaType`, `size`,
/// `digest`, as docker/distribution writes it). Only the manifest we
/// synthesize for a legacy `docker save` uses it: its digest must not
/// change from one edgeferry release to the next.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DockerDescriptor {
    pub media_type: String,
    pub size: u64,
    pub digest: String,
}

/// `os`, `architecture` and `variant`; other platform fields are ignored.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// The Linux platform of `arch`, as images and registries name it.
    pub fn linux(arch: Arch) -> Platform {
        let (architecture, variant) = arch.oci_platform();
        Platform {
            architecture: architecture.to_string(),
            os: "linux".to_string(),
            variant: variant.map(str::to_string),
        }
    }

    /// Parses `os/arch[/variant]`; missing parts are empty.
    pub fn parse(s: &str) -> Platform {
        let mut parts = s.split('/');
        let os = parts.next().unwrap_or_default().to_string();
        let architecture = parts.next().unwrap_or_default().to_string();
        let variant = parts.next().map(str::to_string);
        Platform {
            architecture,
            os,
            variant,
        }
    }
}

impl std::fmt::Display for Platform {
    /// `os/arch[/variant]`, as `docker` and `skopeo` print platforms.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.variant.as_deref().filter(|v| !v.is_empty()) {
            Some(variant) => write!(f, "{}/{}/{variant}", self.os, self.architecture),
            None => write!(f, "{}/{}", self.os, self.architecture),
        }
    }
}

/// An image index (or Docker manifest list), and a layout's `index.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    #[serde(default)]
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// An image manifest as we write it (the sample images, and the manifest
/// synthesized for a legacy `docker save` with [`DockerDescriptor`]s).
/// Reading goes through [`ManifestDoc`], which does not know yet whether
/// it holds an index or a manifest.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest<D = Descriptor> {
    pub schema_version: u32,
    pub media_type: String,
    pub config: D,
    pub layers: Vec<D>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// An image index or an image manifest, as read; which one is decided by
/// media type ([`ManifestDoc::kind`]).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestDoc {
    #[serde(default)]
    pub schema_version: Option<u32>,
    #[serde(default)]
    pub media_type: Option<String>,
    #[serde(default)]
    pub manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    pub config: Option<Descriptor>,
    #[serde(default)]
    pub layers: Option<Vec<Descriptor>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DocKind {
    Index,
    Manifest,
}

impl ManifestDoc {
    /// Index or manifest, by the descriptor's media type, else the
    /// document's own, else its fields; an error says what it is instead.
    pub fn kind(&self, descriptor_media_type: Option<&str>) -> Result<DocKind, String> {
        let media_type = descriptor_media_type
            .filter(|m| !m.is_empty())
            .or(self.media_type.as_deref().filter(|m| !m.is_empty()));
        match media_type {
            Some(MEDIA_OCI_INDEX | MEDIA_DOCKER_LIST) => Ok(DocKind::Index),
            Some(MEDIA_OCI_MANIFEST | MEDIA_DOCKER_MANIFEST) => Ok(DocKind::Manifest),
            Some(other) => Err(format!(
                "has media type {other}, not an image index or manifest: export it again with skopeo or docker save"
            )),
            // OCI allows an untyped document; its fields say what it is.
            None if self.manifests.is_some() => Ok(DocKind::Index),
            None if self.config.is_some() && self.schema_version == Some(2) => Ok(DocKind::Manifest),
            None if self.schema_version == Some(1) => Err(
                "is a Docker schema 1 manifest, which is not supported: pull and export it again with a current docker or skopeo".into(),
            ),
            None => Err("has a document that is neither an image index nor a manifest: export it again with skopeo or docker save".into()),
        }
    }
}

/// The image config: on reading only the platform fields are taken; the
/// rest is what the sample images write.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// `architecture`, `os` and `variant`, at the top level of the config.
    #[serde(flatten)]
    pub platform: Platform,
    #[serde(skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub config: Option<RunConfig>,
    #[serde(skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<RootFs>,
}

#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    pub env: Vec<String>,
    pub cmd: Vec<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub working_dir: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    pub diff_ids: Vec<String>,
}

/// The `oci-layout` file of an image layout.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageLayout {
    pub image_layout_version: String,
}

impl ImageLayout {
    /// `{"imageLayoutVersion":"1.0.0"}`.
    pub fn bytes() -> Vec<u8> {
        serde_json::to_vec(&ImageLayout {
            image_layout_version: IMAGE_LAYOUT_VERSION.to_string(),
        })
        .expect("a struct of strings serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writers_keep_their_field_order() {
        let mut d = Descriptor::new(MEDIA_OCI_MANIFEST, "sha256:ab", 3);
        d.platform = Some(Platform::linux(Arch::Arm));
        d.annotations = Some(BTreeMap::from([("k".into(), "v".into())]));
        assert_eq!(
            serde_json::to_string(&d).unwrap(),
            r#"{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:ab","size":3,"platform":{"architecture":"arm","os":"linux","variant":"v7"},"annotations":{"k":"v"}}"#
        );
        let docker = DockerDescriptor {
            media_type: MEDIA_DOCKER_CONFIG.into(),
            size: 1,
            digest: "sha256:cd".into(),
        };
        assert_eq!(
            serde_json::to_string(&docker).unwrap(),
            r#"{"mediaType":"application/vnd.docker.container.image.v1+json","size":1,"digest":"sha256:cd"}"#
        );
        assert_eq!(ImageLayout::bytes(), br#"{"imageLayoutVersion":"1.0.0"}"#);
    }

    #[test]
    fn platforms_print_and_parse() {
        for s in ["linux/amd64", "linux/arm/v7"] {
            assert_eq!(Platform::parse(s).to_string(), s);
        }
        assert_eq!(Platform::linux(Arch::Arm64).to_string(), "linux/arm64");
    }

    #[test]
    fn reading_is_lenient() {
        let doc: ManifestDoc = serde_json::from_str(
            r#"{"schemaVersion":2,"manifests":[{"digest":"sha256:ab","size":1,"platform":{"os":"linux","architecture":"amd64","os.version":"x"},"annotations":null}],"extra":1}"#,
        )
        .unwrap();
        assert_eq!(doc.kind(None), Ok(DocKind::Index));
        let config: ImageConfig = serde_json::from_str(
            r#"{"architecture":"arm64","os":"linux","config":{"Cmd":null},"rootfs":{}}"#,
        )
        .unwrap();
        assert_eq!(config.platform.to_string(), "linux/arm64");
    }

    /// The installer writes its indexes through a `serde_json::Value`
    /// (sorted keys), which gives the bytes its `json!` literals gave.
    #[test]
    fn through_a_value_keys_are_sorted_as_json_literals_had_them() {
        let mut d = Descriptor::new(MEDIA_OCI_MANIFEST, "sha256:ab", 3);
        d.platform = Some(Platform::parse("linux/arm/v7"));
        let index = Index {
            schema_version: 2,
            media_type: Some(MEDIA_OCI_INDEX.into()),
            manifests: vec![d],
            annotations: Some(BTreeMap::from([("k".into(), "v".into())])),
        };
        let literal = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_OCI_INDEX,
            "manifests": [{
                "mediaType": MEDIA_OCI_MANIFEST,
                "digest": "sha256:ab",
                "size": 3,
                "platform": {"architecture": "arm", "os": "linux", "variant": "v7"},
            }],
            "annotations": {"k": "v"},
        });
        let typed = serde_json::to_value(&index).unwrap();
        assert_eq!(
            serde_json::to_vec(&typed).unwrap(),
            serde_json::to_vec(&literal).unwrap()
        );
        assert_eq!(
            serde_json::to_vec_pretty(&typed).unwrap(),
            serde_json::to_vec_pretty(&literal).unwrap()
        );
    }
}

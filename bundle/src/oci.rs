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

/// Docker's limit on `domain/path`, without tag or digest.
pub const MAX_NAME_LEN: usize = 255;
/// Docker's limit on a tag.
pub const MAX_TAG_LEN: usize = 128;
/// RFC 6838: a type or subtype name is at most 127 characters.
const MAX_MEDIA_NAME_LEN: usize = 127;

/// A registry host: DNS labels or a bracketed IPv6 literal, optionally
/// with a port.
pub fn valid_domain(domain: &str) -> bool {
    let valid_port = |port: &str| {
        !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit())
    };
    if let Some(rest) = domain.strip_prefix('[') {
        // Bracketed IPv6 literal, optionally with a port.
        let Some((inside, after)) = rest.split_once(']') else {
            return false;
        };
        let port_ok = after.is_empty() || after.strip_prefix(':').is_some_and(valid_port);
        return port_ok
            && !inside.is_empty()
            && inside.bytes().all(|b| b.is_ascii_hexdigit() || b == b':');
    }
    let (host, port_ok) = match domain.split_once(':') {
        Some((host, port)) => (host, valid_port(port)),
        None => (domain, true),
    };
    port_ok
        && !host.is_empty()
        && host.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        })
}

/// A repository path component: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
pub fn valid_path_component(component: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let b = component.as_bytes();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &component[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|c| c == b'-')) {
            return false;
        }
    }
    true
}

/// A tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub fn valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_TAG_LEN
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// A full, normalized image reference as bundles carry it:
/// `host[:port]/component(/component)*` then `:tag`, `@sha256:<hex>` or
/// both. Unlike what a user types, the registry host is never implied.
pub fn check_full_reference(reference: &str) -> Result<(), &'static str> {
    let (rest, digest) = match reference.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (reference, None),
    };
    if digest.is_some_and(|d| crate::format::sha256_hex_of_digest(d).is_none()) {
        return Err("its digest is not sha256:<64 lowercase hex digits>");
    }
    let (name, tag) = match rest.rfind(':') {
        Some(i) if !rest[i + 1..].contains('/') => (&rest[..i], Some(&rest[i + 1..])),
        _ => (rest, None),
    };
    if tag.is_none() && digest.is_none() {
        return Err("it has neither a tag nor a digest");
    }
    if tag.is_some_and(|t| !valid_tag(t)) {
        return Err("its tag is not 1 to 128 of [A-Za-z0-9_.-] starting with [A-Za-z0-9_]");
    }
    if name.len() > MAX_NAME_LEN {
        return Err("its name is longer than 255 characters");
    }
    let Some((domain, path)) = name.split_once('/') else {
        return Err("it names no registry host: host/repository:tag");
    };
    if !(domain.contains(['.', ':']) || domain == "localhost") || !valid_domain(domain) {
        return Err("it does not start with a registry host such as docker.io or localhost:5000");
    }
    if !path.split('/').all(valid_path_component) {
        return Err("a repository component is not [a-z0-9] joined by '.', '_', '__' or '-'");
    }
    Ok(())
}

// Image reference normalization, the way Docker's
// `reference.ParseNormalizedNamed` does it, so that a name written by hand
// in `manifests/`, a `RepoTags` entry, an OCI annotation and a node's
// containerd `sandbox_image` all meet on the same string.

const DEFAULT_DOMAIN: &str = "docker.io";
/// Docker still accepts the old index host and files it under `docker.io`.
const LEGACY_DEFAULT_DOMAIN: &str = "index.docker.io";
const OFFICIAL_REPO_PREFIX: &str = "library/";
const DEFAULT_TAG: &str = "latest";

/// Normalizes an image reference to `registry/repository:tag`,
/// `registry/repository@sha256:<hex>` or both tag and digest, the way
/// Docker does: `eclipse-mosquitto:1.6.15` becomes
/// `docker.io/library/eclipse-mosquitto:1.6.15`.
pub fn normalize_reference(s: &str) -> Result<String, String> {
    let fail = |why: &str| Err(format!("image reference {s:?} {why}"));
    if s.is_empty() {
        return Err(
            "image reference is empty: give a name such as docker.io/library/eclipse-mosquitto:1.6.15"
                .into(),
        );
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return fail("contains whitespace: remove it");
    }

    let (rest, digest) = match s.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (s, None),
    };
    if let Some(digest) = digest {
        if crate::format::sha256_hex_of_digest(digest).is_none() {
            return fail(
                "has a digest that is not sha256:<64 lowercase hex digits>: fix the digest",
            );
        }
    }

    // A ':' after the last '/' starts the tag; one before it is a registry port.
    let (name, tag) = match rest.rfind(':') {
        Some(i) if !rest[i + 1..].contains('/') => (&rest[..i], Some(&rest[i + 1..])),
        _ => (rest, None),
    };
    if let Some(tag) = tag {
        if !valid_tag(tag) {
            return fail(
                "has an invalid tag: a tag is 1 to 128 of [A-Za-z0-9_.-] and does not start with '.' or '-'",
            );
        }
    }
    if name.is_empty() {
        return fail("names no repository: write it as repository:tag, e.g. docker.io/kubeedge/installation-package:v1.23.1");
    }

    let (domain, path) = match name.split_once('/') {
        Some((first, rest)) if is_domain_like(first) => (first, rest),
        _ => (DEFAULT_DOMAIN, name),
    };
    if !valid_domain(domain) {
        return fail("has an invalid registry host: write it as host[:port], e.g. registry.k8s.io or localhost:5000");
    }
    let domain = if domain == LEGACY_DEFAULT_DOMAIN {
        DEFAULT_DOMAIN
    } else {
        domain
    };

    for component in path.split('/') {
        if component.is_empty() {
            return fail("has an empty path component: remove the extra '/'");
        }
        if component.bytes().any(|b| b.is_ascii_uppercase()) {
            return fail(
                "has uppercase letters in its repository name: repository names are lowercase",
            );
        }
        if !valid_path_component(component) {
            return fail(
                "has an invalid repository name: components are [a-z0-9] joined by '.', '_', '__' or '-'",
            );
        }
    }

    let mut out = String::with_capacity(s.len() + DEFAULT_DOMAIN.len() + 16);
    out.push_str(domain);
    out.push('/');
    if domain == DEFAULT_DOMAIN && !path.contains('/') {
        out.push_str(OFFICIAL_REPO_PREFIX);
    }
    out.push_str(path);
    if out.len() > MAX_NAME_LEN {
        return fail("is longer than 255 characters without its tag: use a shorter name");
    }
    match (tag, digest) {
        (Some(tag), _) => {
            out.push(':');
            out.push_str(tag);
        }
        (None, None) => {
            out.push(':');
            out.push_str(DEFAULT_TAG);
        }
        (None, Some(_)) => {}
    }
    if let Some(digest) = digest {
        out.push('@');
        out.push_str(digest);
    }
    Ok(out)
}

/// Docker's rule for telling `host/repo` from `user/repo`: a first component
/// with a dot, a port or capitals cannot be a Docker Hub user.
fn is_domain_like(first: &str) -> bool {
    first.contains(['.', ':'])
        || first == "localhost"
        || first.bytes().any(|b| b.is_ascii_uppercase())
}

/// An RFC 6838 media type without parameters: `type/subtype`, each a
/// restricted-name (a letter or digit, then letters, digits and
/// `!#$&-^_.+`, at most 127 characters).
pub fn valid_media_type(media_type: &str) -> bool {
    let restricted_name = |name: &str| {
        let b = name.as_bytes();
        !b.is_empty()
            && b.len() <= MAX_MEDIA_NAME_LEN
            && b[0].is_ascii_alphanumeric()
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(c))
    };
    media_type
        .split_once('/')
        .is_some_and(|(kind, sub)| restricted_name(kind) && restricted_name(sub))
}

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
    fn full_references_and_media_types() {
        const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        for good in [
            "docker.io/kubeedge/installation-package:v1.23.1".to_string(),
            "registry.k8s.io/pause:3.10".to_string(),
            "localhost:5000/a/b__c:1".to_string(),
            "[::1]:5000/x:1".to_string(),
            format!("docker.io/library/busybox@sha256:{HEX}"),
        ] {
            assert_eq!(check_full_reference(&good), Ok(()), "{good}");
        }
        for bad in [
            "../../etc/x:1",
            "kubeedge/pause:3.6",
            "docker.io/kubeedge/pause",
            "docker.io/../x:1",
            "docker.io/Kube/x:1",
            "docker.io/x:1\r\nHost: y",
            "docker.io/x:-1",
            "docker.io/x@sha256:zz",
        ] {
            assert!(check_full_reference(bad).is_err(), "{bad:?} accepted");
        }
        for good in [MEDIA_OCI_MANIFEST, MEDIA_DOCKER_LIST, "application/json"] {
            assert!(valid_media_type(good), "{good}");
        }
        for bad in [
            "",
            "application",
            "application/json; charset=utf-8",
            "a/b\r\nX: 1",
            "/json",
            "a/b/c",
        ] {
            assert!(!valid_media_type(bad), "{bad:?} accepted");
        }
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

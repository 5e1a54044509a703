//! KubeEdge's NodeUpgradeJob custom resource (`operations.kubeedge.io/v1alpha2`,
//! cluster-scoped), for operators who upgrade edge nodes from the cloud:
//! cloudcore hands each named node the job and the node's edgecore runs
//! `keadm upgrade edge`, pulling the installation-package through its CRI
//! (so through the same `hosts.toml` mirror as edgeferry's upgrade).
//!
//! [`render`] writes the resource as YAML from plain data, checking every
//! value first. The fields are those of the CRD's schema, kept in
//! `manifests/crds/nodeupgradejob-v1alpha2.schema.yaml` with its source;
//! a test validates the output against it.

use anyhow::{bail, Result};
use edgeferry_bundle::format::Arch;
use serde::Serialize;

/// The group and version of the resource.
pub const API_VERSION: &str = "operations.kubeedge.io/v1alpha2";
pub const KIND: &str = "NodeUpgradeJob";

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct NodeUpgradeJob<'a> {
    api_version: &'static str,
    kind: &'static str,
    metadata: Metadata,
    spec: Spec<'a>,
}

#[derive(Serialize)]
struct Metadata {
    name: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Spec<'a> {
    version: &'a str,
    image: &'a str,
    node_names: Vec<&'a str>,
    /// Per platform, the installation-package manifest digest the node
    /// checks its pulled image against ("ImageDigestGatter" is upstream's
    /// spelling).
    image_digest_gatter: Digests<'a>,
}

#[derive(Serialize)]
struct Digests<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    amd64: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    arm64: Option<&'a str>,
}

/// The resource's name for an upgrade to `version`: `edgeferry-upgrade-<version>`.
pub fn job_name(version: &str) -> String {
    format!(
        "edgeferry-upgrade-{}",
        version.to_ascii_lowercase().replace('+', "-")
    )
}

/// The NodeUpgradeJob that upgrades `nodes` to KubeEdge `version` with the
/// installation-package repository `image` (no tag: the job's version is
/// the tag), each node checking the image it pulls against `digests`' entry
/// for its platform. The CRD has digest fields for amd64 and arm64 only, so
/// a 32-bit ARM digest is refused rather than left unchecked.
pub fn render(
    nodes: &[&str],
    version: &str,
    image: &str,
    digests: &[(Arch, &str)],
) -> Result<String> {
    edgeferry_bundle::keadm::minor_of(version)?;
    if nodes.is_empty() {
        bail!("a NodeUpgradeJob needs at least one node name");
    }
    let mut node_names: Vec<&str> = Vec::with_capacity(nodes.len());
    for node in nodes {
        if !is_dns_subdomain(node) {
            bail!(
                "node name {node:?} is not a Kubernetes node name (lowercase letters, digits, '-' and '.', at most 253)"
            );
        }
        if !node_names.contains(node) {
            node_names.push(node);
        }
    }
    if !is_image_repository(image) {
        bail!(
            "image {image:?} is not a repository without tag or digest, e.g. kubeedge/installation-package"
        );
    }
    if digests.is_empty() {
        bail!("a NodeUpgradeJob from edgeferry carries the installation-package digest of at least one platform");
    }
    let mut gatter = Digests {
        amd64: None,
        arm64: None,
    };
    for (arch, digest) in digests {
        if !is_sha256_digest(digest) {
            bail!(
                "{} digest {digest:?} is not sha256:<64 lowercase hex digits>",
                arch.as_str()
            );
        }
        let slot = match arch {
            Arch::Amd64 => &mut gatter.amd64,
            Arch::Arm64 => &mut gatter.arm64,
            Arch::Arm => bail!(
                "a NodeUpgradeJob (v1alpha2) carries image digests for amd64 and arm64 only: upgrade the arm nodes with `edgeferry upgrade`"
            ),
        };
        if slot.is_some_and(|d| d != *digest) {
            bail!("two different {} digests given", arch.as_str());
        }
        *slot = Some(digest);
    }
    let job = NodeUpgradeJob {
        api_version: API_VERSION,
        kind: KIND,
        metadata: Metadata {
            name: job_name(version),
        },
        spec: Spec {
            version,
            image,
            node_names,
            image_digest_gatter: gatter,
        },
    };
    let yaml = serde_norway::to_string(&job)?;
    Ok(format!(
        "# NodeUpgradeJob written by edgeferry: apply it with kubectl on the cloud side.\n{yaml}"
    ))
}

/// RFC 1123 subdomain, as Kubernetes checks node names.
fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// `[registry[:port]/]path` with lowercase path components and no tag or
/// digest.
fn is_image_repository(s: &str) -> bool {
    if s.is_empty() || s.len() > 255 || s.contains('@') {
        return false;
    }
    let mut parts = s.split('/').collect::<Vec<_>>();
    let first = parts[0];
    if parts.len() > 1 && (first.contains('.') || first.contains(':') || first == "localhost") {
        let (host, port) = first.split_once(':').unwrap_or((first, "0"));
        if host.is_empty()
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
            || port.is_empty()
            || !port.bytes().all(|b| b.is_ascii_digit())
        {
            return false;
        }
        parts.remove(0);
    }
    parts.iter().all(|p| {
        !p.is_empty()
            && p.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
            })
            && p.starts_with(|c: char| c.is_ascii_alphanumeric())
            && p.ends_with(|c: char| c.is_ascii_alphanumeric())
    })
}

fn is_sha256_digest(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const B: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    #[test]
    fn renders_the_resource() {
        let yaml = render(
            &["edge-1", "edge-2", "edge-1"],
            "v1.23.1",
            "10.0.0.5:5000/kubeedge/installation-package",
            &[(Arch::Amd64, A), (Arch::Arm64, B), (Arch::Amd64, A)],
        )
        .unwrap();
        assert_eq!(
            yaml,
            format!(
                "# NodeUpgradeJob written by edgeferry: apply it with kubectl on the cloud side.\n\
                 apiVersion: operations.kubeedge.io/v1alpha2\n\
                 kind: NodeUpgradeJob\n\
                 metadata:\n  name: edgeferry-upgrade-v1.23.1\n\
                 spec:\n  version: v1.23.1\n  image: 10.0.0.5:5000/kubeedge/installation-package\n\
                 \x20 nodeNames:\n  - edge-1\n  - edge-2\n\
                 \x20 imageDigestGatter:\n    amd64: {A}\n    arm64: {B}\n"
            )
        );
        let yaml = render(
            &["n"],
            "v1.22.0",
            "kubeedge/installation-package",
            &[(Arch::Arm64, B)],
        )
        .unwrap();
        assert!(yaml.contains("  imageDigestGatter:\n    arm64: "), "{yaml}");
        assert!(!yaml.contains("amd64"));
    }

    #[test]
    fn refuses_what_the_resource_cannot_say() {
        let ok_image = "kubeedge/installation-package";
        type Case<'a> = (
            &'a [&'a str],
            &'a str,
            &'a str,
            &'a [(Arch, &'a str)],
            &'a str,
        );
        let cases: &[Case] = &[
            (
                &[],
                "v1.23.1",
                ok_image,
                &[(Arch::Amd64, A)],
                "a NodeUpgradeJob needs at least one node name",
            ),
            (
                &["Edge_1"],
                "v1.23.1",
                ok_image,
                &[(Arch::Amd64, A)],
                "node name \"Edge_1\" is not a Kubernetes node name",
            ),
            (
                &["e"],
                "1.23",
                ok_image,
                &[(Arch::Amd64, A)],
                "kubeedge version \"1.23\" is not of the form",
            ),
            (
                &["e"],
                "v1.23.1",
                "kubeedge/installation-package:v1.23.1",
                &[(Arch::Amd64, A)],
                "is not a repository without tag",
            ),
            (
                &["e"],
                "v1.23.1",
                "x@sha256:00",
                &[(Arch::Amd64, A)],
                "is not a repository without tag",
            ),
            (&["e"], "v1.23.1", ok_image, &[], "at least one platform"),
            (
                &["e"],
                "v1.23.1",
                ok_image,
                &[(Arch::Amd64, "sha256:ABC")],
                "amd64 digest \"sha256:ABC\" is not sha256:",
            ),
            (
                &["e"],
                "v1.23.1",
                ok_image,
                &[(Arch::Arm, A)],
                "amd64 and arm64 only",
            ),
            (
                &["e"],
                "v1.23.1",
                ok_image,
                &[(Arch::Amd64, A), (Arch::Amd64, B)],
                "two different amd64 digests",
            ),
        ];
        for (nodes, version, image, digests, want) in cases {
            let err = render(nodes, version, image, digests)
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{err} lacks {want}");
            assert!(!err.contains('\n'));
        }
    }
}

//! Which platform of an image suits an [`Arch`]: the one ranking that local
//! sources ([`super::scan`]) and the registry client (`crate::fetch`) both
//! use, so that they pick the same manifest from the same index.

use edgeferry_bundle::format::Arch;
use edgeferry_bundle::oci::{Descriptor, ImageConfig, Platform, ANNOTATION_DOCKER_REFERENCE_TYPE};

/// `os/arch[/variant]`, as `docker` and `skopeo` print platforms.
pub(crate) fn platform_string(os: &str, architecture: &str, variant: Option<&str>) -> String {
    Platform {
        architecture: architecture.to_string(),
        os: os.to_string(),
        variant: variant.map(str::to_string),
    }
    .to_string()
}

pub(crate) fn canonical_platform(arch: Arch) -> String {
    Platform::linux(arch).to_string()
}

/// How well a platform suits `arch`: `Some(0)` exactly, `Some(1)` acceptably,
/// `None` not at all. An arm image without a variant is taken only when no
/// v7 one exists, since it may be built for an older or newer ARM.
pub(crate) fn platform_rank(
    os: &str,
    architecture: &str,
    variant: Option<&str>,
    arch: Arch,
) -> Option<u8> {
    let (want_arch, _) = arch.oci_platform();
    if os != "linux" || architecture != want_arch {
        return None;
    }
    match (arch, variant.filter(|v| !v.is_empty())) {
        (Arch::Arm, Some("v7")) => Some(0),
        (Arch::Arm, None) => Some(1),
        // Registries write arm64 as `arm64/v8` as often as plain `arm64`.
        (Arch::Arm64, None | Some("v8")) => Some(0),
        // `amd64/v2` and up need newer CPUs than KubeEdge targets.
        (Arch::Amd64, None | Some("v1")) => Some(0),
        _ => None,
    }
}

/// BuildKit's provenance and SBOM entries of an index, which are no platform.
fn is_attestation(desc: &Descriptor) -> bool {
    desc.annotation(ANNOTATION_DOCKER_REFERENCE_TYPE) == Some("attestation-manifest")
        || desc
            .platform
            .as_ref()
            .is_some_and(|p| p.os == "unknown" && p.architecture == "unknown")
}

/// The index entry for `arch`: the best rank, and of equals the first.
pub(crate) fn pick_platform(entries: &[Descriptor], arch: Arch) -> Option<&Descriptor> {
    entries
        .iter()
        .filter(|d| !is_attestation(d))
        .filter_map(|d| {
            let p = d.platform.as_ref()?;
            platform_rank(&p.os, &p.architecture, p.variant.as_deref(), arch).map(|r| (r, d))
        })
        // min_by_key keeps the first of equals: the index's own order decides.
        .min_by_key(|(rank, _)| *rank)
        .map(|(_, d)| d)
}

/// The platforms an index offers, for an error message.
pub(crate) fn available_platforms(entries: &[Descriptor]) -> String {
    let mut seen: Vec<String> = Vec::new();
    for desc in entries.iter().filter(|d| !is_attestation(d)) {
        let platform = match &desc.platform {
            Some(p) => platform_string(&p.os, &p.architecture, p.variant.as_deref()),
            None => "unspecified".to_string(),
        };
        if !seen.contains(&platform) {
            seen.push(platform);
        }
    }
    if seen.is_empty() {
        "no platforms".into()
    } else {
        seen.join(", ")
    }
}

/// For a single-platform image: `Ok` when its config suits `arch`, else the
/// platform it has instead, for an error message.
pub(crate) fn check_config(config: &ImageConfig, arch: Arch) -> Result<(), String> {
    let p = &config.platform;
    let variant = p.variant.as_deref();
    if platform_rank(&p.os, &p.architecture, variant, arch).is_some() {
        return Ok(());
    }
    Err(if p.architecture.is_empty() {
        "no platforms".to_string()
    } else {
        let os = if p.os.is_empty() { "unknown" } else { &p.os };
        platform_string(os, &p.architecture, variant)
    })
}

//! The per-version data in `manifests/`, compiled in so the builder works
//! from any directory.

use anyhow::{bail, Context, Result};
use edgeferry_bundle::format::Arch;
use serde::Deserialize;

const EMBEDDED: &[(&str, &str)] = &[
    ("v1.21", include_str!("../../manifests/v1.21.yaml")),
    ("v1.22", include_str!("../../manifests/v1.22.yaml")),
    ("v1.23", include_str!("../../manifests/v1.23.yaml")),
];

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionManifest {
    pub minor: String,
    pub arches: Vec<Arch>,
    pub release_assets: Vec<ReleaseAsset>,
    pub images: Vec<ImageSpec>,
    #[serde(default)]
    pub extra_images: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseAsset {
    pub name: String,
    pub checksum: String,
    pub required: bool,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSpec {
    pub reference: String,
    pub role: String,
}

/// Splits `v1.23.1` into its minor line `v1.23`, refusing anything keadm's
/// own version regex would send to the internet for resolution.
pub fn minor_of(version: &str) -> Result<String> {
    let rest = version
        .strip_prefix('v')
        .with_context(|| format!("KubeEdge version {version:?} must look like v1.23.1"))?;
    let parts: Vec<&str> = rest.split('.').collect();
    let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if parts.len() != 3 || !parts.iter().all(|p| numeric(p)) {
        bail!("KubeEdge version {version:?} must look like v1.23.1 (major.minor.patch)");
    }
    Ok(format!("v{}.{}", parts[0], parts[1]))
}

pub fn supported_minors() -> Vec<&'static str> {
    EMBEDDED.iter().map(|(minor, _)| *minor).collect()
}

/// The manifest for the minor line of `version`.
pub fn for_version(version: &str) -> Result<VersionManifest> {
    let minor = minor_of(version)?;
    let Some((_, text)) = EMBEDDED.iter().find(|(m, _)| *m == minor) else {
        bail!(
            "KubeEdge {version} is not covered by manifests/: supported lines are {}",
            supported_minors().join(", ")
        );
    };
    let manifest: VersionManifest =
        serde_norway::from_str(text).with_context(|| format!("parsing manifests/{minor}.yaml"))?;
    if manifest.minor != minor {
        bail!("manifests/{minor}.yaml says it is for {}", manifest.minor);
    }
    Ok(manifest)
}

pub fn expand(template: &str, version: &str, arch: Arch) -> String {
    template
        .replace("{version}", version)
        .replace("{arch}", arch.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_embedded_manifest_parses() {
        for minor in supported_minors() {
            let m = for_version(&format!("{minor}.0")).unwrap();
            assert_eq!(m.arches, Arch::ALL);
            assert!(m.images.iter().any(|i| i.role == "installation-package"));
            assert!(m.images.iter().any(|i| i.role == "pause"));
            assert!(m.release_assets.iter().any(|a| a.required));
        }
    }

    #[test]
    fn versions() {
        assert_eq!(minor_of("v1.23.1").unwrap(), "v1.23");
        for bad in ["1.23.1", "v1.23", "latest", "v1.23.x"] {
            assert!(minor_of(bad).is_err(), "{bad}");
        }
        assert!(for_version("v1.9.0").is_err());
    }
}

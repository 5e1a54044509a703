//! The connected side: gather what one KubeEdge version needs for one arch
//! and pack it into a signed bundle. `plan` decides (plain data, every step
//! listed), `build` carries out the steps, `cli` is the command line shared
//! by `cargo xtask bundle` and `edgeferry-builder`; `fetch` is the online
//! origin (release assets and registries), `oci` the local image sources,
//! `release` the release-asset checks, `sample` the built-in stand-ins,
//! `delta` the `--base` of a delta bundle and what it leaves out, `sbom`
//! the CycloneDX SBOM every bundle carries.
//! Imports go one way: `cli` → `build` → {`delta`, `sbom`, `fetch`, `oci`,
//! `release`, `sample`} → `plan` → `manifests`; nothing imports `build` or
//! `cli`.

#![forbid(unsafe_code)]

pub mod build;
pub mod cli;
pub mod delta;
pub mod fetch;
pub mod manifests;
pub mod oci;
pub mod plan;
pub mod release;
pub mod sample;
pub mod sbom;

//! The connected side: gather what one KubeEdge version needs for one arch
//! and pack it into a signed bundle. `plan` decides, `build` acts, `cli` is
//! the command line shared by `cargo xtask bundle` and `edgeferry-builder`.

pub mod build;
pub mod cli;
pub mod manifests;
pub mod oci;
pub mod plan;
pub mod sample;

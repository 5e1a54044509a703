//! The connected side: gather what one KubeEdge version needs for one arch
//! and pack it into a signed bundle. `plan` decides, `build` acts, `cli` is
//! the command line shared by `cargo xtask bundle` and `edgeferry-builder`;
//! `fetch` is the online origin (release assets and registries).

pub mod build;
pub mod cli;
pub mod fetch;
pub mod manifests;
pub mod oci;
pub mod plan;
pub mod sample;

//! The edgeferry bundle format. This crate is its one owner: the builder
//! writes bundles through [`pack`], the installer reads them through
//! [`verify`], and both agree on [`format`]. See `docs/bundle-format.md`.
//! Both also read [`keadm`], the keadm flags of each supported KubeEdge,
//! and [`oci`], the OCI documents and media types they exchange, and
//! [`inventory`], what a store holds, the base of a delta bundle.

#![forbid(unsafe_code)]

pub mod atomic;
pub mod format;
pub mod hashing;
pub mod inventory;
pub mod keadm;
pub mod oci;
pub mod pack;
pub mod sign;
pub mod verify;
pub mod volumes;

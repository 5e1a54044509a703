//! The sample's release assets: `keadm-<v>-linux-<arch>.tar.gz` and
//! `kubeedge-<v>-linux-<arch>.tar.gz` laid out as upstream's, each with its
//! `checksum_<asset>.txt` (bare SHA-512 hex, as KubeEdge writes it).

use std::path::Path;

use anyhow::Result;
use edgeferry_bundle::format::Arch;
use sha2::{Digest, Sha512};

use super::scripts::{component_script, edgecore_script, keadm_script};
use super::tree::{gzip, write_file, Tree};

pub(super) fn write_release_assets(files: &Path, version: &str) -> Result<()> {
    let keadm = keadm_script(version)?;
    let version_file = format!("{version}\n");
    for arch in Arch::ALL {
        let keadm_name = format!("keadm-{version}-linux-{}", arch.as_str());
        let mut tree = Tree::default();
        tree.exe(&format!("{keadm_name}/keadm/keadm"), keadm.as_bytes());
        tree.file(
            &format!("{keadm_name}/version"),
            0o644,
            version_file.as_bytes(),
        );
        write_asset(files, &keadm_name, &tree)?;

        let kubeedge_name = format!("kubeedge-{version}-linux-{}", arch.as_str());
        let mut tree = Tree::default();
        for (path, component) in [
            ("cloud/admission/admission", "admission"),
            ("cloud/cloudcore/cloudcore", "cloudcore"),
            ("cloud/csidriver/csidriver", "csidriver"),
            ("cloud/iptablesmanager/iptablesmanager", "iptablesmanager"),
            (
                "cloud/controllermanager/controllermanager",
                "controllermanager",
            ),
        ] {
            tree.exe(
                &format!("{kubeedge_name}/{path}"),
                component_script(component, version),
            );
        }
        tree.exe(
            &format!("{kubeedge_name}/edge/edgecore"),
            edgecore_script(version),
        );
        tree.file(
            &format!("{kubeedge_name}/version"),
            0o644,
            version_file.as_bytes(),
        );
        write_asset(files, &kubeedge_name, &tree)?;
    }
    Ok(())
}

fn write_asset(files: &Path, name: &str, tree: &Tree) -> Result<()> {
    let tarball = gzip(&tree.to_tar(true)?)?;
    let asset = format!("{name}.tar.gz");
    write_file(&files.join(&asset), &tarball)?;
    let checksum = format!("{:x}\n", Sha512::digest(&tarball));
    write_file(
        &files.join(format!("checksum_{asset}.txt")),
        checksum.as_bytes(),
    )
}

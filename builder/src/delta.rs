//! Delta bundles: `--base` names what a site already holds (an inventory
//! from `edgeferry store inventory`, or an older bundle whose signed
//! manifest is verified first), and the bundle leaves those blobs and
//! release files out, listing each in its signed manifest as expected
//! present (docs/bundle-format.md, "Delta bundles").

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use edgeferry_bundle::format::{BaseInfo, BaseKind, Entry};
use edgeferry_bundle::inventory::Inventory;
use edgeferry_bundle::pack::PackEntry;
use edgeferry_bundle::sign::TrustedKeys;
use edgeferry_bundle::verify::{self, CheckOnly, Trust};

use crate::plan::PlannedBase;

/// zstd's frame magic: an old bundle starts with it, an inventory with `{`.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// What the base holds: sha256 to size.
#[derive(Clone, Debug)]
pub struct Base {
    pub planned: PlannedBase,
    have: HashMap<String, u64>,
}

/// The entries a delta left out, sorted by path: what its manifest lists
/// as expected present (and what an SBOM marks as omitted).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Omitted(pub Vec<Entry>);

impl Omitted {
    pub fn bytes(&self) -> u64 {
        self.0.iter().map(|e| e.size).sum()
    }
}

/// Reads `--base FILE`, telling an inventory from a bundle by content. A
/// bundle is verified completely (its `.minisig` beside it) with `keys`
/// before its manifest is believed.
pub fn read_base(path: &Path, keys: &TrustedKeys) -> Result<Base> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("--base {}", path.display()))?;
    let mut magic = [0u8; 4];
    let n = file.read(&mut magic)?;
    let (info, have) = if n == 4 && magic == ZSTD_MAGIC {
        from_bundle(path, keys)?
    } else {
        let mut bytes = Vec::new();
        std::fs::File::open(path)?
            .take(edgeferry_bundle::inventory::MAX_INVENTORY_BYTES + 1)
            .read_to_end(&mut bytes)?;
        let inventory = Inventory::parse(&bytes).map_err(|e| {
            anyhow::anyhow!(
                "--base {} is neither a bundle nor a store inventory: {e}",
                path.display()
            )
        })?;
        from_inventory(inventory)
    };
    let planned = PlannedBase {
        path: path.to_path_buf(),
        info,
        blobs: have.len(),
        bytes: have.values().sum(),
    };
    Ok(Base { planned, have })
}

fn from_inventory(inventory: Inventory) -> (BaseInfo, HashMap<String, u64>) {
    let have = inventory
        .blobs
        .into_iter()
        .map(|b| (b.sha256, b.size))
        .chain(inventory.files.into_iter().map(|f| (f.sha256, f.size)))
        .collect();
    let info = BaseInfo {
        kind: BaseKind::Inventory,
        bundle_ids: inventory.bundle_ids,
        kubeedge_version: None,
        sequence: None,
    };
    (info, have)
}

fn from_bundle(path: &Path, keys: &TrustedKeys) -> Result<(BaseInfo, HashMap<String, u64>)> {
    let signature_path = PathBuf::from(format!("{}.minisig", path.display()));
    let signature = std::fs::read_to_string(&signature_path).with_context(|| {
        format!(
            "--base {}: its signature {} is needed to verify it",
            path.display(),
            signature_path.display()
        )
    })?;
    let file = std::fs::File::open(path)?;
    let outcome = verify::verify(
        std::io::BufReader::with_capacity(1 << 20, file),
        Trust::Keys(keys),
        Some(&signature),
        &mut CheckOnly,
    )
    .with_context(|| {
        format!(
            "--base {} refused (verified with --base-key, or by default the public half of --key)",
            path.display()
        )
    })?;
    let m = outcome.manifest;
    let have = m
        .all_entries()
        .filter(|e| omissible(&e.path))
        .map(|e| (e.sha256.clone(), e.size))
        .collect();
    let info = BaseInfo {
        kind: BaseKind::Bundle,
        bundle_ids: vec![m.bundle_id.clone()],
        kubeedge_version: Some(m.kubeedge_version.clone()),
        sequence: Some(m.sequence),
    };
    Ok((info, have))
}

/// Only blobs and release files are ever left out; the layout's
/// `oci-layout` and `index.json` always travel.
fn omissible(path: &str) -> bool {
    path.starts_with("images/blobs/sha256/") || path.starts_with("files/")
}

impl Base {
    /// Moves the entries the base has (same sha256, same size) out of
    /// `entries`; returns them, sorted by path.
    pub fn split(&self, entries: Vec<PackEntry>) -> Result<(Vec<PackEntry>, Omitted)> {
        let mut kept = Vec::with_capacity(entries.len());
        let mut omitted = Vec::new();
        for entry in entries {
            if omissible(&entry.path) && self.have.get(&entry.sha256) == Some(&entry.size) {
                omitted.push(Entry {
                    path: entry.path,
                    size: entry.size,
                    sha256: entry.sha256,
                });
            } else {
                kept.push(entry);
            }
        }
        if kept.is_empty() {
            bail!("every entry is in the base: the site has this bundle's content already");
        }
        omitted.sort_by(|a, b| a.path.cmp(&b.path));
        Ok((kept, Omitted(omitted)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgeferry_bundle::inventory::Blob;

    #[test]
    fn split_takes_only_blobs_and_files_of_the_same_size() {
        let blob = |data: &[u8]| {
            let e = PackEntry::bytes("x", data.to_vec());
            (e.sha256, e.size)
        };
        let (a, a_size) = blob(b"a");
        let (b, _) = blob(b"b");
        let inventory = Inventory::new(
            vec![],
            Default::default(),
            vec![Blob {
                sha256: a.clone(),
                size: a_size,
            }],
            vec![],
        );
        let (info, have) = from_inventory(inventory);
        let base = Base {
            planned: PlannedBase {
                path: "inv.json".into(),
                info,
                blobs: 1,
                bytes: 1,
            },
            have,
        };
        let entries = vec![
            PackEntry::bytes("files/k", b"a".to_vec()),
            PackEntry::bytes("images/index.json", b"a".to_vec()),
            PackEntry::bytes(format!("images/blobs/sha256/{a}"), b"a".to_vec()),
            PackEntry::bytes(format!("images/blobs/sha256/{b}"), b"b".to_vec()),
        ];
        let (kept, omitted) = base.split(entries).unwrap();
        let kept: Vec<&str> = kept.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            kept,
            [
                "images/index.json".to_string(),
                format!("images/blobs/sha256/{b}")
            ]
        );
        let omitted: Vec<&str> = omitted.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            omitted,
            ["files/k".to_string(), format!("images/blobs/sha256/{a}")]
        );
    }
}

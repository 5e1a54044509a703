//! What a site already holds: `edgeferry store inventory` writes it inside
//! the air gap, it is carried back out, and the builder's `--base` reads it
//! to leave those blobs out of the next bundle (a delta). Plain JSON,
//! small (about 100 bytes per blob), unsigned: a wrong inventory can only
//! make a delta the site refuses to load, never a store that lies.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::format;

/// The `kind` every inventory carries, so a file is recognised by content.
pub const INVENTORY_KIND: &str = "edgeferry-store-inventory";
/// Bumped on any change an older builder could misread.
pub const INVENTORY_VERSION: u32 = 1;
/// A builder refuses a larger inventory before parsing it.
pub const MAX_INVENTORY_BYTES: u64 = 64 * 1024 * 1024;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inventory {
    /// Always [`INVENTORY_KIND`].
    pub kind: String,
    /// Always [`INVENTORY_VERSION`].
    pub version: u32,
    /// Every bundle the store has loaded, by id, sorted.
    pub bundle_ids: Vec<String>,
    /// Highest sequence loaded, keyed `<signer key id>/<arch>`.
    pub sequences: BTreeMap<String, u64>,
    /// Every blob of the store (images and release files alike), sorted by sha256.
    pub blobs: Vec<Blob>,
    /// Release files by name, sorted: which blob each one is.
    pub files: Vec<File>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Blob {
    /// Lowercase hex.
    pub sha256: String,
    pub size: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    pub name: String,
    pub sha256: String,
    pub size: u64,
}

impl Inventory {
    /// An inventory of `blobs` and `files` (sorted here).
    pub fn new(
        bundle_ids: Vec<String>,
        sequences: BTreeMap<String, u64>,
        mut blobs: Vec<Blob>,
        mut files: Vec<File>,
    ) -> Inventory {
        let mut bundle_ids = bundle_ids;
        bundle_ids.sort();
        blobs.sort_by(|a, b| a.sha256.cmp(&b.sha256));
        files.sort_by(|a, b| a.name.cmp(&b.name));
        Inventory {
            kind: INVENTORY_KIND.to_string(),
            version: INVENTORY_VERSION,
            bundle_ids,
            sequences,
            blobs,
            files,
        }
    }

    /// Pretty JSON with a trailing newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).expect("inventory serialises");
        bytes.push(b'\n');
        bytes
    }

    /// Parses and checks an inventory: its kind and version, and every
    /// digest and id against its grammar.
    pub fn parse(bytes: &[u8]) -> Result<Inventory, String> {
        if bytes.len() as u64 > MAX_INVENTORY_BYTES {
            return Err(format!(
                "it is {} bytes, more than the {MAX_INVENTORY_BYTES} allowed",
                bytes.len()
            ));
        }
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
        if value["kind"] != INVENTORY_KIND {
            return Err(format!("its kind is not {INVENTORY_KIND:?}"));
        }
        if value["version"] != INVENTORY_VERSION {
            return Err(format!(
                "its version is {}, this builder reads version {INVENTORY_VERSION}",
                value["version"]
            ));
        }
        let inventory: Inventory =
            serde_json::from_value(value).map_err(|e| format!("malformed: {e}"))?;
        for id in &inventory.bundle_ids {
            if !format::valid_hex(id, 32) {
                return Err(format!("bundle id {id:?} is not 32 lowercase hex digits"));
            }
        }
        let hashes = inventory
            .blobs
            .iter()
            .map(|b| &b.sha256)
            .chain(inventory.files.iter().map(|f| &f.sha256));
        for sha in hashes {
            if !format::valid_hex(sha, 64) {
                return Err(format!("sha256 {sha:?} is not 64 lowercase hex digits"));
            }
        }
        Ok(inventory)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let inv = Inventory::new(
            vec!["b".repeat(32), "a".repeat(32)],
            BTreeMap::from([("KEY/arm64".to_string(), 7)]),
            vec![Blob {
                sha256: "f".repeat(64),
                size: 3,
            }],
            vec![],
        );
        assert_eq!(inv.bundle_ids[0], "a".repeat(32));
        assert_eq!(Inventory::parse(&inv.to_bytes()).unwrap(), inv);
        let mut bad = inv.clone();
        bad.blobs[0].sha256 = "F".repeat(64);
        assert!(Inventory::parse(&bad.to_bytes())
            .unwrap_err()
            .contains("not 64 lowercase hex"));
        let mut other = serde_json::to_value(&inv).unwrap();
        other["kind"] = "x".into();
        assert!(Inventory::parse(other.to_string().as_bytes())
            .unwrap_err()
            .contains("kind"));
    }
}

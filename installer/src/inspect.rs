//! `edgeferry inspect`: verify a bundle exactly as `verify` does, then
//! show what it holds (signer, version, images with their sizes, files,
//! a delta's base). Writes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Write};

use anyhow::Result;
use edgeferry_bundle::format::{self, Entry, Manifest};
use edgeferry_bundle::oci::ManifestDoc;
use edgeferry_bundle::sign::Verified;
use edgeferry_bundle::verify::Sink;

use crate::cli::SourceArgs;
use crate::load::verify_into;
use crate::output::{self, InspectedDelta, InspectedFile, InspectedImage};
use crate::printer::Printer;

/// Image manifests larger than this are not kept for sizing (real ones
/// are a few KiB).
const MAX_IMAGE_MANIFEST_BYTES: u64 = 4 << 20;

/// Verifies and keeps only the image manifests' bytes, to size images.
#[derive(Default)]
struct ImageManifests {
    wanted: BTreeSet<String>,
    kept: BTreeMap<String, Vec<u8>>,
}

impl Sink for ImageManifests {
    fn manifest(&mut self, manifest: &Manifest, _: Option<&Verified>) -> Result<(), String> {
        self.wanted = manifest
            .images
            .iter()
            .filter_map(|i| format::sha256_hex_of_digest(&i.manifest_digest))
            .map(str::to_string)
            .collect();
        Ok(())
    }
    fn begin_entry(&mut self, entry: &Entry) -> io::Result<Option<Box<dyn Write + '_>>> {
        let blob = entry.path.starts_with("images/blobs/sha256/");
        if blob && entry.size <= MAX_IMAGE_MANIFEST_BYTES && self.wanted.contains(&entry.sha256) {
            let buffer = self.kept.entry(entry.sha256.clone()).or_default();
            return Ok(Some(Box::new(buffer)));
        }
        Ok(None)
    }
    fn end_entry(&mut self, _: &Entry) -> io::Result<()> {
        Ok(())
    }
}

/// Manifest + config + layers, from the verified manifest bytes.
fn image_size(bytes: &[u8]) -> Option<u64> {
    let doc: ManifestDoc = serde_json::from_slice(bytes).ok()?;
    let parts = doc.config.iter().chain(doc.layers.iter().flatten());
    Some(bytes.len() as u64 + parts.map(|d| d.size).sum::<u64>())
}

pub fn inspect_cmd(source: &SourceArgs, out: &Printer) -> Result<()> {
    let mut sink = ImageManifests::default();
    let outcome = verify_into(source, &mut sink, out)?;
    let m = &outcome.manifest;
    let images: Vec<InspectedImage> = m
        .images
        .iter()
        .map(|i| InspectedImage {
            reference: &i.reference,
            platform: &i.platform,
            manifest_digest: &i.manifest_digest,
            index_digest: i.index_digest.as_deref(),
            size: format::sha256_hex_of_digest(&i.manifest_digest)
                .and_then(|hex| sink.kept.get(hex))
                .and_then(|bytes| image_size(bytes)),
        })
        .collect();
    let omitted: BTreeSet<&str> = m
        .expected_present()
        .iter()
        .map(|e| e.path.as_str())
        .collect();
    let sha512: BTreeMap<&str, &str> = m
        .files
        .iter()
        .filter_map(|f| f.sha512.as_deref().map(|s| (f.path.as_str(), s)))
        .collect();
    let mut files: Vec<InspectedFile> = m
        .all_entries()
        .filter(|e| e.path.starts_with("files/"))
        .map(|e| InspectedFile {
            path: &e.path,
            size: e.size,
            sha256: &e.sha256,
            sha512: sha512.get(e.path.as_str()).copied(),
            omitted: omitted.contains(e.path.as_str()),
        })
        .collect();
    files.sort_by(|a, b| a.path.cmp(b.path));
    let delta = m.delta.as_ref().map(|d| InspectedDelta {
        base: &d.base,
        omitted_entries: d.expected_present.len(),
        omitted_bytes: d.expected_present.iter().map(|e| e.size).sum(),
    });
    let signer = outcome.signer.as_ref().map(|s| s.key_id.as_str());
    let inspected = output::Inspected {
        ok: true,
        bundle_id: &m.bundle_id,
        format_version: m.format_version,
        kubeedge_version: &m.kubeedge_version,
        arch: m.arch,
        sequence: m.sequence,
        created: &m.created,
        builder: &m.builder,
        sample: m.sample,
        signer,
        images,
        files,
        delta,
        entries: m.entries.len(),
        bytes: outcome.bytes_in,
    };
    if out.json() {
        return out.data(&inspected);
    }
    out.text(&text(&inspected));
    Ok(())
}

fn text(i: &output::Inspected) -> String {
    let sample = if i.sample {
        "  SAMPLE (stand-ins, not KubeEdge)"
    } else {
        ""
    };
    let mut s = format!(
        "bundle {} (format {})  KubeEdge {} linux/{}  sequence {}  created {}{sample}\n",
        i.bundle_id, i.format_version, i.kubeedge_version, i.arch, i.sequence, i.created
    );
    s.push_str(&format!(
        "signed by {}\nbuilt by {}\n",
        i.signer
            .map_or("NOBODY (signature skipped)".to_string(), |k| format!(
                "key {k}"
            )),
        i.builder
    ));
    if let Some(d) = &i.delta {
        let ids = match d.base.bundle_ids.as_slice() {
            [] => String::new(),
            ids => format!(" (bundle {})", ids.join(", ")),
        };
        let version = d
            .base
            .kubeedge_version
            .as_deref()
            .map_or(String::new(), |v| format!(" KubeEdge {v}"));
        s.push_str(&format!(
            "DELTA against {}{ids}{version}: {} entries ({} bytes) left out, the store must hold them\n",
            d.base.kind, d.omitted_entries, d.omitted_bytes
        ));
    }
    s.push_str("images:\n");
    for image in &i.images {
        let size = image
            .size
            .map_or("size unknown (manifest in the base)".to_string(), |n| {
                format!("{n} bytes")
            });
        s.push_str(&format!(
            "  {}  {}  {}  {size}\n",
            image.reference, image.platform, image.manifest_digest
        ));
    }
    s.push_str("files:\n");
    for file in &i.files {
        let omitted = if file.omitted {
            "  (left out: in the base)"
        } else {
            ""
        };
        s.push_str(&format!(
            "  {}  {} bytes  sha256 {}{omitted}\n",
            file.path, file.size, file.sha256
        ));
    }
    s.push_str(&format!(
        "{} entries in the stream, {} bytes read, every one verified\n",
        i.entries, i.bytes
    ));
    s
}

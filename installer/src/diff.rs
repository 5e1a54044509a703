//! `edgeferry diff A B`: what differs between two bundles, two stores or a
//! bundle and a store, for the gatekeeper's review and for planning what to
//! carry. A bundle side is verified first (as `verify` does, writing
//! nothing); a store side is read from its `state.json` and the platform
//! manifests it holds. Both become one plain [`Side`], and the comparison
//! is plain data ([`output::Diff`]) before anything is printed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, Result};
use edgeferry_bundle::format::{self, Arch, Manifest};
use edgeferry_bundle::verify::CheckOnly;

use crate::cli::{DiffArgs, SourceArgs, TrustArgs};
use crate::output::{self, Changes, FileChange, ImageChange};
use crate::printer::Printer;
use crate::{load, store};

/// One side, reduced to what is compared.
#[derive(Debug, Default)]
struct Side {
    /// (reference, platform) → platform manifest digest.
    images: BTreeMap<(String, String), String>,
    /// Release file name → (sha256, size).
    files: BTreeMap<String, (String, u64)>,
    /// Blob sha256 hex → size: image blobs and release files.
    blobs: BTreeMap<String, u64>,
    /// What a site holding this side already has, every arch included:
    /// "B adds" counts B's blobs missing from A's.
    all_blobs: BTreeMap<String, u64>,
}

/// A side as read, before any narrowing to one arch.
enum Read {
    Bundle(Manifest),
    Store(store::State, std::path::PathBuf),
}

pub fn diff_cmd(args: &DiffArgs, out: &Printer) -> Result<()> {
    let a = read_side(&args.a, args, out)?;
    let b = read_side(&args.b, args, out)?;
    // Like with like: a bundle holds one arch; compare only that arch of
    // a store on the other side.
    let compared_arch = match (&a, &b) {
        (Read::Bundle(m), Read::Store(..)) | (Read::Store(..), Read::Bundle(m)) => Some(m.arch),
        _ => None,
    };
    let (mut side_a, info_a) = reduce(&a, &args.a, compared_arch)?;
    if compared_arch.is_some() && matches!(a, Read::Store(..)) {
        side_a.all_blobs = reduce(&a, &args.a, None)?.0.all_blobs;
    }
    let (side_b, info_b) = reduce(&b, &args.b, compared_arch)?;
    let result = compare(&side_a, &side_b, info_a, info_b, compared_arch);
    if out.json() {
        return out.data(&result);
    }
    out.text(&render(&result));
    Ok(())
}

fn read_side(path: &Path, args: &DiffArgs, out: &Printer) -> Result<Read> {
    if path.is_dir() && path.join(store::STATE_FILE).exists() {
        let state = store::State::read(path)?;
        return Ok(Read::Store(state, path.to_path_buf()));
    }
    let source = SourceArgs {
        bundle: path.to_path_buf(),
        trust: TrustArgs {
            keys: args.keys.clone(),
            trust_file: args.trust_file.clone(),
            whole_file: false,
            signature: None,
            insecure_skip_signature: args.insecure_skip_signature,
        },
        json: args.json,
    };
    let outcome = load::verify_into(&source, &mut CheckOnly, out)?;
    Ok(Read::Bundle(outcome.manifest))
}

/// `linux/<arch>[/<variant>]`, the platform string images of `arch` carry.
fn platform_of(arch: Arch) -> String {
    match arch.oci_platform() {
        (architecture, Some(variant)) => format!("linux/{architecture}/{variant}"),
        (architecture, None) => format!("linux/{architecture}"),
    }
}

/// Whether a release file (or its checksum file) is for `arch`: KubeEdge
/// names them `…-linux-<arch>.<ext>`.
fn file_is_for(name: &str, arch: Arch) -> bool {
    name.contains(&format!("-linux-{arch}."))
}

fn reduce(read: &Read, path: &Path, arch: Option<Arch>) -> Result<(Side, output::DiffSide)> {
    let mut side = Side::default();
    match read {
        Read::Bundle(m) => {
            for image in &m.images {
                side.images.insert(
                    (image.reference.clone(), image.platform.clone()),
                    image.manifest_digest.clone(),
                );
            }
            for entry in &m.entries {
                if let Some(name) = entry.path.strip_prefix("files/") {
                    side.files
                        .insert(name.to_string(), (entry.sha256.clone(), entry.size));
                }
                if entry.path.starts_with("files/") || entry.path.starts_with("images/blobs/") {
                    side.blobs.insert(entry.sha256.clone(), entry.size);
                }
            }
            side.all_blobs = side.blobs.clone();
            let info = output::DiffSide {
                kind: "bundle",
                path: path.to_path_buf(),
                kubeedge_versions: vec![m.kubeedge_version.clone()],
                arches: vec![m.arch],
                bundle_id: Some(m.bundle_id.clone()),
            };
            Ok((side, info))
        }
        Read::Store(state, dir) => {
            let platform = arch.map(platform_of);
            for (reference, image) in &state.images {
                for (p, digest) in &image.platforms {
                    if platform.as_ref().is_some_and(|want| want != p) {
                        continue;
                    }
                    side.images
                        .insert((reference.clone(), p.clone()), digest.clone());
                    add_image_blobs(&mut side.blobs, dir, state, digest)?;
                }
                for index in &image.upstream_indexes {
                    if let Some(record) = state.manifests.get(index) {
                        let kept = image
                            .platforms
                            .iter()
                            .any(|(p, _)| platform.as_ref().is_none_or(|want| want == p));
                        if kept {
                            side.blobs.insert(hex(index), record.size);
                        }
                    }
                }
            }
            for (name, file) in &state.files {
                if arch.is_some_and(|a| !file_is_for(name, a)) {
                    continue;
                }
                side.files
                    .insert(name.clone(), (file.sha256.clone(), file.size));
                side.blobs.insert(file.sha256.clone(), file.size);
            }
            side.all_blobs = side.blobs.clone();
            let versions: BTreeSet<String> = state
                .bundles
                .values()
                .map(|b| b.kubeedge_version.clone())
                .collect();
            let arches: BTreeSet<Arch> = state.bundles.values().map(|b| b.arch).collect();
            let info = output::DiffSide {
                kind: "store",
                path: path.to_path_buf(),
                kubeedge_versions: versions.into_iter().collect(),
                arches: arches.into_iter().collect(),
                bundle_id: None,
            };
            Ok((side, info))
        }
    }
}

fn hex(digest: &str) -> String {
    format::sha256_hex_of_digest(digest)
        .unwrap_or(digest)
        .to_string()
}

/// A platform manifest's own blob, its config and its layers, read from
/// the store (the load verified the manifest against its digest).
fn add_image_blobs(
    blobs: &mut BTreeMap<String, u64>,
    dir: &Path,
    state: &store::State,
    digest: &str,
) -> Result<()> {
    if let Some(record) = state.manifests.get(digest) {
        blobs.insert(hex(digest), record.size);
    }
    let path = store::blob_path(dir, digest);
    let bytes = std::fs::read(&path)
        .with_context(|| format!("reading image manifest {digest} from {}", dir.display()))?;
    let manifest: serde_json::Value = serde_json::from_slice(&bytes)
        .with_context(|| format!("image manifest {digest} in {} is not JSON", dir.display()))?;
    let descriptors = std::iter::once(&manifest["config"])
        .chain(manifest["layers"].as_array().into_iter().flatten());
    for d in descriptors {
        if let (Some(digest), Some(size)) = (d["digest"].as_str(), d["size"].as_u64()) {
            blobs.insert(hex(digest), size);
        }
    }
    Ok(())
}

fn compare(
    a: &Side,
    b: &Side,
    info_a: output::DiffSide,
    info_b: output::DiffSide,
    compared_arch: Option<Arch>,
) -> output::Diff {
    let mut images = Changes {
        added: Vec::new(),
        removed: Vec::new(),
        changed: Vec::new(),
    };
    let keys: BTreeSet<&(String, String)> = a.images.keys().chain(b.images.keys()).collect();
    for key in keys {
        let (old, new) = (a.images.get(key), b.images.get(key));
        let change = ImageChange {
            reference: key.0.clone(),
            platform: key.1.clone(),
            old_digest: old.cloned(),
            new_digest: new.cloned(),
        };
        match (old, new) {
            (None, Some(_)) => images.added.push(change),
            (Some(_), None) => images.removed.push(change),
            (Some(o), Some(n)) if o != n => images.changed.push(change),
            _ => {}
        }
    }
    let mut files = Changes {
        added: Vec::new(),
        removed: Vec::new(),
        changed: Vec::new(),
    };
    let names: BTreeSet<&String> = a.files.keys().chain(b.files.keys()).collect();
    for name in names {
        let (old, new) = (a.files.get(name), b.files.get(name));
        let change = FileChange {
            name: name.clone(),
            old_sha256: old.map(|f| f.0.clone()),
            new_sha256: new.map(|f| f.0.clone()),
            old_size: old.map(|f| f.1),
            new_size: new.map(|f| f.1),
        };
        match (old, new) {
            (None, Some(_)) => files.added.push(change),
            (Some(_), None) => files.removed.push(change),
            (Some(o), Some(n)) if o != n => files.changed.push(change),
            _ => {}
        }
    }
    let added: Vec<u64> = b
        .blobs
        .iter()
        .filter(|(sha, _)| !a.all_blobs.contains_key(*sha))
        .map(|(_, size)| *size)
        .collect();
    let identical = [&images.added, &images.removed, &images.changed]
        .iter()
        .all(|l| l.is_empty())
        && [&files.added, &files.removed, &files.changed]
            .iter()
            .all(|l| l.is_empty())
        && added.is_empty();
    output::Diff {
        a: info_a,
        b: info_b,
        compared_arch,
        identical,
        images,
        files,
        added_blobs: added.len(),
        added_bytes: added.iter().sum(),
    }
}

fn describe(side: &output::DiffSide) -> String {
    let arches: Vec<&str> = side.arches.iter().map(|a| a.as_str()).collect();
    let id = side
        .bundle_id
        .as_ref()
        .map(|id| format!(" id {id}"))
        .unwrap_or_default();
    format!(
        "{} {}{id} (KubeEdge {}; {})",
        side.kind,
        side.path.display(),
        side.kubeedge_versions.join(", "),
        arches.join(", ")
    )
}

fn render(d: &output::Diff) -> String {
    let mut s = format!("A: {}\nB: {}\n", describe(&d.a), describe(&d.b));
    if let Some(arch) = d.compared_arch {
        s.push_str(&format!(
            "comparing {} only: the bundle holds that arch alone\n",
            platform_of(arch)
        ));
    }
    if d.identical {
        s.push_str("no differences\n");
        return s;
    }
    let digest = |d: &Option<String>| d.clone().unwrap_or_default();
    // One line per change: `  <sign> <what>  <detail>`.
    let line = |s: &mut String, sign: char, what: String, detail: String| {
        s.push_str(&format!("  {sign} {what}  {detail}\n"));
    };
    s.push_str("images:\n");
    let image = |c: &output::ImageChange| format!("{}  {}", c.reference, c.platform);
    for c in &d.images.added {
        line(&mut s, '+', image(c), digest(&c.new_digest));
    }
    for c in &d.images.removed {
        line(&mut s, '-', image(c), digest(&c.old_digest));
    }
    for c in &d.images.changed {
        let detail = format!("{} -> {}", digest(&c.old_digest), digest(&c.new_digest));
        line(&mut s, '~', image(c), detail);
    }
    s.push_str("files:\n");
    for c in &d.files.added {
        line(
            &mut s,
            '+',
            c.name.clone(),
            format!("sha256 {}", digest(&c.new_sha256)),
        );
    }
    for c in &d.files.removed {
        line(
            &mut s,
            '-',
            c.name.clone(),
            format!("sha256 {}", digest(&c.old_sha256)),
        );
    }
    for c in &d.files.changed {
        let detail = format!(
            "sha256 {} -> {}",
            digest(&c.old_sha256),
            digest(&c.new_sha256)
        );
        line(&mut s, '~', c.name.clone(), detail);
    }
    s.push_str(&format!(
        "B adds {} blobs, {} bytes\n",
        d.added_blobs, d.added_bytes
    ));
    s
}

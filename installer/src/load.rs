//! `verify`, `load`, `store list` and `store inventory`: a bundle checked
//! in one pass, into a store or into nothing, and what a store holds.

use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result};
use edgeferry_bundle::sign::TrustedKeys;
use edgeferry_bundle::verify::{self, CheckOnly, Trust};

use crate::cli::{LoadArgs, SourceArgs, StoreCheckArgs, StoreInventoryArgs, TrustArgs};
use crate::config::Config;
use crate::output;
use crate::printer::Printer;
use crate::{input, store};

fn trusted_keys(trust: &TrustArgs, out: &Printer) -> Result<Option<TrustedKeys>> {
    if trust.insecure_skip_signature {
        out.warn("WARNING: --insecure-skip-signature: nobody vouches for this bundle; anyone could have made it");
        return Ok(None);
    }
    let mut files = trust.keys.clone();
    files.extend(trust.trust_file.clone());
    if files.is_empty() {
        anyhow::bail!("no trusted key: pass --key <edgeferry.pub> or --trust-file <file>");
    }
    Ok(Some(TrustedKeys::from_files(&files)?))
}

/// Opens the input and runs the single verifying pass into `sink`.
pub(crate) fn verify_into(
    source: &SourceArgs,
    sink: &mut dyn verify::Sink,
    out: &Printer,
) -> Result<verify::Outcome> {
    let keys = trusted_keys(&source.trust, out)?;
    let whole_file = match (&source.trust.signature, source.trust.whole_file) {
        (Some(path), _) => input::WholeFile::At(path),
        (None, true) => input::WholeFile::Beside,
        (None, false) => input::WholeFile::Skip,
    };
    let opened = input::open(&source.bundle, keys.as_ref(), whole_file)?;
    let reader: Box<dyn Read + Send> = match out.bytes_bar(opened.size.unwrap_or(0), "verifying") {
        Some(bar) => Box::new(bar.wrap_read(opened.reader)),
        None => opened.reader,
    };
    let trust = match &keys {
        Some(keys) => Trust::Keys(keys),
        None => Trust::SkipSignature,
    };
    verify::verify(reader, trust, opened.file_signature.as_deref(), sink)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("{} refused", opened.label))
}

pub fn verify_cmd(source: &SourceArgs, out: &Printer) -> Result<()> {
    let outcome = verify_into(source, &mut CheckOnly, out)?;
    let m = &outcome.manifest;
    if out.json() {
        return out.data(&output::Verified {
            ok: true,
            bundle_id: &m.bundle_id,
            kubeedge_version: &m.kubeedge_version,
            arch: m.arch,
            sequence: m.sequence,
            created: &m.created,
            sample: m.sample,
            signer: outcome.signer.as_ref().map(|s| s.key_id.as_str()),
            entries: m.entries.len(),
            bytes: outcome.bytes_in,
            whole_file: outcome.whole_file,
        });
    }
    let signer = outcome
        .signer
        .as_ref()
        .map_or("NOBODY (signature skipped)".to_string(), |s| {
            format!("key {}", s.key_id)
        });
    let sample = if m.sample {
        " SAMPLE (stand-ins, not KubeEdge)"
    } else {
        ""
    };
    let whole_file = if outcome.whole_file {
        ", and the whole file against its .minisig"
    } else {
        ""
    };
    out.line(&format!(
        "ok: bundle {} KubeEdge {} linux/{} sequence {}{sample}, signed by {signer}; {} entries checked{whole_file}",
        m.bundle_id,
        m.kubeedge_version,
        m.arch,
        m.sequence,
        m.entries.len()
    ));
    Ok(())
}

pub fn load_cmd(args: &LoadArgs, config: &Config, out: &Printer) -> Result<()> {
    let mut loader = store::Loader::new(
        &args.store,
        config,
        store::LoadOptions {
            allow_downgrade: args.allow_downgrade,
            no_sync: args.no_sync,
            repair_only: false,
        },
    )?;
    let no_space = |err: anyhow::Error| {
        if store::is_no_space(&err) {
            err.context(format!(
                "no space left on the filesystem of {}: free some space or pick another --store",
                args.store.display()
            ))
        } else {
            err
        }
    };
    let outcome = verify_into(&args.source, &mut loader, out).map_err(no_space)?;
    let report = loader
        .commit(&outcome.manifest, outcome.signer.as_ref())
        .map_err(no_space)?;
    let m = &outcome.manifest;
    if out.json() {
        return out.data(&output::Loaded {
            ok: true,
            store: &args.store,
            bundle_id: &m.bundle_id,
            kubeedge_version: &m.kubeedge_version,
            arch: m.arch,
            sequence: m.sequence,
            changed: report.changed,
            new_blobs: report.new_blobs,
            new_bytes: report.new_bytes,
            repaired_blobs: report.repaired.len(),
        });
    }
    if !report.repaired.is_empty() {
        out.warn(&format!(
            "repaired {} damaged blobs in {} from the bundle: {}",
            report.repaired.len(),
            args.store.display(),
            report.repaired.join(", ")
        ));
    }
    if report.changed {
        out.line(&format!(
            "loaded bundle {} (KubeEdge {} linux/{}) into {}: {} new blobs, {} bytes",
            m.bundle_id,
            m.kubeedge_version,
            m.arch,
            args.store.display(),
            report.new_blobs,
            report.new_bytes
        ));
    } else {
        out.line(&format!(
            "bundle {} is already in {}: nothing changed",
            m.bundle_id,
            args.store.display()
        ));
    }
    Ok(())
}

pub fn store_list(store_dir: &Path, out: &Printer) -> Result<()> {
    if !store_dir.join(store::STATE_FILE).exists() {
        anyhow::bail!(
            "{} is not an edgeferry store: load a bundle into it first",
            store_dir.display()
        );
    }
    let state: output::StoreState = store::State::read(store_dir)?;
    if out.json() {
        return out.data(&state);
    }
    let mut s = format!("store {}\nbundles:\n", store_dir.display());
    for (id, b) in &state.bundles {
        let signer = b.signer.as_deref().unwrap_or("unsigned");
        let sample = if b.sample { "  SAMPLE" } else { "" };
        s.push_str(&format!(
            "  {id}  KubeEdge {} linux/{}  sequence {}  key {signer}{sample}\n",
            b.kubeedge_version, b.arch, b.sequence
        ));
    }
    s.push_str("images:\n");
    for (reference, image) in &state.images {
        let platforms: Vec<&str> = image.platforms.keys().map(String::as_str).collect();
        s.push_str(&format!(
            "  {reference}  {}  [{}]\n",
            image.digest,
            platforms.join(", ")
        ));
    }
    s.push_str("files:\n");
    for (name, file) in &state.files {
        s.push_str(&format!(
            "  {name}  {} bytes  sha256 {}\n",
            file.size, file.sha256
        ));
    }
    out.text(&s);
    Ok(())
}

/// `store inventory`: the store's digests for a delta's `--base`, on
/// stdout or written atomically to `-o FILE`.
pub fn store_inventory(args: &StoreInventoryArgs, out: &Printer) -> Result<()> {
    let inventory: output::StoreInventory = store::inventory(&args.store)?;
    let Some(path) = &args.out else {
        out.text(&String::from_utf8_lossy(&inventory.to_bytes()));
        return Ok(());
    };
    edgeferry_bundle::atomic::write_file(path, &inventory.to_bytes(), 0o644)
        .with_context(|| format!("writing {}", path.display()))?;
    let bytes = inventory.blobs.iter().map(|b| b.size).sum();
    if out.json() {
        return out.data(&output::InventoryWritten {
            ok: true,
            store: &args.store,
            out: path,
            bundles: inventory.bundle_ids.len(),
            blobs: inventory.blobs.len(),
            bytes,
            files: inventory.files.len(),
        });
    }
    out.line(&format!(
        "inventory of {}: {} bundles, {} blobs ({bytes} bytes), {} release files, written to {}",
        args.store.display(),
        inventory.bundle_ids.len(),
        inventory.blobs.len(),
        inventory.files.len(),
        path.display()
    ));
    Ok(())
}

/// `store check`: hashes everything; with `--repair`, swaps in good copies
/// from a bundle and checks again. Returns whether the store is intact.
pub fn store_check(args: &StoreCheckArgs, config: &Config, out: &Printer) -> Result<bool> {
    let mut checked = store::check(&args.store)?;
    let mut repaired = Vec::new();
    if let (Some(bundle), false) = (&args.repair, checked.damaged.is_empty()) {
        let mut loader = store::Loader::new(
            &args.store,
            config,
            store::LoadOptions {
                allow_downgrade: true,
                no_sync: false,
                repair_only: true,
            },
        )?;
        let source = SourceArgs {
            bundle: bundle.clone(),
            trust: args.trust.clone(),
            json: args.json,
        };
        let outcome = verify_into(&source, &mut loader, out)?;
        repaired = loader
            .commit(&outcome.manifest, outcome.signer.as_ref())?
            .repaired;
        checked = store::check(&args.store)?;
    }
    let ok = checked.damaged.is_empty();
    if out.json() {
        out.data(&output::StoreChecked {
            ok,
            store: &args.store,
            blobs: checked.blobs,
            bytes: checked.bytes,
            files: checked.files,
            damaged: &checked.damaged,
            repaired: &repaired,
        })?;
        return Ok(ok);
    }
    let mut s = String::new();
    for sha in &repaired {
        s.push_str(&format!("repaired  blobs/sha256/{sha}\n"));
    }
    for d in &checked.damaged {
        s.push_str(&format!("damaged  {}  {}\n", d.path, d.problem));
    }
    s.push_str(&format!(
        "{}: {} blobs ({} bytes) and {} release files checked, {} damaged\n",
        args.store.display(),
        checked.blobs,
        checked.bytes,
        checked.files,
        checked.damaged.len()
    ));
    out.text(&s);
    if !ok {
        out.warn(&format!(
            "{} is damaged: repair it with `edgeferry store check --store {} --repair <bundle>` from a bundle that holds those blobs",
            args.store.display(),
            args.store.display()
        ));
    }
    Ok(ok)
}

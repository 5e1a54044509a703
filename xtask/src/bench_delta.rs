//! `cargo xtask bench delta`: how much a delta bundle saves. On the
//! built-in sample, v1.22.0 is the base and v1.23.1 the target: the full
//! v1.23.1 bundle against the delta built with `--base` (the old bundle),
//! and the load of each into a store that holds the base. Wall clock,
//! best of 3. Then the same on a realistic input (the `bench bundle`
//! input, about 1 GiB) against a previous release made from it that shares
//! every layer but keadm and the installation-package's binaries layer.
//! The binaries are the dev profile's (`cargo build`), as the tests use
//! them.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256, Sha512};

use edgeferry_bundle::format;

use crate::bench::ensure_keys;
use crate::bench_input;
use crate::util::{cargo, run as sh, workspace_root};

const BASE_VERSION: &str = "v1.22.0";
const VERSION: &str = "v1.23.1";
const ARCH: &str = "amd64";
const RUNS: usize = 3;
/// The release before the bench input's, on the realistic part.
const PREVIOUS: &str = "v1.23.0";

pub fn run() -> Result<()> {
    let root = workspace_root();
    println!("\nbench delta: building the dev-profile binaries");
    sh(cargo().args(["build", "-p", "edgeferry-builder", "-p", "edgeferry"]))?;
    let builder = root.join("target/debug/edgeferry-builder");
    let edgeferry = root.join("target/debug/edgeferry");
    let bench = root.join("target/bench/delta");
    if bench.exists() {
        fs::remove_dir_all(&bench)?;
    }
    fs::create_dir_all(&bench)?;
    let (key, public) = ensure_keys(&builder, &bench.join("keys"))?;

    let build = |version: &str, out: &str, base: Option<&Path>, epoch: u64| {
        build_bundle(
            &builder,
            &key,
            &["--sample"],
            version,
            &bench.join(out),
            base,
            epoch,
        )
    };
    let base = build(BASE_VERSION, "base", None, 1_767_225_600)?;
    let full = build(VERSION, "full", None, 1_767_312_000)?;
    let started = Instant::now();
    let delta = build(VERSION, "delta", Some(&base), 1_767_312_000)?;
    let delta_build = started.elapsed().as_secs_f64();

    let size = |p: &Path| fs::metadata(p).map(|m| m.len()).context("bundle size");
    let (full_size, delta_size, base_size) = (size(&full)?, size(&delta)?, size(&base)?);

    // Loads: a fresh copy of the base store each run, the load timed alone.
    let base_store = bench.join("base-store");
    sh(Command::new(&edgeferry)
        .arg("load")
        .arg(&base)
        .arg("--key")
        .arg(&public)
        .arg("--store")
        .arg(&base_store)
        .stdout(std::process::Stdio::null()))?;
    let full_load = time_load(&edgeferry, &public, &bench, &base_store, &full)?;
    let delta_load = time_load(&edgeferry, &public, &bench, &base_store, &delta)?;

    println!(
        "\nbench delta on the SAMPLE ({ARCH}), {} CPUs, dev profile, best of {RUNS}:",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!("  base {BASE_VERSION} bundle            {base_size:>10} bytes");
    println!("  full {VERSION} bundle            {full_size:>10} bytes");
    println!(
        "  delta {BASE_VERSION} -> {VERSION}        {delta_size:>10} bytes ({:.1}% of full), built in {delta_build:.2} s",
        100.0 * delta_size as f64 / full_size as f64
    );
    println!("  load onto the base store: full {full_load:.3} s, delta {delta_load:.3} s");
    realistic(&root, &builder, &edgeferry, &key, &public)
}

/// The realistic part: the `bench bundle` input (about 1 GiB, real files)
/// as the new release, and as its base a "previous release" made from it
/// that shares every layer but the ones a KubeEdge release rebuilds: the
/// keadm tarball and the installation-package's binaries layer (its last,
/// the uncompressed ELF layer). Pause and mosquitto are shared whole.
fn realistic(
    root: &Path,
    builder: &Path,
    edgeferry: &Path,
    key: &Path,
    public: &Path,
) -> Result<()> {
    let bench = root.join("target/bench/delta-realistic");
    if bench.exists() {
        fs::remove_dir_all(&bench)?;
    }
    fs::create_dir_all(&bench)?;
    let input = bench_input::ensure(&root.join("target/bench/bundle-input"))?;
    let previous = bench.join("previous-input");
    release_variant(&input.dir, &previous, PREVIOUS)?;

    let build = |version: &str, from: &Path, out: &str, base: Option<&Path>, epoch: u64| {
        let source = [
            "--from".as_ref(),
            from.as_os_str(),
            "--pause-image".as_ref(),
            "registry.k8s.io/pause:3.10".as_ref(),
        ];
        build_bundle(
            builder,
            key,
            &source,
            version,
            &bench.join(out),
            base,
            epoch,
        )
    };
    let new = bench_input::KUBEEDGE_VERSION;
    let base = build(PREVIOUS, &previous, "base", None, 1_767_225_600)?;
    let full = build(new, &input.dir, "full", None, 1_767_312_000)?;
    let delta = build(new, &input.dir, "delta", Some(&base), 1_767_312_000)?;
    let size = |p: &Path| fs::metadata(p).map(|m| m.len()).context("bundle size");
    let (full_size, delta_size) = (size(&full)?, size(&delta)?);

    let base_store = bench.join("base-store");
    sh(Command::new(edgeferry)
        .arg("load")
        .arg(&base)
        .arg("--key")
        .arg(public)
        .arg("--store")
        .arg(&base_store)
        .stdout(std::process::Stdio::null()))?;
    let full_load = time_load(edgeferry, public, &bench, &base_store, &full)?;
    let delta_load = time_load(edgeferry, public, &bench, &base_store, &delta)?;
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!(
        "\nbench delta on a REALISTIC input (target/bench/bundle-input, amd64), dev profile, best of {RUNS}:"
    );
    println!(
        "  full {} bundle            {full_size:>10} bytes ({:.1} MiB)",
        bench_input::KUBEEDGE_VERSION,
        mib(full_size)
    );
    println!(
        "  delta over {PREVIOUS}             {delta_size:>10} bytes ({:.1} MiB, {:.1}% of full)",
        mib(delta_size),
        100.0 * delta_size as f64 / full_size as f64
    );
    println!("  load onto the base store: full {full_load:.3} s, delta {delta_load:.3} s");
    Ok(())
}

/// One `bundle --json --arch ARCH` run with `source` (the sample, or
/// `--from DIR …`), optionally over `--base`; returns the bundle's path.
pub(crate) fn build_bundle<S: AsRef<std::ffi::OsStr>>(
    builder: &Path,
    key: &Path,
    source: &[S],
    version: &str,
    out: &Path,
    base: Option<&Path>,
    epoch: u64,
) -> Result<PathBuf> {
    let mut cmd = Command::new(builder);
    cmd.args(["bundle", "--json", "--arch", ARCH])
        .args(source)
        .args(["--kubeedge-version", version])
        .arg("--key")
        .arg(key)
        .arg("--out")
        .arg(out)
        .env("SOURCE_DATE_EPOCH", epoch.to_string())
        .stdout(std::process::Stdio::null());
    if let Some(base) = base {
        cmd.arg("--base").arg(base);
    }
    sh(&mut cmd)?;
    let arch = ARCH.parse().map_err(anyhow::Error::msg)?;
    Ok(out.join(format::bundle_file_name(version, arch)))
}

/// Best-of-RUNS wall time of loading `bundle` into a fresh copy of `base_store`.
fn time_load(
    edgeferry: &Path,
    public: &Path,
    bench: &Path,
    base_store: &Path,
    bundle: &Path,
) -> Result<f64> {
    let mut best = f64::MAX;
    for n in 0..RUNS {
        let store = bench.join(format!("store-{n}"));
        if store.exists() {
            fs::remove_dir_all(&store)?;
        }
        sh(Command::new("cp").arg("-a").arg(base_store).arg(&store))?;
        let started = Instant::now();
        sh(Command::new(edgeferry)
            .arg("load")
            .arg(bundle)
            .arg("--key")
            .arg(public)
            .arg("--store")
            .arg(&store)
            .stdout(std::process::Stdio::null()))?;
        best = best.min(started.elapsed().as_secs_f64());
        fs::remove_dir_all(&store)?;
    }
    Ok(best)
}

/// `input` as another release, `version` (PREVIOUS here, the one before
/// it; `bench sync` makes the one after): a copy (hard links) in which the
/// keadm tarball and the installation-package's last layer are other bytes,
/// and that image's config, manifest and index follow. Changed files are
/// replaced, never written through a link into `input`.
pub(crate) fn release_variant(input: &Path, out: &Path, version: &str) -> Result<()> {
    sh(Command::new("cp").arg("-al").arg(input).arg(out))?;
    let replace = |path: &Path, bytes: &[u8]| -> Result<()> {
        if path.exists() {
            fs::remove_file(path)?;
        }
        fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
    };
    // The seeds PREVIOUS always had, so bench delta's bytes stay the same.
    let seed = |what: &str| {
        if version == PREVIOUS {
            format!("previous {what}")
        } else {
            format!("{version} {what}")
        }
    };
    // Other bytes, incompressible like the binaries they stand for.
    let noise = |seed: &str, len: usize| -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 32);
        let mut block = Sha256::digest(seed.as_bytes());
        while out.len() < len {
            out.extend_from_slice(&block);
            block = Sha256::digest(block);
        }
        out.truncate(len);
        out
    };
    let tar_of = |name: &str, data: &[u8]| -> Result<Vec<u8>> {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_ustar();
        header.set_size(data.len() as u64);
        header.set_mode(0o755);
        header.set_mtime(0);
        header.set_cksum();
        builder.append_data(&mut header, name, data)?;
        Ok(builder.into_inner()?)
    };

    // The keadm tarball and its bare sha512.
    let keadm = fs::read_dir(out.join("files"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("keadm-"))
        })
        .context("the bench input has a keadm tarball")?;
    let name = keadm
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .to_string();
    fs::remove_file(&keadm)?;
    fs::remove_file(out.join("files").join(format!("checksum_{name}.txt")))?;
    let name = name.replace(bench_input::KUBEEDGE_VERSION, version);
    let tar = tar_of("keadm/keadm", &noise(&seed("keadm"), 48 << 20))?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar)?;
    let gz = gz.finish()?;
    replace(&out.join("files").join(&name), &gz)?;
    replace(
        &out.join("files").join(format!("checksum_{name}.txt")),
        format!("{:x}\n", Sha512::digest(&gz)).as_bytes(),
    )?;

    // installation-package: a new last layer, then config, manifest, index.
    let layout = out.join("images/installation-package");
    let blobs = layout.join("blobs/sha256");
    let read_json = |hex: &str| -> Result<serde_json::Value> {
        Ok(serde_json::from_slice(&fs::read(blobs.join(hex))?)?)
    };
    let write_blob = |bytes: &[u8]| -> Result<(String, u64)> {
        let hex = format!("{:x}", Sha256::digest(bytes));
        replace(&blobs.join(&hex), bytes)?;
        Ok((format!("sha256:{hex}"), bytes.len() as u64))
    };
    let mut index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json"))?)?;
    let manifest_digest = index["manifests"][0]["digest"]
        .as_str()
        .context("index names a manifest")?
        .trim_start_matches("sha256:")
        .to_string();
    let mut manifest = read_json(&manifest_digest)?;
    let config_digest = manifest["config"]["digest"]
        .as_str()
        .context("manifest names a config")?
        .trim_start_matches("sha256:")
        .to_string();
    let mut config = read_json(&config_digest)?;
    let layer = tar_of(
        "usr/local/bin/edgecore",
        &noise(&seed("edgecore"), 96 << 20),
    )?;
    let (layer_digest, layer_size) = write_blob(&layer)?;
    let last = manifest["layers"]
        .as_array()
        .map(|l| l.len())
        .context("manifest has layers")?
        - 1;
    manifest["layers"][last]["digest"] = layer_digest.clone().into();
    manifest["layers"][last]["size"] = layer_size.into();
    // An uncompressed layer's diff_id is its digest.
    config["rootfs"]["diff_ids"][last] = layer_digest.into();
    let (config_digest, config_size) = write_blob(&serde_json::to_vec(&config)?)?;
    manifest["config"]["digest"] = config_digest.into();
    manifest["config"]["size"] = config_size.into();
    let (manifest_digest, manifest_size) = write_blob(&serde_json::to_vec(&manifest)?)?;
    index["manifests"][0]["digest"] = manifest_digest.into();
    index["manifests"][0]["size"] = manifest_size.into();
    let annotations = &mut index["manifests"][0]["annotations"];
    for key in [
        "io.containerd.image.name",
        "org.opencontainers.image.ref.name",
    ] {
        let old = annotations[key].as_str().unwrap_or_default().to_string();
        annotations[key] = old.replace(bench_input::KUBEEDGE_VERSION, version).into();
    }
    replace(&layout.join("index.json"), &serde_json::to_vec(&index)?)?;
    Ok(())
}

//! `cargo xtask bench delta`: how much a delta bundle saves. On the
//! built-in sample, v1.22.0 is the base and v1.23.1 the target: the full
//! v1.23.1 bundle against the delta built with `--base` (the old bundle),
//! and the load of each into a store that holds the base. Wall clock,
//! best of 3. The binaries are the dev profile's (`cargo build`), as the
//! tests use them.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::bench::ensure_keys;
use crate::util::{cargo, run as sh, workspace_root};

const BASE_VERSION: &str = "v1.22.0";
const VERSION: &str = "v1.23.1";
const ARCH: &str = "amd64";
const RUNS: usize = 3;

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

    let build = |version: &str, out: &str, base: Option<&Path>, epoch: u64| -> Result<PathBuf> {
        let mut cmd = Command::new(&builder);
        cmd.args(["bundle", "--sample", "--json", "--arch", ARCH])
            .args(["--kubeedge-version", version])
            .arg("--key")
            .arg(&key)
            .arg("--out")
            .arg(bench.join(out))
            .env("SOURCE_DATE_EPOCH", epoch.to_string())
            .stdout(std::process::Stdio::null());
        if let Some(base) = base {
            cmd.arg("--base").arg(base);
        }
        sh(&mut cmd)?;
        Ok(bench
            .join(out)
            .join(format!("edgeferry-kubeedge-{version}-linux-{ARCH}.tar.zst")))
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
    let time_load = |bundle: &Path| -> Result<f64> {
        let mut best = f64::MAX;
        for n in 0..RUNS {
            let store = bench.join(format!("store-{n}"));
            if store.exists() {
                fs::remove_dir_all(&store)?;
            }
            sh(Command::new("cp").arg("-a").arg(&base_store).arg(&store))?;
            let started = Instant::now();
            sh(Command::new(&edgeferry)
                .arg("load")
                .arg(bundle)
                .arg("--key")
                .arg(&public)
                .arg("--store")
                .arg(&store)
                .stdout(std::process::Stdio::null()))?;
            best = best.min(started.elapsed().as_secs_f64());
            fs::remove_dir_all(&store)?;
        }
        Ok(best)
    };
    let full_load = time_load(&full)?;
    let delta_load = time_load(&delta)?;

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
    Ok(())
}

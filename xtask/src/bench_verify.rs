//! `cargo xtask bench verify`: the release `edgeferry` checking and loading
//! the ~1 GiB bench bundle versus unpacking it with stock tools.
//!
//! Timed, in the same run, best of 3, each after `sync` and `cat bundle >
//! /dev/null` (so every command starts from a hot page cache and no dirty
//! pages of an earlier run):
//!
//! - (a) `edgeferry verify B --key PUB`
//! - (w) `edgeferry verify B --key PUB --whole-file`, for information: what
//!   the BLAKE2b pass over the compressed file costs (docs/security.md)
//! - (b) `edgeferry load B --key PUB --store FRESH` (durable: writeback per
//!   blob, one syncfs before the swap)
//! - (c) the same load with `--no-sync`
//! - (r1) `zstd -dc B | tar -x -C FRESH`
//! - (r2) `zstd -dc B | tar -x -C FRESH && sync`, the durable reference
//!
//! Targets (issue 18's): (a)/r1 ≤ 1.0, (c)/r1 ≤ 1.05, (b)/r2 ≤ 1.0, and
//! peak RSS of verify and load ≤ 64 MiB. Missed targets are reported, not
//! fatal.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result};

use crate::bench::{
    ensure_keys, load_average, machine_facts, quote, release_binary, seconds_list, shell_line,
    timed, Sample, BENCH_PACKAGES,
};
use crate::bench_input::{self, KUBEEDGE_VERSION};
use crate::util::{ensure_packages, output, run as sh, workspace_root};

const RUNS: usize = 3;
/// Fixed so the bundle is the same every time it is made.
const SOURCE_DATE_EPOCH: &str = "1767225600";
const TARGET_RSS_MIB: f64 = 64.0;
const MIB: f64 = 1024.0 * 1024.0;

/// One command of the comparison.
struct Timed {
    key: &'static str,
    label: &'static str,
    args: Vec<String>,
    samples: Vec<Sample>,
}

impl Timed {
    fn best(&self) -> f64 {
        self.samples
            .iter()
            .map(|s| s.seconds)
            .fold(f64::INFINITY, f64::min)
    }
    /// CPU time of the fastest run.
    fn best_cpu(&self) -> f64 {
        self.samples
            .iter()
            .min_by(|a, b| a.seconds.total_cmp(&b.seconds))
            .map_or(0.0, |s| s.cpu_seconds)
    }
    fn peak_rss_mib(&self) -> f64 {
        self.samples.iter().map(|s| s.rss_kib).max().unwrap_or(0) as f64 / 1024.0
    }
}

pub fn run() -> Result<()> {
    ensure_packages(BENCH_PACKAGES)?;
    let root = workspace_root();
    let bench = root.join("target/bench");
    let input = bench_input::ensure(&bench.join("bundle-input"))?;
    let builder = release_binary("edgeferry-builder", "edgeferry-builder")?;
    let edgeferry = release_binary("edgeferry", "edgeferry")?;
    let (key, public) = ensure_keys(&builder, &bench.join("keys"))?;

    // Its own directory: `bench bundle` empties target/bench/out each run.
    let bundle_dir = bench.join("verify-bundle");
    let bundle = bundle_dir.join(format!(
        "edgeferry-kubeedge-{KUBEEDGE_VERSION}-linux-amd64.tar.zst"
    ));
    let make_bundle = || -> Result<()> {
        if bundle_dir.exists() {
            fs::remove_dir_all(&bundle_dir)?;
        }
        println!("\nbench: packing {} (once)", bundle.display());
        sh(Command::new(&builder)
            .env("SOURCE_DATE_EPOCH", SOURCE_DATE_EPOCH)
            .arg("bundle")
            .args(["--arch", "amd64", "--kubeedge-version", KUBEEDGE_VERSION])
            .arg("--from")
            .arg(&input.dir)
            // The bench input carries one sandbox image, not the default three.
            .args(["--pause-image", "registry.k8s.io/pause:3.10"])
            .arg("--key")
            .arg(&key)
            .arg("--out")
            .arg(&bundle_dir)
            .stdout(Stdio::null()))
    };
    if !bundle.exists()
        || !bundle_dir
            .join(format!("{}.minisig", file_name(&bundle)))
            .exists()
    {
        make_bundle()?;
    } else {
        println!("\nbench: reusing {}", bundle.display());
    }
    // A bundle of an older format (or key) is made anew, once.
    let check = Command::new(&edgeferry)
        .arg("verify")
        .arg(&bundle)
        .arg("--key")
        .arg(&public)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()?;
    if !check.status.success() {
        println!(
            "bench: the kept bundle does not verify ({}), packing it anew",
            String::from_utf8_lossy(&check.stderr).trim()
        );
        make_bundle()?;
    }
    let bundle_bytes = fs::metadata(&bundle)?.len();

    let work = bench.join("verify-run");
    let store = work.join("store");
    let extract = work.join("extract");
    fs::create_dir_all(&work)?;
    let b = bundle.display().to_string();
    let ours = |extra: &[&str]| -> Vec<String> {
        let mut args = vec![edgeferry.display().to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let pubkey = public.display().to_string();
    let store_s = store.display().to_string();
    let unpack = format!(
        "zstd -dc {} | tar -x -C {}",
        quote(&b),
        quote(&extract.display().to_string())
    );
    let mut commands = vec![
        Timed {
            key: "a",
            label: "edgeferry verify",
            args: ours(&["verify", &b, "--key", &pubkey]),
            samples: Vec::new(),
        },
        Timed {
            key: "w",
            label: "edgeferry verify --whole-file",
            args: ours(&["verify", &b, "--key", &pubkey, "--whole-file"]),
            samples: Vec::new(),
        },
        Timed {
            key: "b",
            label: "edgeferry load (durable)",
            args: ours(&["load", &b, "--key", &pubkey, "--store", &store_s]),
            samples: Vec::new(),
        },
        Timed {
            key: "c",
            label: "edgeferry load --no-sync",
            args: ours(&[
                "load",
                &b,
                "--key",
                &pubkey,
                "--store",
                &store_s,
                "--no-sync",
            ]),
            samples: Vec::new(),
        },
        Timed {
            key: "r1",
            label: "zstd -dc | tar -x",
            args: vec!["sh".into(), "-c".into(), unpack.clone()],
            samples: Vec::new(),
        },
        Timed {
            key: "r2",
            label: "zstd -dc | tar -x && sync",
            args: vec!["sh".into(), "-c".into(), format!("{unpack} && sync")],
            samples: Vec::new(),
        },
    ];

    let tools = format!(
        "{}; {}; {}",
        output(Command::new(&edgeferry).arg("--version"))?.trim(),
        output(Command::new("zstd").arg("--version"))?.trim(),
        output(Command::new("tar").arg("--version"))?
            .lines()
            .next()
            .unwrap_or("tar")
            .trim()
    );
    println!("\nbench: tools: {tools}");
    for c in &commands {
        println!("bench: ({}) {}", c.key, shell_line(&c.args));
    }

    let rss_file = bench.join("time-rss.txt");
    let reset = || -> Result<()> {
        for dir in [&store, &extract] {
            if dir.exists() {
                fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
            }
        }
        fs::create_dir_all(&extract)?;
        sh(&mut Command::new("sync"))?;
        sh(Command::new("sh")
            .arg("-c")
            .arg(format!("cat {} > /dev/null", quote(&b))))
    };
    let load_before = load_average();
    println!(
        "\nbench: {RUNS} rounds of the {} commands, each after rm + sync + cat bundle > /dev/null; load average {load_before}",
        commands.len()
    );
    // Rounds, so drift (writeback, other work) hits every command alike.
    for n in 1..=RUNS {
        let mut line = format!("  round {n}/{RUNS}:");
        for c in commands.iter_mut() {
            reset()?;
            let s = timed(&c.args, &[], &rss_file)?;
            write!(
                line,
                " ({}) {:.2} s (CPU {:.2} s) {:.0} MiB;",
                c.key,
                s.seconds,
                s.cpu_seconds,
                s.rss_kib as f64 / 1024.0
            )?;
            c.samples.push(s);
        }
        println!("{line}");
    }
    // Leave nothing 1 GiB big behind but the bundle.
    for dir in [&store, &extract] {
        if dir.exists() {
            fs::remove_dir_all(dir)?;
        }
    }
    sh(&mut Command::new("sync"))?;

    let by = |k: &str| commands.iter().find(|c| c.key == k).expect("listed");
    let (a, bl, c, r1, r2) = (by("a"), by("b"), by("c"), by("r1"), by("r2"));
    let verdict = |ok: bool| if ok { "PASS" } else { "FAIL" };
    let mut table = String::new();
    let mut missed = Vec::new();
    writeln!(
        table,
        "\nbench verify: best of {RUNS}, each after sync + cat bundle > /dev/null (hot page cache); {}",
        machine_facts()
    )?;
    writeln!(
        table,
        "  bundle {} bytes ({:.1} MiB): {}",
        bundle_bytes,
        bundle_bytes as f64 / MIB,
        bundle.display()
    )?;
    writeln!(
        table,
        "  {:<4} {:<28} {:>9} {:>10} {:>12}  all runs",
        "", "command", "best", "its CPU", "peak RSS"
    )?;
    for t in &commands {
        writeln!(
            table,
            "  {:<4} {:<28} {:>7.3} s {:>8.2} s {:>8.1} MiB  {}",
            format!("({})", t.key),
            t.label,
            t.best(),
            t.best_cpu(),
            t.peak_rss_mib(),
            seconds_list(&t.samples)
        )?;
    }
    writeln!(table, "  {:<42} {:>9}  {:>8}", "target", "value", "limit")?;
    for (name, ours, reference, limit) in [
        ("(a)/(r1) verify vs unpack", a, r1, 1.0),
        ("(b)/(r2) durable load vs unpack && sync", bl, r2, 1.0),
        ("(c)/(r1) --no-sync load vs unpack", c, r1, 1.05),
    ] {
        let ratio = ours.best() / reference.best();
        let ok = ratio <= limit;
        if !ok {
            missed.push(format!("{name} = {ratio:.3}"));
        }
        writeln!(
            table,
            "  {:<42} {:>9.3}  {:>8}  {}",
            name,
            ratio,
            format!("<= {limit:.2}"),
            verdict(ok)
        )?;
    }
    for t in [a, bl, c] {
        let rss = t.peak_rss_mib();
        let ok = rss <= TARGET_RSS_MIB;
        if !ok {
            missed.push(format!("({}) peak RSS {rss:.1} MiB", t.key));
        }
        writeln!(
            table,
            "  {:<42} {:>5.1} MiB  {:>8}  {}",
            format!("({}) {} peak RSS", t.key, t.label),
            rss,
            format!("<= {TARGET_RSS_MIB:.0}"),
            verdict(ok)
        )?;
    }
    writeln!(
        table,
        "  load average before / after: {load_before} / {} (other work on the machine adds noise)",
        load_average()
    )?;
    writeln!(
        table,
        "produced by: cargo xtask bench verify (in {})",
        root.display()
    )?;
    writeln!(table, "  tools: {tools}")?;
    for t in &commands {
        writeln!(table, "  ({}) {}", t.key, shell_line(&t.args))?;
    }
    if missed.is_empty() {
        writeln!(table, "bench verify: every target met")?;
    } else {
        writeln!(table, "bench verify: MISSED TARGETS: {}", missed.join("; "))?;
    }
    print!("{table}");
    Ok(())
}

fn file_name(path: &Path) -> String {
    PathBuf::from(path.file_name().unwrap_or_default())
        .display()
        .to_string()
}

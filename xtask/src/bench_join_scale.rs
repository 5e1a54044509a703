//! `cargo xtask bench join --nodes N`: `edgeferry join` at scale, the
//! control process's cost per node (issue 15, section 4).
//!
//! Light test hosts: the plain sample bundle (its keadm tarball a few KiB,
//! no payload), the stand-in keadm's join taking no extra time, the
//! postcheck's settle time 0 (as `bench join`). What is left on a node is
//! the join's own work, so the control process (the one `edgeferry join`,
//! every SSH connection in it) is what grows with N.
//!
//! Runs, each on fresh hosts and a fresh state directory (1,000 hosts are
//! made in well under a minute, so no site is reused): T1, the best of 3
//! single-host joins; N hosts at P = 100 and at P = 200, the cost per node
//! printed for each. Should N hosts not fit this machine (creating them
//! fails), the largest size of [`CURVE`] that does stands in for N, and
//! the growth curve at P = 200 over the sizes of [`CURVE`] below it shows
//! how the cost per node grows.
//!
//! Targets (the issue's), printed PASS/FAIL: the control process's peak
//! RSS <= 100 MiB and its CPU <= 10 ms per node; wall <= 1.3 x max(ideal
//! bound ceil(N/P) x T1, CPU floor N x C1 / CPUs) (`bench_hosts`); the
//! tail (process exit minus the journal's last write: what follows the
//! last node's last step, report.json written and synced, the table
//! printed) and `edgeferry status --state-dir` of N nodes, `--json` and
//! the table, each < 1 s (best of 3); T1 <= keadm's own time + 0.3 s,
//! keadm's own time being the `keadm_join` step's ms in T1's report.json
//! (the whole SSH exec of the stand-in keadm, so its session start
//! counts as keadm's).

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::bench::{ensure_keys, load_average, machine_facts, release_binary, shell_line};
use crate::bench_hosts::{
    best, bundle_and_load, fleet_run, remove_dirs, runs_table, seconds_list, steps_table,
    verdict_table, Run, Site, Target, Verb, PACKAGES,
};
use crate::bench_input::KUBEEDGE_VERSION;
use crate::util::{ensure_packages, workspace_root};

/// The parallelism of the N-host runs.
const PARALLEL: [usize; 2] = [100, 200];
/// The growth curve's sizes (those below N), at the last of [`PARALLEL`].
const CURVE: [usize; 3] = [50, 200, 500];
const T1_RUNS: usize = 3;
const STATUS_RUNS: usize = 3;
const TARGET_RSS_MIB: f64 = 100.0;
const TARGET_CPU_MS_PER_NODE: f64 = 10.0;
const TARGET_RATIO: f64 = 1.3;
const TARGET_STATUS_S: f64 = 1.0;
const TARGET_T1_OVER_KEADM_S: f64 = 0.3;
/// As `bench join`'s: at hundreds of hosts on this machine's CPUs a
/// trivial step can wait a minute for a CPU.
const TIMEOUTS: &str =
    "timeouts: {connect: 300, preflight: 900, containerd: 900, fetch: 900, keadm_join: 900, postcheck: 900}";
const SETTLE: &str = "settle: 0";
const STEPS: [&str; 6] = [
    "connect",
    "preflight",
    "containerd",
    "fetch",
    "keadm_join",
    "postcheck",
];
const SOURCE_DATE_EPOCH: &str = "1767225600";

/// One N-host run with what is timed after it.
struct Scaled {
    run: Run,
    /// Process exit minus the journal's last write, seconds.
    tail: f64,
    /// Best `edgeferry status --state-dir <state> [--json]` wall, seconds.
    status_json: f64,
    status_table: f64,
}

pub fn run(nodes: usize) -> Result<()> {
    if nodes == 0 || nodes > edgeferry_tests::hosts::MAX_HOSTS {
        bail!(
            "--nodes {nodes}: between 1 and {} (one bridge's ports)",
            edgeferry_tests::hosts::MAX_HOSTS
        );
    }
    ensure_packages(PACKAGES)?;
    let bench = workspace_root().join("target/bench");
    let builder = release_binary("edgeferry-builder", "edgeferry-builder")?;
    let edgeferry = release_binary("edgeferry", "edgeferry")?;
    let (key, public) = ensure_keys(&builder, &bench.join("keys"))?;
    let (store, bundles) = (
        bench.join("join-scale-store"),
        bench.join("join-scale-bundle"),
    );
    let runs_dir = bench.join("join-scale-runs");
    remove_dirs(&[&bundles, &store, &runs_dir])?;
    println!("\nbench: bundling the sample (light: no payload) and loading it");
    bundle_and_load(
        (&builder, &edgeferry),
        (&key, &public),
        None,
        (KUBEEDGE_VERSION, SOURCE_DATE_EPOCH),
        &bundles,
        &store,
    )?;

    let load_before = load_average();
    let verb = Verb {
        name: "join",
        args: &[],
        done: "joined",
    };
    let inventory = format!("{TIMEOUTS}\n{SETTLE}");
    let site = |n: usize, label: &str| {
        let dir = runs_dir.join(label);
        Site::new(&edgeferry, &store, dir, n, &inventory, |_, _| {})
            .with_context(|| format!("{n} test hosts"))
    };
    let on = |site: Site, p: usize, label: String| -> Result<(Run, PathBuf)> {
        let run = fleet_run(&site, &edgeferry, &store, &verb, p, label)?;
        Ok((run, site.dir.join("state")))
    };
    let join = |n: usize, p: usize, label: String| on(site(n, &label)?, p, label);
    let t1_runs = (1..=T1_RUNS)
        .map(|r| Ok(join(1, 1, format!("t1-{r}"))?.0))
        .collect::<Result<Vec<_>>>()?;

    // N, or the largest size of the curve whose hosts can be created.
    let mut sizes: Vec<usize> = CURVE.iter().copied().filter(|&c| c < nodes).collect();
    sizes.push(nodes);
    let mut scaled = Vec::new();
    let mut fitted = None;
    let mut refused = String::new();
    while let Some(n) = sizes.pop() {
        let p = PARALLEL[0].min(n);
        let label = format!("n{n}-p{p}");
        match site(n, &label) {
            Ok(made) => {
                scaled.push(after(&edgeferry, on(made, p, label)?)?);
                fitted = Some(n);
                break;
            }
            Err(e) if !sizes.is_empty() => {
                println!("  {n} hosts do not fit: {e:#}");
                writeln!(refused, "  {n} hosts did not fit this machine: {e:#}")?;
            }
            Err(e) => return Err(e),
        }
    }
    let n = fitted.context("not even the smallest size fitted")?;
    for &p in &PARALLEL[1..] {
        let p = p.min(n);
        if scaled.iter().any(|s: &Scaled| s.run.parallel == p) {
            continue; // N <= 100: P = 200 is P = N, as run
        }
        scaled.push(after(&edgeferry, join(n, p, format!("n{n}-p{p}"))?)?);
    }
    let p_curve = *PARALLEL.last().expect("a parallelism");
    let mut curve = Vec::new();
    // The curve only when N did not fit: at N itself the cost per node is
    // its own run's (and the curve's runs cost most of another N).
    for &c in CURVE.iter().filter(|&&c| c < n && n < nodes) {
        let p = p_curve.min(c);
        curve.push(after(&edgeferry, join(c, p, format!("n{c}-p{p}"))?)?);
    }
    let load_after = load_average();

    // The tables.
    let t1 = best(&t1_runs);
    let keadm_s = t1
        .step_ms
        .get("keadm_join")
        .and_then(|v| v.first())
        .copied();
    let keadm_s = keadm_s.context("T1's report.json has no keadm_join step")? as f64 / 1000.0;
    let mut t = String::new();
    writeln!(
        t,
        "\nbench join --nodes {nodes}: light test hosts (real sshd in namespaces on one bridge, root's login shell /bin/sh; the sample's keadm tarball, no payload; the stand-in keadm's join takes no extra time); {}",
        machine_facts()
    )?;
    t.push_str(&refused);
    writeln!(
        t,
        "  T1 = best single-host join (-p 1): {:.3} s (all: {}); C1 = its work CPU: {:.2} s; its keadm_join step {keadm_s:.3} s; T1 - keadm {:.3} s",
        t1.seconds,
        seconds_list(&t1_runs),
        t1.work_cpu,
        t1.seconds - keadm_s
    )?;
    let mut rows: Vec<&Run> = curve.iter().map(|s| &s.run).collect();
    rows.extend(scaled.iter().map(|s| &s.run));
    runs_table(&mut t, t1, &rows)?;
    writeln!(
        t,
        "  {:<22} {:>9} {:>9} {:>8} {:>9} {:>11} {:>12} {:>12}",
        "cost per node",
        "wall/N",
        "own CPU/N",
        "RSS/N",
        "work/N",
        "tail",
        "status json",
        "status table"
    )?;
    for s in curve.iter().chain(&scaled) {
        let r = &s.run;
        let n = r.nodes as f64;
        writeln!(
            t,
            "  {:<22} {:>6.1} ms {:>6.2} ms {:>4.0} KiB {:>6.0} ms {:>9.3} s {:>10.3} s {:>10.3} s",
            r.name,
            r.seconds / n * 1e3,
            r.cpu_seconds / n * 1e3,
            r.rss_kib as f64 / n,
            r.work_cpu / n * 1e3,
            s.tail,
            s.status_json,
            s.status_table
        )?;
    }
    writeln!(
        t,
        "  inventory: user root, key auth, strict host keys, {SETTLE}, {TIMEOUTS}"
    )?;
    writeln!(
        t,
        "  columns: bound = ceil(N/P) x T1; CPU floor = N x C1 / CPUs; wall/max = wall / max(bound, floor); own CPU and peak RSS: the edgeferry join process by /usr/bin/time; work CPU: it, the mirror and every host's sshd with what it reaped; tail = the join's exit minus its journal's last write (the last node's last step: report.json written and synced, the table printed, exit); status: `edgeferry status --state-dir <state> [--json]`, best of {STATUS_RUNS}"
    )?;
    let mut step_rows: Vec<&Run> = vec![t1];
    step_rows.extend(&rows);
    steps_table(&mut t, &STEPS, &step_rows)?;
    writeln!(
        t,
        "  load average before / after: {load_before} / {load_after} (other work on the machine adds noise)"
    )?;
    writeln!(
        t,
        "produced by: cargo xtask bench join --nodes {nodes} (in {})",
        workspace_root().display()
    )?;
    for s in &scaled {
        writeln!(t, "  {}", s.run.command)?;
    }
    let mut targets = Vec::new();
    for s in &scaled {
        let r = &s.run;
        let at = format!("{} -p {}", r.nodes, r.parallel);
        let floor = r.nodes as f64 * t1.work_cpu / crate::bench_hosts::cpus();
        let ideal = crate::bench_hosts::bound(t1, r);
        targets.extend([
            Target::new(
                format!("{at}: peak RSS"),
                r.rss_kib as f64 / 1024.0,
                TARGET_RSS_MIB,
                "MiB",
            ),
            Target::new(
                format!("{at}: own CPU per node"),
                r.cpu_seconds / r.nodes as f64 * 1e3,
                TARGET_CPU_MS_PER_NODE,
                "ms",
            ),
            Target::new(
                format!("{at}: wall / max(bound, floor)"),
                r.seconds / ideal.max(floor),
                TARGET_RATIO,
                "",
            ),
            Target::new(
                format!("{at}: tail (report.json, exit)"),
                s.tail,
                TARGET_STATUS_S,
                "s",
            ),
            Target::new(
                format!("{at}: status --json"),
                s.status_json,
                TARGET_STATUS_S,
                "s",
            ),
            Target::new(
                format!("{at}: status table"),
                s.status_table,
                TARGET_STATUS_S,
                "s",
            ),
        ]);
    }
    targets.push(Target::new(
        "T1 - keadm's own time",
        t1.seconds - keadm_s,
        TARGET_T1_OVER_KEADM_S,
        "s",
    ));
    verdict_table(&mut t, "join --nodes", &targets)?;
    print!("{t}");
    Ok(())
}

/// What is timed after an N-host run: its tail and `edgeferry status`.
fn after(edgeferry: &Path, (run, state): (Run, PathBuf)) -> Result<Scaled> {
    let journal = state.join("journal.jsonl");
    let written = fs::metadata(&journal)
        .and_then(|m| m.modified())
        .with_context(|| format!("{}", journal.display()))?;
    let tail = run
        .ended
        .duration_since(written)
        .unwrap_or_default()
        .as_secs_f64();
    let status = |json: bool| -> Result<f64> {
        let mut times = Vec::new();
        for _ in 0..STATUS_RUNS {
            let mut cmd = Command::new(edgeferry);
            cmd.arg("status").arg("--state-dir").arg(&state);
            if json {
                cmd.arg("--json");
            }
            let started = Instant::now();
            let out = cmd.stderr(Stdio::null()).output()?;
            times.push(started.elapsed().as_secs_f64());
            if !out.status.success() || out.stdout.is_empty() {
                bail!(
                    "{} exited {} with {} bytes on stdout",
                    shell_line(&[
                        edgeferry.display().to_string(),
                        "status --state-dir".into(),
                        state.display().to_string()
                    ]),
                    out.status,
                    out.stdout.len()
                );
            }
        }
        Ok(times.into_iter().fold(f64::INFINITY, f64::min))
    };
    let (status_json, status_table) = (status(true)?, status(false)?);
    println!("  tail {tail:.3} s; status --json {status_json:.3} s, table {status_table:.3} s");
    Ok(Scaled {
        run,
        tail,
        status_json,
        status_table,
    })
}

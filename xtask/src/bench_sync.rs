//! `cargo xtask bench sync`: tiered sites and mirror replicas on loopback,
//! in one run, with the release binaries.
//!
//! The hub is a store holding two bundles of the `bench bundle` input
//! (about 1 GiB): A, KubeEdge v1.23.1, and B, a "next release" v1.23.2
//! that shares every layer but the keadm tarball and the
//! installation-package's binaries layer (made as `bench delta` makes its
//! previous release). `edgeferry serve` serves it over plain HTTP and over
//! HTTPS; nginx serves the two bundle files.
//!
//! 1. **Full sync**: an empty site, `edgeferry sync --only v1.23.1`,
//!    against the reference "copy the bundle file, then load it"
//!    (`curl -o` from nginx, then `edgeferry load`). Wall clock, CPU and
//!    peak RSS by `/usr/bin/time`, best of 3, alternating; bytes over the
//!    wire from the hub's access log (body bytes of every response) and
//!    curl's `size_download`.
//! 2. **Incremental sync**: a site holding A syncs again once the hub also
//!    holds B: only the blobs B adds are fetched. Against curl of B's
//!    bundle + `edgeferry load` into the same site.
//! 3. **Resumed sync**: a full sync killed with SIGKILL once half its bytes
//!    are staged, then run again: what it fetches the second time.
//! 4. **Replicas**: wrk's blob load (two wrk processes of 32 connections)
//!    against one `edgeferry serve`, then split over two on the same
//!    store. On 2 CPUs shared with the load generator the gain is bounded
//!    by CPU, not by the servers.
//! 5. **Failover**: a real `ctr image pull --hosts-dir` of the pause image
//!    through the `hosts.toml` files `serve --peer-mirror` prints (mirror
//!    1, then 2): with both up, with the first one's port closed (a
//!    refused connection), and with the first one dropping connection
//!    attempts (a listener whose accept queue is full: what a powered-off
//!    host or a firewall looks like).
//!
//! No targets are set for these: every number is "reported". What the bench
//! does assert, failing loudly: every synced site passes `edgeferry store
//! check` and equals the direct load (the same `store inventory`, every
//! file outside `blobs/` byte for byte, the same blob names and sizes); a
//! sync fetches what its plan said, the resumed one only what was not
//! staged; every pull succeeds, and in failover from the second mirror.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use edgeferry_bundle::hashing::sha256_hex;

use crate::bench::{
    ensure_keys, load_average, machine_facts, measure, release_binaries, shell_line, Sample,
};
use crate::bench_delta::{build_bundle, release_variant};
use crate::bench_input::{self, KUBEEDGE_VERSION};
use crate::bench_mirror::{
    children_cpu_seconds, free_ports, run_wrk_with, tree_cpu_seconds, version, LoadResult, Server,
};
use crate::util::{ensure_packages, run as sh, workspace_root};

const PACKAGES: &[(&str, &str)] = &[
    ("/usr/bin/time", "time"),
    ("nginx", "nginx"),
    ("curl", "curl"),
    ("wrk", "wrk"),
    ("containerd", "containerd"),
    ("ctr", "containerd"),
];

/// The hub's second bundle: the bench input's next release.
const NEXT: &str = "v1.23.2";
const EPOCH_A: u64 = 1_767_225_600;
const EPOCH_B: u64 = 1_767_312_000;
const PAUSE: &str = "registry.k8s.io/pause:3.10";
/// Timed runs of each sync and its reference (alternating, best taken).
const RUNS: usize = 3;
/// The replicas' wrk load: this many wrk processes, each one thread with
/// this many keep-alive connections, for this long (EDGEFERRY_BENCH_SECONDS
/// overrides), in this many alternating rounds.
const WRKS: usize = 2;
const WRK_CONNECTIONS: usize = 32;
const DEFAULT_SECONDS: u64 = 10;
const ROUNDS: usize = 1;
/// Pulls per failover case; the dropping-mirror case once (it waits).
const PULLS: usize = 2;
/// A pull through a dropping mirror is stopped after this long.
const PULL_CAP: Duration = Duration::from_secs(150);
const MIB: f64 = 1024.0 * 1024.0;

pub fn run() -> Result<()> {
    ensure_packages(PACKAGES)?;
    let seconds = match std::env::var("EDGEFERRY_BENCH_SECONDS") {
        Ok(s) => s
            .parse::<u64>()
            .context("EDGEFERRY_BENCH_SECONDS is a whole number of seconds")?
            .max(1),
        Err(_) => DEFAULT_SECONDS,
    };
    let root = workspace_root();
    let bench = root.join("target/bench");
    let dir = bench.join("sync");
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    fs::create_dir_all(dir.join("runs"))?;
    let built = release_binaries(&[
        ("edgeferry", "edgeferry"),
        ("edgeferry-builder", "edgeferry-builder"),
    ])?;
    let (edgeferry, builder) = (built[0].clone(), built[1].clone());
    let (key, public) = ensure_keys(&builder, &bench.join("keys"))?;
    let input = bench_input::ensure(&bench.join("bundle-input"))?;
    let next_input = dir.join("next-input");
    release_variant(&input.dir, &next_input, NEXT)?;

    println!("\nbench sync: building bundle A ({KUBEEDGE_VERSION}) and B ({NEXT})");
    let source = |from: &Path| -> Vec<std::ffi::OsString> {
        vec![
            "--from".into(),
            from.into(),
            "--pause-image".into(),
            PAUSE.into(),
        ]
    };
    let bundle_a = build_bundle(
        &builder,
        &key,
        &source(&input.dir),
        KUBEEDGE_VERSION,
        &dir.join("bundles/a"),
        None,
        EPOCH_A,
    )?;
    let bundle_b = build_bundle(
        &builder,
        &key,
        &source(&next_input),
        NEXT,
        &dir.join("bundles/b"),
        None,
        EPOCH_B,
    )?;
    let size_a = fs::metadata(&bundle_a)?.len();
    let size_b = fs::metadata(&bundle_b)?.len();

    let tools = Tools {
        edgeferry: edgeferry.clone(),
        public: public.clone(),
        rss: dir.join("time.txt"),
    };
    let hub = dir.join("hub");
    for bundle in [&bundle_a, &bundle_b] {
        sh(tools.load(bundle, &hub).stdout(Stdio::null()))?;
    }
    // nginx's root: the two bundle files, linked.
    let www = dir.join("www");
    fs::create_dir_all(&www)?;
    fs::hard_link(&bundle_a, www.join("a.tar.zst"))?;
    fs::hard_link(&bundle_b, www.join("b.tar.zst"))?;

    let [hub_port, tls_port, nginx_port] = free_ports()?;
    let mut commands = Vec::new();
    let hub_log = dir.join("hub-access.jsonl");
    let hub_args = serve_args(&edgeferry, &hub, hub_port, true, &hub_log, &[]);
    commands.push(shell_line(&hub_args));
    let hub_server = Server::start(
        "edgeferry (hub)",
        &hub_args,
        hub_port,
        &dir.join("hub-serve.log"),
        200,
    )?;
    let tls_log = dir.join("hub-tls-access.jsonl");
    let tls_args = serve_args(&edgeferry, &hub, tls_port, false, &tls_log, &[]);
    commands.push(shell_line(&tls_args));
    // Plain HTTP on the TLS port is answered 400: it is listening.
    let tls_server = Server::start(
        "edgeferry (hub, TLS)",
        &tls_args,
        tls_port,
        &dir.join("hub-tls-serve.log"),
        400,
    )?;
    let hub_ca = dir.join("hub.tls/mirror.crt");
    anyhow::ensure!(
        hub_ca.exists(),
        "edgeferry serve made no site certificate at {}",
        hub_ca.display()
    );
    let nginx_dir = dir.join("nginx");
    fs::create_dir_all(&nginx_dir)?;
    let nginx_conf = nginx_dir.join("nginx.conf");
    fs::write(&nginx_conf, nginx_config(&nginx_dir, &www, nginx_port))?;
    let nginx_args: Vec<String> = vec![
        "nginx".into(),
        "-p".into(),
        nginx_dir.display().to_string(),
        "-e".into(),
        nginx_dir.join("error.log").display().to_string(),
        "-c".into(),
        nginx_conf.display().to_string(),
    ];
    commands.push(shell_line(&nginx_args));
    let nginx = Server::start(
        "nginx",
        &nginx_args,
        nginx_port,
        &nginx_dir.join("stdout.log"),
        200,
    )?;
    let plain_from = format!("http://{}", hub_server.addr);
    let tls_from = format!("https://{}", tls_server.addr);
    let url_a = format!("http://{}/bundles/a.tar.zst", nginx.addr);
    let url_b = format!("http://{}/bundles/b.tar.zst", nginx.addr);

    let load_before = load_average();
    let runs = dir.join("runs");

    // 1. Full sync against curl + load.
    println!("\nbench sync: full sync of A into an empty site, best of {RUNS} (load average {load_before})");
    let mut full = Vec::new();
    let mut full_tls = Vec::new();
    let mut full_ref = Vec::new();
    let site_full = runs.join("full-site");
    let ref_full = runs.join("full-ref");
    let only = ["--only", KUBEEDGE_VERSION];
    for n in 1..=RUNS {
        remove_store(&site_full)?;
        let ours = tools.sync(&plain_from, None, &site_full, &only, &hub_log)?;
        ours.expect_loaded(1, "the full sync")?;
        remove_store(&ref_full)?;
        let reference = tools.copy_then_load(&url_a, &runs.join("a.tar.zst"), &ref_full)?;
        same_store(&tools, &site_full, &ref_full)?;
        println!(
            "  run {n}/{RUNS}: sync {:.2} s ({} bytes over the wire), curl + load {:.2} s",
            ours.sample.seconds, ours.wire_bytes, reference.seconds
        );
        full.push(ours);
        full_ref.push(reference);
        let site_tls = runs.join("tls-site");
        remove_store(&site_tls)?;
        let ours_tls = tools.sync(&tls_from, Some(&hub_ca), &site_tls, &only, &tls_log)?;
        ours_tls.expect_loaded(1, "the full sync over HTTPS")?;
        same_store(&tools, &site_tls, &ref_full)?;
        println!(
            "  run {n}/{RUNS}: sync over HTTPS {:.2} s",
            ours_tls.sample.seconds
        );
        remove_store(&site_tls)?;
        full_tls.push(ours_tls);
    }
    tools.check(&site_full)?;
    let full_plan_bytes = full[0].plan_bytes;

    // 2. Incremental: the site holds A, the hub A and B.
    println!("\nbench sync: incremental sync of B into a site holding A, best of {RUNS}");
    let mut inc = Vec::new();
    let mut inc_ref = Vec::new();
    let site_inc = runs.join("inc-site");
    let ref_inc = runs.join("inc-ref");
    for n in 1..=RUNS {
        remove_store(&site_inc)?;
        link_copy(&site_full, &site_inc)?;
        let ours = tools.sync(&plain_from, None, &site_inc, &[], &hub_log)?;
        ours.expect_loaded(1, "the incremental sync")?;
        remove_store(&ref_inc)?;
        link_copy(&ref_full, &ref_inc)?;
        let reference = tools.copy_then_load(&url_b, &runs.join("b.tar.zst"), &ref_inc)?;
        same_store(&tools, &site_inc, &ref_inc)?;
        println!(
            "  run {n}/{RUNS}: sync {:.2} s ({} bytes over the wire), curl + load {:.2} s",
            ours.sample.seconds, ours.wire_bytes, reference.seconds
        );
        inc.push(ours);
        inc_ref.push(reference);
    }
    tools.check(&site_inc)?;

    // 3. Killed halfway, then resumed.
    println!("\nbench sync: a full sync killed with SIGKILL halfway, then run again");
    let resumed = resume(&tools, &plain_from, &runs, full_plan_bytes, &hub_log)?;
    same_store(&tools, &runs.join("resume-site"), &ref_full)?;
    tools.check(&runs.join("resume-site"))?;
    println!(
        "  killed with {} of {full_plan_bytes} bytes staged ({} in a partial blob); the rerun fetched {} bytes in {:.2} s",
        resumed.staged, resumed.partial, resumed.sync.fetched_bytes, resumed.sync.sample.seconds
    );
    drop(tls_server);
    drop(nginx);
    drop(hub_server);
    let load_after_sync = load_average();

    // 4. Replicas under wrk's load.
    let duration = Duration::from_secs(seconds);
    let replicas = replicas(&edgeferry, &hub, &input.dir, &dir, duration, &mut commands)?;

    // 5. Failover in a real containerd pull.
    let failover = failover(&edgeferry, &hub, &dir, &mut commands)?;
    let load_after = load_average();

    // The table.
    fn best(v: &[Synced]) -> &Synced {
        v.iter()
            .min_by(|a, b| a.sample.seconds.total_cmp(&b.sample.seconds))
            .expect("RUNS > 0")
    }
    fn best_ref(v: &[CopyLoad]) -> &CopyLoad {
        v.iter()
            .min_by(|a, b| a.seconds.total_cmp(&b.seconds))
            .expect("RUNS > 0")
    }
    let (f, ft, fr) = (best(&full), best(&full_tls), best_ref(&full_ref));
    let (i, ir) = (best(&inc), best_ref(&inc_ref));
    let mut t = String::new();
    writeln!(
        t,
        "\nbench sync: loopback, best of {RUNS} (alternating with the reference), release binaries; {}",
        machine_facts()
    )?;
    writeln!(
        t,
        "  hub store: bundle A {KUBEEDGE_VERSION} ({size_a} bytes, {:.1} MiB) and B {NEXT} ({size_b} bytes, {:.1} MiB; shares all but keadm and one 96 MiB layer)",
        size_a as f64 / MIB,
        size_b as f64 / MIB
    )?;
    writeln!(
        t,
        "  {:<44} {:>8} {:>8} {:>10} {:>16} {:>6}",
        "", "wall s", "CPU s", "peak RSS", "bytes on wire", "GETs"
    )?;
    let row = |t: &mut String, name: &str, s: f64, cpu: f64, rss: u64, bytes: u64, gets: String| {
        writeln!(
            t,
            "  {name:<44} {s:>8.3} {cpu:>8.2} {:>6.1} MiB {bytes:>16} {gets:>6}",
            rss as f64 / 1024.0
        )
    };
    writeln!(t, "  1. full sync of A into an empty site")?;
    row(
        &mut t,
        "ours: edgeferry sync (plain HTTP)",
        f.sample.seconds,
        f.sample.cpu_seconds,
        f.sample.rss_kib,
        f.wire_bytes,
        f.requests.to_string(),
    )?;
    row(
        &mut t,
        "ours: edgeferry sync (HTTPS, --mirror-ca)",
        ft.sample.seconds,
        ft.sample.cpu_seconds,
        ft.sample.rss_kib,
        ft.wire_bytes,
        ft.requests.to_string(),
    )?;
    row(
        &mut t,
        "reference: curl -o A (nginx) + edgeferry load",
        fr.seconds,
        fr.cpu_seconds,
        fr.rss_kib,
        fr.bytes,
        "1".into(),
    )?;
    writeln!(
        t,
        "  {:<44} {:>8.3} / {:.3} s (curl / load)",
        "  of which", fr.curl_seconds, fr.load_seconds
    )?;
    writeln!(
        t,
        "  {:<44} {:>8.3}  (reported; HTTPS/plain {:.3})",
        "ratio sync / reference (wall)",
        f.sample.seconds / fr.seconds,
        ft.sample.seconds / f.sample.seconds
    )?;
    writeln!(t, "  2. incremental sync: the site holds A, the hub adds B")?;
    row(
        &mut t,
        "ours: edgeferry sync (fetches what B adds)",
        i.sample.seconds,
        i.sample.cpu_seconds,
        i.sample.rss_kib,
        i.wire_bytes,
        i.requests.to_string(),
    )?;
    row(
        &mut t,
        "reference: curl -o B (nginx) + edgeferry load",
        ir.seconds,
        ir.cpu_seconds,
        ir.rss_kib,
        ir.bytes,
        "1".into(),
    )?;
    writeln!(
        t,
        "  {:<44} {:>8.3} / {:.3} s (curl / load)",
        "  of which", ir.curl_seconds, ir.load_seconds
    )?;
    writeln!(
        t,
        "  {:<44} {:>16}  = {:.1} % of B's bundle file (reported)",
        "blob bytes the sync fetched",
        i.fetched_bytes,
        100.0 * i.fetched_bytes as f64 / size_b as f64
    )?;
    writeln!(
        t,
        "  {:<44} {:>8.3}  (reported)",
        "ratio sync / reference (wall)",
        i.sample.seconds / ir.seconds
    )?;
    writeln!(
        t,
        "  3. resumed: a full sync of A killed (SIGKILL) with {} of {full_plan_bytes} bytes staged ({:.0} %, {} of them in a partial blob), then run again",
        resumed.staged,
        100.0 * resumed.staged as f64 / full_plan_bytes as f64,
        resumed.partial
    )?;
    row(
        &mut t,
        "ours: the second edgeferry sync",
        resumed.sync.sample.seconds,
        resumed.sync.sample.cpu_seconds,
        resumed.sync.sample.rss_kib,
        resumed.sync.wire_bytes,
        resumed.sync.requests.to_string(),
    )?;
    writeln!(
        t,
        "  {:<44} {:>16}  (staged bytes re-hashed: {}; reported)",
        "blob bytes fetched again beyond the staged", resumed.refetched, resumed.sync.plan_staged
    )?;
    writeln!(
        t,
        "  4. replicas: {WRKS} wrk x {WRK_CONNECTIONS} connections GET a {:.1} MiB blob for {seconds} s, best of {ROUNDS} rounds",
        replicas.blob_size as f64 / MIB
    )?;
    writeln!(
        t,
        "  {:<44} {:>9} {:>9} {:>9} {:>7}",
        "", "MiB/s", "srv CPU s", "wrk CPU s", "errors"
    )?;
    for (name, r) in [
        ("one edgeferry serve", &replicas.one),
        ("two edgeferry serve, same store", &replicas.two),
    ] {
        writeln!(
            t,
            "  {name:<44} {:>9.1} {:>9.1} {:>9.1} {:>7}",
            r.bytes as f64 / duration.as_secs_f64() / MIB,
            r.server_cpu,
            r.wrk_cpu,
            r.errors
        )?;
    }
    writeln!(
        t,
        "  {:<44} {:>9.3}  (reported; all rounds one: {}, two: {})",
        "throughput two / one",
        replicas.two.bytes as f64 / replicas.one.bytes as f64,
        replicas.all_one,
        replicas.all_two
    )?;
    writeln!(
        t,
        "  5. failover: ctr image pull --hosts-dir {PAUSE}, hosts.toml from `serve --peer-mirror` (mirror 1, then 2; dial_timeout {}); containerd {}",
        failover.dial_timeout, failover.containerd
    )?;
    for case in &failover.cases {
        writeln!(
            t,
            "  {:<44} {:>8}  (all: {}; reported)",
            case.name,
            case.best(),
            case.all()
        )?;
    }
    writeln!(
        t,
        "  correctness: every synced site passed `edgeferry store check` and equals the direct load (store inventory, every file outside blobs/ byte for byte, blob names and sizes); every sync fetched what its plan said; every pull succeeded, in failover from mirror 2"
    )?;
    writeln!(
        t,
        "  columns: wall = the command's wall clock (reference: curl's + load's); CPU = user+system of the commands; peak RSS = the largest process; bytes on wire = body bytes the server sent (the hub's access log; curl's size_download), GETs = requests"
    )?;
    writeln!(
        t,
        "  load average: before {load_before}, after the syncs {load_after_sync}, at the end {load_after} (other work on the machine adds noise)"
    )?;
    writeln!(
        t,
        "produced by: cargo xtask bench sync (in {})",
        root.display()
    )?;
    for c in &commands {
        writeln!(t, "  {c}")?;
    }
    writeln!(t, "  {}", shell_line(&f.args))?;
    writeln!(t, "  {}", shell_line(&ft.args))?;
    writeln!(t, "  {}", fr.commands.join(" && "))?;
    writeln!(t, "  {}", shell_line(&i.args))?;
    writeln!(
        t,
        "  versions: {}; {}; {}",
        version(
            "edgeferry",
            &[&edgeferry.display().to_string(), "--version"]
        ),
        version("nginx", &["nginx", "-v"]),
        version("curl", &["curl", "--version"]),
    )?;
    writeln!(
        t,
        "bench sync: every check passed (no targets are set: the numbers are reported)"
    )?;
    print!("{t}");
    Ok(())
}

/// The binaries and key every run uses.
struct Tools {
    edgeferry: PathBuf,
    public: PathBuf,
    /// Where `/usr/bin/time` writes.
    rss: PathBuf,
}

/// One measured `edgeferry sync --json`.
struct Synced {
    args: Vec<String>,
    sample: Sample,
    /// The plan's bytes to fetch and those an earlier run staged.
    plan_bytes: u64,
    plan_staged: u64,
    fetched_bytes: u64,
    resumed_bytes: u64,
    loaded: usize,
    /// Body bytes and requests in the server's access log for this run.
    wire_bytes: u64,
    requests: u64,
}

impl Synced {
    fn expect_loaded(&self, bundles: usize, what: &str) -> Result<()> {
        anyhow::ensure!(
            self.loaded == bundles,
            "{what} loaded {} bundles, not {bundles}",
            self.loaded
        );
        anyhow::ensure!(
            self.fetched_bytes + self.plan_staged == self.plan_bytes,
            "{what} fetched {} bytes, but its plan said {} ({} staged earlier)",
            self.fetched_bytes,
            self.plan_bytes,
            self.plan_staged
        );
        Ok(())
    }
}

/// The reference: curl the bundle file, then load it.
struct CopyLoad {
    seconds: f64,
    cpu_seconds: f64,
    rss_kib: u64,
    curl_seconds: f64,
    load_seconds: f64,
    bytes: u64,
    commands: Vec<String>,
}

impl Tools {
    fn load(&self, bundle: &Path, store: &Path) -> Command {
        let mut cmd = Command::new(&self.edgeferry);
        cmd.arg("load")
            .arg(bundle)
            .arg("--key")
            .arg(&self.public)
            .arg("--store")
            .arg(store);
        cmd
    }

    fn sync_args(
        &self,
        from: &str,
        ca: Option<&Path>,
        store: &Path,
        extra: &[&str],
    ) -> Vec<String> {
        let mut args: Vec<String> = vec![
            self.edgeferry.display().to_string(),
            "sync".into(),
            "--json".into(),
            "--from".into(),
            from.into(),
            "--key".into(),
            self.public.display().to_string(),
            "--store".into(),
            store.display().to_string(),
        ];
        if let Some(ca) = ca {
            args.push("--mirror-ca".into());
            args.push(ca.display().to_string());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    /// One timed sync; `log` is the serving mirror's access log.
    fn sync(
        &self,
        from: &str,
        ca: Option<&Path>,
        store: &Path,
        extra: &[&str],
        log: &Path,
    ) -> Result<Synced> {
        let args = self.sync_args(from, ca, store, extra);
        let offset = file_len(log);
        let sample = measure(&args, &[], &self.rss)?;
        let (requests, wire_bytes) = served_since(log, offset)?;
        let json: serde_json::Value = serde_json::from_str(&sample.stdout)
            .with_context(|| format!("parsing sync --json: {}", sample.stdout))?;
        let number = |v: &serde_json::Value, name: &str| {
            v[name]
                .as_u64()
                .with_context(|| format!("sync --json has no {name}: {json}"))
        };
        Ok(Synced {
            plan_bytes: number(&json["plan"], "fetch_bytes")?,
            plan_staged: number(&json["plan"], "staged_bytes")?,
            fetched_bytes: number(&json, "fetched_bytes")?,
            resumed_bytes: number(&json, "resumed_bytes")?,
            loaded: json["loaded"].as_array().map_or(0, Vec::len),
            args,
            sample,
            wire_bytes,
            requests,
        })
    }

    /// `curl -o file url`, then `edgeferry load file`, each timed.
    fn copy_then_load(&self, url: &str, file: &Path, store: &Path) -> Result<CopyLoad> {
        if file.exists() {
            fs::remove_file(file)?;
        }
        let curl: Vec<String> = vec![
            "curl".into(),
            "-sS".into(),
            "-f".into(),
            "--noproxy".into(),
            "*".into(),
            "-o".into(),
            file.display().to_string(),
            "-w".into(),
            "%{size_download}".into(),
            url.into(),
        ];
        let copied = measure(&curl, &[], &self.rss)?;
        let bytes = copied
            .stdout
            .trim()
            .parse::<u64>()
            .with_context(|| format!("curl's size_download {:?}", copied.stdout))?;
        let load: Vec<String> = vec![
            self.edgeferry.display().to_string(),
            "load".into(),
            file.display().to_string(),
            "--key".into(),
            self.public.display().to_string(),
            "--store".into(),
            store.display().to_string(),
        ];
        let loaded = measure(&load, &[], &self.rss)?;
        fs::remove_file(file)?;
        Ok(CopyLoad {
            seconds: copied.seconds + loaded.seconds,
            cpu_seconds: copied.cpu_seconds + loaded.cpu_seconds,
            rss_kib: copied.rss_kib.max(loaded.rss_kib),
            curl_seconds: copied.seconds,
            load_seconds: loaded.seconds,
            bytes,
            commands: vec![shell_line(&curl), shell_line(&load)],
        })
    }

    /// `edgeferry store check`: every blob and file re-hashed.
    fn check(&self, store: &Path) -> Result<()> {
        let out = Command::new(&self.edgeferry)
            .args(["store", "check", "--store"])
            .arg(store)
            .output()?;
        if !out.status.success() {
            bail!(
                "edgeferry store check --store {} failed: {}{}",
                store.display(),
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    fn inventory(&self, store: &Path) -> Result<String> {
        let out = Command::new(&self.edgeferry)
            .args(["store", "inventory", "--store"])
            .arg(store)
            .output()?;
        if !out.status.success() {
            bail!(
                "edgeferry store inventory --store {} failed: {}",
                store.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// The site equals the direct load: the same inventory, every file outside
/// `blobs/` byte for byte, the same blob names and sizes (a blob's name is
/// its sha256; `store check` re-hashes them).
fn same_store(tools: &Tools, site: &Path, direct: &Path) -> Result<()> {
    if tools.inventory(site)? != tools.inventory(direct)? {
        bail!(
            "SYNC IS WRONG: `store inventory` of {} differs from the direct load's {}",
            site.display(),
            direct.display()
        );
    }
    let (a, b) = (listing(site)?, listing(direct)?);
    if a != b {
        let differ: Vec<&String> = a
            .keys()
            .chain(b.keys())
            .filter(|k| a.get(*k) != b.get(*k))
            .take(5)
            .collect();
        bail!(
            "SYNC IS WRONG: {} differs from the direct load {}: {differ:?}",
            site.display(),
            direct.display()
        );
    }
    Ok(())
}

/// Every path in `store` with its size (blobs) or sha256 (the rest).
fn listing(store: &Path) -> Result<BTreeMap<String, String>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) -> Result<()> {
        for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            let rel = path
                .strip_prefix(root)
                .expect("below the root")
                .to_string_lossy()
                .into_owned();
            let meta = fs::symlink_metadata(&path)?;
            if meta.is_dir() {
                walk(root, &path, out)?;
            } else if meta.file_type().is_symlink() {
                out.insert(rel, format!("-> {}", fs::read_link(&path)?.display()));
            } else if rel.starts_with("blobs/") {
                out.insert(rel, format!("{} bytes", meta.len()));
            } else {
                out.insert(rel, sha256_hex(&fs::read(&path)?));
            }
        }
        Ok(())
    }
    let mut out = BTreeMap::new();
    walk(store, store, &mut out)?;
    Ok(out)
}

/// A store, its lock and a sync's staging directory beside it, gone.
fn remove_store(store: &Path) -> Result<()> {
    let name = store
        .file_name()
        .context("a store has a name")?
        .to_string_lossy();
    let parent = store.parent().context("a store has a parent")?;
    for path in [
        store.to_path_buf(),
        parent.join(format!(".{name}.sync")),
        parent.join(format!(".{name}.lock")),
    ] {
        if path.is_dir() {
            fs::remove_dir_all(&path)?;
        } else if path.exists() {
            fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// A copy of `from` made of hard links: a load or sync never writes a
/// store's files in place, it builds the next one beside it and swaps.
fn link_copy(from: &Path, to: &Path) -> Result<()> {
    sh(Command::new("cp").arg("-al").arg(from).arg(to))
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map_or(0, |m| m.len())
}

/// Requests and body bytes in an access log after `offset`. The line is
/// written when a response body is dropped, a moment after the client has
/// read it: waited for until the log stops growing.
fn served_since(log: &Path, offset: u64) -> Result<(u64, u64)> {
    let mut last = file_len(log);
    for _ in 0..20 {
        thread::sleep(Duration::from_millis(50));
        let now = file_len(log);
        if now == last {
            break;
        }
        last = now;
    }
    let mut file = fs::File::open(log).with_context(|| format!("opening {}", log.display()))?;
    file.seek(SeekFrom::Start(offset))?;
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    let mut requests = 0;
    let mut bytes = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let entry: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{} has a line that is not JSON: {line}", log.display()))?;
        requests += 1;
        bytes += entry["bytes"].as_u64().unwrap_or(0);
    }
    Ok((requests, bytes))
}

struct Resumed {
    /// Bytes in the staging directory when the first sync was killed.
    staged: u64,
    /// Of them, in `.partial` files.
    partial: u64,
    sync: Synced,
    /// Blob bytes the second sync fetched beyond what was not staged.
    refetched: i64,
}

/// A full sync killed with SIGKILL once half of `total` is staged, then run
/// again (timed).
fn resume(tools: &Tools, from: &str, runs: &Path, total: u64, log: &Path) -> Result<Resumed> {
    let site = runs.join("resume-site");
    remove_store(&site)?;
    let staging = runs.join(".resume-site.sync");
    let args = tools.sync_args(from, None, &site, &["--only", KUBEEDGE_VERSION]);
    let mut child = Command::new(&args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting edgeferry sync")?;
    let staged_bytes = || -> (u64, u64) {
        let mut all = 0;
        let mut partial = 0;
        if let Ok(dir) = fs::read_dir(staging.join("blobs/sha256")) {
            for entry in dir.flatten() {
                let len = entry.metadata().map_or(0, |m| m.len());
                all += len;
                if entry.file_name().to_string_lossy().ends_with(".partial") {
                    partial += len;
                }
            }
        }
        (all, partial)
    };
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("the sync ended ({status}) before half of it was staged: nothing to kill");
        }
        if staged_bytes().0 >= total / 2 {
            break;
        }
        if started.elapsed() > Duration::from_secs(300) {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the sync staged less than half in 300 s");
        }
        thread::sleep(Duration::from_millis(2));
    }
    child.kill().context("kill -9 of the sync")?;
    child.wait()?;
    let (staged, partial) = staged_bytes();
    anyhow::ensure!(
        !site.exists(),
        "a sync killed before its commit created the store"
    );
    let sync = tools.sync(from, None, &site, &["--only", KUBEEDGE_VERSION], log)?;
    sync.expect_loaded(1, "the resumed sync")?;
    anyhow::ensure!(
        sync.plan_staged == staged && sync.resumed_bytes == partial,
        "the rerun counted {} bytes staged ({} resumed), the staging directory held {staged} ({partial} partial)",
        sync.plan_staged,
        sync.resumed_bytes
    );
    let refetched = sync.fetched_bytes as i64 - (total as i64 - staged as i64);
    anyhow::ensure!(
        refetched == 0,
        "the resumed sync fetched {refetched} bytes more than the {} it lacked",
        total - staged
    );
    anyhow::ensure!(!staging.exists(), "the staging directory outlived the sync");
    Ok(Resumed {
        staged,
        partial,
        sync,
        refetched,
    })
}

/// One round of the replica load.
#[derive(Default, Clone, Copy)]
struct Load {
    bytes: u64,
    errors: u64,
    server_cpu: f64,
    wrk_cpu: f64,
}

struct Replicas {
    blob_size: u64,
    one: Load,
    two: Load,
    all_one: String,
    all_two: String,
}

/// wrk's blob load on one `serve` of `store`, then split over two.
fn replicas(
    edgeferry: &Path,
    store: &Path,
    input: &Path,
    dir: &Path,
    duration: Duration,
    commands: &mut Vec<String>,
) -> Result<Replicas> {
    // The blob: the bench input's last mosquitto layer (about 48 MiB).
    let layout = input.join("images/mosquitto");
    let read = |path: PathBuf| -> Result<serde_json::Value> {
        Ok(serde_json::from_slice(
            &fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
        )?)
    };
    let index = read(layout.join("index.json"))?;
    let hex = |v: &serde_json::Value| -> Result<String> {
        Ok(v.as_str()
            .context("a digest")?
            .trim_start_matches("sha256:")
            .to_string())
    };
    let manifest = read(
        layout
            .join("blobs/sha256")
            .join(hex(&index["manifests"][0]["digest"])?),
    )?;
    let layer = manifest["layers"]
        .as_array()
        .and_then(|l| l.last())
        .context("the mosquitto manifest has layers")?;
    let blob_hex = hex(&layer["digest"])?;
    let blob_size = layer["size"].as_u64().context("a layer size")?;
    let path = format!("/v2/library/eclipse-mosquitto/blobs/sha256:{blob_hex}");

    let [p1, p2] = free_ports()?;
    let args1 = serve_args(edgeferry, store, p1, true, Path::new("/dev/null"), &[]);
    let args2 = serve_args(edgeferry, store, p2, true, Path::new("/dev/null"), &[]);
    commands.push(shell_line(&args1));
    commands.push(shell_line(&args2));
    let r1 = Server::start("edgeferry 1", &args1, p1, &dir.join("replica-1.log"), 200)?;
    let r2 = Server::start("edgeferry 2", &args2, p2, &dir.join("replica-2.log"), 200)?;
    let urls = [
        format!("http://{}{path}", r1.addr),
        format!("http://{}{path}", r2.addr),
    ];
    for url in &urls {
        let out = Command::new("curl")
            .args(["-sS", "-f", "--noproxy", "*"])
            .arg(url)
            .output()?;
        anyhow::ensure!(
            out.status.success() && sha256_hex(&out.stdout) == blob_hex,
            "{url} does not serve the layer: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let pids = [r1.pid(), r2.pid()];
    let round = |targets: [&String; WRKS]| -> Load {
        let cpu_before: f64 = pids.iter().map(|p| tree_cpu_seconds(*p)).sum();
        let children_before = children_cpu_seconds();
        let handles: Vec<_> = targets
            .iter()
            .map(|url| {
                let url = url.to_string();
                thread::spawn(move || run_wrk_with(&url, duration, 1, WRK_CONNECTIONS))
            })
            .collect();
        let results: Vec<LoadResult> = handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    let mut failed = LoadResult::default();
                    failed.blob_errors = 1;
                    failed
                })
            })
            .collect();
        Load {
            bytes: results.iter().map(|r| r.bytes).sum(),
            errors: results.iter().map(|r| r.blob_errors).sum(),
            server_cpu: pids.iter().map(|p| tree_cpu_seconds(*p)).sum::<f64>() - cpu_before,
            wrk_cpu: children_cpu_seconds() - children_before,
        }
    };
    let mut ones = Vec::new();
    let mut twos = Vec::new();
    let mib_s = |l: &Load| l.bytes as f64 / duration.as_secs_f64() / MIB;
    for n in 1..=ROUNDS {
        println!(
            "\nbench sync: replicas round {n}/{ROUNDS}: {WRKS} wrk x {WRK_CONNECTIONS} connections for {} s on one serve, then on two",
            duration.as_secs()
        );
        let one = round([&urls[0], &urls[0]]);
        println!(
            "  one serve: {:.1} MiB/s, {} errors, server CPU {:.1} s",
            mib_s(&one),
            one.errors,
            one.server_cpu
        );
        let two = round([&urls[0], &urls[1]]);
        println!(
            "  two serve: {:.1} MiB/s, {} errors, server CPU {:.1} s",
            mib_s(&two),
            two.errors,
            two.server_cpu
        );
        ones.push(one);
        twos.push(two);
    }
    drop(r1);
    drop(r2);
    let errors: u64 = ones.iter().chain(&twos).map(|l| l.errors).sum();
    anyhow::ensure!(errors == 0, "the replica load had {errors} errors");
    let best = |v: &[Load]| *v.iter().max_by_key(|l| l.bytes).expect("ROUNDS > 0");
    let all = |v: &[Load]| {
        v.iter()
            .map(|l| format!("{:.1}", mib_s(l)))
            .collect::<Vec<_>>()
            .join(", ")
            + " MiB/s"
    };
    Ok(Replicas {
        blob_size,
        one: best(&ones),
        two: best(&twos),
        all_one: all(&ones),
        all_two: all(&twos),
    })
}

struct PullCase {
    name: String,
    /// Each pull's seconds; None: stopped at PULL_CAP.
    seconds: Vec<Option<f64>>,
}

impl PullCase {
    fn show(s: &Option<f64>) -> String {
        match s {
            Some(s) => format!("{s:.2} s"),
            None => format!("> {} s", PULL_CAP.as_secs()),
        }
    }

    fn best(&self) -> String {
        let done: Vec<f64> = self.seconds.iter().flatten().copied().collect();
        if done.is_empty() {
            return Self::show(&None);
        }
        Self::show(&Some(done.iter().copied().fold(f64::INFINITY, f64::min)))
    }

    fn all(&self) -> String {
        self.seconds
            .iter()
            .map(Self::show)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

struct Failover {
    containerd: String,
    dial_timeout: String,
    cases: Vec<PullCase>,
}

/// `ctr image pull` of the pause image through the `hosts.toml` files
/// mirror 1 prints with `--peer-mirror` mirror 2: both up, mirror 1's port
/// closed, mirror 1 dropping connection attempts.
fn failover(
    edgeferry: &Path,
    store: &Path,
    dir: &Path,
    commands: &mut Vec<String>,
) -> Result<Failover> {
    let [p1, p2] = free_ports()?;
    let log2 = dir.join("mirror-2-access.jsonl");
    let args2 = serve_args(edgeferry, store, p2, true, &log2, &[]);
    let peer = format!("127.0.0.1:{p2}");
    let args1 = serve_args(
        edgeferry,
        store,
        p1,
        true,
        Path::new("/dev/null"),
        &["--peer-mirror", &peer],
    );
    commands.push(shell_line(&args1));
    commands.push(shell_line(&args2));
    let m2 = Server::start("mirror 2", &args2, p2, &dir.join("mirror-2.log"), 200)?;
    let banner_file = dir.join("mirror-1.log");
    let m1 = Server::start("mirror 1", &args1, p1, &banner_file, 200)?;
    let banner = fs::read_to_string(&banner_file)?;
    let printed = edgeferry_tests::printed_hosts_files(&banner);
    let (_, k8s) = printed
        .iter()
        .find(|(d, _)| d == "registry.k8s.io")
        .with_context(|| format!("mirror 1 printed no hosts.toml for registry.k8s.io: {banner}"))?;
    let (first, second) = (format!("http://{}", m1.addr), format!("http://{}", m2.addr));
    let order = (k8s.find(&first), k8s.find(&second));
    anyhow::ensure!(
        matches!(order, (Some(a), Some(b)) if a < b),
        "the printed hosts.toml does not list mirror 1, then mirror 2: {k8s}"
    );
    let dial_timeout = k8s
        .lines()
        .find_map(|l| l.trim().strip_prefix("dial_timeout = "))
        .map_or("not set".into(), |v| v.trim_matches('"').to_string());
    // Written as printed, the upstream fallback pointed at a closed port:
    // a pull that falls through every mirror fails instead of going online.
    let certs = dir.join("certs.d");
    for (name, content) in &printed {
        let written = content
            .lines()
            .map(|l| {
                if l.starts_with("server = ") {
                    "server = \"http://127.0.0.1:9\"".to_string()
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        fs::create_dir_all(certs.join(name))?;
        fs::write(certs.join(name).join("hosts.toml"), written + "\n")?;
    }
    let containerd = version("containerd", &["containerd", "--version"]);

    let mut cases = Vec::new();
    let mut pulls = 0;
    let mut case = |name: &str, n: usize, from_second: bool| -> Result<PullCase> {
        println!("\nbench sync: {n} x ctr image pull {PAUSE}, {name}");
        let mut seconds = Vec::new();
        for _ in 0..n {
            pulls += 1;
            let served_before = served_since(&log2, 0)?.0;
            let took = pull(&dir.join(format!("containerd-{pulls}")), &certs)?;
            let served = served_since(&log2, 0)?.0 - served_before;
            match (from_second, served > 0, took) {
                (_, _, None) => {}
                (true, false, _) => {
                    bail!("the pull succeeded ({name}) but mirror 2 served nothing")
                }
                (false, true, _) => bail!("mirror 2 served the pull ({name}), mirror 1 was up"),
                _ => {}
            }
            println!("  {}", PullCase::show(&took));
            seconds.push(took);
        }
        Ok(PullCase {
            name: name.to_string(),
            seconds,
        })
    };
    cases.push(case("both mirrors up", PULLS, false)?);
    drop(m1);
    cases.push(case("mirror 1 down (port closed: refused)", PULLS, true)?);
    let _dropping = Blackhole::listen(p1)?;
    cases.push(case("mirror 1 dropping SYNs (accept queue full)", 1, true)?);
    drop(m2);
    Ok(Failover {
        containerd,
        dial_timeout,
        cases,
    })
}

/// One `ctr image pull` into a fresh containerd (so nothing is cached):
/// its seconds, or None when it was stopped at PULL_CAP.
fn pull(dir: &Path, certs: &Path) -> Result<Option<f64>> {
    let containerd = Containerd::start(dir)?;
    let mut cmd = Command::new("ctr");
    cmd.arg("--address")
        .arg(&containerd.socket)
        .args(["--namespace", "k8s.io", "image", "pull", "--hosts-dir"])
        .arg(certs)
        .arg(PAUSE)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd.spawn().context("starting ctr")?;
    let took = loop {
        if child.try_wait()?.is_some() {
            break Some(started.elapsed().as_secs_f64());
        }
        if started.elapsed() > PULL_CAP {
            let _ = child.kill();
            break None;
        }
        thread::sleep(Duration::from_millis(10));
    };
    let out = child.wait_with_output()?;
    if took.is_some() {
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        anyhow::ensure!(
            out.status.success() && text.contains("unpacking linux/"),
            "ctr image pull {PAUSE} failed ({}): {}",
            out.status,
            text.trim()
        );
    }
    drop(containerd);
    fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    Ok(took)
}

/// A containerd of our own (no CRI), killed by pid and its mounts swept
/// when dropped.
struct Containerd {
    child: Child,
    root: PathBuf,
    socket: PathBuf,
}

impl Containerd {
    fn start(dir: &Path) -> Result<Containerd> {
        fs::create_dir_all(dir)?;
        let root = dir.join("root");
        let socket = dir.join("containerd.sock");
        let config = dir.join("config.toml");
        fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{}\"\nstate = \"{}\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\n\
                 [grpc]\n  address = \"{}\"\n\n\
                 [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{}\"\n",
                root.display(),
                dir.join("state").display(),
                socket.display(),
                dir.join("opt").display(),
            ),
        )?;
        let log = dir.join("containerd.log");
        let out = fs::File::create(&log)?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting containerd")?;
        let mut containerd = Containerd {
            child,
            root,
            socket,
        };
        let started = Instant::now();
        loop {
            if let Some(status) = containerd.child.try_wait()? {
                bail!(
                    "containerd exited ({status}): {}",
                    fs::read_to_string(&log).unwrap_or_default()
                );
            }
            let ready = containerd.socket.exists()
                && Command::new("ctr")
                    .arg("--address")
                    .arg(&containerd.socket)
                    .arg("version")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
            if ready {
                return Ok(containerd);
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!(
                    "containerd did not answer on {} in 30 s",
                    containerd.socket.display()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Unpacking mounts below the root; nothing may outlive the bench.
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut points: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|p| Path::new(p).starts_with(&self.root))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for point in points {
            let ok = Command::new("umount")
                .arg(point)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                let _ = Command::new("umount").arg("-l").arg(point).status();
            }
        }
    }
}

/// A listener on 127.0.0.1:`port` with an accept queue of one, filled: the
/// kernel drops every further SYN, so a client waits for its own connect
/// timeout, as for a host that is off or behind a dropping firewall.
struct Blackhole {
    _listener: OwnedFd,
    _queued: TcpStream,
}

impl Blackhole {
    fn listen(port: u16) -> Result<Blackhole> {
        // SAFETY: socket(2) with constant arguments; the fd is owned below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("socket");
        }
        // SAFETY: fd is a new socket no one else owns.
        let listener = unsafe { OwnedFd::from_raw_fd(fd) };
        let one: libc::c_int = 1;
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(Ipv4Addr::LOCALHOST).to_be(),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: setsockopt, bind and listen on our socket, with pointers
        // to locals of the sizes passed.
        let failed = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_REUSEADDR,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            ) != 0
                || libc::bind(
                    fd,
                    (&addr as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                ) != 0
                || libc::listen(fd, 0) != 0
        };
        if failed {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("listening on 127.0.0.1:{port} with no backlog"));
        }
        let queued = TcpStream::connect_timeout(
            &SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            Duration::from_secs(2),
        )
        .context("filling the accept queue")?;
        // The queue is full now: a second connect gets no answer.
        match TcpStream::connect_timeout(
            &SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            Duration::from_millis(500),
        ) {
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            other => bail!("127.0.0.1:{port} still answers with a full accept queue: {other:?}"),
        }
        Ok(Blackhole {
            _listener: listener,
            _queued: queued,
        })
    }
}

fn serve_args(
    edgeferry: &Path,
    store: &Path,
    port: u16,
    plain: bool,
    access_log: &Path,
    extra: &[&str],
) -> Vec<String> {
    let mut args: Vec<String> = vec![
        edgeferry.display().to_string(),
        "serve".into(),
        "--store".into(),
        store.display().to_string(),
        "--listen".into(),
        format!("127.0.0.1:{port}"),
        "--access-log".into(),
        access_log.display().to_string(),
        // Every bench client comes from 127.0.0.1.
        "--max-connections-per-client".into(),
        "256".into(),
    ];
    if plain {
        args.push("--plain-http".into());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// nginx serving `www` under /bundles/ (sendfile on), and `/v2/` for the
/// readiness check.
fn nginx_config(dir: &Path, www: &Path, port: u16) -> String {
    let d = dir.display();
    // SAFETY: geteuid has no preconditions.
    let user = if unsafe { libc::geteuid() } == 0 {
        // Workers read the files as we do.
        "user root root;\n"
    } else {
        ""
    };
    format!(
        r#"# Made by cargo xtask bench sync: the bundle files.
{user}worker_processes auto;
daemon off;
master_process on;
pid {d}/nginx.pid;
error_log {d}/error.log error;
events {{
    worker_connections 1024;
}}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    types {{ }}
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        location = /v2/ {{
            return 200 '{{}}';
        }}
        location /bundles/ {{
            alias {}/;
        }}
    }}
}}
"#,
        www.display()
    )
}

//! `cargo xtask bench join`: `edgeferry join` against real sshd test hosts
//! (tests/src/hosts/), and in the same run a plain sequential `ssh` loop
//! doing the same work.
//!
//! Input: the sample artifact set with its amd64 keadm tarball grown by
//! `payload.bin`, 64 MiB of pseudo-random (incompressible) bytes, so each
//! node fetches about 64 MiB from the mirror, checks its sha256 and unpacks
//! keadm out of it. Bundled, loaded, and served by `edgeferry serve` on the
//! hosts' bridge. On every host the stand-in keadm's join takes 2 s more
//! (its join-seconds file), as a real join takes a while. Every run gets
//! fresh hosts and a fresh state directory.
//!
//! T1 is the best of 3 single-host joins (`--parallel 1`, whole process).
//! The ideal bound for N nodes at parallelism P is ceil(N/P) × T1. Runs: 50
//! hosts at P = 5 (keadm batch's default maxRunNum, the like-for-like
//! setting; best of 2), at 10 and at 20 (our default); the `ssh` loop over
//! 50 hosts; 200 hosts at P = 200, for peak RSS (`/usr/bin/time`, as the
//! other benches). Targets (the issue's): ≤ 1.5× the bound at P = 5, and
//! ≤ 200 MiB peak RSS at 200 hosts. Larger P on this machine runs into the
//! CPU floor below, which the table shows; missed targets are
//! reported, not fatal. A node that does not join is an error. The step
//! timeouts are raised (`TIMEOUTS`): 200 hosts on this machine's CPUs are
//! slower than any real node.
//!
//! The hosts are namespaces on this machine, not machines: what each node
//! runs (curl, sha256sum, gunzip, the stand-in keadm) competes for the same
//! CPUs as the mirror and the join. So each run also counts the CPU its
//! work took (every host's sshd with what it reaped, the mirror, the join
//! process or the ssh clients) and the machine's busy share over the run,
//! and the table shows the CPU floor N × C1 / CPUs, C1 being the work CPU
//! of the best single-host join: no schedule beats max(bound, floor) here.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use edgeferry_tests::hosts::TestHosts;
use flate2::{read::GzDecoder, write::GzEncoder, Compression};
use serde_json::Value;
use sha2::{Digest, Sha256, Sha512};

use crate::bench::{ensure_keys, load_average, machine_facts, quote, release_binary, shell_line};
use crate::bench_input::KUBEEDGE_VERSION;
use crate::util::{ensure_packages, run as sh, workspace_root};

const PACKAGES: &[(&str, &str)] = &[
    ("/usr/bin/time", "time"),
    ("/usr/sbin/sshd", "openssh-server"),
    ("ssh", "openssh-client"),
    ("ip", "iproute2"),
    ("nsenter", "util-linux"),
    ("sudo", "sudo"),
    ("openssl", "openssl"),
    ("curl", "curl"),
    ("busybox", "busybox-static"),
];

const NODES: usize = 50;
/// keadm batch's default maxRunNum: the target is measured here, where
/// 50 simulated nodes do not yet saturate this machine's CPUs.
const TARGET_PARALLEL: usize = 5;
const TARGET_RUNS: usize = 2;
/// 20 is `edgeferry join`'s default.
const OTHER_PARALLEL: [usize; 2] = [10, 20];
const T1_RUNS: usize = 3;
const RSS_NODES: usize = 200;
const JOIN_SECONDS: u64 = 2;
const PAYLOAD: usize = 64 << 20;
const TARGET_RATIO: f64 = 1.5;
const TARGET_RSS_MIB: f64 = 200.0;
/// 200 nodes each write the 64 MiB tarball before unpacking it.
const MIN_FREE_GB: f64 = 20.0;
/// For every run; see [`join_run`].
const TIMEOUTS: &str = "timeouts: {connect: 120, preflight: 600, containerd: 600, postcheck: 600}";
/// The postcheck's settle time is a deliberate wait (default 20 s: real
/// edgecore without a cloud exits ~17 s after keadm's success), not work:
/// the bench measures the join's work, so it does not wait. The postcheck
/// still requires edgecore running and connected to the hub.
const SETTLE: &str = "settle: 0";
const STEPS: [&str; 6] = [
    "connect",
    "preflight",
    "containerd",
    "fetch",
    "keadm_join",
    "postcheck",
];
/// Bump when the generated input changes.
const SPEC: &str = "edgeferry bench join-input v2";
const SOURCE_DATE_EPOCH: &str = "1767225600";

/// The grown keadm tarball.
struct Tarball {
    file: String,
    sha256: String,
    size: u64,
}

/// One measured run: an `edgeferry join` or the ssh loop.
struct Run {
    /// Its directory under target/bench/join-runs, e.g. `n50-p20-1`.
    label: String,
    /// What it is, e.g. `join 50 hosts -p 20`.
    name: String,
    nodes: usize,
    /// 1 for the ssh loop.
    parallel: usize,
    seconds: f64,
    /// The join's or the ssh loop's: peak RSS (KiB) and user + system CPU.
    rss_kib: u64,
    cpu_seconds: f64,
    /// Its own, the mirror's and every host's (sshd and what it reaped).
    work_cpu: f64,
    /// Share of the machine's CPU time that was busy (anyone's work).
    busy: f64,
    /// From report.json: each node's ms and, per step, every node's ms.
    node_ms: Vec<u64>,
    step_ms: BTreeMap<String, Vec<u64>>,
    command: String,
}

pub fn run() -> Result<()> {
    ensure_packages(PACKAGES)?;
    let bench = workspace_root().join("target/bench");
    let tmp = std::env::temp_dir();
    let free_gb = free_bytes(&tmp)? as f64 / 1e9;
    if free_gb < MIN_FREE_GB {
        bail!(
            "only {free_gb:.1} GB free under {} (the test hosts' files): {RSS_NODES} nodes each write a {} MiB tarball at once, so free at least {MIN_FREE_GB:.0} GB",
            tmp.display(),
            PAYLOAD >> 20
        );
    }
    let builder = release_binary("edgeferry-builder", "edgeferry-builder")?;
    let edgeferry = release_binary("edgeferry", "edgeferry")?;
    let (key, public) = ensure_keys(&builder, &bench.join("keys"))?;
    let input = bench.join("join-input");
    let tarball = ensure_input(&builder, &input)?;
    let (store, bundles) = (bench.join("join-store"), bench.join("join-bundle"));
    for dir in [&bundles, &store, &bench.join("join-runs")] {
        if dir.exists() {
            fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
        }
    }
    println!("\nbench: bundling {} and loading it", input.display());
    sh(Command::new(&builder)
        .env("SOURCE_DATE_EPOCH", SOURCE_DATE_EPOCH)
        .args(["bundle", "--arch", "amd64", "--kubeedge-version"])
        .arg(KUBEEDGE_VERSION)
        .arg("--from")
        .arg(&input)
        .arg("--key")
        .arg(&key)
        .arg("--out")
        .arg(&bundles)
        .stdout(Stdio::null()))?;
    let bundle = format!("edgeferry-kubeedge-{KUBEEDGE_VERSION}-linux-amd64.tar.zst");
    sh(Command::new(&edgeferry)
        .arg("load")
        .arg(bundles.join(bundle))
        .arg("--key")
        .arg(&public)
        .arg("--store")
        .arg(&store)
        .stdout(Stdio::null()))?;

    let load_before = load_average();
    let join = |n: usize, p: usize, label: String| {
        let site = Site::new(&edgeferry, &store, bench.join("join-runs").join(&label), n)?;
        join_run(&site, &edgeferry, &store, p, label)
    };
    let t1_runs = (1..=T1_RUNS)
        .map(|r| join(1, 1, format!("t1-{r}")))
        .collect::<Result<Vec<_>>>()?;
    let p = TARGET_PARALLEL;
    let default_runs = (1..=TARGET_RUNS)
        .map(|r| join(NODES, p, format!("n{NODES}-p{p}-{r}")))
        .collect::<Result<Vec<_>>>()?;
    let others = OTHER_PARALLEL
        .iter()
        .map(|p| join(NODES, *p, format!("n{NODES}-p{p}")))
        .collect::<Result<Vec<_>>>()?;
    let site = Site::new(&edgeferry, &store, bench.join("join-runs/ssh-loop"), NODES)?;
    let ssh = ssh_loop(&site, &tarball)?;
    drop(site);
    let rss = join(RSS_NODES, RSS_NODES, format!("n{RSS_NODES}-p{RSS_NODES}"))?;
    let load_after = load_average();

    // The table.
    let (t1, main) = (best(&t1_runs), best(&default_runs));
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let bound = |r: &Run| r.nodes.div_ceil(r.parallel) as f64 * t1.seconds;
    let floor = |r: &Run| r.nodes as f64 * t1.work_cpu / cpus;
    let ratio = main.seconds / bound(main);
    let rss_mib = rss.rss_kib as f64 / 1024.0;
    let verdict = |ok: bool| if ok { "PASS" } else { "FAIL" };
    let mut t = String::new();
    writeln!(
        t,
        "\nbench join: test hosts (real sshd in namespaces on one bridge, root's login shell /bin/sh); each fetches a {:.1} MiB keadm tarball from edgeferry serve, checks it, unpacks keadm, runs a stand-in join taking {JOIN_SECONDS} s more; {}",
        tarball.size as f64 / (1 << 20) as f64,
        machine_facts()
    )?;
    writeln!(
        t,
        "  T1 = best single-host join (-p 1): {:.3} s (all: {}); C1 = its work CPU: {:.2} s",
        t1.seconds,
        seconds_list(&t1_runs),
        t1.work_cpu
    )?;
    writeln!(
        t,
        "  {:<22} {:>9} {:>9} {:>6} {:>9} {:>8} {:>9} {:>5} {:>8} {:>9}",
        "run",
        "wall",
        "bound",
        "ratio",
        "CPU floor",
        "wall/max",
        "work CPU",
        "busy",
        "own CPU",
        "peak RSS"
    )?;
    for r in [main].into_iter().chain(&others).chain([&rss, &ssh]) {
        writeln!(
            t,
            "  {:<22} {:>7.2} s {:>7.2} s {:>6.2} {:>7.2} s {:>8.2} {:>7.1} s {:>4.0}% {:>6.2} s {:>5.1} MiB",
            r.name,
            r.seconds,
            bound(r),
            r.seconds / bound(r),
            floor(r),
            r.seconds / bound(r).max(floor(r)),
            r.work_cpu,
            r.busy * 100.0,
            r.cpu_seconds,
            r.rss_kib as f64 / 1024.0
        )?;
    }
    writeln!(t, "  all -p {p} runs: {}", seconds_list(&default_runs))?;
    writeln!(t, "  inventory: user root, key auth, strict host keys, {SETTLE} (the postcheck's deliberate wait, default 20 s, left out), {TIMEOUTS} (defaults 15 and 60 s: at {RSS_NODES} hosts on this machine a trivial step can wait over a minute for a CPU)")?;
    writeln!(t, "  {:<46} {:>10}  {:>8}", "target", "value", "limit")?;
    writeln!(
        t,
        "  {:<46} {ratio:>10.3}  {:>8}  {}",
        format!("{NODES} hosts -p {p}: wall / ideal bound"),
        format!("<= {TARGET_RATIO:.1}"),
        verdict(ratio <= TARGET_RATIO)
    )?;
    writeln!(
        t,
        "  {:<46} {rss_mib:>6.1} MiB  {:>8}  {}",
        format!("edgeferry join peak RSS, {RSS_NODES} hosts -p {RSS_NODES}"),
        format!("<= {TARGET_RSS_MIB:.0}"),
        verdict(rss_mib <= TARGET_RSS_MIB)
    )?;
    writeln!(
        t,
        "  {:<46} {:>9.2}x  (ssh loop {:.1} s / join -p {p} {:.1} s)",
        "speedup over the sequential ssh loop",
        ssh.seconds / main.seconds,
        ssh.seconds,
        main.seconds
    )?;
    writeln!(
        t,
        "  columns: bound = ceil(N/P) x T1 (the ssh loop: P = 1); CPU floor = N x C1 / {cpus} CPUs; wall/max = wall / max(bound, floor); work CPU = user+system CPU of every host's sshd and what it reaped, the mirror, and the join (or the ssh clients); busy = the machine's CPU busy over the run, anyone's work (/proc/stat); own CPU and peak RSS: the edgeferry join process (the loop: sh and its ssh clients) by /usr/bin/time"
    )?;
    writeln!(
        t,
        "  per-node step times in ms, mean/max over the run's nodes (report.json):\n  {:<12}{}",
        "run",
        STEPS
            .iter()
            .chain(&["node"])
            .map(|s| format!(" {s:>11}"))
            .collect::<String>()
    )?;
    for r in [t1, main].into_iter().chain(&others).chain([&rss]) {
        let steps = STEPS
            .iter()
            .map(|s| mean_max(r.step_ms.get(*s).map_or(&[], |v| v)));
        let cells: String = steps
            .chain([mean_max(&r.node_ms)])
            .map(|c| format!(" {c:>11}"))
            .collect();
        writeln!(t, "  {:<12}{cells}", r.label)?;
    }
    writeln!(
        t,
        "  load average before / after: {load_before} / {load_after} (other work on the machine adds noise)"
    )?;
    writeln!(
        t,
        "produced by: cargo xtask bench join (in {})",
        workspace_root().display()
    )?;
    writeln!(t, "  ours:      {}", main.command)?;
    writeln!(
        t,
        "  reference: {} (remote script: remote.sh beside it)",
        ssh.command
    )?;
    let mut missed = Vec::new();
    if ratio > TARGET_RATIO {
        missed.push(format!("wall / bound {ratio:.3} > {TARGET_RATIO}"));
    }
    if rss_mib > TARGET_RSS_MIB {
        missed.push(format!(
            "peak RSS {rss_mib:.1} MiB > {TARGET_RSS_MIB:.0} MiB"
        ));
    }
    if missed.is_empty() {
        writeln!(t, "bench join: every target met")?;
    } else {
        writeln!(t, "bench join: MISSED TARGETS: {}", missed.join("; "))?;
    }
    print!("{t}");
    Ok(())
}

fn best(runs: &[Run]) -> &Run {
    let fastest = runs.iter().min_by(|a, b| a.seconds.total_cmp(&b.seconds));
    fastest.expect("at least one run")
}

fn seconds_list(runs: &[Run]) -> String {
    let all: Vec<String> = runs.iter().map(|r| format!("{:.3} s", r.seconds)).collect();
    all.join(", ")
}

fn mean_max(values: &[u64]) -> String {
    match values.iter().max() {
        Some(max) => format!("{}/{max}", values.iter().sum::<u64>() / values.len() as u64),
        None => "-".into(),
    }
}

/// The sample artifact set with the amd64 keadm tarball grown by
/// `<top>/payload.bin`, and its checksum file rewritten; made once.
fn ensure_input(builder: &Path, dir: &Path) -> Result<Tarball> {
    let file = format!("keadm-{KUBEEDGE_VERSION}-linux-amd64.tar.gz");
    let marker = dir.join(".complete");
    if let Ok(text) = fs::read_to_string(&marker) {
        if let [SPEC, sha256, size] = text.lines().collect::<Vec<_>>()[..] {
            println!("bench input: reusing {} ({SPEC})", dir.display());
            let (sha256, size) = (sha256.to_string(), size.parse()?);
            return Ok(Tarball { file, sha256, size });
        }
    }
    if dir.exists() {
        fs::remove_dir_all(dir)?;
    }
    println!(
        "bench input: the sample with a grown {file}, in {}",
        dir.display()
    );
    sh(Command::new(builder)
        .args(["sample", "--kubeedge-version", KUBEEDGE_VERSION, "--out"])
        .arg(dir)
        .stdout(Stdio::null()))?;
    let path = dir.join("files").join(&file);
    let original = fs::read(&path)?;
    let part = path.with_extension("part");
    let gz = GzEncoder::new(
        BufWriter::new(fs::File::create(&part)?),
        Compression::fast(),
    );
    let mut out = tar::Builder::new(gz);
    let mut mtime = 0;
    for entry in tar::Archive::new(GzDecoder::new(&original[..])).entries()? {
        let mut entry = entry?;
        let header = entry.header().clone();
        mtime = header.mtime()?;
        out.append(&header, &mut entry)?;
    }
    let mut payload = vec![0u8; PAYLOAD];
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    for chunk in payload.chunks_mut(8) {
        // xorshift64*
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        chunk.copy_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    let mut header = tar::Header::new_ustar();
    header.set_path(format!("{}/payload.bin", file.trim_end_matches(".tar.gz")))?;
    header.set_size(PAYLOAD as u64);
    header.set_mode(0o644);
    header.set_mtime(mtime);
    header.set_cksum();
    out.append(&header, payload.as_slice())?;
    out.into_inner()?.finish()?.flush()?;
    let bytes = fs::read(&part)?;
    let sha256 = format!("{:x}", Sha256::digest(&bytes));
    let sha512 = format!("{:x}", Sha512::digest(&bytes));
    fs::write(
        dir.join(format!("files/checksum_{file}.txt")),
        format!("{sha512}\n"),
    )?;
    fs::rename(&part, &path)?;
    let size = bytes.len() as u64;
    fs::write(&marker, format!("{SPEC}\n{sha256}\n{size}\n"))?;
    Ok(Tarball { file, sha256, size })
}

/// Bytes free for unprivileged use on the filesystem of `path`.
fn free_bytes(path: &Path) -> Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: libc::statvfs is a plain C struct of integers, for which all
    // zero bytes are a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated C string and `st` a struct we
    // own, both alive for the call; statvfs only writes into `st`.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        bail!(
            "statvfs {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// `edgeferry serve` on the hosts' bridge: stopped (SIGTERM, then SIGKILL)
/// by pid when dropped, and by the kernel should we die first.
struct Mirror {
    child: Child,
    addr: String,
    /// stderr up to the `release files:` line, with the hosts.toml files.
    banner: String,
}

impl Mirror {
    fn start(edgeferry: &Path, store: &Path, ip: &str, dir: &Path) -> Result<Mirror> {
        let log = dir.join("serve.log");
        let child = Command::new("setpriv")
            .args(["--pdeathsig", "TERM", "--"])
            .arg(edgeferry)
            .arg("serve")
            .arg("--plain-http")
            .arg("--store")
            .arg(store)
            .arg("--listen")
            .arg(format!("{ip}:0"))
            .arg("--access-log")
            .arg(dir.join("access.jsonl"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log)?)
            .spawn()
            .context("starting edgeferry serve")?;
        let (addr, banner) = (String::new(), String::new());
        let mut mirror = Mirror {
            child,
            addr,
            banner,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = fs::read_to_string(&log).unwrap_or_default();
            if let Some(end) = text.find("\nrelease files:") {
                mirror.banner = text[..end].to_string();
                break;
            }
            if let Some(status) = mirror.child.try_wait()? {
                bail!("edgeferry serve exited with {status}: {}", text.trim());
            }
            if Instant::now() > deadline {
                bail!("edgeferry serve was not ready after 30 s: {}", text.trim());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let start_line = mirror
            .banner
            .lines()
            .find_map(|l| l.strip_prefix("edgeferry mirror: serving "));
        let addr = start_line.and_then(|l| l.split_once(" on http://")?.1.split(' ').next());
        mirror.addr = addr
            .context("no address in edgeferry serve's start-up line")?
            .to_string();
        Ok(mirror)
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the pid of a child we have not reaped.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(12);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Fresh hosts whose stand-in joins take `JOIN_SECONDS` more, and a mirror
/// on their bridge. The mirror stops before the hosts go.
struct Site {
    mirror: Mirror,
    hosts: TestHosts,
    dir: PathBuf,
}

impl Site {
    fn new(edgeferry: &Path, store: &Path, dir: PathBuf, n: usize) -> Result<Site> {
        fs::create_dir_all(&dir)?;
        let hosts = TestHosts::create(n)?;
        for i in 0..n {
            hosts.set_join_seconds(i, Some(JOIN_SECONDS));
            // The hosts share /root with this machine, so a root login in
            // bash would run this machine's ~/.bashrc for every command (on
            // the machine of BENCHMARKS.md: pyenv init, 0.2 CPU-s and a
            // lock shared by all hosts). An edge node's root does not.
            let passwd = hosts.private(i, "/etc/passwd");
            let root = |l: &str| match l.strip_prefix("root:").and_then(|r| r.rsplit_once(':')) {
                Some((fields, _shell)) => format!("root:{fields}:/bin/sh\n"),
                None => format!("{l}\n"),
            };
            let text: String = fs::read_to_string(&passwd)?.lines().map(root).collect();
            fs::write(&passwd, text)?;
        }
        let mirror = Mirror::start(edgeferry, store, hosts.control_ip(), &dir)?;
        Ok(Site { mirror, hosts, dir })
    }

    /// CPU seconds used so far by the mirror and by every host: its sshd
    /// (the host's PID 1) and the descendants sshd has reaped.
    fn work_cpu(&self) -> f64 {
        // Let each sshd reap the sessions that just closed.
        std::thread::sleep(Duration::from_millis(300));
        let hosts = (0..self.hosts.hosts().len()).filter_map(|i| self.hosts.sshd_pid(i));
        hosts.chain([self.mirror.child.id()]).map(tree_cpu).sum()
    }
}

/// utime + stime + cutime + cstime of `pid` (fields 14-17 of its stat).
fn tree_cpu(pid: u32) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, a)| a);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    (11..=14).filter_map(field).sum::<f64>() / ticks
}

/// (busy, total) CPU time of the whole machine so far, from /proc/stat.
fn machine_cpu() -> (u64, u64) {
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = stat.lines().next().unwrap_or_default();
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest is in user).
    let total: u64 = v.iter().take(8).sum();
    (
        total - v.get(3).unwrap_or(&0) - v.get(4).unwrap_or(&0),
        total,
    )
}

/// What [`measured`] measured.
struct Measured {
    seconds: f64,
    rss_kib: u64,
    cpu: f64,
    busy: f64,
    code: i32,
}

/// Runs `args` under `/usr/bin/time` in `dir`, stdout and stderr to files
/// named after `name`. Not wait4 on a child of ours: it would start with
/// our RSS high-water mark (exec keeps it), so its ru_maxrss would be at
/// least ours; time(1) is small.
fn measured(args: &[String], dir: &Path, name: &str, token: &str) -> Result<Measured> {
    let rss_file = dir.join(format!("{name}.time"));
    let (busy0, total0) = machine_cpu();
    let started = Instant::now();
    let status = Command::new("setpriv")
        .args([
            "--pdeathsig",
            "KILL",
            "--",
            "/usr/bin/time",
            "-f",
            "%M %U %S",
            "-o",
        ])
        .arg(&rss_file)
        .args(["setpriv", "--pdeathsig", "KILL", "--"])
        .args(args)
        .env("EF_BENCH_TOKEN", token)
        .stdin(Stdio::null())
        .stdout(fs::File::create(dir.join(format!("{name}.stdout")))?)
        .stderr(fs::File::create(dir.join(format!("{name}.stderr")))?)
        .status()
        .with_context(|| format!("starting {}", args[0]))?;
    let seconds = started.elapsed().as_secs_f64();
    let (busy1, total1) = machine_cpu();
    let text = fs::read_to_string(&rss_file)?;
    // After "Command exited with non-zero status N", if it did.
    let last = text.lines().last().unwrap_or_default();
    let fields: Vec<f64> = last
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    let [rss, user, system] = fields[..] else {
        bail!("/usr/bin/time wrote {text:?}, not a size and two times");
    };
    Ok(Measured {
        seconds,
        rss_kib: rss as u64,
        cpu: user + system,
        busy: (busy1 - busy0) as f64 / (total1 - total0).max(1) as f64,
        code: status.code().unwrap_or(-1),
    })
}

/// `edgeferry join` of the site's hosts at parallelism `p`; fails unless
/// report.json says every node joined.
fn join_run(site: &Site, edgeferry: &Path, store: &Path, p: usize, label: String) -> Result<Run> {
    let h = &site.hosts;
    let nodes: String = h
        .hosts()
        .iter()
        .map(|host| format!("  - host: {}\n", host.ip))
        .collect();
    let inventory = site.dir.join("site.yaml");
    // Timeouts raised from 15 s (connect) and 60 s: at 200 hosts, which
    // share 2 CPUs here, a trivial step can wait over a minute for a CPU.
    // No 50-host run comes near the defaults.
    fs::write(
        &inventory,
        format!(
            "cloudcore: {}\ntoken: {{env: EF_BENCH_TOKEN}}\nname_prefix: edge\n{TIMEOUTS}\n{SETTLE}\nssh: {{user: root, key: {}, known_hosts: {}}}\nnodes:\n{nodes}",
            h.cloudcore(),
            h.client_key().display(),
            h.known_hosts().display()
        ),
    )?;
    let state = site.dir.join("state");
    let path = |p: &Path| p.display().to_string();
    let args: Vec<String> = vec![
        path(edgeferry),
        "join".into(),
        "-c".into(),
        path(&inventory),
        "--store".into(),
        path(store),
        "--mirror".into(),
        site.mirror.addr.clone(),
        "--parallel".into(),
        p.to_string(),
        "--state-dir".into(),
        path(&state),
        "--json".into(),
    ];
    println!("\nbench: {label}: {}", shell_line(&args));
    let m = measured(&args, &site.dir, "join", &site.hosts.token())?;
    let report: Value = fs::read(state.join("report.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .with_context(|| format!("{label}: no report.json (exit {})", m.code))?;
    let n = h.hosts().len();
    let outcomes = report["nodes"].as_array().map_or(&[][..], |v| v);
    let joined = outcomes.iter().filter(|o| o["status"] == "joined").count();
    if m.code != 0 || joined != n {
        let failed: Vec<String> = outcomes
            .iter()
            .filter(|o| o["status"] != "joined")
            .take(5)
            .map(|o| {
                format!(
                    "{} {} at {}: {}",
                    o["host"], o["status"], o["failed_step"], o["error"]
                )
            })
            .collect();
        bail!(
            "{label}: only {joined} of {n} nodes joined (exit {}): {}; see {}",
            m.code,
            failed.join("; "),
            site.dir.display()
        );
    }
    let mut step_ms: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for s in outcomes
        .iter()
        .flat_map(|o| o["steps"].as_array().map_or(&[][..], |v| v))
    {
        if let (Some(step), Some(ms)) = (s["step"].as_str(), s["ms"].as_u64()) {
            step_ms.entry(step.to_string()).or_default().push(ms);
        }
    }
    let work_cpu = m.cpu + site.work_cpu();
    println!(
        "  {n} joined in {:.3} s; peak RSS {:.1} MiB; CPU {:.2} s, with hosts and mirror {work_cpu:.1} s; machine busy {:.0}%; load average {}",
        m.seconds,
        m.rss_kib as f64 / 1024.0,
        m.cpu,
        m.busy * 100.0,
        load_average()
    );
    Ok(Run {
        label,
        name: format!("join {n} hosts -p {p}"),
        nodes: n,
        parallel: p,
        seconds: m.seconds,
        rss_kib: m.rss_kib,
        cpu_seconds: m.cpu,
        work_cpu,
        busy: m.busy,
        node_ms: outcomes.iter().filter_map(|o| o["ms"].as_u64()).collect(),
        step_ms,
        command: shell_line(&args),
    })
}

/// The reference: one `ssh` after the other, each running a script that
/// writes the hosts.toml files as the join does, fetches, checks and
/// unpacks keadm, and runs its join.
fn ssh_loop(site: &Site, tarball: &Tarball) -> Result<Run> {
    let h = &site.hosts;
    let files = edgeferry_tests::printed_hosts_files(&site.mirror.banner);
    anyhow::ensure!(
        files.iter().any(|(dir, _)| dir == "docker.io"),
        "edgeferry serve printed no hosts.toml for docker.io:\n{}",
        site.mirror.banner
    );
    let mut remote = String::from("set -eu\n");
    for (dir, content) in &files {
        let d = quote(&format!("/etc/containerd/certs.d/{dir}"));
        writeln!(
            remote,
            "mkdir -p {d}\nprintf '%s' {} >{d}/hosts.toml",
            quote(content)
        )?;
    }
    let (file, top) = (&tarball.file, tarball.file.trim_end_matches(".tar.gz"));
    write!(
        remote,
        r#"d=/var/lib/edgeferry/keadm-{KUBEEDGE_VERSION}
mkdir -p "$d" /var/lib/edgeferry/work
curl -fsS --connect-timeout 10 -o "$d/{file}.part" "http://{mirror}/files/{file}"
echo "{sum}  $d/{file}.part" | sha256sum -c --status
tar -xzf "$d/{file}.part" -C "$d" {top}/keadm/keadm {top}/version
rm -f "$d/{file}.part"
cd /var/lib/edgeferry/work
"$d/{top}/keadm/keadm" join --kubeedge-version={KUBEEDGE_VERSION} --cloudcore-ipport={cloud} --edgenode-name="$node" --token={token}
"#,
        mirror = site.mirror.addr,
        sum = tarball.sha256,
        cloud = h.cloudcore(),
        // The baseline passes the token on keadm's command line, as a
        // hand-written loop (and keadm batch) does.
        token = quote(&h.token()),
    )?;
    let remote_path = site.dir.join("remote.sh");
    fs::write(&remote_path, &remote)?;
    let ips: Vec<&str> = h.hosts().iter().map(|host| host.ip.as_str()).collect();
    let script = format!(
        "set -eu\nscript=$(cat {remote})\ni=0\nfor ip in {ips}; do\n\ti=$((i + 1))\n\tssh -F /dev/null -o BatchMode=yes -o UserKnownHostsFile={kh} -o GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes -o LogLevel=ERROR -i {key} \"root@$ip\" \"node=edge-bench-$i; $script\" </dev/null\ndone\n",
        remote = quote(&remote_path.display().to_string()),
        ips = ips.join(" "),
        kh = quote(&h.known_hosts().display().to_string()),
        key = quote(&h.client_key().display().to_string()),
    );
    let loop_path = site.dir.join("loop.sh");
    fs::write(&loop_path, &script)?;
    let args = vec!["sh".to_string(), loop_path.display().to_string()];
    println!("\nbench: sequential ssh loop: {}", shell_line(&args));
    let m = measured(&args, &site.dir, "loop", "")?;
    if m.code != 0 {
        bail!(
            "the ssh loop exited {}; see {}/loop.stderr",
            m.code,
            site.dir.display()
        );
    }
    let n = ips.len();
    let certs = |i: usize| h.private(i, "/etc/kubeedge").join("certs/server.crt");
    let joined = (0..n).filter(|&i| certs(i).exists()).count();
    if joined != n {
        bail!("after the ssh loop only {joined} of {n} hosts have /etc/kubeedge/certs/server.crt");
    }
    let work_cpu = m.cpu + site.work_cpu();
    println!(
        "  {n} joined in {:.3} s; CPU with hosts and mirror {work_cpu:.1} s; machine busy {:.0}%; load average {}",
        m.seconds,
        m.busy * 100.0,
        load_average()
    );
    Ok(Run {
        label: "ssh-loop".into(),
        name: format!("ssh loop {n} hosts"),
        nodes: n,
        parallel: 1,
        seconds: m.seconds,
        rss_kib: m.rss_kib,
        cpu_seconds: m.cpu,
        work_cpu,
        busy: m.busy,
        node_ms: Vec::new(),
        step_ms: BTreeMap::new(),
        command: shell_line(&args),
    })
}

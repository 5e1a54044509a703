//! What the benches on real sshd test hosts (tests/src/hosts/) share:
//! `bench join` and `bench upgrade`. A [`Site`] is fresh hosts, their
//! inventory and `edgeferry serve` on their bridge; [`fleet_run`] is one
//! `edgeferry` command over a site under `/usr/bin/time`, checked by its
//! report.json, with the CPU its work took; [`runs_table`] and
//! [`steps_table`] print runs against the ideal bound ceil(N/P) x T1 and
//! the CPU floor N x C1 / CPUs, where T1 is the best single-host run and C1
//! its work CPU.
//!
//! The hosts are namespaces on this machine, not machines: what each node
//! runs competes for the same CPUs as the mirror and the control process.
//! So each run counts the CPU its work took (every host's sshd with what it
//! reaped, the mirror, the control process) and the machine's busy share
//! over the run: no schedule beats max(bound, floor) here.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use edgeferry_tests::hosts::TestHosts;
use serde_json::Value;

use crate::bench::{load_average, shell_line};
use crate::util::run as sh;

/// What the test hosts and the measurements need.
pub(crate) const PACKAGES: &[(&str, &str)] = &[
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

/// One measured run: an `edgeferry` command or a reference.
pub(crate) struct Run {
    /// Its directory under target/bench/<bench>-runs, e.g. `n50-p20-1`.
    pub label: String,
    /// What it is, e.g. `join 50 hosts -p 20`.
    pub name: String,
    pub nodes: usize,
    /// 1 for a sequential reference.
    pub parallel: usize,
    pub seconds: f64,
    /// The control process's: peak RSS (KiB) and user + system CPU.
    pub rss_kib: u64,
    pub cpu_seconds: f64,
    /// Its own, the mirror's and every host's (sshd and what it reaped)
    /// during the run.
    pub work_cpu: f64,
    /// Share of the machine's CPU time that was busy (anyone's work).
    pub busy: f64,
    /// From report.json: each node's ms and, per step, every node's ms.
    pub node_ms: Vec<u64>,
    pub step_ms: BTreeMap<String, Vec<u64>>,
    pub command: String,
    /// When the control process exited.
    pub ended: SystemTime,
}

pub(crate) fn best(runs: &[Run]) -> &Run {
    let fastest = runs.iter().min_by(|a, b| a.seconds.total_cmp(&b.seconds));
    fastest.expect("at least one run")
}

pub(crate) fn seconds_list(runs: &[Run]) -> String {
    let all: Vec<String> = runs.iter().map(|r| format!("{:.3} s", r.seconds)).collect();
    all.join(", ")
}

fn mean_max(values: &[u64]) -> String {
    match values.iter().max() {
        Some(max) => format!("{}/{max}", values.iter().sum::<u64>() / values.len() as u64),
        None => "-".into(),
    }
}

/// The table of `rows` against the ideal bound ceil(N/P) x T1 and the CPU
/// floor N x C1 / CPUs, T1 and C1 from `t1`.
pub(crate) fn runs_table(t: &mut String, t1: &Run, rows: &[&Run]) -> Result<()> {
    let cpus = cpus();
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
    for r in rows {
        let (bound, floor) = (bound(t1, r), r.nodes as f64 * t1.work_cpu / cpus);
        writeln!(
            t,
            "  {:<22} {:>7.2} s {:>7.2} s {:>6.2} {:>7.2} s {:>8.2} {:>7.1} s {:>4.0}% {:>6.2} s {:>5.1} MiB",
            r.name,
            r.seconds,
            bound,
            r.seconds / bound,
            floor,
            r.seconds / bound.max(floor),
            r.work_cpu,
            r.busy * 100.0,
            r.cpu_seconds,
            r.rss_kib as f64 / 1024.0
        )?;
    }
    Ok(())
}

/// ceil(N/P) x T1: `r`'s nodes in waves of its parallelism, each as fast as
/// the best single-host run.
pub(crate) fn bound(t1: &Run, r: &Run) -> f64 {
    r.nodes.div_ceil(r.parallel) as f64 * t1.seconds
}

pub(crate) fn cpus() -> f64 {
    std::thread::available_parallelism().map_or(1, |n| n.get()) as f64
}

/// Per-node step times of `rows`, mean/max in ms, `steps` in order.
pub(crate) fn steps_table(t: &mut String, steps: &[&str], rows: &[&Run]) -> Result<()> {
    // A column is as wide as its step's name, and at least 11.
    let names: Vec<&str> = steps.iter().copied().chain(["node"]).collect();
    let widths: Vec<usize> = names.iter().map(|s| s.len().max(11)).collect();
    let line = |cells: Vec<String>| -> String {
        let padded = cells.iter().zip(&widths);
        padded.map(|(c, w)| format!(" {c:>w$}")).collect()
    };
    writeln!(
        t,
        "  per-node step times in ms, mean/max over the run's nodes (report.json):\n  {:<12}{}",
        "run",
        line(names.iter().map(|s| s.to_string()).collect())
    )?;
    for r in rows {
        let cells = steps
            .iter()
            .map(|s| mean_max(r.step_ms.get(*s).map_or(&[], |v| v)));
        let cells = line(cells.chain([mean_max(&r.node_ms)]).collect());
        writeln!(t, "  {:<12}{cells}", r.label)?;
    }
    Ok(())
}

/// Removes what an earlier run of the bench left, so each run starts fresh.
pub(crate) fn remove_dirs(dirs: &[&Path]) -> Result<()> {
    for dir in dirs {
        if dir.exists() {
            fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
        }
    }
    Ok(())
}

/// Builds a bundle of `version` for amd64 (the sample, or the artifact
/// directory `from`) into `out` and loads it into `store`.
pub(crate) fn bundle_and_load(
    (builder, edgeferry): (&Path, &Path),
    (key, public): (&Path, &Path),
    from: Option<&Path>,
    (version, epoch): (&str, &str),
    out: &Path,
    store: &Path,
) -> Result<()> {
    let mut bundle = Command::new(builder);
    bundle.env("SOURCE_DATE_EPOCH", epoch).args([
        "bundle",
        "--arch",
        "amd64",
        "--kubeedge-version",
        version,
    ]);
    match from {
        Some(dir) => bundle.arg("--from").arg(dir),
        None => bundle.arg("--sample"),
    };
    sh(bundle
        .arg("--key")
        .arg(key)
        .arg("--out")
        .arg(out)
        .stdout(Stdio::null()))?;
    let file = format!("edgeferry-kubeedge-{version}-linux-amd64.tar.zst");
    sh(Command::new(edgeferry)
        .arg("load")
        .arg(out.join(file))
        .arg("--key")
        .arg(public)
        .arg("--store")
        .arg(store)
        .stdout(Stdio::null()))
}

/// Bytes free for unprivileged use on the filesystem of `path`.
pub(crate) fn free_bytes(path: &Path) -> Result<u64> {
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
pub(crate) struct Mirror {
    child: Child,
    /// Where it listens, `ip:port`.
    pub addr: String,
    /// stderr up to the `release files:` line, with the hosts.toml files.
    pub banner: String,
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

/// Fresh hosts, each prepared by the bench (its stand-in's timing files),
/// their inventory (`site.yaml`) and a mirror on their bridge. The mirror
/// stops before the hosts go.
pub(crate) struct Site {
    pub mirror: Mirror,
    pub hosts: TestHosts,
    pub dir: PathBuf,
    inventory: PathBuf,
}

impl Site {
    /// `n` hosts in `dir`; `inventory` holds the lines the bench adds to the
    /// inventory (settle:, timeouts:, kubeedge_version:); `prepare` runs for
    /// each host before the mirror starts.
    pub fn new(
        edgeferry: &Path,
        store: &Path,
        dir: PathBuf,
        n: usize,
        inventory: &str,
        prepare: impl Fn(&TestHosts, usize),
    ) -> Result<Site> {
        fs::create_dir_all(&dir)?;
        let hosts = TestHosts::create(n)?;
        for i in 0..n {
            prepare(&hosts, i);
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
        let nodes: String = hosts
            .hosts()
            .iter()
            .map(|host| format!("  - host: {}\n", host.ip))
            .collect();
        let path = dir.join("site.yaml");
        fs::write(
            &path,
            format!(
                "cloudcore: {}\ntoken: {{env: EF_BENCH_TOKEN}}\nname_prefix: edge\n{inventory}\nssh: {{user: root, key: {}, known_hosts: {}}}\nnodes:\n{nodes}",
                hosts.cloudcore(),
                hosts.client_key().display(),
                hosts.known_hosts().display()
            ),
        )?;
        let mirror = Mirror::start(edgeferry, store, hosts.control_ip(), &dir)?;
        Ok(Site {
            mirror,
            hosts,
            dir,
            inventory: path,
        })
    }

    /// CPU seconds used so far by the mirror and by every host: its sshd
    /// (the host's PID 1) and the descendants sshd has reaped.
    pub fn work_cpu(&self) -> f64 {
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
pub(crate) struct Measured {
    pub seconds: f64,
    pub rss_kib: u64,
    pub cpu: f64,
    pub busy: f64,
    pub code: i32,
    /// When the command exited.
    pub ended: SystemTime,
}

/// Runs `args` under `/usr/bin/time` in `dir`, stdout and stderr to files
/// named after `name`. Not wait4 on a child of ours: it would start with
/// our RSS high-water mark (exec keeps it), so its ru_maxrss would be at
/// least ours; time(1) is small.
pub(crate) fn measured(args: &[String], dir: &Path, name: &str, token: &str) -> Result<Measured> {
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
    let ended = SystemTime::now();
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
        ended,
    })
}

/// What one [`fleet_run`] asks of `edgeferry`.
pub(crate) struct Verb<'a> {
    /// The subcommand, `join` or `upgrade`.
    pub name: &'a str,
    /// Its arguments after the site's own, e.g. `["--to", "v1.23.1"]`.
    pub args: &'a [&'a str],
    /// The status report.json must give every node: `joined`, `upgraded`.
    pub done: &'a str,
}

/// `edgeferry <verb>` of the site's hosts at parallelism `p`, with the
/// site's inventory, mirror and state directory (`<site>/state`); fails
/// unless it exits 0 and report.json says every node is `verb.done`. Work
/// CPU counts only what the hosts and the mirror did during this run.
pub(crate) fn fleet_run(
    site: &Site,
    edgeferry: &Path,
    store: &Path,
    verb: &Verb,
    p: usize,
    label: String,
) -> Result<Run> {
    let before = site.work_cpu();
    let state = site.dir.join("state");
    let path = |p: &Path| p.display().to_string();
    let mut args: Vec<String> = vec![
        path(edgeferry),
        verb.name.into(),
        "-c".into(),
        path(&site.inventory),
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
    args.extend(verb.args.iter().map(|a| a.to_string()));
    println!("\nbench: {label}: {}", shell_line(&args));
    let m = measured(&args, &site.dir, verb.name, &site.hosts.token())?;
    let report: Value = fs::read(state.join("report.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .with_context(|| format!("{label}: no report.json (exit {})", m.code))?;
    let n = site.hosts.hosts().len();
    let outcomes = report["nodes"].as_array().map_or(&[][..], |v| v);
    let done = outcomes.iter().filter(|o| o["status"] == verb.done).count();
    if report["action"] != verb.name || m.code != 0 || done != n {
        let failed: Vec<String> = outcomes
            .iter()
            .filter(|o| o["status"] != verb.done)
            .take(5)
            .map(|o| {
                format!(
                    "{} {} at {}: {}",
                    o["host"], o["status"], o["failed_step"], o["error"]
                )
            })
            .collect();
        bail!(
            "{label}: only {done} of {n} nodes {} by {} (exit {}): {}; see {}",
            verb.done,
            report["action"],
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
    let work_cpu = m.cpu + site.work_cpu() - before;
    println!(
        "  {n} {} in {:.3} s; peak RSS {:.1} MiB; CPU {:.2} s, with hosts and mirror {work_cpu:.1} s; machine busy {:.0}%; load average {}",
        verb.done,
        m.seconds,
        m.rss_kib as f64 / 1024.0,
        m.cpu,
        m.busy * 100.0,
        load_average()
    );
    Ok(Run {
        label,
        name: format!("{} {n} hosts -p {p}", verb.name),
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
        ended: m.ended,
    })
}

/// The closing line of a fleet bench (`bench join`, `bench upgrade`):
/// every target met, or which were missed. Missed targets are reported,
/// not fatal.
pub(crate) fn verdict_line(
    t: &mut String,
    bench: &str,
    (ratio, ratio_limit): (f64, f64),
    (rss_mib, rss_limit_mib): (f64, f64),
) -> Result<()> {
    let targets = [
        Target::new("wall / bound", ratio, ratio_limit, ""),
        Target::new("peak RSS", rss_mib, rss_limit_mib, "MiB"),
    ];
    let missed: Vec<String> = targets
        .iter()
        .filter(|x| !x.met())
        .map(Target::missed)
        .collect();
    closing_line(t, bench, &missed)
}

/// One target of a bench: met when `value <= limit`.
pub(crate) struct Target {
    pub what: String,
    pub value: f64,
    pub limit: f64,
    /// Printed after value and limit: `MiB`, `s`, `ms`, or nothing.
    pub unit: &'static str,
}

impl Target {
    pub fn new(what: impl Into<String>, value: f64, limit: f64, unit: &'static str) -> Target {
        Target {
            what: what.into(),
            value,
            limit,
            unit,
        }
    }

    pub fn met(&self) -> bool {
        self.value <= self.limit
    }

    fn missed(&self) -> String {
        let unit = if self.unit.is_empty() {
            String::new()
        } else {
            format!(" {}", self.unit)
        };
        format!(
            "{} {:.3}{unit} > {}{unit}",
            self.what, self.value, self.limit
        )
    }
}

/// The targets as a table, each PASS or FAIL, then the closing line of
/// [`verdict_line`] over all of them.
pub(crate) fn verdict_table(t: &mut String, bench: &str, targets: &[Target]) -> Result<()> {
    let width = targets
        .iter()
        .map(|x| x.what.len())
        .max()
        .unwrap_or(6)
        .max(6);
    writeln!(t, "  {:<width$} {:>12}  {:>12}", "target", "value", "limit")?;
    for x in targets {
        let cell = |v: f64| {
            let unit = if x.unit.is_empty() { "" } else { x.unit };
            format!("{v:.3} {unit}").trim_end().to_string()
        };
        writeln!(
            t,
            "  {:<width$} {:>12}  {:>12}  {}",
            x.what,
            cell(x.value),
            format!("<= {}", cell(x.limit)),
            if x.met() { "PASS" } else { "FAIL" }
        )?;
    }
    let missed: Vec<String> = targets
        .iter()
        .filter(|x| !x.met())
        .map(Target::missed)
        .collect();
    closing_line(t, bench, &missed)
}

fn closing_line(t: &mut String, bench: &str, missed: &[String]) -> Result<()> {
    if missed.is_empty() {
        writeln!(t, "bench {bench}: every target met")?;
    } else {
        writeln!(t, "bench {bench}: MISSED TARGETS: {}", missed.join("; "))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A step name wider than 11 widens its column, so cells stay under
    /// their headings.
    #[test]
    fn steps_table_columns_fit_their_names() {
        let run = Run {
            label: "t1-1".into(),
            name: "upgrade 1 hosts -p 1".into(),
            nodes: 1,
            parallel: 1,
            seconds: 1.0,
            rss_kib: 0,
            cpu_seconds: 0.0,
            work_cpu: 0.0,
            busy: 0.0,
            node_ms: vec![30, 50],
            step_ms: BTreeMap::from([("upgrade_preflight".to_string(), vec![10, 20])]),
            command: String::new(),
            ended: SystemTime::UNIX_EPOCH,
        };
        let mut t = String::new();
        steps_table(&mut t, &["connect", "upgrade_preflight"], &[&run]).unwrap();
        assert_eq!(
            t,
            "  per-node step times in ms, mean/max over the run's nodes (report.json):\n  \
             run              connect upgrade_preflight        node\n  \
             t1-1                   -             15/20       40/50\n"
        );
    }
}

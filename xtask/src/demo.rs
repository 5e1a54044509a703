//! `cargo xtask demo`: the main job end to end on the built-in sample:
//! sample bundles for amd64 and arm64, each checked with stock tools only
//! (sha256sum, minisign, tar, skopeo) as an operator would; loaded into a
//! store; served; and three local test hosts (real sshd in namespaces)
//! joined over SSH from the mirror by `edgeferry join`; and one host
//! without sshd that joins itself by pull mode (the one-liner on its console).

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};
use edgeferry_builder::cli::{BundleArgs, Cli, Command as BuilderCommand, KeygenArgs};

use crate::util::{ensure_packages, workspace_root, PACKAGES};

pub fn run() -> Result<()> {
    ensure_packages(PACKAGES)?;
    let demo = workspace_root().join("target/demo");
    let keys = demo.join("keys");
    let bundles = demo.join("bundles");
    if !keys.join("edgeferry.key").exists() {
        // An unencrypted key, for the demo only: real keys get a password.
        edgeferry_builder::cli::run(Cli {
            command: BuilderCommand::Keygen(KeygenArgs {
                out: keys.clone(),
                unencrypted: true,
            }),
        })?;
    }
    for arch in ["amd64", "arm64"] {
        println!("\n== SAMPLE bundle for linux/{arch}");
        edgeferry_builder::cli::run(Cli {
            command: BuilderCommand::Bundle(BundleArgs {
                arch: arch.parse().map_err(anyhow::Error::msg)?,
                kubeedge_version: "v1.23.1".into(),
                from: None,
                sample: true,
                online: Default::default(),
                key: Some(keys.join("edgeferry.key")),
                out: bundles.clone(),
                pause_images: Vec::new(),
                images: Vec::new(),
                level: 3,
                sequence: None,
                volume_size: None,
                delta: Default::default(),
                dry_run: false,
                json: false,
            }),
        })?;
        let bundle = bundles.join(format!("edgeferry-kubeedge-v1.23.1-linux-{arch}.tar.zst"));
        check_with_stock_tools(
            &bundle,
            &keys.join("edgeferry.pub"),
            &demo.join(format!("unpacked-{arch}")),
        )?;
    }
    let store = demo.join("store");
    if store.exists() {
        std::fs::remove_dir_all(&store)?;
    }
    let edgeferry = crate::util::built_binary("edgeferry")?;
    for arch in ["amd64", "arm64"] {
        println!(
            "\n== edgeferry load (linux/{arch}) into {}",
            store.display()
        );
        crate::util::run(
            Command::new(&edgeferry)
                .arg("load")
                .arg(bundles.join(format!("edgeferry-kubeedge-v1.23.1-linux-{arch}.tar.zst")))
                .arg("--key")
                .arg(keys.join("edgeferry.pub"))
                .arg("--store")
                .arg(&store),
        )?;
    }
    crate::util::run(
        Command::new(&edgeferry)
            .args(["store", "list", "--store"])
            .arg(&store),
    )?;
    serve_and_pull(&edgeferry, &store, &demo)?;
    join_hosts(&edgeferry, &store, &demo)?;
    pull_join(&edgeferry, &store, &demo)?;
    println!(
        "\ndemo ok: bundles in {}, store in {}",
        bundles.display(),
        store.display()
    );
    Ok(())
}

/// What a user can do without our binary: every step is a stock tool.
pub fn check_with_stock_tools(bundle: &Path, public_key: &Path, unpack_to: &Path) -> Result<()> {
    let dir = bundle.parent().context("bundle has a directory")?;
    step(
        "sha256sum -c",
        Command::new("sha256sum")
            .args(["-c", "--ignore-missing", "SHA256SUMS"])
            .current_dir(dir),
    )?;
    step(
        "minisign -V (whole bundle)",
        Command::new("minisign")
            .arg("-Vm")
            .arg(bundle)
            .arg("-p")
            .arg(public_key),
    )?;
    step(
        "tar --zstd -tf",
        Command::new("tar")
            .arg("--zstd")
            .arg("-tf")
            .arg(bundle)
            .stdout(std::process::Stdio::null()),
    )?;
    if unpack_to.exists() {
        std::fs::remove_dir_all(unpack_to)?;
    }
    std::fs::create_dir_all(unpack_to)?;
    step(
        "tar --zstd -xf",
        Command::new("tar")
            .arg("--zstd")
            .arg("-xf")
            .arg(bundle)
            .arg("-C")
            .arg(unpack_to),
    )?;
    step(
        "minisign -V (manifest)",
        Command::new("minisign")
            .arg("-Vm")
            .arg(unpack_to.join("manifest.json"))
            .arg("-x")
            .arg(unpack_to.join("manifest.json.minisig"))
            .arg("-p")
            .arg(public_key),
    )?;
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(unpack_to.join("manifest.json"))?)?;
    for image in manifest["images"]
        .as_array()
        .context("manifest lists images")?
    {
        let reference = image["reference"]
            .as_str()
            .context("image has a reference")?;
        let out = Command::new("skopeo")
            .arg("inspect")
            .arg(format!(
                "oci:{}:{reference}",
                unpack_to.join("images").display()
            ))
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "skopeo inspect {reference}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let inspected: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        println!(
            "  ok  skopeo inspect {reference}: {} {}",
            inspected["Os"].as_str().unwrap_or("?"),
            inspected["Architecture"].as_str().unwrap_or("?")
        );
    }
    Ok(())
}

fn step(what: &str, cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("starting {what}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    println!("  ok  {what}");
    Ok(())
}

/// Serves the store on loopback and pulls from it as a node would: an image
/// with skopeo under its upstream name, and a release file with curl.
fn serve_and_pull(edgeferry: &Path, store: &Path, demo: &Path) -> Result<()> {
    use std::io::{BufRead, BufReader};
    println!("\n== edgeferry serve, and a pull through it");
    let mut server = Command::new(edgeferry)
        .args([
            "serve",
            "--plain-http",
            "--listen",
            "127.0.0.1:0",
            "--access-log",
        ])
        .arg(demo.join("access.log"))
        .arg("--store")
        .arg(store)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("starting edgeferry serve")?;
    let result = (|| -> Result<()> {
        let stderr = server.stderr.take().context("server stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        let address = loop {
            let line = lines
                .next()
                .context("the server exited before it was listening")??;
            println!("  | {line}");
            if let Some(rest) = line.split(" on http://").nth(1) {
                break rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string();
            }
        };
        // Show the banner (hosts.toml and keadm flags) as an operator sees it.
        for line in lines.by_ref() {
            let line = line?;
            println!("  | {line}");
            if line.starts_with("release files:") {
                break;
            }
        }
        let pulled = demo.join("pulled");
        if pulled.exists() {
            std::fs::remove_dir_all(&pulled)?;
        }
        let reference = "kubeedge/installation-package:v1.23.1";
        crate::util::run(
            Command::new("skopeo")
                .args(["copy", "--quiet", "--src-tls-verify=false"])
                .arg(format!("docker://{address}/{reference}"))
                .arg(format!("oci:{}:{reference}", pulled.display())),
        )?;
        println!(
            "  ok  skopeo copy docker://{address}/{reference} -> {}",
            pulled.display()
        );
        let sums = crate::util::output(
            Command::new("curl")
                .args(["-fsS"])
                .arg(format!("http://{address}/SHA256SUMS")),
        )?;
        println!(
            "  ok  curl http://{address}/SHA256SUMS ({} files listed)",
            sums.lines().count()
        );
        Ok(())
    })();
    // SIGTERM: the server finishes in-flight transfers and exits.
    let _ = Command::new("kill").arg(server.id().to_string()).status();
    let _ = server.wait();
    result
}

/// Three local test hosts (tests/src/hosts/: sshd in its own network,
/// mount and PID namespaces), a mirror on their bridge, and one
/// `edgeferry join`: dry run first, then the real thing.
fn join_hosts(edgeferry: &Path, store: &Path, demo: &Path) -> Result<()> {
    use edgeferry_tests::hosts::TestHosts;
    println!("\n== edgeferry join: 3 local test hosts over SSH, through the mirror");
    let hosts = TestHosts::create(3)?;
    // A token the hosts' stand-in cloudcore accepts, passed through the
    // environment as a real one would be.
    let token = hosts.token();
    let server = Mirror::start(
        edgeferry,
        store,
        hosts.control_ip(),
        &demo.join("join-access.log"),
        None,
        &token,
        "release files:",
    )?;
    let mirror = server.address.clone();
    let result = (|| -> Result<()> {
        let state = demo.join("join-state");
        if state.exists() {
            std::fs::remove_dir_all(&state)?;
        }
        let mut nodes = String::new();
        for h in hosts.hosts() {
            nodes.push_str(&format!("  - host: {}\n", h.ip));
        }
        let inventory = demo.join("site.yaml");
        std::fs::write(
            &inventory,
            format!(
                "# edgeferry join inventory for the demo's local test hosts\n\
                 cloudcore: {}   # a stand-in cloudcore port on the bridge\n\
                 token: {{env: DEMO_KUBEEDGE_TOKEN}}\n\
                 name_prefix: demo-edge\n\
                 keadm:\n  labels: [site=demo]\n\
                 ssh:\n  user: root\n  key: {}\n  known_hosts: {}\nnodes:\n{nodes}",
                hosts.cloudcore(),
                hosts.client_key().display(),
                hosts.known_hosts().display()
            ),
        )?;
        let join = |extra: &[&str]| -> Result<()> {
            crate::util::run(
                Command::new(edgeferry)
                    .arg("join")
                    .arg("-c")
                    .arg(&inventory)
                    .arg("--store")
                    .arg(store)
                    .arg("--mirror")
                    .arg(&mirror)
                    .arg("--state-dir")
                    .arg(&state)
                    .args(extra)
                    .env("DEMO_KUBEEDGE_TOKEN", &token)
                    .stdin(std::process::Stdio::null()),
            )
        };
        println!(
            "  $ edgeferry join -c {} --dry-run   (the plan, touching nothing)",
            inventory.display()
        );
        join(&["--dry-run"])?;
        println!("  $ edgeferry join -c {}", inventory.display());
        join(&[])?;
        for (i, h) in hosts.hosts().iter().enumerate() {
            let out = hosts.run_on(i, "pidof edgecore; ls /etc/kubeedge/certs")?;
            anyhow::ensure!(out.status.success(), "{}: edgecore is not running", h.name);
            println!(
                "  ok  {} ({}): stand-in edgecore pid {}, certs: {}",
                h.name,
                h.ip,
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .next()
                    .unwrap_or("?"),
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .skip(1)
                    .collect::<Vec<_>>()
                    .join(" ")
            );
        }
        println!("  report: {}", state.join("report.json").display());
        Ok(())
    })();
    drop(server);
    result
}

/// Pull mode: one local test host with no sshd (a node behind NAT that
/// only its console reaches), a mirror on its bridge serving the site
/// (`--site-dir`), an enrollment code, and the one-liner the mirror
/// printed, typed on the node's console; then `edgeferry status`.
fn pull_join(edgeferry: &Path, store: &Path, demo: &Path) -> Result<()> {
    use edgeferry_tests::hosts::TestHosts;
    println!("\n== pull mode: a node nothing can reach joins itself from the mirror");
    let hosts = TestHosts::create_without_sshd(1)?;
    let site = demo.join("pull-site");
    if site.exists() {
        std::fs::remove_dir_all(&site)?;
    }
    std::fs::create_dir_all(&site)?;
    let site_yaml = format!(
        "# edgeferry pull-mode site: what the mirror hands to enrolled nodes\n\
         cloudcore: {}   # a stand-in cloudcore port on the bridge\n\
         token: {{env: DEMO_KUBEEDGE_TOKEN}}   # read by serve, never written down\n\
         name_prefix: demo-pull\n\
         keadm:\n  labels: [site=demo]\n",
        hosts.cloudcore()
    );
    std::fs::write(site.join("site.yaml"), &site_yaml)?;
    println!("  {}:", site.join("site.yaml").display());
    for line in site_yaml.lines() {
        println!("  | {line}");
    }
    println!(
        "  $ edgeferry serve --listen {}:0 --site-dir {} ...",
        hosts.control_ip(),
        site.display()
    );
    let server = Mirror::start(
        edgeferry,
        store,
        hosts.control_ip(),
        &demo.join("pull-access.log"),
        Some(&site),
        &hosts.token(),
        "one-liner: ",
    )?;
    // The banner's last lines: the join script's sha256 and the one-liner
    // to give the operator.
    for line in &server.banner {
        if line.starts_with("edgeferry mirror: serving")
            || line.starts_with("join script:")
            || line.starts_with("one-liner:")
        {
            println!("  | {line}");
        }
    }
    let one_liner = server
        .banner
        .last()
        .and_then(|l| l.strip_prefix("one-liner: "))
        .context("no one-liner in the banner")?
        .trim()
        .to_string();
    let result = (|| -> Result<()> {
        println!(
            "  $ edgeferry enroll create --site-dir {} --uses 1 --expires 1h",
            site.display()
        );
        let created = crate::util::output(
            Command::new(edgeferry)
                .args(["enroll", "create", "--site-dir"])
                .arg(&site)
                .args(["--uses", "1", "--expires", "1h"]),
        )?;
        for line in created.lines() {
            println!("  | {line}");
        }
        let code = created
            .lines()
            .find_map(|l| l.strip_prefix("code:"))
            .map(|c| c.trim().to_string())
            .context("enroll create printed no code")?;
        let command = one_liner.replace("<CODE>", &code);
        let host = hosts.host(0);
        println!(
            "  on {} ({}, no sshd; its console), as root:",
            host.name, host.ip
        );
        println!("  {}# {command}", host.name);
        let out = hosts.run_on(0, &command)?;
        for line in String::from_utf8_lossy(&out.stdout)
            .lines()
            .chain(String::from_utf8_lossy(&out.stderr).lines())
        {
            println!("  | {line}");
        }
        anyhow::ensure!(
            out.status.success(),
            "the one-liner failed on {} ({})",
            host.name,
            out.status
        );
        let pid = hosts.run_on(0, "pidof edgecore")?;
        anyhow::ensure!(
            pid.status.success(),
            "{}: edgecore is not running",
            host.name
        );
        println!(
            "  ok  {} ({}): stand-in edgecore pid {}",
            host.name,
            host.ip,
            String::from_utf8_lossy(&pid.stdout).trim()
        );
        println!("  $ edgeferry status --site-dir {}", site.display());
        let status = crate::util::output(
            Command::new(edgeferry)
                .args(["status", "--site-dir"])
                .arg(&site),
        )?;
        for line in status.lines() {
            println!("  | {line}");
        }
        Ok(())
    })();
    drop(server);
    result
}

/// `edgeferry serve` on a test-host bridge, stopped (SIGTERM) on drop.
struct Mirror {
    child: std::process::Child,
    address: String,
    /// stderr lines up to and including the one starting with `until`.
    banner: Vec<String>,
}

impl Mirror {
    fn start(
        edgeferry: &Path,
        store: &Path,
        ip: &str,
        access_log: &Path,
        site_dir: Option<&Path>,
        token: &str,
        until: &str,
    ) -> Result<Mirror> {
        use std::io::{BufRead, BufReader};
        let mut cmd = Command::new(edgeferry);
        // HTTPS, serve's default: the site certificate beside the store,
        // which `join` finds there and pull mode's one-liner pins.
        cmd.arg("serve")
            .arg("--listen")
            .arg(format!("{ip}:0"))
            .arg("--access-log")
            .arg(access_log)
            .arg("--store")
            .arg(store)
            .env("DEMO_KUBEEDGE_TOKEN", token)
            .stderr(std::process::Stdio::piped());
        if let Some(site) = site_dir {
            cmd.arg("--site-dir").arg(site);
        }
        let mut child = cmd.spawn().context("starting edgeferry serve")?;
        let stderr = child.stderr.take().context("server stderr")?;
        let mut mirror = Mirror {
            child,
            address: String::new(),
            banner: Vec::new(),
        };
        let mut lines = BufReader::new(stderr).lines();
        loop {
            let line = lines
                .next()
                .with_context(|| format!("the server exited before printing {until:?}"))??;
            if let Some(rest) = line.split(" on https://").nth(1) {
                mirror.address = rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string();
            }
            let done = line.starts_with(until);
            mirror.banner.push(line);
            if done {
                break;
            }
        }
        std::thread::spawn(move || lines.for_each(drop));
        Ok(mirror)
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Debian packages the tests, the demo and the benchmarks use. `ci` and
/// `demo` install whatever is missing, so a fresh machine needs only cargo.
pub const PACKAGES: &[(&str, &str)] = &[
    // (command that proves it is there, Debian package)
    ("minisign", "minisign"),
    ("skopeo", "skopeo"),
    ("zstd", "zstd"),
    ("busybox", "busybox-static"),
    ("sha256sum", "coreutils"),
    ("curl", "curl"),
    ("docker-registry", "docker-registry"),
    ("htpasswd", "apache2-utils"),
    ("containerd", "containerd"),
    // Test hosts for `edgeferry join` (tests/src/hosts/): real sshd in
    // namespaces, the OpenSSH client, sudo and password hashes inside.
    ("/usr/sbin/sshd", "openssh-server"),
    ("ssh", "openssh-client"),
    ("ip", "iproute2"),
    ("nsenter", "util-linux"),
    ("sudo", "sudo"),
    ("openssl", "openssl"),
    ("shellcheck", "shellcheck"),
    // Validates emitted custom resources against the CRD schemas kept in
    // manifests/crds/ (tests/src/crd.rs).
    ("jsonschema", "python3-jsonschema"),
];

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

pub fn have(command: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {command} >/dev/null 2>&1"))
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// apt-get installs the packages whose command is missing.
pub fn ensure_packages(packages: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(cmd, _)| !have(cmd))
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing Debian packages: {}", missing.join(" "));
    if !have("apt-get") {
        bail!(
            "missing {}: install them (no apt-get here)",
            missing.join(", ")
        );
    }
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing))
}

/// Python packages the tests run, pinned: the CycloneDX library whose JSON
/// schema validator checks the bundle's SBOM (tests/it/sbom.rs).
pub const PYTHON_PACKAGES: &[(&str, &str)] = &[(
    "cyclonedx.validation.json",
    "cyclonedx-python-lib[json-validation]==11.12.0",
)];

/// pip installs the packages whose module does not import.
pub fn ensure_python_packages(packages: &[(&str, &str)]) -> Result<()> {
    for (module, requirement) in packages {
        let present = Command::new("python3")
            .args(["-c", &format!("import {module}")])
            .status()
            .is_ok_and(|s| s.success());
        if !present {
            eprintln!("xtask: installing Python package {requirement}");
            run(Command::new("python3").args(["-m", "pip", "install", "--quiet", requirement]))?;
        }
    }
    Ok(())
}

pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

/// Builds a workspace binary (same profile as xtask) and returns its path.
pub fn built_binary(name: &str) -> Result<PathBuf> {
    run(cargo().args(["build", "--quiet", "--bin", name]))?;
    let path = workspace_root().join("target/debug").join(name);
    anyhow::ensure!(
        path.exists(),
        "built {name} but {} is missing",
        path.display()
    );
    Ok(path)
}

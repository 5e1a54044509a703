//! `cargo xtask demo`: the main job end to end on the built-in sample.
//! Today: sample bundles for amd64 and arm64, each checked with stock
//! tools only (sha256sum, minisign, tar, skopeo), as an operator would.

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
                key: Some(keys.join("edgeferry.key")),
                out: bundles.clone(),
                pause_image: None,
                images: Vec::new(),
                level: 3,
                sequence: None,
                volume_size: None,
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

//! What CI runs: `.ci/run` is `cargo xtask ci`.

use anyhow::Result;

use crate::util::{cargo, ensure_packages, run as sh, PACKAGES};

pub fn run() -> Result<()> {
    ensure_packages(PACKAGES)?;
    sh(cargo().args(["fmt", "--all", "--", "--check"]))?;
    sh(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // Integration tests drive the real binaries; build them in the same
    // profile first so the test harness finds them in target/debug.
    sh(cargo().args(["build", "--workspace", "--bins"]))?;
    sh(cargo().args(["test", "--workspace"]))?;
    Ok(())
}

//! What CI runs: `.ci/run` is `cargo xtask ci`.

use anyhow::Result;

use crate::util::{
    cargo, ensure_packages, ensure_python_packages, run as sh, PACKAGES, PYTHON_PACKAGES,
};

pub fn run() -> Result<()> {
    ensure_packages(PACKAGES)?;
    ensure_python_packages(PYTHON_PACKAGES)?;
    sh(cargo().args(["fmt", "--all", "--", "--check"]))?;
    sh(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The integration tests build the binaries they drive themselves
    // (tests/src/lib.rs, `bin`), so CI runs them exactly as `cargo test`
    // does on a developer's machine.
    sh(cargo().args(["test", "--workspace"]))?;
    Ok(())
}

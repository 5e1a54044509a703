use anyhow::{bail, Result};

pub fn run(name: &str) -> Result<()> {
    match name {
        other => bail!("unknown benchmark {other:?}: try `bundle`"),
    }
}

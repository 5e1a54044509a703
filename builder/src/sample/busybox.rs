//! The build host's static busybox, which the sample images carry.

use std::fs;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};

const BUSYBOX: &str = "/bin/busybox";
const BUSYBOX_PACKAGE: &str = "busybox-static";

/// The host's static busybox, which the sample images carry so that the
/// amd64 installation-package image can really run `sh`, `sleep` and `cp`.
pub fn busybox_path() -> Result<PathBuf> {
    load_busybox().map(|(path, _)| path)
}

pub(super) fn load_busybox() -> Result<(PathBuf, Vec<u8>)> {
    let path = PathBuf::from(BUSYBOX);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("busybox not found at {BUSYBOX}: install the Debian package {BUSYBOX_PACKAGE}")
        }
        Err(e) => {
            return Err(e).with_context(|| {
                format!("cannot read {BUSYBOX}: make it readable or reinstall {BUSYBOX_PACKAGE}")
            })
        }
    };
    if let Err(why) = check_static_elf(&bytes) {
        bail!("{BUSYBOX} {why}: install the Debian package {BUSYBOX_PACKAGE}, which replaces it with a static build");
    }
    Ok((path, bytes))
}

/// `Err` says why `bytes` is not a statically linked ELF executable: a
/// PT_INTERP program header means it needs a dynamic loader, which the
/// sample images do not have.
pub(super) fn check_static_elf(bytes: &[u8]) -> std::result::Result<(), &'static str> {
    const PT_INTERP: u32 = 3;
    if bytes.len() < 52 || &bytes[..4] != b"\x7fELF" {
        return Err("is not an ELF executable");
    }
    let little = match bytes[5] {
        1 => true,
        2 => false,
        _ => return Err("is an ELF file of unknown byte order"),
    };
    let uint = |at: usize, len: usize| -> Option<u64> {
        let field = bytes.get(at..at.checked_add(len)?)?;
        let mut value = 0u64;
        for i in 0..len {
            let byte = if little { field[len - 1 - i] } else { field[i] };
            value = (value << 8) | u64::from(byte);
        }
        Some(value)
    };
    // Offsets of e_phoff, e_phentsize and e_phnum differ by ELF class.
    let (phoff, phentsize, phnum) = match bytes[4] {
        1 => (uint(0x1c, 4), uint(0x2a, 2), uint(0x2c, 2)),
        2 => (uint(0x20, 8), uint(0x36, 2), uint(0x38, 2)),
        _ => return Err("is an ELF file of unknown class"),
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) = (phoff, phentsize, phnum) else {
        return Err("has a truncated ELF header");
    };
    for i in 0..phnum {
        let at = i
            .checked_mul(phentsize)
            .and_then(|o| o.checked_add(phoff))
            .and_then(|o| usize::try_from(o).ok());
        match at.and_then(|at| uint(at, 4)) {
            Some(p_type) if p_type == u64::from(PT_INTERP) => {
                return Err("is dynamically linked (it names an ELF interpreter)")
            }
            Some(_) => {}
            None => return Err("has truncated ELF program headers"),
        }
    }
    Ok(())
}

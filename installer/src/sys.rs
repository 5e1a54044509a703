//! The Linux calls std lacks, each behind a safe function.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

fn cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path has a NUL byte"))
}

/// Atomically swaps two directory entries: the store changes in one step.
pub fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    let (a, b) = (cstring(a)?, cstring(b)?);
    // SAFETY: both are valid NUL-terminated paths; AT_FDCWD resolves them
    // relative to the working directory like rename(2).
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// An exclusive advisory lock, released when the file is dropped.
// The descriptor is never read: holding it is what holds the lock.
pub struct Lock(#[allow(dead_code)] File);

/// Locks `dir` itself (no lock file is created, so nothing is written).
pub fn lock_dir(dir: &Path) -> io::Result<Lock> {
    let file = File::open(dir)?;
    // SAFETY: a valid open descriptor.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        Ok(Lock(file))
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Like `lock_dir`, but waits for the lock: for short critical sections
/// shared by the mirror and the `enroll` command.
pub fn lock_dir_wait(dir: &Path) -> io::Result<Lock> {
    let file = File::open(dir)?;
    // SAFETY: a valid open descriptor.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
    if rc == 0 {
        Ok(Lock(file))
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Bytes available to an unprivileged writer on the filesystem of `path`.
pub fn available_bytes(path: &Path) -> io::Result<u64> {
    let c = cstring(path)?;
    // SAFETY: statvfs fills the zeroed struct; c is a valid path.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut stat) };
    if rc == 0 {
        Ok(stat.f_bavail as u64 * stat.f_frsize as u64)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Flushes everything dirty on the filesystem holding `dir`, in one call:
/// cheaper than fsync per file, and the kernel has been writing back while
/// we streamed, so little is left to wait for.
pub fn syncfs(dir: &Path) -> io::Result<()> {
    let file = File::open(dir)?;
    // SAFETY: a valid open descriptor.
    let rc = unsafe { libc::syncfs(file.as_raw_fd()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Asks the kernel to start writing `file` back now, without waiting, so
/// the disk works while we decompress the next entry and the final
/// `syncfs` has little left to do.
pub fn start_writeback(file: &File) {
    // SAFETY: a valid open descriptor; offset 0, length 0 means the whole file.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
}

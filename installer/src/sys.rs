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

/// Locks the file at `path`, creating it empty if needed: a lock for one
/// thing (a store) when its directory holds others.
pub fn lock_file(path: &Path) -> io::Result<Lock> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    // SAFETY: a valid open descriptor.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        Ok(Lock(file))
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Locks `dir` itself (no lock file is created, so nothing is written),
/// waiting for the lock: for short critical sections
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

/// A read-only shared mapping of a whole file, unmapped on drop, with the
/// open file it maps. The mirror serves blob bodies from it: over TLS the
/// bytes are encrypted straight from the mapping; over plain HTTP a slice
/// of it is sent from the file with [`sendfile`], never copied.
pub struct Mapping {
    address: *mut libc::c_void,
    len: usize,
    file: File,
}

// SAFETY: the mapping is read-only and never changes while it exists.
unsafe impl Send for Mapping {}
// SAFETY: as above; shared reads of immutable memory.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps the first `len` (> 0) bytes of `file`; `None` if mmap fails.
    /// The caller promises nobody truncates or rewrites the file while the
    /// mapping lives (store files are written once and renamed into place).
    pub fn of(file: File, len: usize) -> Option<Mapping> {
        // SAFETY: a fresh read-only shared mapping of an open descriptor.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if address == libc::MAP_FAILED {
            return None;
        }
        // SAFETY: advice on our own mapping; clients mostly read front to back.
        unsafe {
            libc::madvise(address, len, libc::MADV_SEQUENTIAL);
        }
        Some(Mapping { address, len, file })
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is valid for len bytes while self lives.
        unsafe { std::slice::from_raw_parts(self.address as *const u8, self.len) }
    }

    /// Where the mapping starts in memory, to find it from a slice of it.
    pub fn address(&self) -> usize {
        self.address as usize
    }

    /// The file offset of `part` if all of it lies in this mapping.
    pub fn offset_of(&self, part: &[u8]) -> Option<u64> {
        let start = (part.as_ptr() as usize).checked_sub(self.address())?;
        (start.checked_add(part.len())? <= self.len).then_some(start as u64)
    }

    /// The mapped file.
    pub fn file(&self) -> &File {
        &self.file
    }
}

/// Sends up to `count` bytes of `file` from `offset` to `socket` with
/// sendfile(2): the kernel hands page-cache pages to the socket, nothing is
/// copied through user space. On a non-blocking socket with a full send
/// buffer the error is `WouldBlock`, as with write(2).
pub fn sendfile(
    socket: &impl AsRawFd,
    file: &File,
    offset: u64,
    count: usize,
) -> io::Result<usize> {
    let mut off = libc::off_t::try_from(offset)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset past off_t"))?;
    // SAFETY: two descriptors the caller holds open and a local offset the
    // kernel updates; no buffer of ours is read or written.
    let sent = unsafe { libc::sendfile(socket.as_raw_fd(), file.as_raw_fd(), &mut off, count) };
    if sent < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(sent as usize)
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: address and len are what mmap returned.
        unsafe {
            libc::munmap(self.address, self.len);
        }
    }
}

/// A socket's send buffer: bounds what one slow client holds in the kernel.
pub fn set_send_buffer(stream: &impl AsRawFd, bytes: usize) {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: setsockopt on a descriptor the caller owns, with a c_int value.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Each connection is a descriptor; the default soft limit (1024) is lower
/// than the connection cap.
pub fn raise_fd_limit(wanted: u64) {
    // SAFETY: getrlimit/setrlimit on a zeroed struct we own.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && (limit.rlim_cur as u64) < wanted
        {
            limit.rlim_cur = (wanted as libc::rlim_t).min(limit.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

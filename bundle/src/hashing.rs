//! Hashes computed on the way through, so no byte is read twice.

use std::io::{self, Read, Write};

use sha2::{Digest, Sha256};

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
    out
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex(&sha256(data))
}

/// BLAKE2b-512, minisign's prehash.
pub fn blake2b(data: &[u8]) -> [u8; 64] {
    *blake2b_simd::blake2b(data).as_array()
}

/// Streams a reader to its end and returns (sha256 hex, length).
pub fn sha256_reader(mut reader: impl Read) -> io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            return Ok((hex(&hasher.finalize()), total));
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
}

/// A sha256 fed piece by piece, for bytes that arrive in several goes: a
/// download resumed with Range hashes what it staged, then the rest as it
/// streams.
#[derive(Default)]
pub struct Sha256Stream(Sha256);

impl Sha256Stream {
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// Lowercase hex.
    pub fn finish(self) -> String {
        hex(&self.0.finalize())
    }
}

/// A writer that keeps the sha256 (for `SHA256SUMS`) and the BLAKE2b-512
/// prehash (for the minisign signature) of everything written through it.
pub struct HashingWriter<W> {
    inner: W,
    sha256: Sha256,
    blake2b: blake2b_simd::State,
    written: u64,
}

pub struct WriterDigests {
    pub sha256: String,
    pub blake2b: [u8; 64],
    pub size: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            sha256: Sha256::new(),
            blake2b: blake2b_simd::State::new(),
            written: 0,
        }
    }

    pub fn finish(self) -> (W, WriterDigests) {
        let digests = WriterDigests {
            sha256: hex(&self.sha256.finalize()),
            blake2b: *self.blake2b.finalize().as_array(),
            size: self.written,
        };
        (self.inner, digests)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sha256.update(&buf[..n]);
        self.blake2b.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Reads exactly `expected_size` bytes and fails the read that would end
/// the stream if the content's sha256 is not `expected_sha256`, or if the
/// source is shorter or longer. Used so a corrupt source aborts a pack
/// mid-stream instead of producing a bundle that lies about its contents.
pub struct VerifyingReader<R> {
    inner: R,
    name: String,
    expected_size: u64,
    expected_sha256: String,
    seen: u64,
    hasher: Sha256,
    done: bool,
}

impl<R: Read> VerifyingReader<R> {
    pub fn new(inner: R, name: &str, expected_size: u64, expected_sha256: &str) -> Self {
        VerifyingReader {
            inner,
            name: name.to_string(),
            expected_size,
            expected_sha256: expected_sha256.to_string(),
            seen: 0,
            hasher: Sha256::new(),
            done: false,
        }
    }

    fn finish_check(&mut self) -> io::Result<()> {
        if self.done {
            return Ok(());
        }
        self.done = true;
        // One extra byte tells a longer source from an exact one.
        let mut probe = [0u8; 1];
        if self.inner.read(&mut probe)? != 0 {
            return Err(invalid(format!(
                "{}: source is longer than the expected {} bytes: it changed since it was checked, rebuild",
                self.name, self.expected_size
            )));
        }
        let actual = hex(&std::mem::take(&mut self.hasher).finalize());
        if actual != self.expected_sha256 {
            return Err(invalid(format!(
                "{}: expected sha256 {}, got {}: the source is corrupt or changed, fetch it again",
                self.name, self.expected_sha256, actual
            )));
        }
        Ok(())
    }
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.expected_size - self.seen;
        if left == 0 {
            self.finish_check()?;
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(invalid(format!(
                "{}: source ended after {} of {} bytes: it is truncated, fetch it again",
                self.name, self.seen, self.expected_size
            )));
        }
        self.hasher.update(&buf[..n]);
        self.seen += n as u64;
        if self.seen == self.expected_size {
            self.finish_check()?;
        }
        Ok(n)
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifying_reader_catches_every_lie() {
        let data = b"hello world";
        let good = sha256_hex(data);
        let read_all = |src: &[u8], size: u64| {
            let mut out = Vec::new();
            VerifyingReader::new(src, "x", size, &good).read_to_end(&mut out)
        };
        assert!(read_all(data, 11).is_ok());
        assert!(read_all(b"hello worlD", 11).is_err());
        assert!(read_all(b"hello worl", 11).is_err());
        assert!(read_all(b"hello world!", 11).is_err());
    }
}

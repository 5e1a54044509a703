//! Hashes computed on the way through, so no byte is read twice.

use std::fs::File;
use std::io::{self, Read, Write};
use std::sync::mpsc;
use std::thread::JoinHandle;

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

/// Bytes [`HashingFile`] hands to its threads at a time.
const SINK_CHUNK: usize = 256 << 10;
/// Chunks in flight between the producer and the two hashing threads: the
/// memory it holds (1 MiB), and how far the producer may run ahead.
const SINK_BUFFERS: usize = 4;

/// Bytes written between two writebacks started by [`HashingFile`].
const WRITEBACK_EVERY: u64 = 64 << 20;

/// What [`HashingFile::finish`] hands back.
pub struct WriterDigests {
    pub sha256: String,
    pub blake2b: [u8; 64],
    pub size: u64,
}

/// A writer into a file that keeps the sha256 (for `SHA256SUMS`) and the
/// BLAKE2b-512 prehash (for the minisign signature) of everything written,
/// in one pass: the bytes are copied into 256 KiB chunks that a thread
/// writes to the file and SHA-256es and a second thread BLAKE2b-hashes (a
/// third starts writeback as it goes, see `WRITEBACK_EVERY`). The caller,
/// zstd's, which also feeds zstd's workers, only copies.
pub struct HashingFile {
    chunk: Vec<u8>,
    to_writer: Option<mpsc::Sender<Vec<u8>>>,
    free: mpsc::Receiver<Vec<u8>>,
    writer: Option<JoinHandle<io::Result<WriterDigests>>>,
}

impl HashingFile {
    pub fn new(file: File) -> HashingFile {
        let (to_writer, writer_rx) = mpsc::channel::<Vec<u8>>();
        let (to_blake, blake_rx) = mpsc::channel::<Vec<u8>>();
        let (free_tx, free) = mpsc::channel::<Vec<u8>>();
        for _ in 1..SINK_BUFFERS {
            free_tx
                .send(Vec::with_capacity(SINK_CHUNK))
                .expect("the receiver is here");
        }
        let blake = std::thread::spawn(move || {
            let mut state = blake2b_simd::State::new();
            for chunk in blake_rx {
                state.update(&chunk);
                // The producer may be gone (an error); then the chunk is
                // simply dropped.
                let _ = free_tx.send(chunk);
            }
            *state.finalize().as_array()
        });
        // The caller fsyncs the whole file once at the end; without help
        // the kernel starts writing it back only then, so that fsync would
        // wait for every byte. Syncing what is written so far on a thread
        // of its own, every WRITEBACK_EVERY bytes, keeps the disk busy
        // while zstd works and leaves the last fsync little to do.
        let (to_syncer, syncer_rx) = mpsc::sync_channel::<()>(1);
        let sync_file = file.try_clone();
        let syncer = std::thread::spawn(move || -> io::Result<()> {
            let file = sync_file?;
            for () in syncer_rx {
                file.sync_data()?;
            }
            Ok(())
        });
        let writer = std::thread::spawn(move || {
            let mut file = file;
            let mut sha256 = Sha256::new();
            let mut size = 0u64;
            let mut synced = 0u64;
            for chunk in writer_rx {
                file.write_all(&chunk)?;
                sha256.update(&chunk);
                size += chunk.len() as u64;
                if size - synced >= WRITEBACK_EVERY {
                    // A sync still running covers this one's work too.
                    let _ = to_syncer.try_send(());
                    synced = size;
                }
                if to_blake.send(chunk).is_err() {
                    break;
                }
            }
            drop(to_blake);
            drop(to_syncer);
            syncer
                .join()
                .map_err(|_| io::Error::other("the writeback thread panicked"))??;
            let blake2b = blake
                .join()
                .map_err(|_| io::Error::other("the BLAKE2b thread panicked"))?;
            Ok(WriterDigests {
                sha256: hex(&sha256.finalize()),
                blake2b,
                size,
            })
        });
        HashingFile {
            chunk: Vec::with_capacity(SINK_CHUNK),
            to_writer: Some(to_writer),
            free,
            writer: Some(writer),
        }
    }

    /// Writes what is left, waits for both threads and returns the digests
    /// of every byte written. The file is written, not synced.
    pub fn finish(mut self) -> io::Result<WriterDigests> {
        self.send_chunk()?;
        drop(self.to_writer.take());
        self.join()
    }

    fn send_chunk(&mut self) -> io::Result<()> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        let Ok(mut next) = self.free.recv() else {
            return Err(self.failure());
        };
        next.clear();
        let full = std::mem::replace(&mut self.chunk, next);
        let sent = match &self.to_writer {
            Some(tx) => tx.send(full).is_ok(),
            None => false,
        };
        if sent {
            Ok(())
        } else {
            Err(self.failure())
        }
    }

    fn join(&mut self) -> io::Result<WriterDigests> {
        match self.writer.take() {
            Some(handle) => handle
                .join()
                .map_err(|_| io::Error::other("the bundle writer thread panicked"))?,
            None => Err(io::Error::other("the bundle writer already stopped")),
        }
    }

    /// The writer thread stopped early: its error.
    fn failure(&mut self) -> io::Error {
        drop(self.to_writer.take());
        match self.join() {
            Err(e) => e,
            Ok(_) => io::Error::other("the bundle writer stopped early"),
        }
    }
}

impl Write for HashingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(SINK_CHUNK - self.chunk.len());
        self.chunk.extend_from_slice(&buf[..n]);
        if self.chunk.len() == SINK_CHUNK {
            self.send_chunk()?;
        }
        Ok(n)
    }

    /// Chunks are handed over when full; `finish` hands over the rest.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for HashingFile {
    fn drop(&mut self) {
        // Unfinished (an error elsewhere): stop the threads, keep nothing.
        drop(self.to_writer.take());
        let _ = self.join();
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

//! Serving stored bytes exactly: ETag is the content digest, so Range,
//! If-Range and If-None-Match work against it.
//!
//! Store files are immutable (content-addressed; a load swaps in a new
//! directory, it never rewrites a file), so they are served from a shared
//! read-only memory map, with no read buffer per connection and no
//! blocking-pool hop per chunk. Each file is mapped once however many
//! clients are pulling it. A body's chunks are slices of the mapping:
//! [`file_behind`] tells a plain-HTTP connection which file and offset a
//! slice is, and it sends those bytes with sendfile(2) (no copy, as nginx
//! does); over TLS they are encrypted straight from the mapping.
//! Manifests are served from memory.

use crate::sys::Mapping;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};
use bytes::Bytes;

/// Body frame size: the unit of back-pressure and of the access log's
/// byte count for a client that hangs up.
const CHUNK: usize = 1 << 20;

/// Where the bytes are.
pub enum Source<'a> {
    File(&'a Path),
    Memory(&'a Bytes),
}

/// What we know about the bytes to serve.
pub struct Stored<'a> {
    pub source: Source<'a>,
    /// `sha256:<hex>`; the ETag and, for registry objects, Docker-Content-Digest.
    pub digest: &'a str,
    pub content_type: &'a str,
    pub registry: bool,
    /// Addressed by its digest, so its bytes can never change: caches may
    /// keep it forever. A tag or a file name can point elsewhere after a load.
    pub immutable: bool,
}

/// The content type of bytes of no known type.
pub const UNTYPED: &str = "application/octet-stream";

/// Builds the response for GET or HEAD of `stored`, honouring Range and
/// conditional headers. `None` if the file is not there.
pub async fn serve(
    method: &Method,
    headers: &HeaderMap,
    stored: Stored<'_>,
) -> Option<Response<Body>> {
    let content = match stored.source {
        Source::Memory(bytes) => bytes.clone(),
        Source::File(path) => map_file(path)?,
    };
    let len = content.len() as u64;
    let etag = format!("\"{}\"", stored.digest);

    // A stored media type that is no header value (a store loaded before
    // manifest fields were checked, or a rotted state.json) must not
    // panic the connection: the bytes go out untyped.
    let content_type =
        HeaderValue::from_str(stored.content_type).unwrap_or(HeaderValue::from_static(UNTYPED));
    let mut builder = Response::builder()
        .header(header::ETAG, &etag)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_TYPE, content_type)
        .header(
            header::CACHE_CONTROL,
            if stored.immutable {
                "public, max-age=31536000, immutable"
            } else {
                "no-cache"
            },
        );
    if stored.registry {
        builder = builder.header("Docker-Content-Digest", stored.digest);
    }

    if let Some(inm) = headers.get(header::IF_NONE_MATCH) {
        if etag_matches(inm, &etag) {
            return Some(
                builder
                    .status(StatusCode::NOT_MODIFIED)
                    .body(Body::empty())
                    .expect("valid response"),
            );
        }
    }
    let range_applies = match headers.get(header::IF_RANGE) {
        Some(if_range) => if_range.as_bytes() == etag.as_bytes(),
        None => true,
    };
    let range = if range_applies {
        headers.get(header::RANGE).map(|r| parse_range(r, len))
    } else {
        None
    };
    let (status, start, count) = match range {
        None | Some(RangeSpec::Ignore) => (StatusCode::OK, 0, len),
        Some(RangeSpec::Unsatisfiable) => {
            return Some(
                builder
                    .status(StatusCode::RANGE_NOT_SATISFIABLE)
                    .header(header::CONTENT_RANGE, format!("bytes */{len}"))
                    .body(Body::empty())
                    .expect("valid response"),
            );
        }
        Some(RangeSpec::Bytes(start, end)) => {
            builder = builder.header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{len}"));
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
    };
    builder = builder.status(status).header(header::CONTENT_LENGTH, count);
    if method == Method::HEAD {
        return Some(builder.body(Body::empty()).expect("valid response"));
    }
    let range = content.slice(start as usize..(start + count) as usize);
    let chunks = (0..range.len())
        .step_by(CHUNK)
        .map(move |at| Ok::<_, std::io::Error>(range.slice(at..(at + CHUNK).min(range.len()))));
    Some(
        builder
            .body(Body::from_stream(futures_util::stream::iter(chunks)))
            .expect("valid response"),
    )
}

fn etag_matches(header: &HeaderValue, etag: &str) -> bool {
    header
        .to_str()
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .any(|t| t == "*" || t == etag || t.strip_prefix("W/") == Some(etag))
        })
        .unwrap_or(false)
}

#[derive(Debug, PartialEq)]
enum RangeSpec {
    /// Serve the whole thing (several ranges, or a header we do not parse).
    Ignore,
    Unsatisfiable,
    /// Inclusive.
    Bytes(u64, u64),
}

fn parse_range(value: &HeaderValue, len: u64) -> RangeSpec {
    let Some(spec) = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().strip_prefix("bytes="))
    else {
        return RangeSpec::Ignore;
    };
    if spec.contains(',') {
        return RangeSpec::Ignore;
    }
    let Some((a, b)) = spec.split_once('-') else {
        return RangeSpec::Ignore;
    };
    let (a, b) = (a.trim(), b.trim());
    let parsed = match (a.is_empty(), b.is_empty()) {
        (true, false) => b.parse::<u64>().ok().map(|suffix| {
            if suffix == 0 {
                None
            } else {
                Some((len.saturating_sub(suffix), len.saturating_sub(1)))
            }
        }),
        (false, true) => a
            .parse::<u64>()
            .ok()
            .map(|start| Some((start, len.saturating_sub(1)))),
        (false, false) => match (a.parse::<u64>(), b.parse::<u64>()) {
            (Ok(start), Ok(end)) if start <= end => {
                Some(Some((start, end.min(len.saturating_sub(1)))))
            }
            _ => None,
        },
        (true, true) => None,
    };
    match parsed {
        None => RangeSpec::Ignore,
        Some(None) => RangeSpec::Unsatisfiable,
        Some(Some((start, end))) if start >= len || len == 0 => {
            let _ = end;
            RangeSpec::Unsatisfiable
        }
        Some(Some((start, end))) => RangeSpec::Bytes(start, end),
    }
}

/// Lets `Bytes` own one shared mapping.
struct Shared(Arc<Mapping>);

impl AsRef<[u8]> for Shared {
    fn as_ref(&self) -> &[u8] {
        self.0.bytes()
    }
}

/// The live mappings, by path (one per file) and by address (to find the
/// file behind a slice of one).
#[derive(Default)]
struct Mappings {
    by_path: HashMap<PathBuf, Weak<Mapping>>,
    by_address: BTreeMap<usize, Weak<Mapping>>,
}

fn mappings() -> &'static Mutex<Mappings> {
    static MAPPINGS: OnceLock<Mutex<Mappings>> = OnceLock::new();
    MAPPINGS.get_or_init(Default::default)
}

/// The whole file as `Bytes`, sharing one mapping per path.
pub(crate) fn map_file(path: &Path) -> Option<Bytes> {
    let mut cache = mappings().lock().expect("mapping cache");
    if let Some(mapping) = cache.by_path.get(path).and_then(Weak::upgrade) {
        return Some(Bytes::from_owner(Shared(mapping)));
    }
    let file = std::fs::File::open(path).ok()?;
    let len = usize::try_from(file.metadata().ok()?.len()).ok()?;
    if len == 0 {
        return Some(Bytes::new());
    }
    // Store files are never truncated or rewritten, so the pages stay valid.
    let mapping = Arc::new(Mapping::of(file, len)?);
    cache.by_path.retain(|_, weak| weak.strong_count() > 0);
    cache.by_address.retain(|_, weak| weak.strong_count() > 0);
    cache
        .by_path
        .insert(path.to_path_buf(), Arc::downgrade(&mapping));
    cache
        .by_address
        .insert(mapping.address(), Arc::downgrade(&mapping));
    Some(Bytes::from_owner(Shared(mapping)))
}

/// A part of a stored file that a response body holds as mapped memory.
pub struct FileSlice {
    pub mapping: Arc<Mapping>,
    /// Where `part` starts in the file.
    pub offset: u64,
}

/// The stored file and offset behind `part`, if `part` lies in one of the
/// live mappings [`serve`] hands out bodies from: plain-HTTP connections
/// then send it with sendfile(2), the very bytes the mapping shows.
pub fn file_behind(part: &[u8]) -> Option<FileSlice> {
    if part.is_empty() {
        return None;
    }
    let cache = mappings().lock().expect("mapping cache");
    let (_, weak) = cache
        .by_address
        .range(..=part.as_ptr() as usize)
        .next_back()?;
    let mapping = weak.upgrade()?;
    let offset = mapping.offset_of(part)?;
    Some(FileSlice { mapping, offset })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(v: &str, len: u64) -> RangeSpec {
        parse_range(&HeaderValue::from_str(v).unwrap(), len)
    }

    #[test]
    fn ranges() {
        assert_eq!(range("bytes=0-9", 100), RangeSpec::Bytes(0, 9));
        assert_eq!(range("bytes=90-", 100), RangeSpec::Bytes(90, 99));
        assert_eq!(range("bytes=-10", 100), RangeSpec::Bytes(90, 99));
        assert_eq!(range("bytes=50-500", 100), RangeSpec::Bytes(50, 99));
        assert_eq!(range("bytes=100-", 100), RangeSpec::Unsatisfiable);
        assert_eq!(range("bytes=-0", 100), RangeSpec::Unsatisfiable);
        assert_eq!(range("bytes=0-1,5-6", 100), RangeSpec::Ignore);
        assert_eq!(range("items=0-1", 100), RangeSpec::Ignore);
        assert_eq!(range("bytes=9-1", 100), RangeSpec::Ignore);
    }

    #[test]
    fn the_file_behind_a_slice_of_a_mapping() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        let content: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &content).unwrap();
        let mapped = map_file(&path).unwrap();
        assert!(mapped[..] == content[..]);
        // One mapping per file, however many bodies use it.
        assert_eq!(map_file(&path).unwrap().as_ptr(), mapped.as_ptr());

        let part = mapped.slice(1000..50_000);
        let found = file_behind(&part).expect("a slice of a live mapping");
        assert_eq!(found.offset, 1000);
        assert_eq!(found.mapping.bytes().as_ptr(), mapped.as_ptr());
        assert_eq!(found.mapping.file().metadata().unwrap().len(), 100_000);
        let tail = mapped.slice(99_999..);
        assert_eq!(file_behind(&tail).unwrap().offset, 99_999);
        // The same bytes elsewhere in memory are not the file.
        let copy = part.to_vec();
        assert!(file_behind(&copy).is_none());
        assert!(file_behind(&mapped[..0]).is_none());
        assert!(file_behind(b"not mapped").is_none());
    }
}

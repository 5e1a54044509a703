//! Serving stored bytes exactly: ETag is the content digest, so Range,
//! If-Range and If-None-Match work against it; bodies stream from the file.

use std::io::SeekFrom;
use std::path::Path;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// Read size per chunk: large enough that the syscall and task overhead
/// is small next to the copy, small enough to bound memory per connection.
const CHUNK: usize = 256 * 1024;

/// What we know about the bytes to serve.
pub struct Stored<'a> {
    pub path: &'a Path,
    /// `sha256:<hex>`; the ETag and, for registry objects, Docker-Content-Digest.
    pub digest: &'a str,
    pub content_type: &'a str,
    pub registry: bool,
    /// Addressed by its digest, so its bytes can never change: caches may
    /// keep it forever. A tag or a file name can point elsewhere after a load.
    pub immutable: bool,
}

/// Builds the response for GET or HEAD of `stored`, honouring Range and
/// conditional headers. `None` if the file is not there.
pub async fn serve(
    method: &Method,
    headers: &HeaderMap,
    stored: Stored<'_>,
) -> Option<Response<Body>> {
    let file = tokio::fs::File::open(stored.path).await.ok()?;
    let len = file.metadata().await.ok()?.len();
    let etag = format!("\"{}\"", stored.digest);

    let mut builder = Response::builder()
        .header(header::ETAG, &etag)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_TYPE, stored.content_type)
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
    Some(
        builder
            .body(file_body(file, start, count))
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

fn file_body(file: tokio::fs::File, start: u64, count: u64) -> Body {
    let stream = futures_util::stream::unfold(
        (file, start, count, true),
        |(mut file, start, left, first)| async move {
            if left == 0 {
                return None;
            }
            if first && start > 0 {
                if let Err(e) = file.seek(SeekFrom::Start(start)).await {
                    return Some((Err(e), (file, start, 0, false)));
                }
            }
            let want = CHUNK.min(usize::try_from(left).unwrap_or(CHUNK));
            let mut buf = vec![0u8; want];
            match file.read_exact(&mut buf).await {
                Ok(_) => Some((
                    Ok(bytes::Bytes::from(buf)),
                    (file, start, left - want as u64, false),
                )),
                Err(e) => Some((Err(e), (file, start, 0, false))),
            }
        },
    );
    Body::from_stream(stream)
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
}

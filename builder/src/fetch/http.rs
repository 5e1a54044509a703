//! HTTP for the online builder: one ureq agent with a timeout on every
//! phase of a request but none on a body as a whole (a big layer may take
//! an hour on a slow line; a stalled one is cut by the idle timeout),
//! retries with backoff for transient failures only, and downloads that
//! resume with `Range` into `<digest>.partial`, renamed only once the
//! digest checks.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use edgeferry_bundle::hashing::hex;
use sha2::{Digest, Sha256, Sha512};

pub type Response = ureq::http::Response<ureq::Body>;

/// Index, manifest, config, token and checksum bodies are read whole; none
/// is anywhere near this big.
pub const MAX_SMALL_BODY: u64 = 16 * 1024 * 1024;

/// Per-phase timeouts. There is deliberately no whole-request timeout.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// DNS, TCP connect, TLS handshake and proxy CONNECT.
    pub connect: Duration,
    /// From the request sent to the response headers.
    pub response: Duration,
    /// Between two reads of the socket: a stalled body fails after this.
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(30),
            response: Duration::from_secs(60),
            idle: Duration::from_secs(60),
        }
    }
}

/// How often and how patiently transient failures are retried.
#[derive(Clone, Copy, Debug)]
pub struct Retry {
    /// Tries per request, the first included. A download that made progress
    /// before failing starts counting again.
    pub attempts: u32,
    pub first_delay: Duration,
    pub max_delay: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            attempts: 5,
            first_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(16),
        }
    }
}

impl Retry {
    /// Exponential backoff with a little jitter, or what `Retry-After` asked
    /// for (capped), before try `attempt + 1`.
    fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(asked) = retry_after {
            return asked.min(Duration::from_secs(60));
        }
        let base = self
            .first_delay
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(self.max_delay);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        base + base / 4 * (nanos % 1000) / 1000
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error(
        "{url}: {detail} (tried {attempts} times; check the network and HTTPS_PROXY/NO_PROXY)"
    )]
    Transport {
        url: String,
        detail: String,
        attempts: u32,
    },
    #[error("{url}: {detail}")]
    Fatal { url: String, detail: String },
    /// A status the caller decides about (401, 403, 404, other 4xx).
    #[error("{url} answered HTTP {status}")]
    Status {
        url: String,
        status: u16,
        /// The `WWW-Authenticate` challenge of a 401, for the caller to answer.
        challenge: Option<String>,
    },
    #[error("{url}: the downloaded bytes have {algorithm} {actual}, expected {expected}")]
    Mismatch {
        url: String,
        algorithm: &'static str,
        expected: String,
        actual: String,
    },
    #[error("{url}: the server sent {got} bytes, expected {expected}")]
    Size {
        url: String,
        expected: u64,
        got: u64,
    },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> HttpError + '_ {
    move |source| HttpError::Io {
        path: path.display().to_string(),
        source,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
}

/// What a download must hash to.
#[derive(Clone, Debug)]
pub enum Expected {
    Sha256(String),
    Sha512(String),
}

enum Hasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

impl Hasher {
    fn new(expected: &Expected) -> Hasher {
        match expected {
            Expected::Sha256(_) => Hasher::Sha256(Sha256::new()),
            Expected::Sha512(_) => Hasher::Sha512(Sha512::new()),
        }
    }
    fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }
    fn finish(self) -> String {
        match self {
            Hasher::Sha256(h) => hex(&h.finalize()),
            Hasher::Sha512(h) => hex(&h.finalize()),
        }
    }
}

/// One file to download into the cache.
pub struct Download<'a> {
    pub url: &'a str,
    /// Extra request headers (`Authorization`, `Accept`); never printed.
    pub headers: &'a [(&'static str, String)],
    /// What the progress bar calls it.
    pub label: &'a str,
    pub expected: Expected,
    /// The size a descriptor promises, when one does.
    pub size: Option<u64>,
    /// The complete file; `<dest>.partial` holds the bytes so far.
    pub dest: &'a Path,
}

pub fn partial_path(dest: &Path) -> PathBuf {
    let mut name = dest.as_os_str().to_os_string();
    name.push(".partial");
    PathBuf::from(name)
}

/// A failure worth another try, and how long the server asked us to wait.
struct Transient {
    detail: String,
    retry_after: Option<Duration>,
}

pub struct Http {
    agent: ureq::Agent,
    retry: Retry,
    bars: bool,
}

impl Http {
    /// `bars`: draw a progress bar per download (stderr is a terminal and
    /// not `--json`). HTTPS_PROXY, HTTP_PROXY, ALL_PROXY and NO_PROXY are
    /// read from the environment by ureq.
    pub fn new(timeouts: Timeouts, retry: Retry, bars: bool) -> Http {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_resolve(Some(timeouts.connect))
            .timeout_connect(Some(timeouts.connect))
            .timeout_send_request(Some(timeouts.response))
            .timeout_recv_response(Some(timeouts.response))
            .timeout_per_read(Some(timeouts.idle))
            .timeout_per_write(Some(timeouts.idle))
            // Bytes are verified and kept as served: no transparent gunzip.
            .accept_encoding("identity")
            .user_agent(concat!("edgeferry-builder/", env!("CARGO_PKG_VERSION")))
            .build();
        Http {
            agent: config.into(),
            retry,
            bars,
        }
    }

    fn send_once(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, String)],
    ) -> Result<Response, ureq::Error> {
        let mut request = match method {
            Method::Get => self.agent.get(url),
            Method::Head => self.agent.head(url),
        };
        for (name, value) in headers {
            request = request.header(*name, value.as_str());
        }
        request.call()
    }

    /// Sends a request, retrying transient failures (connection errors,
    /// timeouts, 5xx, 429). Any other status is returned for the caller.
    pub fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, String)],
    ) -> Result<Response, HttpError> {
        self.with_retries(url, || match self.send_once(method, url, headers) {
            Ok(response) => match transient_status(&response) {
                Some(t) => Err(Ok(t)),
                None => Ok(response),
            },
            Err(e) => Err(classify(url, e)),
        })
    }

    /// GETs a small body whole (read failures are retried too). Returns the
    /// response head and the body for 2xx; other statuses as [`HttpError::Status`].
    pub fn get_small(
        &self,
        url: &str,
        headers: &[(&str, String)],
        limit: u64,
    ) -> Result<(ureq::http::response::Parts, Vec<u8>), HttpError> {
        self.with_retries(url, || {
            let response = self
                .send_once(Method::Get, url, headers)
                .map_err(|e| classify(url, e))?;
            if let Some(t) = transient_status(&response) {
                return Err(Ok(t));
            }
            if !response.status().is_success() {
                return Err(Err(status_error(url, &response)));
            }
            let (parts, mut body) = response.into_parts();
            match body.with_config().limit(limit).read_to_vec() {
                Ok(bytes) => Ok((parts, bytes)),
                Err(ureq::Error::BodyExceedsLimit(_)) => Err(Err(HttpError::Fatal {
                    url: url.to_string(),
                    detail: format!(
                        "the response is bigger than {limit} bytes, too big for what it should be"
                    ),
                })),
                Err(e) => Err(classify(url, e)),
            }
        })
    }

    /// Runs `attempt` until it succeeds, fails for good, or runs out of tries.
    /// `Err(Ok(_))` is transient, `Err(Err(_))` final.
    fn with_retries<T>(
        &self,
        url: &str,
        mut attempt: impl FnMut() -> Result<T, Result<Transient, HttpError>>,
    ) -> Result<T, HttpError> {
        let mut tries = 0;
        loop {
            tries += 1;
            match attempt() {
                Ok(value) => return Ok(value),
                Err(Err(fatal)) => return Err(fatal),
                Err(Ok(t)) if tries >= self.retry.attempts => {
                    return Err(HttpError::Transport {
                        url: url.to_string(),
                        detail: t.detail,
                        attempts: tries,
                    })
                }
                Err(Ok(t)) => std::thread::sleep(self.retry.delay(tries, t.retry_after)),
            }
        }
    }

    /// Downloads into `<dest>.partial`, resuming what is there with `Range`,
    /// hashing every byte as it arrives, and renames it to `dest` only when
    /// size and digest check. A digest mismatch deletes the partial file.
    /// Returns whether anything was fetched (false: `dest` was there).
    pub fn download(&self, d: &Download) -> Result<bool, HttpError> {
        if d.dest.is_file() {
            return Ok(false);
        }
        let partial = partial_path(d.dest);
        if let Some(parent) = partial.parent() {
            fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        // A partial file from an earlier run is trusted only as far as its
        // digest will be checked at the end; once, a mismatch after such a
        // resume restarts from zero instead of failing.
        let mut resumed_old = false;
        let mut hasher = Hasher::new(&d.expected);
        let mut have = match fs::metadata(&partial) {
            Ok(meta) => {
                let len = meta.len();
                if d.size.is_some_and(|size| len > size) {
                    truncate(&partial)?;
                    0
                } else {
                    if len > 0 {
                        resumed_old = true;
                        hash_file(&partial, &mut hasher)?;
                    }
                    len
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io_err(&partial)(e)),
        };
        let bar = self.bar(d.label, d.size);
        bar.set_position(have);
        let mut failures = 0u32;
        loop {
            let complete = d.size.is_some_and(|size| have == size);
            if !complete {
                match self.fetch_range(d, &partial, &mut have, &mut hasher, &bar) {
                    Ok(()) => {}
                    Err(Err(fatal)) => {
                        bar.abandon();
                        return Err(fatal);
                    }
                    Err(Ok((t, progressed))) => {
                        failures = if progressed { 1 } else { failures + 1 };
                        if failures >= self.retry.attempts {
                            bar.abandon();
                            return Err(HttpError::Transport {
                                url: d.url.to_string(),
                                detail: t.detail,
                                attempts: failures,
                            });
                        }
                        std::thread::sleep(self.retry.delay(failures, t.retry_after));
                        continue;
                    }
                }
            }
            if let Some(size) = d.size {
                if have != size {
                    let _ = fs::remove_file(&partial);
                    bar.abandon();
                    return Err(HttpError::Size {
                        url: d.url.to_string(),
                        expected: size,
                        got: have,
                    });
                }
            }
            let actual = std::mem::replace(&mut hasher, Hasher::new(&d.expected)).finish();
            let (algorithm, expected) = match &d.expected {
                Expected::Sha256(e) => ("sha256", e),
                Expected::Sha512(e) => ("sha512", e),
            };
            if &actual != expected {
                let _ = fs::remove_file(&partial);
                if resumed_old {
                    resumed_old = false;
                    have = 0;
                    bar.set_position(0);
                    continue;
                }
                bar.abandon();
                return Err(HttpError::Mismatch {
                    url: d.url.to_string(),
                    algorithm,
                    expected: expected.clone(),
                    actual,
                });
            }
            File::open(&partial)
                .and_then(|f| f.sync_all())
                .map_err(io_err(&partial))?;
            fs::rename(&partial, d.dest).map_err(io_err(d.dest))?;
            if let Some(parent) = d.dest.parent() {
                let _ = edgeferry_bundle::atomic::sync_dir(parent);
            }
            bar.finish_and_clear();
            return Ok(true);
        }
    }

    /// One request for the bytes after `have`, appended to `partial`.
    /// Transient failures say whether any byte arrived.
    #[allow(clippy::type_complexity)]
    fn fetch_range(
        &self,
        d: &Download,
        partial: &Path,
        have: &mut u64,
        hasher: &mut Hasher,
        bar: &indicatif::ProgressBar,
    ) -> Result<(), Result<(Transient, bool), HttpError>> {
        let mut headers: Vec<(&str, String)> =
            d.headers.iter().map(|(k, v)| (*k, v.clone())).collect();
        if *have > 0 {
            headers.push(("Range", format!("bytes={have}-")));
        }
        let response = self
            .send_once(Method::Get, d.url, &headers)
            .map_err(|e| classify(d.url, e).map(|t| (t, false)))?;
        if let Some(t) = transient_status(&response) {
            return Err(Ok((t, false)));
        }
        let status = response.status().as_u16();
        match status {
            206 if *have > 0 => {
                let start = response
                    .headers()
                    .get("content-range")
                    .and_then(|v| v.to_str().ok())
                    .and_then(content_range_start);
                if start != Some(*have) {
                    // Not the bytes we asked for: start over.
                    restart(partial, have, hasher, &d.expected, bar)?;
                    return Err(Ok((
                        Transient {
                            detail: "the server answered a Range request with other bytes".into(),
                            retry_after: None,
                        },
                        false,
                    )));
                }
            }
            200 => {
                if *have > 0 {
                    // The server ignored Range: take the whole body.
                    restart(partial, have, hasher, &d.expected, bar)?;
                }
            }
            416 if *have > 0 && d.size.is_none() => {
                // Nothing after `have`: the partial file is the whole file.
                return Ok(());
            }
            416 => {
                restart(partial, have, hasher, &d.expected, bar)?;
                return Err(Ok((
                    Transient {
                        detail: "the server refused the Range of a partial download".into(),
                        retry_after: None,
                    },
                    false,
                )));
            }
            _ => return Err(Err(status_error(d.url, &response))),
        }
        if let (Some(size), Some(length)) = (d.size, content_length(&response)) {
            if *have + length != size {
                return Err(Err(HttpError::Size {
                    url: d.url.to_string(),
                    expected: size,
                    got: *have + length,
                }));
            }
        }
        if bar.length().is_none() {
            if let Some(length) = content_length(&response) {
                bar.set_length(*have + length);
            }
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(partial)
            .map_err(|e| Err(io_err(partial)(e)))?;
        // Never take more than the descriptor promised: a lying server
        // cannot fill the disk.
        let remaining = d.size.map_or(u64::MAX, |size| size - *have);
        let mut body = response.into_body().into_reader().take(remaining);
        let mut buf = vec![0u8; 256 * 1024];
        let start = *have;
        loop {
            let n = match body.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    file.flush().map_err(|e| Err(io_err(partial)(e)))?;
                    return Err(Ok((
                        Transient {
                            detail: format!("the download broke off after {have} bytes: {e}"),
                            retry_after: None,
                        },
                        *have > start,
                    )));
                }
            };
            file.write_all(&buf[..n])
                .map_err(|e| Err(io_err(partial)(e)))?;
            hasher.update(&buf[..n]);
            *have += n as u64;
            bar.set_position(*have);
        }
        file.flush().map_err(|e| Err(io_err(partial)(e)))?;
        Ok(())
    }

    fn bar(&self, label: &str, size: Option<u64>) -> indicatif::ProgressBar {
        if !self.bars {
            return indicatif::ProgressBar::hidden();
        }
        let bar = match size {
            Some(size) => indicatif::ProgressBar::new(size),
            None => indicatif::ProgressBar::no_length(),
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg:40!} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .expect("static template")
            .progress_chars("=> "),
        );
        bar.set_message(label.to_string());
        bar
    }
}

fn truncate(path: &Path) -> Result<(), HttpError> {
    File::create(path).map(drop).map_err(io_err(path))
}

fn restart(
    partial: &Path,
    have: &mut u64,
    hasher: &mut Hasher,
    expected: &Expected,
    bar: &indicatif::ProgressBar,
) -> Result<(), Result<(Transient, bool), HttpError>> {
    truncate(partial).map_err(Err)?;
    *have = 0;
    *hasher = Hasher::new(expected);
    bar.set_position(0);
    Ok(())
}

fn hash_file(path: &Path, hasher: &mut Hasher) -> Result<(), HttpError> {
    let mut file = File::open(path).map_err(io_err(path))?;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            return Ok(());
        }
        hasher.update(&buf[..n]);
    }
}

/// `bytes 100-199/200` -> 100.
fn content_range_start(value: &str) -> Option<u64> {
    let rest = value.trim().strip_prefix("bytes ")?;
    rest.split('-').next()?.trim().parse().ok()
}

pub fn header<'r>(response: &'r Response, name: &str) -> Option<&'r str> {
    response.headers().get(name).and_then(|v| v.to_str().ok())
}

pub fn content_length(response: &Response) -> Option<u64> {
    header(response, "content-length").and_then(|v| v.trim().parse().ok())
}

fn status_error(url: &str, response: &Response) -> HttpError {
    HttpError::Status {
        url: url.to_string(),
        status: response.status().as_u16(),
        challenge: header(response, "www-authenticate").map(str::to_string),
    }
}

/// 5xx and 429 are worth another try; every other status is an answer.
fn transient_status(response: &Response) -> Option<Transient> {
    let status = response.status().as_u16();
    if status != 429 && !(500..600).contains(&status) {
        return None;
    }
    let retry_after = header(response, "retry-after")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    Some(Transient {
        detail: format!("HTTP {status}"),
        retry_after,
    })
}

/// Connection failures, timeouts and broken responses are transient; a
/// bad URL, an unknown host or a TLS failure is not.
fn classify(url: &str, error: ureq::Error) -> Result<Transient, HttpError> {
    let transient = matches!(
        error,
        ureq::Error::Io(_)
            | ureq::Error::Timeout(_)
            | ureq::Error::ConnectionFailed
            | ureq::Error::Protocol(_)
    );
    if transient {
        Ok(Transient {
            detail: error.to_string(),
            retry_after: None,
        })
    } else {
        let detail = match error {
            ureq::Error::HostNotFound => "host not found: check the URL and DNS".to_string(),
            other => other.to_string(),
        };
        Err(HttpError::Fatal {
            url: url.to_string(),
            detail,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range() {
        assert_eq!(content_range_start("bytes 100-199/200"), Some(100));
        assert_eq!(content_range_start("bytes 0-0/*"), Some(0));
        assert_eq!(content_range_start("items 1-2/3"), None);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let retry = Retry {
            attempts: 5,
            first_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(350),
        };
        let d1 = retry.delay(1, None);
        let d3 = retry.delay(3, None);
        let d9 = retry.delay(9, None);
        assert!(d1 >= Duration::from_millis(100) && d1 < Duration::from_millis(130));
        assert!(d3 >= Duration::from_millis(350) && d3 < Duration::from_millis(440));
        assert!(d9 < Duration::from_millis(440));
        assert_eq!(
            retry.delay(1, Some(Duration::from_secs(600))),
            Duration::from_secs(60)
        );
    }

    use super::super::fake::{Req, Resp, Server};

    fn quick() -> Http {
        let retry = Retry {
            attempts: 3,
            first_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(20),
        };
        Http::new(Timeouts::default(), retry, false)
    }

    #[test]
    fn transient_statuses_are_retried_and_others_are_answers() {
        let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = std::sync::Arc::clone(&calls);
        let server = Server::start(move |req: &Req| match req.target.as_str() {
            "/flaky" => match counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
                0 => Resp::new(503, "busy"),
                1 => Resp::new(429, "slow down").with("Retry-After", "0"),
                _ => Resp::new(200, "ok"),
            },
            "/down" => Resp::new(502, "bad gateway"),
            _ => Resp::new(404, "no"),
        });
        let http = quick();
        let (_, body) = http
            .get_small(&format!("{}/flaky", server.url()), &[], 1024)
            .unwrap();
        assert_eq!(body, b"ok");
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 3);

        let err = http
            .get_small(&format!("{}/missing", server.url()), &[], 1024)
            .unwrap_err();
        assert!(
            matches!(err, HttpError::Status { status: 404, .. }),
            "{err}"
        );
        let err = http
            .get_small(&format!("{}/down", server.url()), &[], 1024)
            .unwrap_err();
        assert!(
            matches!(err, HttpError::Transport { attempts: 3, .. }),
            "{err}"
        );
        let count = |path: &str| {
            server
                .requests()
                .iter()
                .filter(|r| r.target == path)
                .count()
        };
        assert_eq!(count("/missing"), 1, "a 404 is not retried");
        assert_eq!(count("/down"), 3);
    }

    /// Serves `data` at `/f` with `Range: bytes=N-` support.
    fn range_server(data: Vec<u8>) -> Server {
        Server::start(move |req: &Req| {
            let start = req.header("range").and_then(|r| {
                r.strip_prefix("bytes=")?
                    .strip_suffix('-')?
                    .parse::<usize>()
                    .ok()
            });
            match start {
                Some(n) => Resp::new(206, data[n..].to_vec()).with(
                    "Content-Range",
                    &format!("bytes {n}-{}/{}", data.len() - 1, data.len()),
                ),
                None => Resp::new(200, data.clone()),
            }
        })
    }

    #[test]
    fn a_partial_file_from_an_earlier_run_is_resumed_or_else_restarted() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
        let digest = hex(&Sha256::digest(&data));
        let server = range_server(data.clone());
        let tmp = tempfile::tempdir().unwrap();
        let url = format!("{}/f", server.url());
        let http = quick();
        let fetch = |dest: &Path| {
            http.download(&Download {
                url: &url,
                headers: &[],
                label: "f",
                expected: Expected::Sha256(digest.clone()),
                size: Some(data.len() as u64),
                dest,
            })
        };

        // A good half: one request for the rest.
        let dest = tmp.path().join("good");
        fs::write(partial_path(&dest), &data[..40_000]).unwrap();
        assert!(fetch(&dest).unwrap());
        assert_eq!(fs::read(&dest).unwrap(), data);
        assert!(!partial_path(&dest).exists());
        let ranges: Vec<Option<String>> = server
            .requests()
            .iter()
            .map(|r| r.header("range").map(str::to_string))
            .collect();
        assert_eq!(ranges, [Some("bytes=40000-".to_string())]);
        // Complete now: no request at all.
        assert!(!fetch(&dest).unwrap());
        assert_eq!(server.requests().len(), 1);

        // A corrupt half: the resume does not check, so it starts over once.
        let dest = tmp.path().join("bad");
        fs::write(partial_path(&dest), vec![0u8; 40_000]).unwrap();
        assert!(fetch(&dest).unwrap());
        assert_eq!(fs::read(&dest).unwrap(), data);
        let ranges: Vec<Option<String>> = server.requests()[1..]
            .iter()
            .map(|r| r.header("range").map(str::to_string))
            .collect();
        assert_eq!(ranges, [Some("bytes=40000-".to_string()), None]);
    }

    #[test]
    fn a_stalled_body_times_out_and_the_download_resumes() {
        let data: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
        let digest = hex(&Sha256::digest(&data));
        let served = data.clone();
        let server = Server::start(move |req: &Req| match req.header("range") {
            None => Resp::new(200, served.clone()).stalling_after(20_000),
            Some(range) => {
                let n: usize = range
                    .strip_prefix("bytes=")
                    .and_then(|r| r.strip_suffix('-'))
                    .and_then(|n| n.parse().ok())
                    .unwrap();
                Resp::new(206, served[n..].to_vec()).with(
                    "Content-Range",
                    &format!("bytes {n}-{}/{}", served.len() - 1, served.len()),
                )
            }
        });
        let timeouts = Timeouts {
            connect: Duration::from_secs(5),
            response: Duration::from_secs(5),
            idle: Duration::from_millis(300),
        };
        let retry = Retry {
            attempts: 3,
            first_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(5),
        };
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("blob");
        let started = std::time::Instant::now();
        Http::new(timeouts, retry, false)
            .download(&Download {
                url: &format!("{}/blob", server.url()),
                headers: &[],
                label: "blob",
                expected: Expected::Sha256(digest),
                size: Some(data.len() as u64),
                dest: &dest,
            })
            .unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(fs::read(&dest).unwrap(), data);
        let ranges: Vec<Option<String>> = server
            .requests()
            .iter()
            .map(|r| r.header("range").map(str::to_string))
            .collect();
        assert_eq!(ranges, [None, Some("bytes=20000-".to_string())]);
    }

    #[test]
    fn a_wrong_digest_keeps_nothing_and_names_both() {
        let server = range_server(b"hello".to_vec());
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("x");
        let wrong = "0".repeat(64);
        let err = quick()
            .download(&Download {
                url: &format!("{}/f", server.url()),
                headers: &[],
                label: "x",
                expected: Expected::Sha256(wrong.clone()),
                size: None,
                dest: &dest,
            })
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&wrong) && msg.contains(&hex(&Sha256::digest(b"hello"))),
            "{msg}"
        );
        assert!(!dest.exists() && !partial_path(&dest).exists());
    }

    #[test]
    fn partial_path_appends() {
        assert_eq!(
            partial_path(Path::new("/c/blobs/sha256/ab")),
            PathBuf::from("/c/blobs/sha256/ab.partial")
        );
    }
}

//! The HTTP side of `edgeferry sync`: small documents read whole under a
//! cap, and blobs fetched by digest into a staging directory with Range
//! resume, hashed as they stream. Nothing the upstream mirror says is
//! trusted: every blob is held to the size and sha256 of a signed
//! manifest, and every read is bounded in bytes and time.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use edgeferry_bundle::format::Entry;
use edgeferry_bundle::hashing::Sha256Stream;
use edgeferry_bundle::verify::VerifyError;

use crate::config::SyncConfig;

/// One upstream mirror.
pub struct Client {
    agent: ureq::Agent,
    base: String,
    attempts: u32,
}

/// What one blob cost.
#[derive(Debug, Default, Clone, Copy)]
pub struct Fetched {
    /// Bytes that came over the network for it.
    pub fetched: u64,
    /// Bytes of an earlier run's partial download it resumed from.
    pub resumed: u64,
    /// The whole blob was staged by an earlier run (and re-hashed).
    pub staged: bool,
}

/// A failure worth another try (the connection broke, the server was busy).
struct Transient(String);

impl Client {
    /// `base` is `http(s)://host:port`; `ca` the PEM the mirror's
    /// certificate must chain to (`serve` prints where its CA is).
    pub fn new(base: &str, ca: Option<&Path>, config: &SyncConfig) -> Result<Client> {
        let base = base.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            bail!("--from {base:?} is not an http:// or https:// URL");
        }
        let mut builder = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_resolve(Some(config.connect_timeout))
            .timeout_connect(Some(config.connect_timeout))
            .timeout_send_request(Some(config.response_timeout))
            .timeout_recv_response(Some(config.response_timeout))
            .timeout_per_read(Some(config.idle_timeout))
            // Bytes are checked as served: no transparent gunzip.
            .accept_encoding("identity")
            .user_agent(concat!("edgeferry-sync/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = ca {
            let pem =
                fs::read(ca).with_context(|| format!("reading --mirror-ca {}", ca.display()))?;
            let roots: Vec<_> = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect();
            if roots.is_empty() {
                bail!("--mirror-ca {} holds no PEM certificate", ca.display());
            }
            builder = builder.tls_config(
                ureq::tls::TlsConfig::builder()
                    .root_certs(ureq::tls::RootCerts::Specific(Arc::new(roots)))
                    .build(),
            );
        }
        Ok(Client {
            agent: builder.build().into(),
            base,
            attempts: config.attempts.max(1),
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// GETs a small document whole: more than `limit` bytes is refused.
    pub fn get_small(&self, path: &str, limit: u64) -> Result<Vec<u8>> {
        let url = self.url(path);
        let mut tries = 0;
        loop {
            tries += 1;
            match self.get_small_once(&url, limit) {
                Ok(bytes) => return Ok(bytes),
                Err(Ok(_)) if tries < self.attempts => std::thread::sleep(backoff(tries)),
                Err(Ok(Transient(detail))) => {
                    bail!("GET {url}: {detail} (after {tries} attempts)")
                }
                Err(Err(e)) => return Err(e),
            }
        }
    }

    fn get_small_once(
        &self,
        url: &str,
        limit: u64,
    ) -> Result<Vec<u8>, Result<Transient, anyhow::Error>> {
        let response = self.agent.get(url).call().map_err(transient)?;
        let status = response.status().as_u16();
        if status >= 500 || status == 429 {
            return Err(Ok(Transient(format!("the mirror answered {status}"))));
        }
        if status != 200 {
            return Err(Err(anyhow::anyhow!(
                "GET {url}: the mirror answered {status}"
            )));
        }
        let mut body = Vec::new();
        response
            .into_body()
            .into_reader()
            .take(limit + 1)
            .read_to_end(&mut body)
            .map_err(|e| Ok(Transient(format!("the body broke off: {e}"))))?;
        if body.len() as u64 > limit {
            return Err(Err(anyhow::anyhow!(
                "GET {url}: the body is longer than the {limit} bytes allowed for it"
            )));
        }
        Ok(body)
    }

    /// Fetches `entry`'s bytes from `path` into `staging` as
    /// `blobs/sha256/<hex>`, resuming a `.partial` an earlier run left
    /// (re-hashed first, then Range from its end), hashing every byte as
    /// it arrives and taking no more than the signed size. A mismatch
    /// removes the partial file and fails as the bundle reader does, by
    /// entry name and digest.
    pub fn download(&self, path: &str, entry: &Entry, staging: &Path) -> Result<Fetched> {
        let url = self.url(path);
        let done = staged_blob(staging, &entry.sha256);
        if done.exists() {
            if crate::store::blob_is_intact(&done, entry.size, &entry.sha256)
                .with_context(|| format!("reading {}", done.display()))?
            {
                return Ok(Fetched {
                    staged: true,
                    ..Fetched::default()
                });
            }
            fs::remove_file(&done).with_context(|| format!("removing {}", done.display()))?;
        }
        let partial = done.with_extension("partial");
        let mut hasher = Sha256Stream::default();
        let mut have = match fs::metadata(&partial) {
            Ok(meta) if meta.len() <= entry.size => {
                hash_into(&partial, &mut hasher)?;
                meta.len()
            }
            Ok(_) => {
                fs::remove_file(&partial)?;
                0
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e).with_context(|| format!("reading {}", partial.display())),
        };
        let mut outcome = Fetched {
            resumed: have,
            ..Fetched::default()
        };
        let mut resumed_old = have > 0;
        let mut failures = 0;
        loop {
            if have < entry.size {
                let before = have;
                match self.fetch_range(&url, entry, &partial, &mut have, &mut hasher) {
                    Ok(()) => {}
                    Err(Ok(Transient(detail))) => {
                        outcome.fetched += have - before;
                        failures = if have > before { 1 } else { failures + 1 };
                        if failures >= self.attempts {
                            bail!(
                                "GET {url}: {detail} (after {failures} attempts without progress)"
                            );
                        }
                        std::thread::sleep(backoff(failures));
                        continue;
                    }
                    Err(Err(e)) => return Err(e),
                }
                outcome.fetched += have - before;
            }
            let actual = std::mem::take(&mut hasher).finish();
            if actual != entry.sha256 {
                fs::remove_file(&partial)?;
                // A partial file from an earlier run may be what was wrong:
                // once, start over from nothing before calling it a lie.
                if resumed_old {
                    resumed_old = false;
                    have = 0;
                    continue;
                }
                return Err(VerifyError::Hash {
                    path: entry.path.clone(),
                    expected: entry.sha256.clone(),
                    actual,
                })
                .with_context(|| format!("{url} sent other bytes than the signed manifest names"));
            }
            File::open(&partial)
                .and_then(|f| f.sync_all())
                .with_context(|| format!("syncing {}", partial.display()))?;
            fs::rename(&partial, &done)
                .with_context(|| format!("renaming {}", partial.display()))?;
            return Ok(outcome);
        }
    }

    /// One request for the bytes after `have`, appended to `partial`.
    fn fetch_range(
        &self,
        url: &str,
        entry: &Entry,
        partial: &Path,
        have: &mut u64,
        hasher: &mut Sha256Stream,
    ) -> Result<(), Result<Transient, anyhow::Error>> {
        let mut request = self.agent.get(url);
        if *have > 0 {
            request = request.header("Range", format!("bytes={have}-"));
        }
        let response = request.call().map_err(transient)?;
        let status = response.status().as_u16();
        if status >= 500 || status == 429 {
            return Err(Ok(Transient(format!("the mirror answered {status}"))));
        }
        let fatal = |detail: String| Err(Err(anyhow::anyhow!("GET {url}: {detail}")));
        let start = match status {
            206 if *have > 0 => response
                .headers()
                .get("content-range")
                .and_then(|v| v.to_str().ok())
                .and_then(content_range_start),
            200 => Some(0),
            404 => {
                return fatal(format!(
                    "the mirror does not have {} (sha256 {}), though its signed manifest lists it",
                    entry.path, entry.sha256
                ))
            }
            other => return fatal(format!("the mirror answered {other}")),
        };
        if start != Some(*have) {
            if start != Some(0) {
                return fatal("the mirror answered a Range request with other bytes".into());
            }
            // The whole body came: what was staged is replaced.
            *have = 0;
            *hasher = Sha256Stream::default();
            File::create(partial).map_err(|e| Err(e.into()))?;
        }
        let length = response
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if let Some(length) = length {
            if *have + length != entry.size {
                return fatal(format!(
                    "{} is {} bytes in the signed manifest but the mirror sends {}",
                    entry.path,
                    entry.size,
                    *have + length
                ));
            }
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(partial)
            .map_err(|e| Err(e.into()))?;
        // Never more than the signed size: a lying mirror cannot fill the disk.
        let mut body = response.into_body().into_reader().take(entry.size - *have);
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = match body.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(Ok(Transient(format!(
                        "the transfer broke off after {have} bytes: {e}"
                    ))))
                }
            };
            // Straight to the file, unbuffered: a killed sync resumes from
            // every byte that reached the partial file.
            file.write_all(&buf[..n]).map_err(|e| Err(e.into()))?;
            hasher.update(&buf[..n]);
            *have += n as u64;
        }
        if *have < entry.size {
            return Err(Ok(Transient(format!(
                "the transfer ended after {have} of {} bytes",
                entry.size
            ))));
        }
        Ok(())
    }
}

/// Where a verified blob waits in the staging directory.
pub fn staged_blob(staging: &Path, sha256: &str) -> PathBuf {
    staging.join("blobs/sha256").join(sha256)
}

fn hash_into(path: &Path, hasher: &mut Sha256Stream) -> Result<()> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            return Ok(());
        }
        hasher.update(&buf[..n]);
    }
}

fn transient(e: ureq::Error) -> Result<Transient, anyhow::Error> {
    match e {
        ureq::Error::Io(_)
        | ureq::Error::Timeout(_)
        | ureq::Error::ConnectionFailed
        | ureq::Error::Protocol(_) => Ok(Transient(e.to_string())),
        other => Err(anyhow::Error::new(other)),
    }
}

/// `bytes <start>-<end>/<total>` -> start.
fn content_range_start(value: &str) -> Option<u64> {
    value
        .strip_prefix("bytes ")?
        .split('-')
        .next()?
        .trim()
        .parse()
        .ok()
}

fn backoff(tries: u32) -> std::time::Duration {
    std::time::Duration::from_millis(250u64 << tries.min(5))
}

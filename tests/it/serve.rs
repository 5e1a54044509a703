//! `edgeferry serve`: the store over HTTP, as plain files and as a
//! read-only OCI registry, driven by curl, skopeo and containerd.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use edgeferry_tests::*;
use serde_json::{json, Value};

const EPOCH: u64 = 1_763_000_000;
const VERSION: &str = "v1.23.1";
const PACKAGE: &str = "docker.io/kubeedge/installation-package:v1.23.1";
const PAUSE: &str = "registry.k8s.io/pause:3.10";
const KEADM: &str = "keadm-v1.23.1-linux-amd64.tar.gz";
/// What containerd sends when it resolves a tag.
const ACCEPT: &str = "Accept: application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// The amd64 and arm64 sample bundles, built once for the tests running at
/// the same time and removed when the last of them is done.
struct Bundles {
    _tmp: tempfile::TempDir,
    public: PathBuf,
    by_arch: BTreeMap<&'static str, PathBuf>,
}

fn bundles() -> Arc<Bundles> {
    static SHARED: Mutex<Weak<Bundles>> = Mutex::new(Weak::new());
    let mut shared = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(bundles) = shared.upgrade() {
        return bundles;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (key, public) = keygen(&tmp.path().join("keys"));
    let out = tmp.path().join("bundles");
    let by_arch = ["amd64", "arm64"]
        .into_iter()
        .map(|arch| (arch, sample_bundle(arch, VERSION, &key, &out, EPOCH)))
        .collect();
    let bundles = Arc::new(Bundles {
        _tmp: tmp,
        public,
        by_arch,
    });
    *shared = Arc::downgrade(&bundles);
    bundles
}

/// One site: its own store, loaded from the sample bundles.
struct Site {
    bundles: Arc<Bundles>,
    tmp: tempfile::TempDir,
    store: PathBuf,
}

impl Site {
    fn new(archs: &[&str]) -> Site {
        let tmp = tempfile::tempdir().unwrap();
        let site = Site {
            bundles: bundles(),
            store: tmp.path().join("store"),
            tmp,
        };
        for arch in archs {
            site.load(arch);
        }
        site
    }

    fn load(&self, arch: &str) {
        run_ok(
            edgeferry()
                .arg("load")
                .arg(&self.bundles.by_arch[arch])
                .arg("--key")
                .arg(&self.bundles.public)
                .arg("--store")
                .arg(&self.store),
        );
    }

    fn dir(&self) -> &Path {
        self.tmp.path()
    }

    fn state(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.store.join("state.json")).unwrap()).unwrap()
    }

    fn blob(&self, digest: &str) -> Vec<u8> {
        let hex = digest.strip_prefix("sha256:").unwrap();
        std::fs::read(self.store.join("blobs/sha256").join(hex)).unwrap()
    }
}

/// `registry.k8s.io/pause:3.10` -> (`registry.k8s.io`, `pause`, `3.10`).
fn parts(reference: &str) -> (&str, &str, &str) {
    let (repo, tag) = reference.rsplit_once(':').unwrap();
    let (registry, name) = repo.split_once('/').unwrap();
    (registry, name, tag)
}

fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(bytes))
}

/// The layers of `reference` for `platform`: (digest, size).
fn layers(site: &Site, state: &Value, reference: &str, platform: &str) -> Vec<(String, u64)> {
    let digest = state["images"][reference]["platforms"][platform]
        .as_str()
        .unwrap_or_else(|| panic!("no {platform} manifest for {reference}"));
    let manifest: Value = serde_json::from_slice(&site.blob(digest)).unwrap();
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["digest"].as_str().unwrap().to_string(),
                l["size"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn host_platform() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "linux/amd64",
        "aarch64" => "linux/arm64",
        other => panic!("the sample images run on amd64 and arm64 only, not {other}"),
    }
}

/// An HTTP response as a client saw it.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn parse(raw: &[u8]) -> Reply {
        let end = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no end of headers in {:?}", String::from_utf8_lossy(raw)));
        let head = String::from_utf8_lossy(&raw[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status line in {head:?}"));
        let headers = lines
            .map(|l| {
                let (k, v) = l.split_once(':').unwrap();
                (k.trim().to_ascii_lowercase(), v.trim().to_string())
            })
            .collect();
        Reply {
            status,
            headers,
            body: raw[end + 4..].to_vec(),
        }
    }

    /// A header sent at most once.
    fn header(&self, name: &str) -> Option<&str> {
        let found: Vec<&str> = self
            .headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect();
        assert!(found.len() <= 1, "{name} sent {} times", found.len());
        found.first().copied()
    }

    fn must(&self, name: &str) -> &str {
        self.header(name)
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// `curl <args> <server><path>`, status, headers and body as sent.
fn curl(server: &Served, path: &str, args: &[&str]) -> Reply {
    let out = Command::new("curl")
        .args(["-sS", "--include", "--noproxy", "*", "--max-time", "60"])
        .args(args)
        .arg(server.url(path))
        .output()
        .expect("running curl");
    assert!(
        out.status.success(),
        "curl {args:?} {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Reply::parse(&out.stdout)
}

/// One request on its own connection, read to the end: shows the bytes
/// the server sent, not what a client library makes of them.
fn raw(server: &Served, method: &str, path: &str, headers: &[&str]) -> Reply {
    let mut stream = TcpStream::connect(&server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
        server.addr
    );
    for header in headers {
        request.push_str(header);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes).unwrap();
    Reply::parse(&bytes)
}

/// A registry error: the status, JSON, and the spec's `errors` shape.
fn assert_registry_error(reply: &Reply, status: u16, code: &str, what: &str) {
    assert_eq!(reply.status, status, "{what}: {}", reply.text());
    assert_eq!(reply.must("content-type"), "application/json", "{what}");
    let body = reply.json();
    let errors = body["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: no errors array: {body}"));
    assert_eq!(errors.len(), 1, "{what}: {body}");
    assert_eq!(errors[0]["code"], code, "{what}: {body}");
    assert!(
        !errors[0]["message"].as_str().unwrap_or_default().is_empty(),
        "{what}: no message: {body}"
    );
}

/// Range, HEAD and the conditional headers on one URL serving `bytes`.
fn check_byte_serving(server: &Served, path: &str, bytes: &[u8], registry: bool) {
    let len = bytes.len();
    assert!(len > 2000, "{path}: want a file over 2000 bytes, got {len}");
    let digest = digest_of(bytes);
    let etag = format!("\"{digest}\"");

    let full = curl(server, path, &[]);
    assert_eq!(full.status, 200, "{path}");
    assert!(
        full.body == bytes,
        "{path}: GET body differs from the store"
    );
    assert_eq!(full.must("etag"), etag, "{path}");
    assert_eq!(full.must("content-length"), len.to_string(), "{path}");
    assert_eq!(full.must("accept-ranges"), "bytes", "{path}");
    if registry {
        assert_eq!(full.must("docker-content-digest"), digest, "{path}");
    }

    let first = curl(server, path, &["-r", "0-99"]);
    assert_eq!(first.status, 206, "{path}: -r 0-99");
    assert!(first.body == bytes[..100], "{path}: -r 0-99 bytes");
    assert_eq!(first.must("content-range"), format!("bytes 0-99/{len}"));
    assert_eq!(first.must("content-length"), "100");
    assert_eq!(first.must("etag"), etag);
    for (range, start, end) in [
        ("bytes=1000-1999".to_string(), 1000, 1999),
        (format!("bytes={}-", len - 10), len - 10, len - 1),
        ("bytes=-25".to_string(), len - 25, len - 1),
        (format!("bytes=1990-{}", len + 5000), 1990, len - 1),
    ] {
        let part = curl(server, path, &["-H", &format!("Range: {range}")]);
        assert_eq!(part.status, 206, "{path}: {range}");
        assert!(part.body == bytes[start..=end], "{path}: {range} bytes");
        assert_eq!(
            part.must("content-range"),
            format!("bytes {start}-{end}/{len}"),
            "{path}: {range}"
        );
        assert_eq!(part.must("content-length"), (end - start + 1).to_string());
    }
    let past = curl(server, path, &["-H", &format!("Range: bytes={len}-")]);
    assert_eq!(past.status, 416, "{path}: a range past the end");
    assert_eq!(past.must("content-range"), format!("bytes */{len}"));

    // HEAD: the headers of the GET and not one byte of body.
    let head = raw(server, "HEAD", path, &[]);
    assert_eq!(head.status, 200, "{path}: HEAD");
    assert_eq!(head.must("content-length"), len.to_string(), "{path}: HEAD");
    assert_eq!(head.must("etag"), etag, "{path}: HEAD");
    assert_eq!(head.must("content-type"), full.must("content-type"));
    assert!(
        head.body.is_empty(),
        "{path}: HEAD sent {} bytes",
        head.body.len()
    );
    let head_range = raw(server, "HEAD", path, &["Range: bytes=0-99"]);
    assert_eq!(head_range.status, 206, "{path}: HEAD with Range");
    assert_eq!(head_range.must("content-length"), "100");
    assert!(
        head_range.body.is_empty(),
        "{path}: HEAD with Range sent a body"
    );

    // If-None-Match: the digest ETag (strong or weak) means "you have it".
    for tag in [etag.clone(), format!("W/{etag}"), format!("\"x\", {etag}")] {
        let cached = curl(server, path, &["-H", &format!("If-None-Match: {tag}")]);
        assert_eq!(cached.status, 304, "{path}: If-None-Match: {tag}");
        assert!(cached.body.is_empty(), "{path}: 304 with a body");
        assert_eq!(cached.must("etag"), etag);
    }
    let other = format!("\"sha256:{}\"", "0".repeat(64));
    let changed = curl(server, path, &["-H", &format!("If-None-Match: {other}")]);
    assert_eq!(changed.status, 200, "{path}: If-None-Match another etag");
    assert!(changed.body == bytes);

    // If-Range: a range of what the client has, else the whole thing.
    let stale = curl(
        server,
        path,
        &["-r", "0-99", "-H", &format!("If-Range: {other}")],
    );
    assert_eq!(stale.status, 200, "{path}: If-Range with a wrong etag");
    assert!(
        stale.body == bytes,
        "{path}: If-Range miss must send it all"
    );
    assert_eq!(stale.header("content-range"), None);
    let fresh = curl(
        server,
        path,
        &["-r", "0-99", "-H", &format!("If-Range: {etag}")],
    );
    assert_eq!(fresh.status, 206, "{path}: If-Range with the etag");
    assert!(fresh.body == bytes[..100]);
}

#[test]
fn files_and_blobs_honour_range_head_and_etag() {
    require_tool("curl", "curl");
    let site = Site::new(&["amd64", "arm64"]);
    let server = Served::start(&site.store);
    let state = site.state();

    let keadm = std::fs::read(site.store.join("files").join(KEADM)).unwrap();
    assert_eq!(
        sha256_hex(&keadm),
        state["files"][KEADM]["sha256"].as_str().unwrap()
    );
    check_byte_serving(&server, &format!("/files/{KEADM}"), &keadm, false);
    let (layer, _) = layers(&site, &state, PACKAGE, "linux/arm64").remove(0);
    for path in [
        format!("/v2/kubeedge/installation-package/blobs/{layer}"),
        format!("/v2/kubeedge/installation-package/blobs/{layer}?ns=docker.io"),
    ] {
        check_byte_serving(&server, &path, &site.blob(&layer), true);
    }

    // SHA256SUMS over HTTP checks every file served under /files/: its
    // names (`files/<name>`) resolve against its own URL.
    let sums = curl(&server, "/SHA256SUMS", &[]);
    assert_eq!(sums.status, 200);
    assert!(sums.body == std::fs::read(site.store.join("SHA256SUMS")).unwrap());
    let mut listed = BTreeSet::new();
    for line in sums.text().lines() {
        let (hex, relative) = line.split_once("  ").expect("sha256sum format");
        let file = curl(&server, &format!("/{relative}"), &[]);
        assert_eq!(file.status, 200, "{relative}");
        assert_eq!(sha256_hex(&file.body), hex, "{relative}");
        let name = relative.strip_prefix("files/").expect("files/<name>");
        listed.insert(name.to_string());
    }
    let files: BTreeSet<String> = state["files"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(listed, files);
    // index.json says the same, with the URLs to fetch.
    let index = curl(&server, "/index.json", &[]);
    assert_eq!(index.status, 200);
    assert_eq!(index.must("content-type"), "application/json");
    let index = index.json();
    for file in index["files"].as_array().unwrap() {
        let name = file["name"].as_str().unwrap();
        assert_eq!(file["url"], format!("/files/{name}"));
        assert_eq!(file["sha256"], state["files"][name]["sha256"]);
        assert_eq!(file["size"], state["files"][name]["size"]);
    }
    assert_eq!(index["files"].as_array().unwrap().len(), files.len());
    for image in index["images"].as_array().unwrap() {
        let reference = image["reference"].as_str().unwrap();
        assert_eq!(image["digest"], state["images"][reference]["digest"]);
    }
    assert_eq!(
        index["images"].as_array().unwrap().len(),
        state["images"].as_object().unwrap().len()
    );

    assert_eq!(curl(&server, "/files/nope.tar.gz", &[]).status, 404);
    assert_eq!(curl(&server, "/nope", &[]).status, 404);
    // The access log went to stdout, one JSON object per request.
    wait_for("the access log on stdout", Duration::from_secs(10), || {
        access_log(&server.stdout())
            .iter()
            .any(|e| e["path"] == "/nope" && e["status"] == 404)
    });
    for entry in access_log(&server.stdout()) {
        for field in ["client", "method", "path", "status", "bytes", "duration_ms"] {
            assert!(!entry[field].is_null(), "no {field} in {entry}");
        }
        assert!(entry["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    }
}

/// A manifest response: exact bytes, type and digest headers.
fn check_manifest(reply: &Reply, digest: &str, site: &Site, state: &Value, what: &str) {
    assert_eq!(reply.status, 200, "{what}: {}", reply.text());
    assert!(
        reply.body == site.blob(digest),
        "{what}: not the stored bytes"
    );
    assert_eq!(digest_of(&reply.body), digest, "{what}");
    assert_eq!(reply.must("docker-content-digest"), digest, "{what}");
    let media_type = state["manifests"][digest]["media_type"].as_str().unwrap();
    assert_eq!(reply.must("content-type"), media_type, "{what}");
    assert_eq!(reply.json()["mediaType"], media_type, "{what}");
    assert_eq!(
        reply.must("content-length"),
        reply.body.len().to_string(),
        "{what}"
    );
    assert_eq!(reply.must("etag"), format!("\"{digest}\""), "{what}");
}

#[test]
fn the_registry_api_serves_manifests_tags_and_catalog_read_only() {
    require_tool("curl", "curl");
    let site = Site::new(&["amd64", "arm64"]);
    let server = Served::start(&site.store);
    let state = site.state();

    let base = curl(&server, "/v2/", &[]);
    assert_eq!(base.status, 200);
    assert_eq!(base.must("docker-distribution-api-version"), "registry/2.0");

    let images = state["images"].as_object().unwrap();
    assert!(images.contains_key(PACKAGE) && images.contains_key(PAUSE));
    let mut catalog = Vec::new();
    let mut tags: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (reference, image) in images {
        let (registry, name, tag) = parts(reference);
        let direct = if registry == "docker.io" {
            name.to_string()
        } else {
            format!("{registry}/{name}")
        };
        catalog.push(direct.clone());
        tags.entry(direct.clone())
            .or_default()
            .push(tag.to_string());
        let digest = image["digest"].as_str().unwrap();
        // By tag: as a containerd mirror (?ns=) and by the direct name.
        for path in [
            format!("/v2/{name}/manifests/{tag}?ns={registry}"),
            format!("/v2/{direct}/manifests/{tag}"),
        ] {
            check_manifest(
                &curl(&server, &path, &["-H", ACCEPT]),
                digest,
                &site,
                &state,
                &path,
            );
            let head = raw(&server, "HEAD", &path, &[ACCEPT]);
            assert_eq!(head.status, 200, "HEAD {path}");
            assert_eq!(head.must("docker-content-digest"), digest, "HEAD {path}");
            assert_eq!(
                head.must("content-length"),
                site.blob(digest).len().to_string()
            );
            assert_eq!(
                head.must("content-type"),
                state["manifests"][digest]["media_type"].as_str().unwrap()
            );
            assert!(head.body.is_empty(), "HEAD {path} sent a body");
        }
        // By digest: every platform manifest and every upstream index.
        let mut digests: Vec<&str> = image["platforms"]
            .as_object()
            .unwrap()
            .values()
            .map(|d| d.as_str().unwrap())
            .collect();
        digests.extend(
            image["upstream_indexes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_str().unwrap()),
        );
        for digest in digests {
            let path = format!("/v2/{name}/manifests/{digest}?ns={registry}");
            check_manifest(
                &curl(&server, &path, &["-H", ACCEPT]),
                digest,
                &site,
                &state,
                &path,
            );
        }
    }

    // The catalog and tag lists, and each catalog name resolves.
    catalog.sort();
    catalog.dedup();
    let listed = curl(&server, "/v2/_catalog", &[]);
    assert_eq!(listed.status, 200);
    assert_eq!(listed.json(), json!({ "repositories": catalog }));
    for (name, tags) in &tags {
        let list = curl(&server, &format!("/v2/{name}/tags/list"), &[]);
        assert_eq!(list.status, 200, "{name}");
        assert_eq!(list.json(), json!({"name": name, "tags": tags}));
    }
    let pause = curl(&server, "/v2/pause/tags/list?ns=registry.k8s.io", &[]);
    assert_eq!(
        pause.json(),
        json!({"name": "pause", "tags": ["3.10", "3.6", "3.8"]})
    );

    // Unknown things: 404 with the spec's JSON errors.
    let package = "/v2/kubeedge/installation-package";
    let pause_manifest = state["images"][PAUSE]["platforms"]["linux/amd64"]
        .as_str()
        .unwrap();
    let (layer, _) = layers(&site, &state, PACKAGE, "linux/amd64").remove(0);
    let zeros = format!("sha256:{}", "0".repeat(64));
    for (path, code) in [
        (format!("{package}/manifests/v0.0.0"), "MANIFEST_UNKNOWN"),
        (
            format!("{package}/manifests/v0.0.0?ns=docker.io"),
            "MANIFEST_UNKNOWN",
        ),
        (format!("{package}/manifests/{zeros}"), "MANIFEST_UNKNOWN"),
        // Another repository's manifest, and a layer, are not manifests here.
        (
            format!("{package}/manifests/{pause_manifest}"),
            "MANIFEST_UNKNOWN",
        ),
        (format!("{package}/manifests/{layer}"), "MANIFEST_UNKNOWN"),
        (format!("{package}/blobs/{zeros}"), "BLOB_UNKNOWN"),
        (
            "/v2/nobody/nothing/manifests/v1".to_string(),
            "NAME_UNKNOWN",
        ),
        (
            "/v2/pause/manifests/3.10?ns=docker.io".to_string(),
            "NAME_UNKNOWN",
        ),
        ("/v2/nobody/nothing/tags/list".to_string(), "NAME_UNKNOWN"),
        ("/v2/nothing-here".to_string(), "NAME_UNKNOWN"),
    ] {
        assert_registry_error(&curl(&server, &path, &[]), 404, code, &path);
    }

    // Read-only: every write is 405 with a JSON error, and nothing changes.
    let before = snapshot(&site.store);
    for method in ["PUT", "POST", "DELETE", "PATCH"] {
        for path in [
            format!("{package}/manifests/{VERSION}"),
            format!("{package}/manifests/{VERSION}?ns=docker.io"),
            format!("{package}/blobs/{layer}"),
            format!("{package}/blobs/uploads/"),
        ] {
            let data: &[&str] = if method == "DELETE" {
                &[]
            } else {
                &["--data-binary", "{}"]
            };
            let reply = curl(&server, &path, &[&["-X", method], data].concat());
            assert_registry_error(&reply, 405, "UNSUPPORTED", &format!("{method} {path}"));
            assert_eq!(reply.must("allow"), "GET, HEAD");
        }
    }
    assert!(snapshot(&site.store) == before, "a write changed the store");
    check_manifest(
        &curl(&server, &format!("{package}/manifests/{VERSION}"), &[]),
        state["images"][PACKAGE]["digest"].as_str().unwrap(),
        &site,
        &state,
        "after the writes",
    );
}

#[test]
fn skopeo_inspects_and_copies_with_the_bundle_digests() {
    require_tool("skopeo", "skopeo");
    let site = Site::new(&["amd64", "arm64"]);
    let server = Served::start(&site.store);
    let state = site.state();
    let image = &state["images"][PACKAGE];
    let source = format!(
        "docker://{}/kubeedge/installation-package:{VERSION}",
        server.addr
    );
    let digests = |layers: Vec<(String, u64)>| -> Vec<String> {
        layers.into_iter().map(|(d, _)| d).collect()
    };

    let inspected = run_ok(
        Command::new("skopeo")
            .args(["inspect", "--tls-verify=false", "--override-arch", "amd64"])
            .arg(&source),
    );
    let inspected: Value = serde_json::from_str(&inspected.stdout).unwrap();
    assert_eq!(inspected["Digest"], image["digest"]);
    assert_eq!(inspected["Architecture"], "amd64");
    assert_eq!(inspected["Os"], "linux");
    assert_eq!(inspected["RepoTags"], json!([VERSION]));
    assert_eq!(
        inspected["Layers"],
        json!(digests(layers(&site, &state, PACKAGE, "linux/amd64")))
    );

    // One platform: the manifest and every blob, byte for byte.
    let one = site.dir().join("arm64-layout");
    run_ok(
        Command::new("skopeo")
            .args(["copy", "--src-tls-verify=false", "--override-arch", "arm64"])
            .arg(&source)
            .arg(format!("oci:{}:x", one.display())),
    );
    let index: Value =
        serde_json::from_slice(&std::fs::read(one.join("index.json")).unwrap()).unwrap();
    let copied = index["manifests"].as_array().unwrap();
    assert_eq!(copied.len(), 1, "{index}");
    let manifest_digest = copied[0]["digest"].as_str().unwrap();
    assert_eq!(manifest_digest, image["platforms"]["linux/arm64"]);
    let blob_in = |layout: &Path, digest: &str| {
        std::fs::read(layout.join("blobs/sha256").join(&digest[7..]))
            .unwrap_or_else(|e| panic!("{digest} in {}: {e}", layout.display()))
    };
    let manifest_bytes = blob_in(&one, manifest_digest);
    assert!(manifest_bytes == site.blob(manifest_digest));
    let manifest: Value = serde_json::from_slice(&manifest_bytes).unwrap();
    let copied_layers: Vec<String> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        copied_layers,
        digests(layers(&site, &state, PACKAGE, "linux/arm64"))
    );
    let config = manifest["config"]["digest"].as_str().unwrap();
    for blob in copied_layers.iter().map(String::as_str).chain([config]) {
        assert!(
            blob_in(&one, blob) == site.blob(blob),
            "{blob} differs after the copy"
        );
    }

    // Every platform with digests preserved: the index is the tag's.
    let all = site.dir().join("all-layout");
    run_ok(
        Command::new("skopeo")
            .args([
                "copy",
                "--all",
                "--preserve-digests",
                "--src-tls-verify=false",
            ])
            .arg(&source)
            .arg(format!("oci:{}:x", all.display())),
    );
    let index: Value =
        serde_json::from_slice(&std::fs::read(all.join("index.json")).unwrap()).unwrap();
    let index_digest = index["manifests"][0]["digest"].as_str().unwrap();
    assert_eq!(index_digest, image["digest"]);
    assert!(blob_in(&all, index_digest) == site.blob(index_digest));
    for (platform, digest) in image["platforms"].as_object().unwrap() {
        let digest = digest.as_str().unwrap();
        assert!(
            blob_in(&all, digest) == site.blob(digest),
            "{platform} manifest differs after copy --all"
        );
    }

    // Another registry's image by its direct names, full and short.
    let pause = state["images"][PAUSE]["digest"].as_str().unwrap();
    for name in ["registry.k8s.io/pause", "pause"] {
        let raw_manifest = Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{}/{name}:3.10", server.addr))
            .output()
            .unwrap();
        assert!(
            raw_manifest.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&raw_manifest.stderr)
        );
        assert_eq!(digest_of(&raw_manifest.stdout), pause, "{name}");
    }
}

/// containerd with its own root, state and socket, killed and its mounts
/// removed on drop. Also used by tests/it/tls.rs.
pub(crate) struct Containerd {
    process: Reaped,
    root: PathBuf,
    socket: PathBuf,
}

impl Containerd {
    pub(crate) fn start(dir: &Path) -> Containerd {
        require_tool("containerd", "containerd");
        require_tool("ctr", "containerd");
        std::fs::create_dir_all(dir).unwrap();
        let root = dir.join("root");
        let socket = dir.join("containerd.sock");
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{}\"\nstate = \"{}\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\n\
                 [grpc]\n  address = \"{}\"\n\n\
                 [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{}\"\n",
                root.display(),
                dir.join("state").display(),
                socket.display(),
                dir.join("opt").display(),
            ),
        )
        .unwrap();
        let log_path = dir.join("containerd.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let process = Reaped::spawn(
            Command::new("containerd")
                .arg("--config")
                .arg(&config)
                .stdout(log.try_clone().unwrap())
                .stderr(log),
        );
        let mut containerd = Containerd {
            process,
            root,
            socket,
        };
        wait_for(
            "containerd to answer on its socket",
            Duration::from_secs(30),
            || {
                if let Ok(Some(status)) = containerd.process.0.try_wait() {
                    panic!(
                        "containerd exited ({status}):\n{}",
                        std::fs::read_to_string(&log_path).unwrap_or_default()
                    );
                }
                containerd.socket.exists()
                    && run(Command::new("ctr")
                        .arg("--address")
                        .arg(&containerd.socket)
                        .arg("version"))
                    .ok
            },
        );
        containerd
    }

    pub(crate) fn ctr(&self) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(&self.socket)
            .args(["--namespace", "k8s.io"]);
        cmd
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.process.kill();
        // Unpacking mounts below the root; nothing may outlive the test.
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut points: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|p| Path::new(p).starts_with(&self.root))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for point in points {
            let ok = Command::new("umount")
                .arg(point)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                let _ = Command::new("umount").arg("-l").arg(point).status();
            }
        }
    }
}

#[test]
fn containerd_pulls_through_the_printed_hosts_files_under_upstream_names() {
    require_tool("containerd", "containerd");
    let site = Site::new(&["amd64", "arm64"]);
    let log = site.dir().join("access.jsonl");
    let server = Served::start_with(&site.store, [OsStr::new("--access-log"), log.as_os_str()]);
    let containerd = Containerd::start(&site.dir().join("containerd"));
    let state = site.state();
    let platform = host_platform();

    // What the banner tells the operator to write on each node.
    let printed = printed_hosts_files(&server.banner);
    let dirs: Vec<&str> = printed.iter().map(|(d, _)| d.as_str()).collect();
    assert_eq!(
        dirs,
        ["docker.io", "registry.k8s.io", server.addr.as_str()],
        "{}",
        server.banner
    );
    let certs = site.dir().join("certs.d");
    for (dir, content) in &printed {
        let upstream = match dir.as_str() {
            "docker.io" => "https://registry-1.docker.io".to_string(),
            "registry.k8s.io" => "https://registry.k8s.io".to_string(),
            _ => server.url(""),
        };
        assert!(
            content.contains(&format!("server = \"{upstream}\"\n")),
            "{dir}: {content}"
        );
        assert!(
            content.contains(&format!(
                "[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
                server.addr
            )),
            "{dir}: {content}"
        );
        // Written as printed, but with the upstream fallback pointed at a
        // closed local port: a mirror failure must fail the test, not
        // quietly reach the internet.
        let written: String = content
            .lines()
            .map(|l| {
                if l.starts_with("server = \"https://") {
                    "server = \"http://127.0.0.1:9\"\n".to_string()
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        std::fs::create_dir_all(certs.join(dir)).unwrap();
        std::fs::write(certs.join(dir).join("hosts.toml"), written).unwrap();
    }

    // The upstream index lists a platform the store does not hold; a pull
    // by its digest must still work, fetching only this host's platform.
    let upstream_index = state["images"][PACKAGE]["upstream_indexes"][0]
        .as_str()
        .unwrap();
    let upstream: Value = serde_json::from_slice(&site.blob(upstream_index)).unwrap();
    let held = state["images"][PACKAGE]["platforms"].as_object().unwrap();
    let absent: Vec<&Value> = upstream["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| !held.values().any(|d| *d == m["digest"]))
        .collect();
    assert!(
        !absent.is_empty(),
        "the upstream sample index should list a platform the store lacks: {upstream}"
    );
    for missing in &absent {
        let hex = &missing["digest"].as_str().unwrap()[7..];
        assert!(!site.store.join("blobs/sha256").join(hex).exists());
    }

    let by_digest = format!("docker.io/kubeedge/installation-package@{upstream_index}");
    let direct = format!("{}/kubeedge/installation-package:{VERSION}", server.addr);
    let tag_digest = state["images"][PACKAGE]["digest"].as_str().unwrap();
    let expected: BTreeMap<&str, &str> = [
        (PACKAGE, tag_digest),
        (PAUSE, state["images"][PAUSE]["digest"].as_str().unwrap()),
        (by_digest.as_str(), upstream_index),
        (direct.as_str(), tag_digest),
    ]
    .into_iter()
    .collect();
    // Upstream names first: the layers then come through ns=, and the
    // direct name finds them in containerd's content store.
    for reference in [PACKAGE, PAUSE, by_digest.as_str(), direct.as_str()] {
        let pulled = run_ok(
            containerd
                .ctr()
                .args(["image", "pull", "--hosts-dir"])
                .arg(&certs)
                .arg(reference),
        );
        let said = format!("{}{}", pulled.stdout, pulled.stderr);
        assert!(
            said.contains(&format!("unpacking {platform}")),
            "{reference} was not unpacked:\n{said}"
        );
    }

    let listed = run_ok(containerd.ctr().args(["image", "ls"])).stdout;
    let images: BTreeMap<&str, &str> = listed
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut fields = l.split_whitespace();
            Some((fields.next()?, fields.nth(1)?))
        })
        .collect();
    assert_eq!(images, expected, "ctr image ls:\n{listed}");

    // The pulls went through the mirror, with containerd's ns= for each
    // upstream registry, and nothing was refused.
    let read_log = || access_log(&std::fs::read_to_string(&log).unwrap_or_default());
    let mut blob_paths = Vec::new();
    for reference in [PACKAGE, PAUSE] {
        let (registry, name, _) = parts(reference);
        for (digest, size) in layers(&site, &state, reference, platform) {
            blob_paths.push((format!("/v2/{name}/blobs/{digest}?ns={registry}"), size));
        }
    }
    let downloaded = |entries: &[Value], path: &str, size: u64| {
        entries.iter().any(|e| {
            e["method"] == "GET" && e["path"] == path && e["status"] == 200 && e["bytes"] == size
        })
    };
    eventually(Duration::from_secs(10), || {
        let entries = read_log();
        blob_paths
            .iter()
            .all(|(path, size)| downloaded(&entries, path, *size))
    });
    let entries = read_log();
    for (path, size) in &blob_paths {
        assert!(
            downloaded(&entries, path, *size),
            "no complete GET {path} ({size} bytes) in the access log: {entries:#?}"
        );
    }
    let refused: Vec<&Value> = entries.iter().filter(|e| e["status"] != 200).collect();
    assert!(refused.is_empty(), "refused during the pulls: {refused:?}");
    for wanted in [
        format!("/v2/kubeedge/installation-package/manifests/{VERSION}?ns=docker.io"),
        format!("/v2/kubeedge/installation-package/manifests/{upstream_index}?ns=docker.io"),
        "/v2/pause/manifests/3.10?ns=registry.k8s.io".to_string(),
        format!("/v2/kubeedge/installation-package/manifests/{VERSION}"),
    ] {
        assert!(
            entries.iter().any(|e| e["path"] == wanted),
            "no request for {wanted} in {entries:#?}"
        );
    }
    for missing in &absent {
        let digest = missing["digest"].as_str().unwrap();
        assert!(
            !entries
                .iter()
                .any(|e| e["path"].as_str().unwrap().contains(digest)),
            "containerd asked for the absent platform {digest}"
        );
    }
    drop(containerd);
}

#[test]
fn a_download_killed_mid_blob_resumes_with_range_to_identical_bytes() {
    require_tool("curl", "curl");
    let site = Site::new(&["amd64", "arm64"]);
    let server = Served::start(&site.store);
    let state = site.state();
    // The largest layer in the store.
    let mut largest: Option<(u64, String, String)> = None;
    for (reference, image) in state["images"].as_object().unwrap() {
        for platform in image["platforms"].as_object().unwrap().keys() {
            for (digest, size) in layers(&site, &state, reference, platform) {
                if largest.as_ref().is_none_or(|(s, _, _)| size > *s) {
                    largest = Some((size, reference.clone(), digest));
                }
            }
        }
    }
    let (size, reference, digest) = largest.unwrap();
    let bytes = site.blob(&digest);
    assert_eq!(bytes.len() as u64, size);
    assert!(size > 500_000, "want a blob that takes a while at 20k/s");
    let (registry, name, _) = parts(&reference);
    let path = format!("/v2/{name}/blobs/{digest}?ns={registry}");
    let part = site.dir().join("layer.part");

    // The client dies mid-blob: `head` stops reading after a fixed number
    // of bytes and curl is killed by SIGPIPE. (curl's --limit-rate cannot
    // be relied on: it only throttles between reads that find the socket
    // empty, and a ~1 MB blob can arrive in one burst on loopback.)
    let cut = size / 3;
    let killed = run(Command::new("sh").arg("-c").arg(format!(
        "curl -sS --noproxy '*' '{}' | head -c {cut} > '{}'",
        server.url(&path),
        part.display()
    )));
    assert!(killed.ok, "the pipeline failed: {}", killed.stderr);
    let partial = std::fs::metadata(&part).unwrap().len();
    assert_eq!(partial, cut, "the client stopped after {cut} bytes");
    assert!(partial < size, "{partial} of {size} bytes before the kill");
    let arrived = std::fs::read(&part).unwrap();
    assert!(
        arrived[..] == bytes[..arrived.len()],
        "the partial file is not a prefix"
    );

    let resumed = run_ok(
        Command::new("curl")
            .args(["-sS", "--noproxy", "*", "-C", "-", "-o"])
            .arg(&part)
            .args(["-w", "%{http_code} %{size_download}"])
            .arg(server.url(&path)),
    );
    assert_eq!(resumed.stdout, format!("206 {}", size - partial));
    assert!(
        std::fs::read(&part).unwrap() == bytes,
        "the resumed file differs from the blob"
    );
    // The server saw the killed request and the resumed one.
    wait_for(
        "both downloads in the access log",
        Duration::from_secs(10),
        || {
            let entries = access_log(&server.stdout());
            let of_path = |status: u64| {
                entries
                    .iter()
                    .filter(|e| e["path"] == path.as_str() && e["status"] == status)
                    .count()
            };
            of_path(200) == 1
                && of_path(206) == 1
                && entries
                    .iter()
                    .any(|e| e["status"] == 206 && e["bytes"] == size - partial)
        },
    );
}

#[test]
fn sigterm_stops_the_server_with_exit_0_and_writes_are_refused() {
    require_tool("curl", "curl");
    let site = Site::new(&["amd64", "arm64"]);
    let mut server = Served::start(&site.store);

    let health = curl(&server, "/healthz", &[]);
    assert_eq!(health.status, 200);
    assert_eq!(health.text(), "ok\n");
    let head = raw(&server, "HEAD", "/healthz", &[]);
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());

    let before = snapshot(&site.store);
    let keadm = format!("/files/{KEADM}");
    for (method, path) in [
        ("PUT", keadm.as_str()),
        ("POST", keadm.as_str()),
        ("DELETE", keadm.as_str()),
        ("PUT", "/files/new.tar.gz"),
        ("PUT", "/SHA256SUMS"),
        ("PUT", "/healthz"),
    ] {
        let data: &[&str] = if method == "DELETE" {
            &[]
        } else {
            &["--data-binary", "overwritten"]
        };
        let reply = curl(&server, path, &[&["-X", method], data].concat());
        assert_eq!(reply.status, 405, "{method} {path}");
        assert_eq!(reply.must("allow"), "GET, HEAD", "{method} {path}");
    }
    let put = curl(
        &server,
        &format!("/v2/kubeedge/installation-package/manifests/{VERSION}"),
        &["-X", "PUT", "--data-binary", "{}"],
    );
    assert_registry_error(&put, 405, "UNSUPPORTED", "PUT manifest");
    assert!(snapshot(&site.store) == before, "a write changed the store");
    let file = curl(&server, &keadm, &[]);
    assert_eq!(file.status, 200);
    assert!(file.body == std::fs::read(site.store.join("files").join(KEADM)).unwrap());

    // An idle keep-alive connection must not hold the shutdown up.
    let mut idle = TcpStream::connect(&server.addr).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        idle,
        "GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n",
        server.addr
    )
    .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.ends_with(b"\r\n\r\nok\n") {
        let n = idle.read(&mut buf).unwrap();
        assert!(n > 0, "closed before the response: {got:?}");
        got.extend_from_slice(&buf[..n]);
    }

    let (status, took) = server.terminate(Duration::from_secs(5));
    let status = status.unwrap_or_else(|| {
        panic!(
            "still running 5 s after SIGTERM\nstderr: {}",
            server.stderr()
        )
    });
    assert_eq!(status.code(), Some(0), "stderr: {}", server.stderr());
    assert!(took < Duration::from_secs(3), "took {took:?} to stop");
    assert!(
        server.stderr().contains("shutting down"),
        "{}",
        server.stderr()
    );
    assert_eq!(
        idle.read(&mut buf).unwrap(),
        0,
        "the idle connection stays open"
    );
    assert!(
        TcpStream::connect(&server.addr).is_err(),
        "still accepting connections after exit"
    );
    // Every request was logged, refused writes included.
    let entries = access_log(&server.stdout());
    assert!(
        entries
            .iter()
            .any(|e| e["method"] == "PUT" && e["path"] == keadm.as_str() && e["status"] == 405),
        "{entries:#?}"
    );
}

/// The `<...>` of a `Link: <...>; rel="next"` header, as a path.
fn next_link(link: &str) -> String {
    let (target, rel) = link.split_once(';').expect("Link: <url>; rel=\"next\"");
    assert_eq!(rel.trim(), "rel=\"next\"", "{link}");
    let url = target.trim().trim_start_matches('<').trim_end_matches('>');
    match url.strip_prefix("http://") {
        Some(rest) => rest[rest.find('/').unwrap()..].to_string(),
        None => url.to_string(),
    }
}

/// Distribution spec, "Listing Tags" (and the catalog alike): when `n`
/// cuts a list short, a `Link: <...>; rel="next"` header leads to the rest;
/// "if the header is not present, the client can assume that all results
/// have been received".
#[test]
fn a_paginated_catalog_links_to_its_next_page() {
    require_tool("curl", "curl");
    let site = Site::new(&["amd64", "arm64"]);
    let server = Served::start(&site.store);
    let names = |reply: &Reply| -> Vec<String> {
        reply.json()["repositories"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap().to_string())
            .collect()
    };
    let all = names(&curl(&server, "/v2/_catalog", &[]));
    assert_eq!(all.len(), 3, "{all:?}");
    let first = curl(&server, "/v2/_catalog?n=1", &[]);
    assert_eq!(names(&first), all[..1], "n=1 gives the first name");

    // A client walks the pages the way the spec says.
    let mut seen = Vec::new();
    let mut next = Some("/v2/_catalog?n=1".to_string());
    let mut pages = 0;
    while let Some(path) = next.take() {
        pages += 1;
        assert!(pages <= 10, "the pages do not end: {seen:?}");
        let page = curl(&server, &path, &[]);
        assert_eq!(page.status, 200, "{path}");
        seen.extend(names(&page));
        next = page.header("link").map(next_link);
    }
    assert_eq!(
        seen, all,
        "following Link headers from /v2/_catalog?n=1 lists {seen:?}: a truncated page without a Link header tells clients the catalog is complete"
    );
}

/// Seconds a response may be reused without asking, from Cache-Control.
fn freshness(cache_control: &str) -> u64 {
    let directives: Vec<String> = cache_control
        .split(',')
        .map(|d| d.trim().to_ascii_lowercase())
        .collect();
    if directives
        .iter()
        .any(|d| d == "no-cache" || d == "no-store")
    {
        return 0;
    }
    directives
        .iter()
        .find_map(|d| d.strip_prefix("max-age=").and_then(|s| s.parse().ok()))
        .unwrap_or(0)
}

/// A load changes what a tag and /SHA256SUMS serve (the running server
/// picks the new store up by itself), so those responses must not tell
/// caches they are immutable for a year; only digest-addressed ones are.
#[test]
fn urls_a_load_changes_are_not_cached_as_immutable() {
    require_tool("curl", "curl");
    let site = Site::new(&["amd64"]);
    let server = Served::start(&site.store);
    let tag = format!("/v2/kubeedge/installation-package/manifests/{VERSION}?ns=docker.io");
    let old_tag = curl(&server, &tag, &["-H", ACCEPT]);
    let old_sums = curl(&server, "/SHA256SUMS", &[]);
    assert_eq!((old_tag.status, old_sums.status), (200, 200));

    site.load("arm64");
    let state = site.state();
    let merged = state["images"][PACKAGE]["digest"].as_str().unwrap();
    assert_ne!(old_tag.must("docker-content-digest"), merged);
    wait_for(
        "the running server to serve the merged index",
        Duration::from_secs(15),
        || curl(&server, &tag, &["-H", ACCEPT]).header("docker-content-digest") == Some(merged),
    );
    check_manifest(
        &curl(&server, &tag, &["-H", ACCEPT]),
        merged,
        &site,
        &state,
        "the tag after the load",
    );
    let arm64 = state["images"][PACKAGE]["platforms"]["linux/arm64"]
        .as_str()
        .unwrap();
    check_manifest(
        &curl(
            &server,
            &format!("/v2/kubeedge/installation-package/manifests/{arm64}"),
            &[],
        ),
        arm64,
        &site,
        &state,
        "the new arm64 manifest",
    );
    let new_sums = curl(&server, "/SHA256SUMS", &[]);
    assert!(new_sums.body == std::fs::read(site.store.join("SHA256SUMS")).unwrap());
    assert_ne!(old_sums.body, new_sums.body, "SHA256SUMS did not change");

    let mut wrong = Vec::new();
    for (url, old) in [(tag.as_str(), &old_tag), ("/SHA256SUMS", &old_sums)] {
        let cache_control = old.header("cache-control").unwrap_or("");
        if cache_control.contains("immutable") || freshness(cache_control) > 60 {
            wrong.push(format!("{url}: Cache-Control: {cache_control}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "these changed after a load, yet were served as cacheable for long: {wrong:?}"
    );
}

//! Signed is not the same as sane: a validly signed bundle whose fields
//! break their grammar, or whose tar end is wrong or followed by a zero
//! bomb, is refused with exit 4; the mirror answers `HEAD /v2/` with a
//! length, and one client cannot hold the whole connection cap.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use edgeferry_bundle::format::{self, Arch, Entry, FileRecord, ImageRecord, Manifest};
use edgeferry_bundle::sign::SigningKey;
use edgeferry_tests::crafted::{regular, sign_whole, signed_tar};
use edgeferry_tests::*;

const VERSION: &str = "v1.23.1";
const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const DATA: &[u8] = b"keadm stand-in";

/// A sane manifest listing `files/keadm.tar.gz` (holding [`DATA`]) and one
/// image record; the cases below break one field each.
fn sane() -> Manifest {
    Manifest {
        format_version: 1,
        bundle_id: String::new(),
        kubeedge_version: VERSION.into(),
        arch: Arch::Arm64,
        sequence: 1,
        created: format::rfc3339_utc(1_763_000_000),
        builder: "edgeferry-builder 0.1.0".into(),
        sample: true,
        files: vec![FileRecord {
            path: "files/keadm.tar.gz".into(),
            checksum_path: None,
            sha512: Some("ab".repeat(64)),
        }],
        images: vec![ImageRecord {
            reference: "docker.io/kubeedge/installation-package:v1.23.1".into(),
            manifest_digest: format!("sha256:{HEX}"),
            manifest_media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            index_digest: Some(format!("sha256:{HEX}")),
            index_media_type: Some("application/vnd.oci.image.index.v1+json".into()),
            platform: "linux/arm64".into(),
        }],
        entries: vec![Entry {
            path: "files/keadm.tar.gz".into(),
            size: DATA.len() as u64,
            sha256: sha256_hex(DATA),
        }],
        delta: None,
    }
}

/// Writes `manifest`'s bundle (its entry, then `end` as the tar's end)
/// and its whole-file signature under `dir/name`.
fn write_bundle(
    key: &SigningKey,
    dir: &Path,
    name: &str,
    manifest: Manifest,
    end: &[u8],
) -> PathBuf {
    let (mut tar, id) = signed_tar(key, manifest, &[regular("files/keadm.tar.gz", DATA)]);
    tar.extend_from_slice(end);
    let (bundle, signature) = sign_whole(key, tar, &id);
    let path = dir.join(format!("{name}.tar.zst"));
    std::fs::write(&path, bundle).unwrap();
    std::fs::write(format!("{}.minisig", path.display()), signature).unwrap();
    path
}

/// A scratch directory and a fresh key pair in it: (dir, key, public key).
fn signer() -> (tempfile::TempDir, SigningKey, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let (key_path, public) = keygen(&tmp.path().join("keys"));
    let key = SigningKey::from_file(&key_path).unwrap();
    (tmp, key, public)
}

fn verify(bundle: &Path, public: &Path) -> Ran {
    run(edgeferry()
        .arg("verify")
        .arg(bundle)
        .arg("--key")
        .arg(public)
        .arg("--json"))
}

/// Exit 4, class integrity, an error naming `names`, on one line, with no
/// control character and no panic.
fn assert_refused(ran: &Ran, names: &str, what: &str) {
    assert_eq!(ran.code, Some(4), "{what}: {}{}", ran.stdout, ran.stderr);
    let failed: serde_json::Value = serde_json::from_str(ran.stdout.trim())
        .unwrap_or_else(|e| panic!("{what}: {e}: {:?}", ran.stdout));
    assert_eq!(failed["ok"], false, "{what}");
    assert_eq!(failed["class"], "integrity", "{what}: {failed}");
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.contains(names),
        "{what}: {error:?} does not name {names}"
    );
    assert!(error.len() < 400, "{what}: unbounded message {error:?}");
    for text in [&ran.stdout, &ran.stderr] {
        assert!(
            !text.contains(['\u{1b}', '\r', '\u{7}']),
            "{what}: a control character reached the terminal: {text:?}"
        );
        assert!(!text.contains("panicked"), "{what}: {text}");
    }
    assert_eq!(
        ran.stdout.trim().lines().count(),
        1,
        "{what}: {}",
        ran.stdout
    );
}

#[test]
fn signed_manifests_with_fields_outside_their_grammar_are_refused_with_exit_4() {
    let (tmp, key, public) = signer();

    let good = write_bundle(&key, tmp.path(), "sane", sane(), &[0u8; 1024]);
    let ran = verify(&good, &public);
    assert_eq!(ran.code, Some(0), "the sane bundle: {}", ran.stderr);

    type Edit = fn(&mut Manifest);
    let cases: &[(&str, &str, Edit)] = &[
        ("a media type with CR/LF", "manifest_media_type", |m| {
            m.images[0].manifest_media_type =
                "application/vnd.oci.image.manifest.v1+json\r\nX-Injected: 1".into()
        }),
        (
            "an index media type with a parameter",
            "index_media_type",
            |m| m.images[0].index_media_type = Some("application/json; charset=utf-8".into()),
        ),
        (
            "a version with shell metacharacters",
            "kubeedge_version",
            |m| m.kubeedge_version = "v1.23.1;$(touch /tmp/pwned)".into(),
        ),
        ("escape bytes in builder", "builder", |m| {
            m.builder = "edgeferry-builder \u{1b}[2J\u{1b}]0;owned\u{7}".into()
        }),
        ("escape bytes in created", "created", |m| {
            m.created = "2025-01-01T00:00:00Z\u{1b}[31m".into()
        }),
        ("a sha512 of zz", "sha512", |m| {
            m.files[0].sha512 = Some("zz".into())
        }),
        ("a file record for an unlisted path", "files/other", |m| {
            m.files[0].path = "files/other".into()
        }),
        ("an image reference that climbs out", "reference", |m| {
            m.images[0].reference = "../../etc/x:1".into()
        }),
        ("an image reference without a registry", "reference", |m| {
            m.images[0].reference = "kubeedge/pause:3.6".into()
        }),
        ("a manifest digest of zz", "manifest_digest", |m| {
            m.images[0].manifest_digest = "sha256:zz".into()
        }),
        ("a platform that climbs out", "platform", |m| {
            m.images[0].platform = "linux/../../x".into()
        }),
    ];
    for (i, (what, names, edit)) in cases.iter().enumerate() {
        let mut manifest = sane();
        edit(&mut manifest);
        let bundle = write_bundle(
            &key,
            tmp.path(),
            &format!("case{i}"),
            manifest,
            &[0u8; 1024],
        );
        assert_refused(&verify(&bundle, &public), names, what);
    }

    // load reads through the same check: nothing reaches the store.
    let mut manifest = sane();
    manifest.images[0].reference = "../../etc/x:1".into();
    let bundle = write_bundle(&key, tmp.path(), "load", manifest, &[0u8; 1024]);
    let store = tmp.path().join("store");
    let ran = run(edgeferry()
        .arg("load")
        .arg(&bundle)
        .arg("--key")
        .arg(&public)
        .arg("--store")
        .arg(&store)
        .arg("--json"));
    assert_refused(&ran, "reference", "load of a climbing reference");
    assert!(
        !store.join("state.json").exists(),
        "a refused load left a store"
    );
}

#[test]
fn a_tar_end_of_one_zero_block_is_refused() {
    let (tmp, key, public) = signer();
    let bundle = write_bundle(&key, tmp.path(), "one-block", sane(), &[0u8; 512]);
    assert_refused(&verify(&bundle, &public), "truncated", "one end block");
}

#[test]
fn a_zero_bomb_after_the_tar_end_is_refused_without_inflating_it() {
    let (tmp, key, public) = signer();
    let (tar, id) = signed_tar(&key, sane(), &[regular("files/keadm.tar.gz", DATA)]);
    // The tar end, then 2 GiB of zeros in one zstd frame: about a megabyte.
    let mut encoder = zstd::Encoder::new(Vec::new(), 1).unwrap();
    encoder.include_checksum(true).unwrap();
    encoder.write_all(&tar).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..2048 {
        encoder.write_all(&zeros).unwrap();
    }
    let compressed = encoder.finish().unwrap();
    assert!(compressed.len() < 4 << 20, "{} bytes", compressed.len());
    let signature = key.sign_bytes(
        &compressed,
        &format!("edgeferry-bundle-file name=crafted id={id}"),
    );
    let bundle = tmp.path().join("bomb.tar.zst");
    std::fs::write(&bundle, &compressed).unwrap();
    std::fs::write(format!("{}.minisig", bundle.display()), signature).unwrap();

    let started = Instant::now();
    let ran = verify(&bundle, &public);
    let took = started.elapsed();
    assert_refused(&ran, "after the end of the tar archive", "a zero bomb");
    // Inflating 2 GiB takes seconds of CPU; the refusal reads a few MiB.
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

/// The response head of `curl -I url` from `interface`, header names in
/// lowercase.
fn head(url: &str) -> Vec<(String, String)> {
    let out = Command::new("curl")
        .args(["-sS", "-I", "--noproxy", "*", "--max-time", "10", url])
        .output()
        .expect("running curl");
    assert!(out.status.success(), "{}", said(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.to_ascii_lowercase(), value.trim().to_string()))
        .collect()
}

#[test]
fn head_v2_says_its_content_length() {
    require_tool("curl", "curl");
    let tmp = tempfile::tempdir().unwrap();
    let store = loaded_sample_store(tmp.path(), "arm64", VERSION);
    let server = Served::start(&store);
    let headers = head(&server.url("/v2/"));
    let length = headers.iter().find(|(name, _)| name == "content-length");
    assert_eq!(
        length.map(|(_, value)| value.as_str()),
        Some("2"),
        "{headers:?}"
    );
}

#[test]
fn one_slow_client_cannot_hold_the_whole_connection_cap() {
    require_tool("curl", "curl");
    let tmp = tempfile::tempdir().unwrap();
    let store = loaded_sample_store(tmp.path(), "arm64", VERSION);
    let server = Served::start_with(
        &store,
        [
            "--max-connections",
            "50",
            "--max-connections-per-client",
            "10",
        ],
    );
    // 60 slowloris connections from 127.0.0.1, each a half-sent request.
    let hog: Vec<TcpStream> = (0..60)
        .map(|_| {
            let mut stream = TcpStream::connect(&server.addr).unwrap();
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            stream
        })
        .collect();
    // A fresh client on another loopback address is served at once, well
    // inside the 10 s header timeout the hog's connections are allowed.
    let started = Instant::now();
    let out = Command::new("curl")
        .args(["-sS", "--noproxy", "*", "--max-time", "5"])
        .args([
            "--interface",
            "127.0.0.3",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .arg(server.url("/healthz"))
        .output()
        .expect("running curl");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200",
        "fresh client after {:?}: {}",
        started.elapsed(),
        said(&out)
    );
    // The hog kept 10; the other 50 were told 503 and closed.
    let (mut refused, mut held) = (0, 0);
    for mut stream in hog {
        stream
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut got = Vec::new();
        match stream.read_to_end(&mut got) {
            // Closed with unread request bytes, the kernel may reset
            // rather than deliver the 503: either way it was refused.
            Ok(_) if got.is_empty() || got.starts_with(b"HTTP/1.1 503") => refused += 1,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => refused += 1,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) && got.is_empty() =>
            {
                held += 1
            }
            other => panic!("unexpected {other:?}: {:?}", String::from_utf8_lossy(&got)),
        }
    }
    assert_eq!((refused, held), (50, 10));
}

#[test]
fn a_rotted_media_type_in_the_store_is_served_untyped_not_a_panic() {
    require_tool("curl", "curl");
    let tmp = tempfile::tempdir().unwrap();
    let store = loaded_sample_store(tmp.path(), "arm64", VERSION);
    // What a store loaded before manifest fields were checked (or a disk
    // that rotted) may hold: media types that are no header value.
    let path = store.join("state.json");
    let mut state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    for section in ["images", "manifests"] {
        for record in state[section].as_object_mut().unwrap().values_mut() {
            record["media_type"] =
                "application/vnd.oci.image.manifest.v1+json\r\nX-Injected: 1".into();
        }
    }
    std::fs::write(&path, serde_json::to_vec(&state).unwrap()).unwrap();
    let server = Served::start(&store);
    let headers = head(&server.url(&format!(
        "/v2/kubeedge/installation-package/manifests/{VERSION}"
    )));
    let field = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(
        field("content-type"),
        Some("application/octet-stream"),
        "{headers:?}"
    );
    assert_eq!(field("x-injected"), None, "{headers:?}");
    assert!(!server.stderr().contains("panicked"), "{}", server.stderr());
}

//! The mirror over TLS (serve's default): curl trusts it by the printed
//! public-key pin or by its CA and nothing else, skopeo and containerd
//! pull through it with that CA, plain HTTP is refused, and nodes join
//! over it both ways: SSH and pull mode.

use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use edgeferry_tests::hosts::TestHosts;
use edgeferry_tests::{
    edgeferry, loaded_sample_store, printed_hosts_files, require_tool, run, run_ok, said, Served,
};
use serde_json::Value;

use crate::serve::Containerd;

const VERSION: &str = "v1.23.1";
const PAUSE: &str = "registry.k8s.io/pause:3.10";
const TOKEN_ENV: &str = "EF_TLS_TEST_TOKEN";
/// Where nodes keep the mirror's CA (installer/src/node/hosts.rs).
const NODE_CA: &str = "/etc/containerd/certs.d/edgeferry-mirror-ca.crt";
/// A pin no key has: 32 zero bytes.
const OTHER_PIN: &str = "sha256//AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

/// The pin as curl's documentation computes it, with openssl.
fn openssl_pin(cert: &Path) -> String {
    let ran = run_ok(Command::new("sh").arg("-c").arg(format!(
        "openssl x509 -in '{}' -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64",
        cert.display()
    )));
    format!("sha256//{}", ran.stdout.trim())
}

/// The banner's `TLS: certificate <path>; key pin <pin> ...` line.
fn banner_tls(banner: &str) -> (String, String) {
    let line = banner
        .lines()
        .find_map(|l| l.strip_prefix("TLS: certificate "))
        .unwrap_or_else(|| panic!("no TLS line in:\n{banner}"));
    let (cert, rest) = line.split_once("; key pin ").unwrap();
    let pin = rest.split_whitespace().next().unwrap();
    (cert.to_string(), pin.to_string())
}

/// curl with `args`: (exit code, stdout).
fn curl(args: &[&str], url: &str) -> (Option<i32>, String) {
    let ran = run(Command::new("curl")
        .args(["-sS", "--noproxy", "*", "-m", "20"])
        .args(args)
        .arg(url));
    (ran.code, ran.stdout)
}

#[test]
fn curl_skopeo_and_containerd_trust_the_site_certificate_and_nothing_else() {
    require_tool("curl", "curl");
    require_tool("openssl", "openssl");
    require_tool("skopeo", "skopeo");
    let tmp = tempfile::tempdir().unwrap();
    let store = loaded_sample_store(tmp.path(), "amd64", VERSION);
    let server = Served::start_https(&store, "127.0.0.1", std::iter::empty::<&str>());
    // A client that connects and never starts a handshake; checked at the end.
    let mut idle = std::net::TcpStream::connect(&server.addr).unwrap();
    let idle_since = Instant::now();

    let banner = &server.banner;
    assert!(
        banner.contains(&format!(" on https://{} ", server.addr)),
        "{banner}"
    );
    assert!(banner.contains("TLS: made the site key"), "{banner}");
    let tls_dir = tmp.path().join("store.tls");
    let cert = tls_dir.join("mirror.crt");
    let (printed_cert, pin) = banner_tls(banner);
    assert_eq!(printed_cert, cert.display().to_string());
    assert_eq!(pin, openssl_pin(&cert), "the printed pin is the key's");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(tls_dir.join("mirror.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the site key is the owner's only");
    let ca_pem = std::fs::read_to_string(&cert).unwrap();
    assert!(
        banner.contains(&format!("=== {NODE_CA} (the mirror's CA)\n{ca_pem}")),
        "{banner}"
    );

    // curl: by the pin, or by the CA; another pin or another CA is refused.
    let sums = std::fs::read_to_string(store.join("SHA256SUMS")).unwrap();
    let url = server.url("/SHA256SUMS");
    assert!(url.starts_with("https://"), "{url}");
    assert_eq!(
        curl(&["-f", "-k", "--pinnedpubkey", &pin], &url),
        (Some(0), sums.clone())
    );
    assert_eq!(
        curl(&["-f", "--cacert", cert.to_str().unwrap()], &url),
        (Some(0), sums.clone())
    );
    // OpenSSL offers AES-256-GCM first; the mirror picks AES-128-GCM, as
    // Go's client would ask (a third less CPU per byte on both sides).
    let handshake = run(Command::new("openssl")
        .args(["s_client", "-brief", "-connect", &server.addr])
        .stdin(std::process::Stdio::null()));
    assert!(
        handshake
            .stderr
            .contains("Ciphersuite: TLS_AES_128_GCM_SHA256"),
        "{}",
        handshake.stderr
    );
    // 90: CURLE_SSL_PINNEDPUBKEYNOTMATCH.
    assert_eq!(
        curl(&["-f", "-k", "--pinnedpubkey", OTHER_PIN], &url).0,
        Some(90)
    );
    let other = tmp.path().join("other.crt");
    run_ok(
        Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=not the mirror",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
                "-keyout",
            ])
            .arg(tmp.path().join("other.key"))
            .arg("-out")
            .arg(&other),
    );
    // 60: CURLE_PEER_FAILED_VERIFICATION.
    assert_eq!(
        curl(&["-f", "--cacert", other.to_str().unwrap()], &url).0,
        Some(60)
    );
    assert_eq!(
        curl(&["-f"], &url).0,
        Some(60),
        "the system CAs do not vouch for it"
    );

    // Plain HTTP on the TLS port: one named refusal, for every path.
    let plain = format!("http://{}/v2/", server.addr);
    let (code, body) = curl(&["-w", "\n%{http_code}"], &plain);
    assert_eq!(code, Some(0));
    assert!(
        body.starts_with("plain HTTP refused: this mirror speaks HTTPS only")
            && body.contains(&format!("use https://{}/v2/", server.addr))
            && body.ends_with("\n400"),
        "{body}"
    );

    // skopeo with the CA in a cert dir; without it, refused.
    let state: Value =
        serde_json::from_slice(&std::fs::read(store.join("state.json")).unwrap()).unwrap();
    let pause_digest = state["images"][PAUSE]["digest"].as_str().unwrap();
    let cert_dir = tmp.path().join("skopeo-certs");
    std::fs::create_dir(&cert_dir).unwrap();
    std::fs::copy(&cert, cert_dir.join("ca.crt")).unwrap();
    let image = format!("docker://{}/{PAUSE}", server.addr);
    let inspected = run_ok(
        Command::new("skopeo")
            .args(["inspect", "--cert-dir"])
            .arg(&cert_dir)
            .arg(&image),
    );
    let inspected: Value = serde_json::from_str(&inspected.stdout).unwrap();
    assert_eq!(inspected["Digest"], pause_digest);
    let untrusted = run(Command::new("skopeo")
        .args(["inspect", "--raw"])
        .arg(&image));
    assert!(
        !untrusted.ok && untrusted.stderr.contains("certificate"),
        "{}",
        untrusted.stderr
    );
    let copied = tmp.path().join("pause-oci");
    run_ok(
        Command::new("skopeo")
            .args(["copy", "--src-cert-dir"])
            .arg(&cert_dir)
            .arg(&image)
            .arg(format!("oci:{}:3.10", copied.display())),
    );
    assert!(copied.join("index.json").exists());

    // containerd through the printed hosts.toml, its ca line included
    // (pointed at this test's copy of the CA file, and the upstream
    // fallback at a closed port, so only the mirror can answer).
    let printed = printed_hosts_files(banner);
    let certs = tmp.path().join("certs.d");
    for (dir, content) in &printed {
        assert!(
            content.contains(&format!(
                "[host.\"https://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = \"{NODE_CA}\"\n",
                server.addr
            )),
            "{dir}: {content}"
        );
        let written = content
            .replace(NODE_CA, cert.to_str().unwrap())
            .replace(
                "server = \"https://registry.k8s.io\"",
                "server = \"https://127.0.0.1:9\"",
            )
            .replace(
                "server = \"https://registry-1.docker.io\"",
                "server = \"https://127.0.0.1:9\"",
            );
        std::fs::create_dir_all(certs.join(dir)).unwrap();
        std::fs::write(certs.join(dir).join("hosts.toml"), written).unwrap();
    }
    let containerd = Containerd::start(&tmp.path().join("containerd"));
    run_ok(
        containerd
            .ctr()
            .args(["image", "pull", "--hosts-dir"])
            .arg(&certs)
            .arg(PAUSE),
    );
    let listed = run_ok(containerd.ctr().args(["image", "ls"])).stdout;
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with(PAUSE) && l.contains(pause_digest)),
        "{listed}"
    );
    drop(containerd);

    // The idle client was dropped by the handshake timeout (10 s).
    idle.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut buf = [0u8; 1];
    let read = idle.read(&mut buf);
    assert!(
        matches!(read, Ok(0))
            || read
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "{read:?} after {:?}",
        idle_since.elapsed()
    );
    assert!(
        idle_since.elapsed() < Duration::from_secs(25),
        "{:?}",
        idle_since.elapsed()
    );
    drop(server);

    // Served again with one more name: the certificate is issued again,
    // the key and so the pin stay; served again the same way: nothing made.
    let again = Served::start_https(&store, "127.0.0.1", ["--tls-name", "mirror.example"]);
    assert!(again.banner.contains("TLS: issued"), "{}", again.banner);
    assert_eq!(banner_tls(&again.banner).1, pin);
    assert_ne!(std::fs::read_to_string(&cert).unwrap(), ca_pem);
    drop(again);
    let same = Served::start_https(&store, "127.0.0.1", ["--tls-name", "mirror.example"]);
    assert!(!same.banner.contains("TLS: issued") && !same.banner.contains("TLS: made"));
    assert_eq!(banner_tls(&same.banner).1, pin);
}

/// One mirror over TLS in pull mode; host 0 joins over SSH (its CA found
/// beside the store), host 1 with the printed one-liner; enrollments and
/// reports over plain HTTP are refused.
#[test]
fn nodes_join_over_tls_by_ssh_and_by_pull() {
    require_tool("curl", "curl");
    let tmp = tempfile::tempdir().unwrap();
    let store = loaded_sample_store(tmp.path(), "amd64", VERSION);
    let hosts = TestHosts::create(2).unwrap();
    // The stand-in cloudcore's own token: edgecore checks it.
    let token = hosts.token();
    let site = tmp.path().join("site");
    std::fs::create_dir(&site).unwrap();
    std::fs::write(
        site.join("site.yaml"),
        format!(
            "cloudcore: {}\ntoken: {{env: {TOKEN_ENV}}}\nname_prefix: pull\n",
            hosts.cloudcore()
        ),
    )
    .unwrap();
    let access_log = tmp.path().join("access.log");
    let mirror = Served::start_site_https(
        &store,
        hosts.control_ip(),
        &site,
        &["--access-log", access_log.to_str().unwrap()],
        &[(TOKEN_ENV, token.as_str())],
    );
    assert!(
        !mirror.banner.contains("WARNING: pull mode over plain HTTP"),
        "{}",
        mirror.banner
    );
    let ca_pem = std::fs::read_to_string(tmp.path().join("store.tls/mirror.crt")).unwrap();
    let (_, pin) = banner_tls(&mirror.banner);

    // SSH join of host 0: --mirror host:port, HTTPS because serve made a
    // certificate beside the store.
    let inventory = tmp.path().join("nodes.yaml");
    std::fs::write(
        &inventory,
        format!(
            "cloudcore: {}\ntoken: {{env: {TOKEN_ENV}}}\nname_prefix: edge\n\
             ssh: {{user: root, key: {}, known_hosts: {}}}\nnodes:\n  - host: {}\n",
            hosts.cloudcore(),
            hosts.client_key().display(),
            hosts.known_hosts().display(),
            hosts.host(0).ip
        ),
    )
    .unwrap();
    let join = |extra: &[&str]| {
        run(edgeferry()
            .args(["join", "-c"])
            .arg(&inventory)
            .arg("--store")
            .arg(&store)
            .arg("--mirror")
            .arg(&mirror.addr)
            .arg("--state-dir")
            .arg(tmp.path().join("state"))
            .args(extra)
            .env(TOKEN_ENV, &token)
            .stdin(std::process::Stdio::null()))
    };
    let plan = join(&["--dry-run", "--json"]);
    let plan: Value =
        serde_json::from_str(&plan.stdout).unwrap_or_else(|e| panic!("{e}: {}", plan.stderr));
    assert_eq!(plan["mirror_url"], format!("https://{}", mirror.addr));
    let joined = join(&[]);
    assert_eq!(joined.code, Some(0), "{}\n{}", joined.stdout, joined.stderr);

    // Pull mode on host 1: the one-liner trusts only the pinned key.
    let ran = run_ok(
        edgeferry()
            .args(["enroll", "create", "--json", "--site-dir"])
            .arg(&site),
    );
    let code = serde_json::from_str::<Value>(&ran.stdout).unwrap()["code"]
        .as_str()
        .unwrap()
        .to_string();
    let line = mirror.one_liner().expect("one-liner");
    assert!(
        line.contains(&format!(
            "curl -fsS -k --pinnedpubkey '{pin}' -o \"$d/join.sh\" https://{}/join.sh",
            mirror.addr
        )),
        "{line}"
    );
    let out = hosts.run_on(1, &line.replace("<CODE>", &code)).unwrap();
    assert!(out.status.success(), "pull join: {}", said(&out));

    for i in 0..2 {
        let name = &hosts.host(i).name;
        let out = hosts.run_on(i, "pidof edgecore").unwrap();
        assert!(out.status.success(), "{name}: edgecore not running");
        let etc = hosts.private(i, "/etc/containerd");
        let ca = etc.join("certs.d/edgeferry-mirror-ca.crt");
        assert_eq!(
            std::fs::read_to_string(&ca).unwrap_or_default(),
            ca_pem,
            "{name}: the mirror's CA file"
        );
        let hosts_toml = std::fs::read_to_string(etc.join("certs.d/docker.io/hosts.toml")).unwrap();
        assert!(
            hosts_toml.contains(&format!(
                "[host.\"https://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = \"{NODE_CA}\"\n",
                mirror.addr
            )),
            "{name}: {hosts_toml}"
        );
    }

    // With TLS on, enrollments and reports over plain HTTP are refused
    // before the code or the key is looked at.
    let ran = run_ok(
        edgeferry()
            .args(["enroll", "create", "--json", "--site-dir"])
            .arg(&site),
    );
    let fresh = serde_json::from_str::<Value>(&ran.stdout).unwrap()["code"]
        .as_str()
        .unwrap()
        .to_string();
    for (path, header) in [
        ("/v1/enroll", format!("X-Edgeferry-Code: {fresh}")),
        (
            "/v1/report",
            "Authorization: Bearer 0123456789abcdef".to_string(),
        ),
    ] {
        let (code, body) = curl(
            &[
                "-X",
                "POST",
                "-H",
                &header,
                "-w",
                "\n%{http_code}",
                "--data-binary",
                "{}",
            ],
            &format!("http://{}{path}", mirror.addr),
        );
        assert_eq!(code, Some(0));
        assert_eq!(
            body,
            format!(
                "plain HTTP refused: this mirror speaks HTTPS only, so enrollment codes, the join token and reports never cross the LAN in cleartext: use https://{}{path}\n\n400",
                mirror.addr
            )
        );
    }
    let listed = run_ok(
        edgeferry()
            .args(["enroll", "list", "--json", "--site-dir"])
            .arg(&site),
    );
    let nodes: Value = serde_json::from_str(&listed.stdout).unwrap();
    assert_eq!(
        nodes["nodes"].as_array().map_or(0, Vec::len),
        1,
        "only host 1 enrolled: {nodes}"
    );
    let log = std::fs::read_to_string(&access_log).unwrap();
    assert!(!log.contains(&token) && !mirror.stderr().contains(&token));
}

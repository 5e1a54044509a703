//! The stand-in cloudcore (and a stand-in kube-apiserver) on the bridge's
//! control address, labelled stand-in. What each part copies of the real
//! cloudcore, line by line, is in docs/standins.md:
//!
//! - the certificate service, TLS on [`CERT_PORT`] with a server
//!   certificate from a per-harness test CA: `GET /ca.crt` (the CA, DER),
//!   `GET /edge.crt` (bearer JWT, `NodeName` header, CSR DER as the body:
//!   the signed certificate, DER), `GET /node/<name>` (keadm's pre-check:
//!   404 unless that name is registered);
//! - the hub, TLS on [`HUB_PORT`] requiring a client certificate from the
//!   test CA: a websocket upgrade on `/<project>/<node>/events`, then the
//!   connection is held open; a node is registered while it holds one;
//! - a kube-apiserver, TLS on [`APISERVER_PORT`] with a bearer token:
//!   `GET /api/v1/nodes/<name>`, Ready=True while the node is connected.
//!
//! Threads and blocking sockets: a test harness serves a few nodes. Every
//! connection has read and write timeouts, and each listener a cap on
//! connections at once.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use edgeferry_bundle::sign::{base64, unbase64};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use ring::hmac;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection, StreamOwned};
use sha2::{Digest, Sha256};

/// cloudhub's websocket port.
pub const HUB_PORT: u16 = 10000;
/// cloudhub's certificate port (keadm's `--certport` default).
pub const CERT_PORT: u16 = 10002;
/// The stand-in kube-apiserver's port.
pub const APISERVER_PORT: u16 = 6443;
/// Connections one listener serves at once; more are closed at accept.
/// Above [`super::MAX_HOSTS`]: every host may hold a hub connection.
const MAX_CONNECTIONS: usize = 2 * super::MAX_HOSTS;
/// A request's head (line and headers) must arrive within this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head and body we read.
const MAX_HEAD: usize = 16 << 10;
const MAX_BODY: usize = 64 << 10;
/// How long a signed edge certificate is valid: cloudcore's default
/// `edgeCertSigningDuration`, 365 days.
const EDGE_CERT_DAYS: i64 = 365;
/// RFC 6455's GUID for `Sec-WebSocket-Accept`.
const WEBSOCKET_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// A test certificate authority: an ECDSA P-256 key and a self-signed CA
/// certificate, as cloudcore makes when its `casecret` is empty.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    der: Vec<u8>,
    /// The key's DER (PKCS#8). Real cloudcore signs join tokens with the
    /// bytes of its CA key's DER (`hubconfig.Config.CaKey`), so do we.
    key_der: Vec<u8>,
}

/// Why the certificate service refused a request: status and body.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal(pub u16, pub &'static str);

impl TestCa {
    pub fn new(name: &str) -> Result<TestCa> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(
            DnType::CommonName,
            format!("{name} (edgeferry test CA, stand-in)"),
        );
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, 1, 3650);
        let der = params.self_signed(&key)?.der().to_vec();
        let key_der = key.serialize_der();
        Ok(TestCa {
            issuer: Issuer::new(params, key),
            der,
            key_der,
        })
    }

    /// The CA certificate, DER: what `/ca.crt` answers.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    pub fn pem(&self) -> String {
        pem("CERTIFICATE", &self.der)
    }

    /// Hex sha256 of the CA's DER: a join token's first part.
    pub fn hash(&self) -> String {
        hex(&Sha256::digest(&self.der))
    }

    /// A join token as cloudcore makes it: `<CA hash>.<JWT>`, the JWT
    /// HS256-signed with the CA key's bytes, `{"exp": exp}` its claims.
    pub fn token(&self, exp: u64) -> String {
        format!("{}.{}", self.hash(), self.jwt(exp))
    }

    fn jwt(&self, exp: u64) -> String {
        let head = b64url(br#"{"alg":"HS256","typ":"JWT"}"#);
        let claims = b64url(format!(r#"{{"exp":{exp}}}"#).as_bytes());
        let signed = format!("{head}.{claims}");
        let key = hmac::Key::new(hmac::HMAC_SHA256, &self.key_der);
        let sig = b64url(hmac::sign(&key, signed.as_bytes()).as_ref());
        format!("{signed}.{sig}")
    }

    /// cloudcore's `verifyAuthorization` for `/edge.crt`: a missing
    /// `Authorization` header or one that is not two words is 401; a JWT
    /// that does not parse, is not HMAC-signed, has a bad signature or has
    /// expired is 400 (jwt-go reports each as a `*ValidationError`, never
    /// equal to `ErrSignatureInvalid`); the body is always "Invalid
    /// authorization token".
    pub fn check_bearer(&self, authorization: Option<&str>, now: u64) -> Result<(), Refusal> {
        const INVALID: &str = "Invalid authorization token";
        let header = authorization.unwrap_or("");
        if header.is_empty() {
            return Err(Refusal(401, INVALID));
        }
        let words: Vec<&str> = header.split(' ').collect();
        if words.len() != 2 {
            return Err(Refusal(401, INVALID));
        }
        let bad = Refusal(400, INVALID);
        let parts: Vec<&str> = words[1].split('.').collect();
        if parts.len() != 3 {
            return Err(bad);
        }
        let json = |part: &str| -> Option<serde_json::Value> {
            serde_json::from_slice(&unb64url(part)?).ok()
        };
        let (Some(head), Some(claims)) = (json(parts[0]), json(parts[1])) else {
            return Err(bad);
        };
        if head["alg"] != "HS256" {
            return Err(bad);
        }
        let key = hmac::Key::new(hmac::HMAC_SHA256, &self.key_der);
        let Some(sig) = unb64url(parts[2]) else {
            return Err(bad);
        };
        let signed = format!("{}.{}", parts[0], parts[1]);
        if hmac::verify(&key, signed.as_bytes(), &sig).is_err() {
            return Err(bad);
        }
        // jwt-go's StandardClaims: exp is optional; when present it must
        // be in the future.
        match claims.get("exp") {
            None => Ok(()),
            Some(exp) => match exp.as_f64() {
                Some(exp) if exp > now as f64 => Ok(()),
                _ => Err(bad),
            },
        }
    }

    /// Signs an edge node's CSR (DER) for `node`: CN `system:node:<node>`,
    /// the CSR's organization, client-auth usage, 365 days. The CSR's
    /// self-signature must hold.
    pub fn sign_csr(&self, csr_der: &[u8], node: &str) -> Result<Vec<u8>> {
        let csr = CertificateSigningRequestParams::from_der(&csr_der.to_vec().into())
            .map_err(|e| anyhow!("not a valid CSR: {e}"))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("system:node:{node}"));
        if let Some(org) = csr.params.distinguished_name.get(&DnType::OrganizationName) {
            params
                .distinguished_name
                .push(DnType::OrganizationName, org.clone());
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        set_validity(&mut params, 0, EDGE_CERT_DAYS);
        Ok(params
            .signed_by(&csr.public_key, &self.issuer)?
            .der()
            .to_vec())
    }

    /// A server certificate and its key (PKCS#8 DER) for `ip`, as
    /// cloudcore makes its own: CN and O `KubeEdge`, the advertised
    /// address as an IP SAN, server-auth usage.
    pub fn server_cert(&self, ip: &str) -> Result<(Vec<u8>, Vec<u8>)> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "KubeEdge");
        params
            .distinguished_name
            .push(DnType::OrganizationName, "KubeEdge");
        params.subject_alt_names = vec![SanType::IpAddress(ip.parse()?)];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        set_validity(&mut params, 1, 3650);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.der().to_vec(), key.serialize_der()))
    }
}

/// Stand-in for KubeEdge's cloudcore (see the module docs). Its CA and
/// registered nodes outlive [`StandinCloudcore::stop`], as a real
/// cloudcore's secrets outlive a restart.
pub(super) struct StandinCloudcore {
    ip: String,
    shared: Arc<Shared>,
    running: Mutex<Option<Listeners>>,
}

struct Shared {
    ca: TestCa,
    /// Bearer token of the stand-in kube-apiserver.
    api_token: String,
    /// The hub closes every connection while this is set.
    refuse_hub: AtomicBool,
    /// Node name -> hub connections it holds now.
    connected: Mutex<BTreeMap<String, usize>>,
    /// Every node that ever held a hub connection: the Node objects.
    registered: Mutex<BTreeSet<String>>,
    cert: ServerConfigs,
}

struct ServerConfigs {
    plain: Arc<ServerConfig>,
    client_auth: Arc<ServerConfig>,
}

struct Listeners {
    stop: Arc<AtomicBool>,
    threads: Vec<(SocketAddr, JoinHandle<()>)>,
}

#[derive(Clone, Copy)]
enum Service {
    Cert,
    Hub,
    Api,
}

impl StandinCloudcore {
    pub(super) fn start(ip: &str) -> Result<StandinCloudcore> {
        let ca = TestCa::new("cloudcore")?;
        let (cert, key) = ca.server_cert(ip)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = vec![CertificateDer::from(cert)];
        let key = || PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.clone()));
        let plain = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain.clone(), key())?;
        let mut roots = RootCertStore::empty();
        roots.add(CertificateDer::from(ca.der().to_vec()))?;
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                .build()?;
        let client_auth = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key())?;
        let api_token = format!("edgeferry-standin-apiserver-{}", &ca.hash()[..16]);
        let cloudcore = StandinCloudcore {
            ip: ip.to_string(),
            shared: Arc::new(Shared {
                ca,
                api_token,
                refuse_hub: AtomicBool::new(false),
                connected: Mutex::new(BTreeMap::new()),
                registered: Mutex::new(BTreeSet::new()),
                cert: ServerConfigs {
                    plain: Arc::new(plain),
                    client_auth: Arc::new(client_auth),
                },
            }),
            running: Mutex::new(None),
        };
        cloudcore.start_listeners()?;
        Ok(cloudcore)
    }

    pub(super) fn ca(&self) -> &TestCa {
        &self.shared.ca
    }

    pub(super) fn api_token(&self) -> &str {
        &self.shared.api_token
    }

    /// Starts the listeners again after [`StandinCloudcore::stop`] (no-op
    /// when they run).
    pub(super) fn start_listeners(&self) -> Result<()> {
        let mut running = super::lock(&self.running);
        if running.is_some() {
            return Ok(());
        }
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let mut made = || -> Result<()> {
            for (port, service) in [
                (HUB_PORT, Service::Hub),
                (CERT_PORT, Service::Cert),
                (APISERVER_PORT, Service::Api),
            ] {
                let addr: SocketAddr = format!("{}:{port}", self.ip).parse()?;
                let listener = TcpListener::bind(addr)
                    .with_context(|| format!("stand-in cloudcore: binding {addr}"))?;
                let stop = Arc::clone(&stop);
                let shared = Arc::clone(&self.shared);
                let thread = std::thread::Builder::new()
                    .name(format!("cloudcore-{port}"))
                    .spawn(move || accept_loop(listener, service, shared, stop))?;
                threads.push((addr, thread));
            }
            Ok(())
        };
        let result = made();
        let listeners = Listeners { stop, threads };
        if let Err(e) = result {
            listeners.shut();
            return Err(e);
        }
        *running = Some(listeners);
        Ok(())
    }

    /// Closes the listeners and every open connection: cloudcore is down
    /// (connections to its ports are refused).
    pub(super) fn stop(&self) {
        if let Some(listeners) = super::lock(&self.running).take() {
            listeners.shut();
        }
    }

    pub(super) fn set_refuse_hub(&self, refuse: bool) {
        self.shared.refuse_hub.store(refuse, Ordering::SeqCst);
    }

    pub(super) fn connected(&self) -> Vec<String> {
        super::lock(&self.shared.connected)
            .keys()
            .cloned()
            .collect()
    }
}

impl Listeners {
    fn shut(self) {
        self.stop.store(true, Ordering::SeqCst);
        for (addr, thread) in self.threads {
            // Wakes the blocking accept; it sees the flag and returns.
            let _ = TcpStream::connect_timeout(&addr, Duration::from_secs(1));
            let _ = thread.join();
        }
    }
}

impl Drop for StandinCloudcore {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(
    listener: TcpListener,
    service: Service,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
) {
    let active = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(conn) = conn else { continue };
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::SeqCst);
            let _ = conn.shutdown(Shutdown::Both);
            continue;
        }
        let (shared, stop, done) = (Arc::clone(&shared), Arc::clone(&stop), Arc::clone(&active));
        let spawned = std::thread::Builder::new()
            .name("cloudcore-conn".into())
            .spawn(move || {
                let _ = serve(conn, service, &shared, &stop);
                done.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            active.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

type Tls = StreamOwned<ServerConnection, TcpStream>;

struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn serve(conn: TcpStream, service: Service, shared: &Shared, stop: &AtomicBool) -> Result<()> {
    conn.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    conn.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    if matches!(service, Service::Hub) && shared.refuse_hub.load(Ordering::SeqCst) {
        let _ = conn.shutdown(Shutdown::Both);
        return Ok(());
    }
    let config = match service {
        Service::Hub => Arc::clone(&shared.cert.client_auth),
        Service::Cert | Service::Api => Arc::clone(&shared.cert.plain),
    };
    let mut tls = StreamOwned::new(ServerConnection::new(config)?, conn);
    let request = read_request(&mut tls)?;
    match service {
        Service::Cert => {
            let (status, body) = cert_service(shared, &request);
            respond(&mut tls, status, "application/octet-stream", &[], &body)
        }
        Service::Api => {
            let (status, body) = apiserver(shared, &request);
            respond(&mut tls, status, "application/json", &[], body.as_bytes())
        }
        Service::Hub => hub(shared, stop, request, tls),
    }
}

/// `/ca.crt`, `/edge.crt`, `/node/<name>`, as cloudcore's httpserver.
fn cert_service(shared: &Shared, r: &Request) -> (u16, Vec<u8>) {
    if r.method != "GET" {
        return (405, b"405 method not allowed".to_vec());
    }
    if r.path == "/ca.crt" {
        return (200, shared.ca.der().to_vec());
    }
    if r.path == "/edge.crt" {
        if let Err(Refusal(status, body)) = shared
            .ca
            .check_bearer(r.header("authorization"), unix_now())
        {
            return (status, body.as_bytes().to_vec());
        }
        let node = r.header("nodename").unwrap_or("");
        // cloudcore only logs a CSR it cannot read or sign and answers
        // 200 with an empty body.
        return match shared.ca.sign_csr(&r.body, node) {
            Ok(der) => (200, der),
            Err(_) => (200, Vec::new()),
        };
    }
    if let Some(name) = r.path.strip_prefix("/node/") {
        if name.is_empty() || name.contains('/') {
            return (404, b"404 page not found".to_vec());
        }
        // A node that went away (reset) may join again under its name:
        // tests reset and rejoin, where a real site deletes the Node.
        return if super::lock(&shared.connected).contains_key(name) {
            (200, b"Node found".to_vec())
        } else {
            (404, b"Node not found".to_vec())
        };
    }
    (404, b"404 page not found".to_vec())
}

/// `GET /api/v1/nodes/<name>`: the Node, Ready=True while it holds a hub
/// connection, Ready=False (NodeStatusUnknown) once it has lost it; 404
/// for a node that never registered; 401 without the bearer token.
fn apiserver(shared: &Shared, r: &Request) -> (u16, String) {
    let status = |code: u16, reason: &str, message: &str| {
        (
            code,
            serde_json::json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure", "message": message, "reason": reason, "code": code,
            })
            .to_string(),
        )
    };
    let want = format!("Bearer {}", shared.api_token);
    if r.header("authorization") != Some(want.as_str()) {
        return status(401, "Unauthorized", "Unauthorized");
    }
    let Some(name) = r.path.strip_prefix("/api/v1/nodes/") else {
        return status(
            404,
            "NotFound",
            "the server could not find the requested resource",
        );
    };
    if r.method != "GET" || name.is_empty() || name.contains('/') {
        return status(
            405,
            "MethodNotAllowed",
            "the server does not allow this method",
        );
    }
    if !super::lock(&shared.registered).contains(name) {
        return status(404, "NotFound", &format!("nodes \"{name}\" not found"));
    }
    let ready = super::lock(&shared.connected).contains_key(name);
    let condition = if ready {
        serde_json::json!({"type": "Ready", "status": "True", "reason": "EdgeReady",
            "message": "edge is posting ready status"})
    } else {
        serde_json::json!({"type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown",
            "message": "Kubelet stopped posting node status."})
    };
    let node = serde_json::json!({
        "kind": "Node", "apiVersion": "v1",
        "metadata": {"name": name, "labels": {"node-role.kubernetes.io/edge": ""},
            "annotations": {"edgeferry.io/stand-in": "edgeferry test kube-apiserver, not Kubernetes"}},
        "status": {"conditions": [condition]},
    });
    (200, node.to_string())
}

/// The hub: a websocket upgrade on `/<project>/<node>/events` from a
/// client whose certificate the test CA signed (the TLS handshake already
/// checked it), then the connection is held until the client goes, the
/// hub is told to refuse, or cloudcore stops.
fn hub(shared: &Shared, stop: &AtomicBool, r: Request, mut tls: Tls) -> Result<()> {
    let parts: Vec<&str> = r.path.trim_start_matches('/').split('/').collect();
    let key = r
        .header("sec-websocket-key")
        .unwrap_or("")
        .trim()
        .to_string();
    let upgrade = r
        .header("upgrade")
        .is_some_and(|u| u.eq_ignore_ascii_case("websocket"));
    let node = match parts.as_slice() {
        [project, node, "events"] if !project.is_empty() && !node.is_empty() => node.to_string(),
        _ => return respond(&mut tls, 404, "text/plain", &[], b"404 page not found"),
    };
    if r.method != "GET" || !upgrade || key.is_empty() {
        return respond(&mut tls, 400, "text/plain", &[], b"Bad Request");
    }
    let accept = base64(
        ring::digest::digest(
            &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
            format!("{key}{WEBSOCKET_GUID}").as_bytes(),
        )
        .as_ref(),
    );
    let head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    tls.write_all(head.as_bytes())?;
    tls.flush()?;
    *super::lock(&shared.connected)
        .entry(node.clone())
        .or_default() += 1;
    super::lock(&shared.registered).insert(node.clone());
    tls.sock.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut buf = [0u8; 4096];
    loop {
        if stop.load(Ordering::SeqCst) || shared.refuse_hub.load(Ordering::SeqCst) {
            break;
        }
        match tls.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    {
        let mut connected = super::lock(&shared.connected);
        if let Some(n) = connected.get_mut(&node) {
            *n -= 1;
            if *n == 0 {
                connected.remove(&node);
            }
        }
    }
    tls.conn.send_close_notify();
    let _ = tls.flush();
    let _ = tls.sock.shutdown(Shutdown::Both);
    Ok(())
}

fn read_request(tls: &mut Tls) -> Result<Request> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_HEAD {
            bail!("request head over {MAX_HEAD} bytes");
        }
        if tls.read(&mut byte)? == 0 {
            bail!("connection closed before the request head ended");
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head);
    let mut lines = text.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_string();
    let path = first.next().unwrap_or("").to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let length = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map_or(Ok(0), |(_, v)| v.parse::<usize>())?;
    if length > MAX_BODY {
        bail!("request body of {length} bytes is over {MAX_BODY}");
    }
    let mut body = vec![0u8; length];
    tls.read_exact(&mut body)?;
    Ok(Request {
        method,
        path,
        headers,
        body,
    })
}

fn respond(
    tls: &mut Tls,
    status: u16,
    content_type: &str,
    extra: &[(&str, &str)],
    body: &[u8],
) -> Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Error",
    };
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (n, v) in extra {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    tls.write_all(head.as_bytes())?;
    tls.write_all(body)?;
    tls.flush()?;
    tls.conn.send_close_notify();
    let _ = tls.flush();
    Ok(())
}

pub(super) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// From `days_back` days ago to `days` days from now, whole UTC days.
fn set_validity(params: &mut CertificateParams, days_back: i64, days: i64) {
    let today = (unix_now() / 86_400) as i64;
    let date = |days: i64| {
        let (y, m, d) = edgeferry_bundle::format::civil_from_days(days);
        rcgen::date_time_ymd(y as i32, m as u8, d as u8)
    };
    params.not_before = date(today - days_back);
    params.not_after = date(today + days);
}

pub(super) fn pem(label: &str, der: &[u8]) -> String {
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in base64(der).as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn b64url(bytes: &[u8]) -> String {
    base64(bytes)
        .trim_end_matches('=')
        .replace('+', "-")
        .replace('/', "_")
}

fn unb64url(text: &str) -> Option<Vec<u8>> {
    if text.contains(['+', '/', '=']) {
        return None;
    }
    unbase64(&text.replace('-', "+").replace('_', "/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_as_cloudcore_verifies_them() {
        let ca = TestCa::new("t").unwrap();
        let now = 1_800_000_000;
        let token = ca.token(now + 60);
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 4, "edgecore splits on '.' and wants 4 parts");
        assert_eq!(parts[0], ca.hash());
        assert_eq!(parts[0].len(), 64);
        let jwt = parts[1..].join(".");
        let bearer = format!("Bearer {jwt}");
        assert_eq!(ca.check_bearer(Some(&bearer), now), Ok(()));
        let invalid = "Invalid authorization token";
        assert_eq!(
            ca.check_bearer(Some(&bearer), now + 60),
            Err(Refusal(400, invalid)),
            "expired"
        );
        assert_eq!(ca.check_bearer(None, now), Err(Refusal(401, invalid)));
        assert_eq!(ca.check_bearer(Some(&jwt), now), Err(Refusal(401, invalid)));
        assert_eq!(
            ca.check_bearer(Some(&format!("Bearer  {jwt}")), now),
            Err(Refusal(401, invalid))
        );
        // Another CA's key signed it.
        let other = TestCa::new("o").unwrap().token(now + 60);
        let other_jwt = other.split_once('.').unwrap().1;
        assert_eq!(
            ca.check_bearer(Some(&format!("Bearer {other_jwt}")), now),
            Err(Refusal(400, invalid))
        );
        // A flipped claim breaks the signature.
        let mut forged: Vec<String> = jwt.split('.').map(String::from).collect();
        forged[1] = b64url(format!(r#"{{"exp":{}}}"#, now + 9999).as_bytes());
        assert_eq!(
            ca.check_bearer(Some(&format!("Bearer {}", forged.join("."))), now),
            Err(Refusal(400, invalid))
        );
        assert_eq!(
            ca.check_bearer(Some("Bearer not-a-jwt"), now),
            Err(Refusal(400, invalid))
        );
        // The signature is HMAC-SHA256 over "head.claims" with the CA key.
        let key = hmac::Key::new(hmac::HMAC_SHA256, &ca.key_der);
        let sig = unb64url(parts[3]).unwrap();
        hmac::verify(&key, format!("{}.{}", parts[1], parts[2]).as_bytes(), &sig).unwrap();
    }

    #[test]
    fn csrs_are_signed_for_the_node_by_the_ca() {
        let ca = TestCa::new("t").unwrap();
        let edge_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "kubeedge.io");
        params
            .distinguished_name
            .push(DnType::OrganizationName, "kubeEdge");
        let csr = params.serialize_request(&edge_key).unwrap();
        let der = ca.sign_csr(csr.der(), "edge-7").unwrap();

        // openssl reads it back and checks it against the CA.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("edge.pem"), pem("CERTIFICATE", &der)).unwrap();
        let out = std::process::Command::new("openssl")
            .args([
                "x509",
                "-noout",
                "-subject",
                "-ext",
                "extendedKeyUsage",
                "-in",
            ])
            .arg(dir.path().join("edge.pem"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("CN = system:node:edge-7"), "{text}");
        assert!(text.contains("O = kubeEdge"), "{text}");
        assert!(text.contains("TLS Web Client Authentication"), "{text}");
        let out = std::process::Command::new("openssl")
            .args(["verify", "-purpose", "sslclient", "-CAfile"])
            .arg(dir.path().join("ca.pem"))
            .arg(dir.path().join("edge.pem"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );

        // The public key is the CSR's.
        let out = std::process::Command::new("openssl")
            .args(["x509", "-noout", "-pubkey", "-in"])
            .arg(dir.path().join("edge.pem"))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            edge_key.public_key_pem()
        );

        // Garbage, and a CSR whose signature does not hold, are refused.
        assert!(ca.sign_csr(b"not a csr", "edge-7").is_err());
        let mut broken = csr.der().to_vec();
        let last = broken.len() - 1;
        broken[last] ^= 1;
        assert!(ca.sign_csr(&broken, "edge-7").is_err());
    }

    #[test]
    fn b64url_round_trips_without_padding() {
        for len in 0..8 {
            let data: Vec<u8> = (0..len).map(|i| (i * 77 + 250) as u8).collect();
            let text = b64url(&data);
            assert!(!text.contains(['=', '+', '/']));
            assert_eq!(unb64url(&text), Some(data));
        }
    }
}

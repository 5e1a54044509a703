//! The mirror's TLS identity: the operator's certificate and key
//! (`--tls-cert/--tls-key`), or a site key and self-signed certificate
//! made once beside the store, so TLS needs no PKI. Also the rustls server
//! config, and the one computation of the public-key pin the pull-mode
//! one-liner carries (`curl --pinnedpubkey sha256//<base64>`).
//!
//! ```text
//! <store>.tls/            beside the store (a load swaps the store itself)
//!   mirror.key            the site key, ECDSA P-256, PKCS#8 PEM, mode 0600
//!   mirror.crt            self-signed, CA:TRUE, SAN = every name it serves
//!   names.json            the SAN list mirror.crt was issued for
//! ```
//!
//! The key is made once and kept, so the pin never changes; the
//! certificate is issued again (same key) only when `serve` is asked to
//! answer on a name it does not cover.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

pub const KEY_FILE: &str = "mirror.key";
pub const CERT_FILE: &str = "mirror.crt";
pub const NAMES_FILE: &str = "names.json";

/// A CA file for nodes larger than this is refused: it goes into sh.
const MAX_CA_BYTES: u64 = 64 * 1024;

/// Where `serve` keeps the site key and certificate for `store`:
/// `<store>.tls` beside it. Not inside: a load swaps the store directory.
pub fn site_dir(store: &Path) -> PathBuf {
    let name = store
        .file_name()
        .map_or_else(|| "store".into(), |n| n.to_string_lossy().to_string());
    store
        .parent()
        .unwrap_or(Path::new("."))
        .join(format!("{name}.tls"))
}

/// What the mirror presents and what nodes are told to trust.
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// PEM of the certificate(s) nodes trust for the mirror.
    pub ca_pem: String,
    /// `sha256//<base64>` of the server key's SubjectPublicKeyInfo.
    pub pin: String,
    /// Where the certificate came from, for the banner.
    pub origin: String,
    /// Set when this start made or re-issued something.
    pub note: Option<String>,
}

/// `--tls-cert`, `--tls-key` and, if the certificate is not self-signed,
/// `--tls-ca` (what nodes trust; else the certificate file itself).
pub fn from_files(cert: &Path, key: &Path, ca: Option<&Path>) -> Result<Identity> {
    let chain = read_certs(cert)?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        anyhow::anyhow!(
            "--tls-key {}: no private key in it ({e}): give a PEM key (PKCS#8, PKCS#1 or SEC1)",
            key.display()
        )
    })?;
    let ca_path = ca.unwrap_or(cert);
    let ca_pem = read_ca_pem(ca_path)?;
    let pin = pin(&key_der).with_context(|| format!("--tls-key {}", key.display()))?;
    Ok(Identity {
        chain,
        key: key_der,
        ca_pem,
        pin,
        origin: cert.display().to_string(),
        note: None,
    })
}

/// The site identity in `dir` (made when missing), with a certificate
/// covering every name in `names` (IP addresses or DNS names).
pub fn site_identity(dir: &Path, names: &BTreeSet<String>) -> Result<Identity> {
    if names.is_empty() {
        bail!("TLS: no address to put in the mirror's certificate: pass --listen <LAN IP>:PORT, --advertise HOST:PORT or --tls-name NAME (or serve --plain-http)");
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    set_mode(dir, 0o700)?;
    let key_path = dir.join(KEY_FILE);
    let cert_path = dir.join(CERT_FILE);
    let names_path = dir.join(NAMES_FILE);
    let mut notes = Vec::new();
    let key_pair = match std::fs::read_to_string(&key_path) {
        Ok(text) => rcgen::KeyPair::from_pem(&text).map_err(|e| {
            anyhow::anyhow!(
                "{} is not a usable key ({e}): remove it and start serve again to make a new one (nodes then need the new pin and CA)",
                key_path.display()
            )
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key_pair = rcgen::KeyPair::generate().context("making the site key")?;
            edgeferry_bundle::atomic::write_file(
                &key_path,
                key_pair.serialize_pem().as_bytes(),
                0o600,
            )?;
            notes.push(format!("made the site key {}", key_path.display()));
            key_pair
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", key_path.display())),
    };
    let issued: BTreeSet<String> = std::fs::read(&names_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let have_cert = cert_path.exists() && notes.is_empty();
    let ca_pem = if have_cert && names.is_subset(&issued) {
        read_ca_pem(&cert_path)?
    } else {
        let all: BTreeSet<String> = issued.union(names).cloned().collect();
        let pem = self_signed(&key_pair, &all)?;
        edgeferry_bundle::atomic::write_file(&cert_path, pem.as_bytes(), 0o644)?;
        edgeferry_bundle::atomic::write_file(
            &names_path,
            serde_json::to_string(&all)?.as_bytes(),
            0o644,
        )?;
        let list = all.iter().cloned().collect::<Vec<_>>().join(", ");
        if have_cert {
            let new: Vec<&str> = names.difference(&issued).map(String::as_str).collect();
            notes.push(format!(
                "issued {} again for {} (it did not cover {}); the key and the pin stay, nodes need the new certificate as their CA file (edgeferry join installs it)",
                cert_path.display(),
                list,
                new.join(", ")
            ));
        } else {
            notes.push(format!(
                "made the certificate {} for {list}",
                cert_path.display()
            ));
        }
        pem
    };
    let chain = vec![CertificateDer::from_pem_slice(ca_pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("{}: {e}", cert_path.display()))?];
    let key = PrivateKeyDer::Pkcs8(key_pair.serialize_der().into());
    let pin = pin(&key)?;
    Ok(Identity {
        chain,
        key,
        ca_pem,
        pin,
        origin: cert_path.display().to_string(),
        note: (!notes.is_empty()).then(|| format!("TLS: {}", notes.join("; "))),
    })
}

/// The rustls server config: ring, TLS 1.2 and 1.3, HTTP/1.1 by ALPN,
/// AES-128-GCM chosen whenever the client offers it.
pub fn server_config(identity: &Identity) -> Result<Arc<rustls::ServerConfig>> {
    let mut provider = rustls::crypto::ring::default_provider();
    // Every byte of a blob is encrypted once per pull, so the suite sets the
    // mirror's CPU cost per GB. AES-128-GCM is TLS 1.3's mandatory suite and
    // what Go (containerd, the real client) offers first on AES hardware;
    // OpenSSL clients (curl, wrk) list AES-256-GCM first, which costs both
    // sides about a third more for no gain a mirror of public, digest-checked
    // content needs. The stable sort keeps ring's order otherwise.
    provider
        .cipher_suites
        .sort_by_key(|suite| !is_aes128_gcm(suite.suite()));
    let provider = Arc::new(provider);
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())
        .with_context(|| {
            format!(
                "the TLS certificate {} and its key are not a pair: give the key the certificate was issued for",
                identity.origin
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Our order, not the client's: see the sort above.
    config.ignore_client_order = true;
    Ok(Arc::new(config))
}

fn is_aes128_gcm(suite: rustls::CipherSuite) -> bool {
    matches!(
        suite,
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
            | rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            | rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
    )
}

/// The PEM nodes trust for the mirror, for `edgeferry join`: `--mirror-ca`
/// if given, else the site certificate `serve` made beside `store`, else
/// `None` (the mirror speaks plain HTTP).
pub fn node_ca(store: &Path, explicit: Option<&Path>) -> Result<Option<String>> {
    if let Some(path) = explicit {
        return read_ca_pem(path).map(Some);
    }
    let site = site_dir(store).join(CERT_FILE);
    if site.exists() {
        return read_ca_pem(&site).map(Some);
    }
    Ok(None)
}

/// `sha256//<base64 of sha256(SubjectPublicKeyInfo)>`: what curl's
/// `--pinnedpubkey` takes, and what `openssl x509 -pubkey | openssl pkey
/// -pubin -outform der | openssl dgst -sha256 -binary | base64` prints.
pub fn pin(key: &PrivateKeyDer<'_>) -> Result<String> {
    let signing = rustls::crypto::ring::sign::any_supported_type(key)
        .context("the key is not RSA, ECDSA or Ed25519")?;
    let spki = signing
        .public_key()
        .context("the key's public half cannot be encoded")?;
    let digest = edgeferry_bundle::hashing::sha256(spki.as_ref());
    Ok(format!(
        "sha256//{}",
        edgeferry_bundle::sign::base64(&digest)
    ))
}

fn self_signed(key_pair: &rcgen::KeyPair, names: &BTreeSet<String>) -> Result<String> {
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "edgeferry site mirror");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::KeyCertSign,
    ];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    params.serial_number = Some(rcgen::SerialNumber::from_slice(
        &now.as_nanos().to_be_bytes()[4..],
    ));
    for name in names {
        params.subject_alt_names.push(match name.parse::<IpAddr>() {
            Ok(ip) => rcgen::SanType::IpAddress(ip),
            Err(_) => rcgen::SanType::DnsName(name.clone().try_into().map_err(|_| {
                anyhow::anyhow!("TLS name {name:?} is neither an IP address nor a DNS name")
            })?),
        });
    }
    let cert = params
        .self_signed(key_pair)
        .context("making the site certificate")?;
    Ok(cert.pem())
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading {}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        bail!(
            "{} holds no PEM certificate: give the mirror's certificate (and its chain)",
            path.display()
        );
    }
    Ok(certs)
}

/// A CA file for nodes: bounded, and only PEM certificates.
fn read_ca_pem(path: &Path) -> Result<String> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    if len > MAX_CA_BYTES {
        bail!(
            "{} is {len} bytes: a CA file for nodes is at most {MAX_CA_BYTES}",
            path.display()
        );
    }
    read_certs(path)?;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{} is not text: give a PEM file", path.display()))?;
    Ok(text)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_site_key_is_made_once_and_the_certificate_reissued_only_for_new_names() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("store.tls");
        let first = site_identity(&dir, &names(&["10.0.0.5"])).unwrap();
        assert!(first.note.as_deref().unwrap().contains("made the site key"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        let again = site_identity(&dir, &names(&["10.0.0.5"])).unwrap();
        assert_eq!(again.note, None, "covered: nothing made");
        assert_eq!(again.ca_pem, first.ca_pem);

        let more = site_identity(&dir, &names(&["10.0.0.5", "mirror.site"])).unwrap();
        assert!(more.note.as_deref().unwrap().contains("issued"));
        assert_ne!(more.ca_pem, first.ca_pem);
        assert_eq!(more.pin, first.pin, "same key, same pin");
        assert!(first.pin.starts_with("sha256//") && first.pin.len() == 8 + 44);

        let subset = site_identity(&dir, &names(&["mirror.site"])).unwrap();
        assert_eq!(subset.note, None, "a name already covered");
        server_config(&subset).unwrap();
    }

    #[test]
    fn node_ca_is_the_site_certificate_when_serve_made_one() {
        let tmp = tempfile::tempdir().unwrap();
        let store = tmp.path().join("store");
        assert_eq!(node_ca(&store, None).unwrap(), None);
        let made = site_identity(&site_dir(&store), &names(&["127.0.0.1"])).unwrap();
        assert_eq!(node_ca(&store, None).unwrap(), Some(made.ca_pem));
        let junk = tmp.path().join("junk.crt");
        std::fs::write(&junk, "not a certificate").unwrap();
        let err = node_ca(&store, Some(&junk)).unwrap_err().to_string();
        assert!(err.contains("holds no PEM certificate"), "{err}");
    }
}

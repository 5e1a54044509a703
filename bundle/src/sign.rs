//! minisign-compatible signatures, made deterministically.
//!
//! The `minisign` crate's `sign()` mixes random noise into every signature,
//! so two builds of the same inputs would differ in their signature bytes.
//! Reproducible bundles need plain RFC 8032 Ed25519, which is what the
//! stock `minisign` CLI verifies anyway. So: key files are read and written
//! with the `minisign` crate, the signature envelope is written here with
//! `ed25519-dalek`, and verification goes through `minisign-verify`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ed25519_dalek::Signer;

/// Where the secret key's password comes from when it is encrypted.
pub const PASSWORD_ENV: &str = "EDGEFERRY_KEY_PASSWORD";

const UNTRUSTED_COMMENT: &str = "untrusted comment: signature from edgeferry secret key";

pub struct SigningKey {
    key_id: [u8; 8],
    key: ed25519_dalek::SigningKey,
}

impl SigningKey {
    /// Loads a minisign secret key file. An encrypted key is opened with
    /// the password in `EDGEFERRY_KEY_PASSWORD`, or one typed at a terminal.
    pub fn from_file(path: &Path) -> Result<SigningKey> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading secret key {}", path.display()))?;
        let sk_box = || minisign::SecretKeyBox::from_string(&text);
        let secret = match sk_box().and_then(|b| b.into_unencrypted_secret_key()) {
            Ok(secret) => secret,
            Err(_) => {
                let opened = match std::env::var(PASSWORD_ENV) {
                    Ok(pw) => sk_box().and_then(|b| b.into_secret_key(Some(pw))),
                    // With no password given, minisign prompts on the terminal.
                    Err(_) if std::io::stdin().is_terminal() => {
                        sk_box().and_then(|b| b.into_secret_key(None))
                    }
                    Err(_) => bail!(
                        "secret key {} is encrypted: set {PASSWORD_ENV} (stdin is not a terminal, so no prompt)",
                        path.display()
                    ),
                };
                opened.map_err(|_| {
                    anyhow::anyhow!(
                        "secret key {}: wrong password, or not a minisign secret key",
                        path.display()
                    )
                })?
            }
        };
        // SecretKey::to_bytes layout: sig_alg(2) kdf_alg(2) chk_alg(2)
        // salt(32) opslimit(8) memlimit(8) keynum(8) sk(64) chk(32); the
        // first 32 bytes of sk are the Ed25519 seed.
        let raw = secret.to_bytes();
        if raw.len() != 158 {
            bail!(
                "secret key {}: unexpected length, not a minisign Ed25519 key",
                path.display()
            );
        }
        let mut key_id = [0u8; 8];
        key_id.copy_from_slice(&raw[54..62]);
        let mut seed = [0u8; 32];
        seed.copy_from_slice(&raw[62..94]);
        let key = ed25519_dalek::SigningKey::from_bytes(&seed);
        if key.verifying_key().as_bytes()[..] != raw[94..126] {
            bail!(
                "secret key {}: public half does not match, the file is corrupt",
                path.display()
            );
        }
        Ok(SigningKey { key_id, key })
    }

    /// The public key in minisign's file format.
    pub fn public_key_file(&self) -> String {
        let mut raw = Vec::with_capacity(42);
        raw.extend_from_slice(b"Ed");
        raw.extend_from_slice(&self.key_id);
        raw.extend_from_slice(self.key.verifying_key().as_bytes());
        format!(
            "untrusted comment: minisign public key {}\n{}\n",
            key_id_hex(&self.key_id),
            base64(&raw)
        )
    }

    /// Signs data already hashed with BLAKE2b-512 (minisign's `ED` mode).
    pub fn sign_prehashed(&self, prehash: &[u8; 64], trusted_comment: &str) -> String {
        assert!(!trusted_comment.contains('\n'));
        let signature = self.key.sign(prehash).to_bytes();
        let mut sig_line = Vec::with_capacity(74);
        sig_line.extend_from_slice(b"ED");
        sig_line.extend_from_slice(&self.key_id);
        sig_line.extend_from_slice(&signature);
        let mut global = Vec::with_capacity(64 + trusted_comment.len());
        global.extend_from_slice(&signature);
        global.extend_from_slice(trusted_comment.as_bytes());
        let global_signature = self.key.sign(&global).to_bytes();
        format!(
            "{UNTRUSTED_COMMENT}\n{}\ntrusted comment: {trusted_comment}\n{}\n",
            base64(&sig_line),
            base64(&global_signature)
        )
    }

    pub fn sign_bytes(&self, data: &[u8], trusted_comment: &str) -> String {
        self.sign_prehashed(&crate::hashing::blake2b(data), trusted_comment)
    }
}

/// Public keys an installer trusts, each with the minisign key id.
pub struct TrustedKeys {
    keys: Vec<(String, minisign_verify::PublicKey, [u8; 32])>,
}

/// What a good signature tells us.
#[derive(Debug, Clone)]
pub struct Verified {
    pub key_id: String,
    pub trusted_comment: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    #[error("signature is malformed ({0}): copy the .minisig again")]
    Malformed(String),
    #[error("signed by unknown key {key_id}: pass its public key with --key, or rebuild with a trusted key")]
    UnknownKey { key_id: String },
    #[error(
        "signature by key {key_id} does not match the data: the bundle was altered or corrupted"
    )]
    Mismatch { key_id: String },
}

impl TrustedKeys {
    /// Reads minisign public key files. A file may hold several keys (a
    /// trust file): each is a comment line followed by a key line.
    pub fn from_files(paths: &[PathBuf]) -> Result<TrustedKeys> {
        let mut keys = Vec::new();
        for path in paths {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading public key {}", path.display()))?;
            let lines: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter(|l| {
                    !l.is_empty() && !l.starts_with("untrusted comment:") && !l.starts_with('#')
                })
                .collect();
            if lines.is_empty() {
                bail!("public key file {} holds no key", path.display());
            }
            for line in lines {
                keys.push(parse_public_key(line).with_context(|| {
                    format!("public key {}: not a minisign public key", path.display())
                })?);
            }
        }
        Ok(TrustedKeys { keys })
    }

    pub fn from_strings(texts: &[&str]) -> Result<TrustedKeys> {
        let keys = texts
            .iter()
            .map(|t| parse_public_key(t))
            .collect::<Result<Vec<_>>>()?;
        Ok(TrustedKeys { keys })
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Verifies a minisign signature over `data`.
    pub fn verify(&self, data: &[u8], signature_text: &str) -> Result<Verified, SignatureError> {
        let signature = minisign_verify::Signature::decode(signature_text)
            .map_err(|e| SignatureError::Malformed(e.to_string()))?;
        let key_id = signature_key_id(signature_text)?;
        let Some((_, key, _)) = self.keys.iter().find(|(id, _, _)| *id == key_id) else {
            return Err(SignatureError::UnknownKey { key_id });
        };
        key.verify(data, &signature, false)
            .map_err(|_| SignatureError::Mismatch {
                key_id: key_id.clone(),
            })?;
        Ok(Verified {
            key_id,
            trusted_comment: signature.trusted_comment().to_string(),
        })
    }
}

/// A signature matched to the trusted key that made it, for data the
/// caller hashes itself (BLAKE2b-512, as it streams by). minisign-verify
/// hashes internally and cannot take a prehash, and its BLAKE2b was the
/// slowest step of a load, so this half of the check is done here with
/// ed25519-dalek, exactly as minisign defines it.
pub struct StreamCheck {
    pub key_id: String,
    key: ed25519_dalek::VerifyingKey,
    signature: ed25519_dalek::Signature,
    trusted_comment: String,
    global_signature: ed25519_dalek::Signature,
}

impl StreamCheck {
    pub fn trusted_comment(&self) -> &str {
        &self.trusted_comment
    }

    /// Checks the signature over `prehash` and the signed trusted comment.
    pub fn verify_prehashed(&self, prehash: &[u8; 64]) -> Result<(), SignatureError> {
        let mismatch = || SignatureError::Mismatch {
            key_id: self.key_id.clone(),
        };
        self.key
            .verify_strict(prehash, &self.signature)
            .map_err(|_| mismatch())?;
        let mut global = self.signature.to_bytes().to_vec();
        global.extend_from_slice(self.trusted_comment.as_bytes());
        self.key
            .verify_strict(&global, &self.global_signature)
            .map_err(|_| mismatch())
    }
}

impl TrustedKeys {
    /// Matches a signature to its key, to verify a prehash computed later.
    pub fn stream_check(&self, signature_text: &str) -> Result<StreamCheck, SignatureError> {
        let malformed = |what: &str| SignatureError::Malformed(what.to_string());
        let lines: Vec<&str> = signature_text.lines().collect();
        if lines.len() < 4 {
            return Err(malformed("fewer than four lines"));
        }
        let raw =
            unbase64(lines[1].trim()).ok_or_else(|| malformed("signature line is not base64"))?;
        if raw.len() != 74 {
            return Err(malformed("signature line has the wrong length"));
        }
        if &raw[..2] != b"ED" {
            return Err(malformed("not a prehashed (ED) signature"));
        }
        let key_id = key_id_hex(&raw[2..10]);
        let Some((_, _, raw_key)) = self.keys.iter().find(|(id, _, _)| *id == key_id) else {
            return Err(SignatureError::UnknownKey { key_id });
        };
        let trusted_comment = lines[2]
            .strip_prefix("trusted comment: ")
            .ok_or_else(|| malformed("no trusted comment"))?
            .to_string();
        let global =
            unbase64(lines[3].trim()).ok_or_else(|| malformed("global signature is not base64"))?;
        let to_signature = |bytes: &[u8]| {
            <[u8; 64]>::try_from(bytes)
                .map(|b| ed25519_dalek::Signature::from_bytes(&b))
                .map_err(|_| malformed("a signature has the wrong length"))
        };
        Ok(StreamCheck {
            key: ed25519_dalek::VerifyingKey::from_bytes(raw_key)
                .map_err(|_| malformed("trusted key is not a valid Ed25519 key"))?,
            signature: to_signature(&raw[10..74])?,
            global_signature: to_signature(&global)?,
            trusted_comment,
            key_id,
        })
    }
}

fn parse_public_key(text: &str) -> Result<(String, minisign_verify::PublicKey, [u8; 32])> {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("untrusted comment:"))
        .context("no key line")?;
    let raw = unbase64(line).context("key line is not base64")?;
    if raw.len() != 42 || &raw[..2] != b"Ed" {
        bail!("key line is not an Ed25519 minisign key");
    }
    let key = minisign_verify::PublicKey::from_base64(line).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut raw_key = [0u8; 32];
    raw_key.copy_from_slice(&raw[10..42]);
    Ok((key_id_hex(&raw[2..10]), key, raw_key))
}

fn signature_key_id(signature_text: &str) -> Result<String, SignatureError> {
    let line = signature_text
        .lines()
        .nth(1)
        .ok_or_else(|| SignatureError::Malformed("missing signature line".into()))?;
    let raw = unbase64(line.trim())
        .ok_or_else(|| SignatureError::Malformed("signature line is not base64".into()))?;
    if raw.len() != 74 {
        return Err(SignatureError::Malformed(
            "signature line has the wrong length".into(),
        ));
    }
    Ok(key_id_hex(&raw[2..10]))
}

/// minisign prints key ids as the little-endian u64 in upper-case hex.
fn key_id_hex(id: &[u8]) -> String {
    id.iter().rev().map(|b| format!("{b:02X}")).collect()
}

/// How the new secret key is protected.
pub enum Protection {
    Password(String),
    /// minisign asks for the password twice on the terminal.
    Prompt,
    /// For tests only.
    Unencrypted,
}

/// Writes a new key pair as `<out>/edgeferry.key` and `<out>/edgeferry.pub`.
pub fn keygen(out: &Path, protection: Protection) -> Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let secret_path = out.join("edgeferry.key");
    let public_path = out.join("edgeferry.pub");
    for path in [&secret_path, &public_path] {
        if path.exists() {
            bail!(
                "{} already exists: move it away or pick another --out",
                path.display()
            );
        }
    }
    let pair = match protection {
        Protection::Password(pw) => minisign::KeyPair::generate_encrypted_keypair(Some(pw)),
        Protection::Prompt => minisign::KeyPair::generate_encrypted_keypair(None),
        Protection::Unencrypted => minisign::KeyPair::generate_unencrypted_keypair(),
    }
    .map_err(|e| anyhow::anyhow!("generating key pair: {e}"))?;
    let secret_box = pair
        .sk
        .to_box(Some("edgeferry bundle signing key"))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let public_box = pair.pk.to_box().map_err(|e| anyhow::anyhow!("{e}"))?;
    crate::atomic::write_file(&secret_path, secret_box.to_string().as_bytes(), 0o600)?;
    crate::atomic::write_file(&public_path, public_box.to_string().as_bytes(), 0o644)?;
    Ok((secret_path, public_path))
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (RFC 4648 §4).
pub fn base64(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard base64 (padding optional); `None` on a character outside the alphabet.
pub fn unbase64(text: &str) -> Option<Vec<u8>> {
    let text = text.trim_end_matches('=');
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in text.bytes() {
        let v = B64.iter().position(|&x| x == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trip() {
        for len in 0..40 {
            let data: Vec<u8> = (0..len as u8).collect();
            assert_eq!(unbase64(&base64(&data)).unwrap(), data);
        }
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(b"fo"), "Zm8=");
    }

    #[test]
    fn signatures_are_deterministic_and_verify() {
        let dir = tempfile::tempdir().unwrap();
        let (secret, public) = keygen(dir.path(), Protection::Unencrypted).unwrap();
        let key = SigningKey::from_file(&secret).unwrap();
        let a = key.sign_bytes(b"data", "tc");
        assert_eq!(a, key.sign_bytes(b"data", "tc"));
        let trusted = TrustedKeys::from_files(&[public]).unwrap();
        let ok = trusted.verify(b"data", &a).unwrap();
        assert_eq!(ok.trusted_comment, "tc");
        assert!(matches!(
            trusted.verify(b"datA", &a),
            Err(SignatureError::Mismatch { .. })
        ));
        let other = tempfile::tempdir().unwrap();
        let (other_secret, _) = keygen(other.path(), Protection::Unencrypted).unwrap();
        let foreign = SigningKey::from_file(&other_secret)
            .unwrap()
            .sign_bytes(b"data", "tc");
        assert!(matches!(
            trusted.verify(b"data", &foreign),
            Err(SignatureError::UnknownKey { .. })
        ));
        assert_eq!(
            std::fs::read_to_string(dir.path().join("edgeferry.pub"))
                .unwrap()
                .lines()
                .nth(1),
            key.public_key_file().lines().nth(1)
        );
    }
}

//! Keys: each host's ed25519 host key (made in-process, fast for 200
//! hosts), the client keys every sshd host authorizes, and an ssh-agent
//! holding the client key.

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use super::sshd::Spawner;
use super::{lock, ok_output, TestHosts, CLIENT_KEY_PASSPHRASE, EDGE_USER};

impl TestHosts {
    /// The client keys sshd hosts authorize for root and [`EDGE_USER`].
    pub(super) fn client_keys(&self) -> Result<()> {
        let dir = &self.path;
        let keygen = |path: &Path, passphrase: &str, comment: &str| -> Result<String> {
            ok_output(
                Command::new("ssh-keygen")
                    .args(["-q", "-t", "ed25519", "-N"])
                    .arg(passphrase)
                    .arg("-C")
                    .arg(comment)
                    .arg("-f")
                    .arg(path),
            )?;
            public_line(&path.with_extension("pub"))
        };
        let client = keygen(&dir.join("client_ed25519"), "", "edgeferry-tests")?;
        let encrypted = keygen(
            &dir.join("client_ed25519_encrypted"),
            CLIENT_KEY_PASSPHRASE,
            "edgeferry-tests-encrypted",
        )?;
        let keys_dir = dir.join("authorized_keys");
        fs::create_dir(&keys_dir)?;
        for user in ["root", EDGE_USER] {
            let file = keys_dir.join(user);
            fs::write(&file, format!("{client}\n{encrypted}\n"))?;
            fs::set_permissions(&file, fs::Permissions::from_mode(0o644))?;
        }
        fs::set_permissions(&keys_dir, fs::Permissions::from_mode(0o755))?;
        Ok(())
    }

    /// Starts `ssh-agent -D` holding [`TestHosts::client_key`]; returns its
    /// socket. Killed on drop.
    pub fn start_agent(&self) -> Result<PathBuf> {
        let mut agents = lock(&self.agents);
        let sock = self.path.join(format!("agent-{}.sock", agents.len()));
        let mut cmd = Spawner::command("ssh-agent");
        cmd.arg("-D")
            .arg("-a")
            .arg(&sock)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut agent = self.spawner.spawn(cmd)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sock.exists() {
            if let Ok(Some(status)) = agent.try_wait() {
                bail!(
                    "ssh-agent exited ({status}) before creating {}",
                    sock.display()
                );
            }
            if Instant::now() >= deadline {
                let _ = agent.kill();
                let _ = agent.wait();
                bail!("ssh-agent did not create {} in 10s", sock.display());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        agents.push(agent);
        // ssh-agent creates the socket file (bind) a moment before it
        // listens: until then ssh-add gets "Connection refused". Retry
        // briefly rather than race it.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let added = ok_output(
                Command::new("ssh-add")
                    .arg("-q")
                    .arg(self.client_key())
                    .env("SSH_AUTH_SOCK", &sock)
                    .stdin(Stdio::null()),
            );
            match added {
                Ok(_) => return Ok(sock),
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Writes a new ed25519 host key to `path` (0600) and `<path>.pub` in
/// OpenSSH's formats; returns the public line `ssh-ed25519 AAAA…`. Made
/// in-process: one ssh-keygen per host was most of the set-up time of 200.
pub(super) fn write_host_key(path: &Path, comment: &str) -> Result<String> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    fn put(buf: &mut Vec<u8>, bytes: &[u8]) {
        buf.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        buf.extend_from_slice(bytes);
    }
    let mut random = [0u8; 36];
    fs::File::open("/dev/urandom")?.read_exact(&mut random)?;
    let seed: [u8; 32] = random[..32].try_into().expect("32 bytes");
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    let public = key.verifying_key().to_bytes();
    let mut blob = Vec::new();
    put(&mut blob, b"ssh-ed25519");
    put(&mut blob, &public);
    // PROTOCOL.key: unencrypted, one key, check ints, padded to 8.
    let mut private = Vec::new();
    private.extend_from_slice(&random[32..36]);
    private.extend_from_slice(&random[32..36]);
    put(&mut private, b"ssh-ed25519");
    put(&mut private, &public);
    put(&mut private, &key.to_keypair_bytes());
    put(&mut private, comment.as_bytes());
    let mut pad = 1u8;
    while private.len() % 8 != 0 {
        private.push(pad);
        pad += 1;
    }
    let mut file = b"openssh-key-v1\0".to_vec();
    put(&mut file, b"none");
    put(&mut file, b"none");
    put(&mut file, b"");
    file.extend_from_slice(&1u32.to_be_bytes());
    put(&mut file, &blob);
    put(&mut file, &private);
    let mut text = String::from("-----BEGIN OPENSSH PRIVATE KEY-----\n");
    for line in base64(&file).as_bytes().chunks(70) {
        text.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        text.push('\n');
    }
    text.push_str("-----END OPENSSH PRIVATE KEY-----\n");
    let _ = fs::remove_file(path);
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?
        .write_all(text.as_bytes())?;
    let line = format!("ssh-ed25519 {}", base64(&blob));
    let mut pub_path = path.as_os_str().to_owned();
    pub_path.push(".pub");
    fs::write(pub_path, format!("{line} {comment}\n"))?;
    Ok(line)
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (*b as u32) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn public_line(pub_file: &Path) -> Result<String> {
    let line = fs::read_to_string(pub_file)?;
    Ok(line
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" "))
}

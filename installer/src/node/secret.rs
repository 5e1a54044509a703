//! Secrets (join token, SSH passwords, key passphrases) and the redactor
//! that keeps them out of logs, reports, errors and printed commands.

use std::fmt;
use std::sync::{Arc, RwLock};

/// A secret value. `Debug` and `Display` never show it; only `expose`
/// does, at the one place the value goes onto the wire.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

pub const REDACTED: &str = "<redacted>";

/// Every secret known to this run. Anything written to a log, the report,
/// the journal or the terminal goes through `scrub` first, so a secret that
/// a remote command echoes back is caught too.
#[derive(Clone, Default)]
pub struct Redactor(Arc<RwLock<Vec<String>>>);

impl Redactor {
    pub fn add(&self, secret: &Secret) {
        let value = secret.expose();
        // Very short values would redact ordinary words; such secrets are
        // refused when the inventory is read.
        if value.len() >= 4 {
            let mut all = self.0.write().expect("redactor lock");
            if !all.iter().any(|s| s == value) {
                all.push(value.to_string());
                // Longest first, so a secret containing another is
                // replaced whole.
                all.sort_by_key(|s| std::cmp::Reverse(s.len()));
            }
        }
    }

    pub fn scrub(&self, text: &str) -> String {
        let all = self.0.read().expect("redactor lock");
        let mut out = text.to_string();
        for secret in all.iter() {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), REDACTED);
            }
        }
        out
    }

    pub fn scrub_bytes(&self, bytes: &[u8]) -> String {
        self.scrub(&String::from_utf8_lossy(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("abcd.efgh-token");
        assert_eq!(format!("{s} {s:?}"), "<redacted> Secret(<redacted>)");
        let r = Redactor::default();
        r.add(&s);
        r.add(&Secret::new("abcd"));
        assert_eq!(
            r.scrub("--token=abcd.efgh-token and abcd"),
            "--token=<redacted> and <redacted>"
        );
    }
}

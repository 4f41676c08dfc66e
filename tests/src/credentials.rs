//! Root's management-API password: a random one for `cargo xtask run`, kept under
//! `target/keel/` so it survives rebuilds, and a fixed one for the tests. The kernel only
//! ever sees the argon2 hash (`keel.root_hash=`), made with production cost.

use std::fs;
use std::io::Read;
use std::path::PathBuf;
use std::sync::OnceLock;

use keel_xenapi::{hash_password, HashCost};

use crate::error::HarnessError;
use crate::paths;

/// The password the integration tests log in with.
pub const TEST_PASSWORD: &str = "keel-test-password";

/// A password and its PHC hash.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub password: String,
    pub phc: String,
}

impl Credentials {
    /// The kernel command-line word carrying the hash.
    pub fn cmdline_word(&self) -> String {
        format!("keel.root_hash={}", self.phc)
    }
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> HarnessError {
    move |error| HarnessError::Io { what, error }
}

fn random_bytes(n: usize) -> Result<Vec<u8>, HarnessError> {
    let mut buf = vec![0u8; n];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(io("reading /dev/urandom".into()))?;
    Ok(buf)
}

fn hash(password: &str, salt: &[u8]) -> Result<String, HarnessError> {
    hash_password(password.as_bytes(), salt, HashCost::PRODUCTION).map_err(|e| HarnessError::Io {
        what: "hashing the root password".into(),
        error: std::io::Error::other(format!("{e:?}")),
    })
}

/// The fixed test credentials (hashed once per process).
pub fn test_credentials() -> &'static Credentials {
    static CREDS: OnceLock<Credentials> = OnceLock::new();
    CREDS.get_or_init(|| Credentials {
        password: TEST_PASSWORD.into(),
        phc: hash(TEST_PASSWORD, b"keel-test-salt-0").unwrap_or_default(),
    })
}

/// Where `cargo xtask run` keeps root's password.
pub fn dev_password_path() -> PathBuf {
    paths::keel_dir().join("root-password")
}

/// The development credentials: created on first use (a random 20-character password),
/// then read back. The hash is cached beside it and remade if the password file changed.
pub fn dev_credentials() -> Result<(Credentials, bool), HarnessError> {
    let dir = paths::keel_dir();
    fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
    let password_path = dev_password_path();
    let hash_path = dir.join("root-hash");
    let mut created = false;
    let password = match fs::read_to_string(&password_path) {
        Ok(p) if !p.trim().is_empty() => p.trim().to_string(),
        _ => {
            const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
            let password: String = random_bytes(20)?
                .iter()
                .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
                .collect();
            fs::write(&password_path, format!("{password}\n"))
                .map_err(io(format!("writing {}", password_path.display())))?;
            created = true;
            password
        }
    };
    let cached = fs::read_to_string(&hash_path).ok().and_then(|text| {
        let (for_password, phc) = text.split_once('\n')?;
        (for_password == sha_tag(&password)).then(|| phc.trim().to_string())
    });
    let phc = match cached {
        Some(phc) => phc,
        None => {
            let phc = hash(&password, &random_bytes(16)?)?;
            fs::write(&hash_path, format!("{}\n{phc}\n", sha_tag(&password)))
                .map_err(io(format!("writing {}", hash_path.display())))?;
            phc
        }
    };
    Ok((Credentials { password, phc }, created))
}

/// A tag that says which password a cached hash belongs to without storing it twice:
/// the hash is remade when the password file is edited.
fn sha_tag(password: &str) -> String {
    // FNV-1a is enough here: it only detects edits of a file we wrote ourselves.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in password.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("for-password-fnv1a:{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_credentials_hash_verifies_shape() {
        let c = test_credentials();
        let cost = HashCost::PRODUCTION;
        let prefix = format!(
            "$argon2id$v=19$m={},t={},p={}$",
            cost.memory_kib, cost.iterations, cost.parallelism
        );
        assert!(
            c.phc.starts_with(&prefix),
            "{} should start {prefix}",
            c.phc
        );
        assert!(c.cmdline_word().starts_with("keel.root_hash=$argon2id$"));
    }

    #[test]
    fn edits_change_the_tag() {
        assert_ne!(sha_tag("a"), sha_tag("b"));
        assert_eq!(sha_tag("same"), sha_tag("same"));
    }
}

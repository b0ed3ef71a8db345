//! SSH host keys: loaded from `sftp.host_keys`, or generated (ed25519, mode 0600) on first
//! start and reused after, so clients' known_hosts entries stay valid.

use rand::RngCore;
use russh::keys::ssh_key::LineEnding;
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::{HashAlg, PrivateKey};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Why a host key in `sftp.host_keys` cannot be used; the message names the file.
#[derive(Debug, thiserror::Error)]
pub enum HostKeyError {
    /// The file exists but holds no key russh can read.
    #[error("host key {} (sftp.host_keys): {source}", path.display())]
    Load {
        /// The key file.
        path: PathBuf,
        /// russh's reason.
        source: russh::keys::Error,
    },
    /// A new key could not be written.
    #[error("host key {} (sftp.host_keys): {source}", path.display())]
    Write {
        /// The key file.
        path: PathBuf,
        /// The file system's reason.
        source: std::io::Error,
    },
    /// A generated key could not be encoded (a bug in the key library, never the input).
    #[error("host key {} (sftp.host_keys): {source}", path.display())]
    Encode {
        /// The key file.
        path: PathBuf,
        /// The encoder's reason.
        source: russh::keys::ssh_key::Error,
    },
}

/// Loads the key at `path`, generating an ed25519 key there when the file does not exist.
pub fn load_or_generate(path: &Path) -> Result<PrivateKey, HostKeyError> {
    let write = |source| HostKeyError::Write {
        path: path.to_path_buf(),
        source,
    };
    if path.exists() {
        let key =
            russh::keys::load_secret_key(path, None).map_err(|source| HostKeyError::Load {
                path: path.to_path_buf(),
                source,
            })?;
        if matches!(key.algorithm(), russh::keys::Algorithm::Rsa { .. }) {
            tracing::warn!(path = %path.display(),
                "RSA SSH host key: the rsa crate has a timing side channel with no fixed release (RUSTSEC-2023-0071, Marvin); prefer an ed25519 host key");
        }
        return Ok(key);
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(write)?;
    }
    let mut seed = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut seed);
    let key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    let pem = key
        .to_openssh(LineEnding::LF)
        .map_err(|source| HostKeyError::Encode {
            path: path.to_path_buf(),
            source,
        })?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(write)?;
    file.write_all(pem.as_bytes()).map_err(write)?;
    file.sync_all().map_err(write)?;
    tracing::info!(path = %path.display(), "generated a new ed25519 SSH host key");
    Ok(key)
}

/// "SHA256:…" as `ssh-keygen -l` prints it.
pub fn fingerprint(key: &PrivateKey) -> String {
    key.public_key().fingerprint(HashAlg::Sha256).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_once_then_reused_with_private_permissions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys/host_ed25519");
        let first = load_or_generate(&path).expect("generated");
        let again = load_or_generate(&path).expect("loaded");
        assert_eq!(fingerprint(&first), fingerprint(&again));
        assert!(fingerprint(&first).starts_with("SHA256:"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
    }

    #[test]
    fn a_broken_key_file_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bad_key");
        std::fs::write(&path, "not a key").expect("write");
        let err = load_or_generate(&path).expect_err("refused").to_string();
        assert!(err.contains("sftp.host_keys"), "{err}");
    }
}

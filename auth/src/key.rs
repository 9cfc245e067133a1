//! The cluster key: 32 random bytes, hex in a file (`/etc/cm/cm.key` by default) that only the
//! daemons' user may read, like MUNGE's own key. Whoever can read it is a daemon of the cluster.
//! `cmd keygen` makes it; a head makes one where none exists; standalone keeps one in memory.
//! Messages are sealed with XChaCha20-Poly1305 (RustCrypto): its 192-bit nonces can be random.

use crate::AuthError;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

const KEY_LEN: usize = 32;
/// XChaCha20-Poly1305's nonce length.
pub const NONCE_LEN: usize = 24;

/// The key, ready to seal and open.
pub struct ClusterKey {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

fn random<const N: usize>() -> Result<[u8; N], AuthError> {
    let mut bytes = [0u8; N];
    getrandom::getrandom(&mut bytes).map_err(|e| AuthError::Key(format!("the system gave no random bytes: {e}")))?;
    Ok(bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok()).collect()
}

/// What [`ClusterKey::create`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Created {
    New,
    /// A key was there already; it is left as it was.
    Existing,
}

impl ClusterKey {
    fn from_bytes(bytes: &[u8]) -> ClusterKey {
        ClusterKey { cipher: XChaCha20Poly1305::new(chacha20poly1305::Key::from_slice(bytes)) }
    }

    /// A new key that lives only in this process (standalone: head and compute are one process).
    pub fn ephemeral() -> Result<ClusterKey, AuthError> {
        Ok(ClusterKey::from_bytes(&random::<KEY_LEN>()?))
    }

    /// Writes a new key to `path` (mode 0600, its directory made 0755 if missing), unless one is
    /// there already. The file appears whole or not at all (written aside, then linked), so
    /// daemons started together may all call this and all end up with the one key.
    pub fn create(path: &Path) -> Result<Created, AuthError> {
        let fail = |what: &str, e: std::io::Error| AuthError::Key(format!("cannot {what} {}: {e}", path.display()));
        if path.exists() {
            return Ok(Created::Existing);
        }
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| fail("make the directory of", e))?;
        let aside = dir.join(format!(
            ".{}.{}",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("key"),
            hex(&random::<8>()?)
        ));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&aside)
            .map_err(|e| fail("write", e))?;
        let written =
            file.write_all(format!("{}\n", hex(&random::<KEY_LEN>()?)).as_bytes()).and_then(|()| file.sync_all());
        let linked = written.and_then(|()| std::fs::hard_link(&aside, path));
        let _ = std::fs::remove_file(&aside);
        match linked {
            Ok(()) => Ok(Created::New),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(Created::Existing),
            Err(e) => Err(fail("write", e)),
        }
    }

    /// Reads the key at `path`, refusing a file that others than its owner may read or write.
    pub fn load(path: &Path) -> Result<ClusterKey, AuthError> {
        let shown = path.display();
        let meta = std::fs::metadata(path).map_err(|e| {
            AuthError::Key(format!(
                "cannot read the cluster key {shown}: {e}; make it once with `cmd keygen {shown}` and copy it to every node (mode 0600)"
            ))
        })?;
        if !meta.is_file() {
            return Err(AuthError::Key(format!("the cluster key {shown} is not a file")));
        }
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(AuthError::Key(format!(
                "the cluster key {shown} may be read or changed by other users (mode {:o}); run `chmod 600 {shown}`",
                meta.permissions().mode() & 0o777
            )));
        }
        let me = nix::unistd::geteuid().as_raw();
        if meta.uid() != me && me != 0 {
            return Err(AuthError::Key(format!(
                "the cluster key {shown} belongs to uid {}, not to this daemon's uid {me}",
                meta.uid()
            )));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| AuthError::Key(format!("cannot read the cluster key {shown}: {e}")))?;
        match unhex(&text) {
            Some(bytes) if bytes.len() == KEY_LEN => Ok(ClusterKey::from_bytes(&bytes)),
            _ => Err(AuthError::Key(format!(
                "the cluster key {shown} is not {} hex digits; make a new one with `cmd keygen`",
                KEY_LEN * 2
            ))),
        }
    }

    /// Seals `body` under the associated data `aad`, with a fresh random nonce.
    pub(crate) fn seal(&self, aad: &[u8], body: &[u8]) -> Result<([u8; NONCE_LEN], Vec<u8>), AuthError> {
        let nonce = random::<NONCE_LEN>()?;
        let sealed = self
            .cipher
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: body, aad })
            .map_err(|_| AuthError::Key("cannot seal the message".into()))?;
        Ok((nonce, sealed))
    }

    /// Opens what [`ClusterKey::seal`] made, or fails if anything of it was altered.
    pub(crate) fn open(&self, aad: &[u8], nonce: &[u8], sealed: &[u8]) -> Result<Vec<u8>, AuthError> {
        if nonce.len() != NONCE_LEN {
            return Err(AuthError::BadSeal);
        }
        self.cipher.decrypt(XNonce::from_slice(nonce), Payload { msg: sealed, aad }).map_err(|_| AuthError::BadSeal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_made_key_is_private_kept_and_loads() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("etc/cm.key");
        assert_eq!(ClusterKey::create(&path).expect("create"), Created::New);
        let first = std::fs::read_to_string(&path).expect("read");
        assert_eq!(std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777, 0o600);
        assert_eq!(ClusterKey::create(&path).expect("again"), Created::Existing);
        assert_eq!(std::fs::read_to_string(&path).expect("read"), first, "never replaced");
        let key = ClusterKey::load(&path).expect("load");
        let (nonce, sealed) = key.seal(b"aad", b"body").expect("seal");
        assert_eq!(key.open(b"aad", &nonce, &sealed).expect("open"), b"body");
        assert!(key.open(b"other", &nonce, &sealed).is_err());
        let leftovers = std::fs::read_dir(path.parent().expect("dir")).expect("ls").count();
        assert_eq!(leftovers, 1, "nothing written aside is left");
    }

    #[test]
    fn a_key_others_may_read_or_a_malformed_one_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("cm.key");
        ClusterKey::create(&path).expect("create");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = ClusterKey::load(&path).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        std::fs::write(&path, "not hex\n").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert!(ClusterKey::load(&path).unwrap_err().to_string().contains("hex digits"));
        let err = ClusterKey::load(&dir.path().join("missing")).unwrap_err().to_string();
        assert!(err.contains("cmd keygen"), "{err}");
    }
}

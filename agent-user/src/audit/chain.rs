//! Evidence that holds up: per-task hash chains and signed heads.
//!
//! Every record carries `prev` (the `hash` of the previous record of the same task; 64 zeros
//! for the first) and ends with `hash`, the SHA-256 of its own line up to (not including) the
//! `,"hash":...` suffix. A `checkpoint` record signs the chain head (`prev`), the task and the
//! sequence number with the node's ed25519 key, every [`CHECKPOINT_EVERY`] records and right
//! after `task_end`. `warden verify` checks all of it (see [`super::verify`]).
use std::{
    fs,
    io::{self, Write},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::Path,
};

use base64::Engine as _;
use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};

/// Records between two signed checkpoints of a task.
pub const CHECKPOINT_EVERY: u64 = 1000;
/// `prev` of a task's first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Where the node key lives unless told otherwise.
pub const DEFAULT_KEY_PATH: &str = "/var/lib/warden/node.key";

/// Errors with the node key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("node key {path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("node key {path} is not a 32-byte ed25519 seed")]
    Malformed { path: String },
    #[error("node key {path} is readable by others (mode {mode:o}); it must be 0600")]
    Permissions { path: String, mode: u32 },
}

/// The node's signing key.
#[derive(Clone)]
pub struct NodeKey {
    signing: SigningKey,
}

impl NodeKey {
    /// Loads the key at `path`, creating it (and its directory, 0700) on first use.
    pub fn load_or_create(path: &Path) -> Result<Self, KeyError> {
        let p = path.display().to_string();
        let io = |source| KeyError::Io { path: p.clone(), source };
        match fs::read(path) {
            Ok(bytes) => {
                let mode = fs::metadata(path).map_err(io)?.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(KeyError::Permissions { path: p, mode });
                }
                let seed: [u8; 32] = bytes.try_into().map_err(|_| KeyError::Malformed { path: p.clone() })?;
                Ok(Self { signing: SigningKey::from_bytes(&seed) })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if let Some(dir) = path.parent() {
                    fs::create_dir_all(dir).map_err(io)?;
                    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
                }
                let mut seed = [0u8; 32];
                // SAFETY: valid buffer.
                let n = unsafe { libc::getrandom(seed.as_mut_ptr().cast(), seed.len(), 0) };
                if n != 32 {
                    return Err(io(io::Error::last_os_error()));
                }
                let mut f =
                    fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io)?;
                f.write_all(&seed).map_err(io)?;
                Ok(Self { signing: SigningKey::from_bytes(&seed) })
            }
            Err(e) => Err(io(e)),
        }
    }

    /// The public key, hex.
    pub fn public_hex(&self) -> String {
        hex::encode(self.signing.verifying_key().to_bytes())
    }

    /// The public key's 32 bytes.
    pub fn public_bytes(&self) -> [u8; 32] {
        self.signing.verifying_key().to_bytes()
    }

    /// Signs `msg`; the raw 64-byte signature (JWS `EdDSA`).
    pub fn sign_raw(&self, msg: &[u8]) -> [u8; 64] {
        self.signing.sign(msg).to_bytes()
    }

    /// Signs `msg`; base64 signature.
    pub fn sign(&self, msg: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.signing.sign(msg).to_bytes())
    }
}

/// Verifies a base64 signature by a hex public key.
pub fn verify_sig(public_hex: &str, msg: &[u8], sig_b64: &str) -> bool {
    let Ok(pk) = hex::decode(public_hex) else { return false };
    let Ok(pk): Result<[u8; 32], _> = pk.try_into() else { return false };
    let Ok(vk) = VerifyingKey::from_bytes(&pk) else { return false };
    let Ok(sig) = base64::engine::general_purpose::STANDARD.decode(sig_b64) else { return false };
    let Ok(sig): Result<[u8; 64], _> = sig.try_into() else { return false };
    vk.verify(msg, &ed25519_dalek::Signature::from_bytes(&sig)).is_ok()
}

/// What a checkpoint signs.
pub fn checkpoint_message(task: &str, seq: u64, head: &str) -> Vec<u8> {
    format!("warden-checkpoint-v1\n{task}\n{seq}\n{head}").into_bytes()
}

/// SHA-256 hex of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Appends `,"hash":"<sha256 of line>"` inside the closing brace of a serialized record.
pub fn seal(line: &mut String) -> String {
    debug_assert!(line.ends_with('}'));
    line.pop();
    let h = sha256_hex(line.as_bytes());
    line.push_str(",\"hash\":\"");
    line.push_str(&h);
    line.push_str("\"}");
    h
}

/// Splits a sealed line into (the hashed part, the claimed hash), if it is sealed.
pub fn unseal(line: &str) -> Option<(&str, &str)> {
    const SUFFIX: usize = ",\"hash\":\"\"}".len() + 64;
    if line.len() < SUFFIX || !line.ends_with("\"}") {
        return None;
    }
    let cut = line.len() - SUFFIX;
    let tail = &line[cut..];
    if !tail.starts_with(",\"hash\":\"") {
        return None;
    }
    Some((&line[..cut], &tail[9..9 + 64]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_and_unseal_round_trip() {
        let mut line = String::from(r#"{"v":2,"seq":1}"#);
        let h = seal(&mut line);
        let (body, claimed) = unseal(&line).unwrap();
        assert_eq!(claimed, h);
        assert_eq!(sha256_hex(body.as_bytes()), h);
        assert!(line.starts_with(r#"{"v":2,"seq":1,"hash":""#));
        assert!(unseal(r#"{"v":1}"#).is_none());
    }

    #[test]
    fn keys_sign_verify_and_persist() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k/node.key");
        let k = NodeKey::load_or_create(&p).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        let again = NodeKey::load_or_create(&p).unwrap();
        assert_eq!(k.public_hex(), again.public_hex(), "the key persists");
        let sig = k.sign(b"m");
        assert!(verify_sig(&k.public_hex(), b"m", &sig));
        assert!(!verify_sig(&k.public_hex(), b"n", &sig));
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(NodeKey::load_or_create(&p), Err(KeyError::Permissions { .. })));
    }
}

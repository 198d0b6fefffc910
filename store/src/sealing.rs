//! Encryption at rest of personal data and secrets (envelope encryption). Each stored row
//! gets its own random data key; its fields are sealed with AES-256-GCM under that key,
//! bound to the row and field they belong to; the data key itself is sealed under a master
//! key from a mounted secret (`<kid>.key`: 32 bytes, base64), recorded by kid. A new master
//! key takes new writes at once; rows sealed under an older one still open as long as that
//! key is present, and `issuer store rekey` moves them all to the active key. Lookups by
//! email use a keyed hash (HMAC-SHA256), never the plaintext.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use zeroize::Zeroizing;

use qiria_runtime::secret_dir;

const NONCE_LEN: usize = 12;

/// The master keys of the secret directory, and the one new writes use.
pub struct MasterKeys {
    active: String,
    keys: BTreeMap<String, Zeroizing<[u8; 32]>>,
}

impl std::fmt::Debug for MasterKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKeys").field("active", &self.active).field("kids", &self.keys.keys()).finish()
    }
}

/// A sealing or opening failure.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// Unreadable directory or file.
    #[error("reading {path}: {source}")]
    Io {
        /// What.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A key file is not 32 bytes of base64.
    #[error("{0}: a master key is 32 bytes, base64-encoded")]
    BadKey(PathBuf),
    /// No usable active key.
    #[error("no active master key: {0}")]
    NoActiveKey(String),
    /// A row was sealed under a master key that is not loaded.
    #[error("master key `{0}` is not in the secret")]
    UnknownKey(String),
    /// Authentication failed: wrong key, or the data was altered.
    #[error("sealed data does not open (altered, or sealed under another key)")]
    Corrupt,
}

/// A row's data key, sealed under a master key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedKey {
    /// The master key's id.
    pub master_kid: String,
    /// nonce ‖ AES-256-GCM(data key).
    pub wrapped: Vec<u8>,
}

impl MasterKeys {
    /// Loads every `<kid>.key` of `dir`; `active` (or the `active` file, or the only key) seals.
    pub fn load_dir(dir: &Path, active: Option<&str>) -> Result<Self, SealError> {
        let files =
            secret_dir::read(dir, |ext| ext == "key").map_err(|(path, source)| SealError::Io { path, source })?;
        let mut keys = BTreeMap::new();
        for file in files {
            let bad = || SealError::BadKey(file.path.clone());
            let text = std::str::from_utf8(&file.bytes).map_err(|_| bad())?;
            let bytes =
                Zeroizing::new(base64::engine::general_purpose::STANDARD.decode(text.trim()).map_err(|_| bad())?);
            let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| bad())?;
            keys.insert(file.kid, Zeroizing::new(key));
        }
        let kids = keys.keys().cloned().collect();
        let active = secret_dir::active(dir, active, &kids).map_err(SealError::NoActiveKey)?;
        Ok(Self { active, keys })
    }

    /// Writes a new random master key as `<dir>/<kid>.key` (0600); refuses to overwrite.
    pub fn generate(dir: &Path, kid: &str) -> std::io::Result<PathBuf> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut key = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(key.as_mut());
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("{kid}.key"));
        let text = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(key.as_ref()));
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?.write_all(text.as_bytes())?;
        Ok(path)
    }

    /// The kid new rows are sealed under.
    pub fn active_kid(&self) -> &str {
        &self.active
    }

    /// A fresh data key, and its sealed form under the active master key.
    pub fn new_data_key(&self) -> Result<(DataKey, SealedKey), SealError> {
        let mut key = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(key.as_mut());
        let master = self.keys.get(&self.active).ok_or_else(|| SealError::UnknownKey(self.active.clone()))?;
        let wrapped = seal(master, key.as_ref(), b"qiria data key")?;
        Ok((DataKey(key), SealedKey { master_kid: self.active.clone(), wrapped }))
    }

    /// Opens a row's data key.
    pub fn open_data_key(&self, sealed: &SealedKey) -> Result<DataKey, SealError> {
        let master =
            self.keys.get(&sealed.master_kid).ok_or_else(|| SealError::UnknownKey(sealed.master_kid.clone()))?;
        let key = Zeroizing::new(open(master, &sealed.wrapped, b"qiria data key")?);
        let key: [u8; 32] = key.as_slice().try_into().map_err(|_| SealError::Corrupt)?;
        Ok(DataKey(Zeroizing::new(key)))
    }

    /// The email index of every loaded master key (the active one first): rows written
    /// under an older key are found until `rekey` moves them.
    pub fn email_indexes(&self, email: &str) -> Result<Vec<String>, SealError> {
        let mut kids: Vec<&String> = self.keys.keys().collect();
        kids.sort_by_key(|k| *k != &self.active);
        kids.into_iter().filter_map(|kid| self.keys.get(kid)).map(|key| email_index(key, email)).collect()
    }

    /// The email index under the active master key.
    pub fn email_index(&self, email: &str) -> Result<String, SealError> {
        let key = self.keys.get(&self.active).ok_or_else(|| SealError::UnknownKey(self.active.clone()))?;
        email_index(key, email)
    }
}

/// A row's data key (zeroed on drop).
pub struct DataKey(Zeroizing<[u8; 32]>);

impl DataKey {
    /// Seals `plaintext`, bound to `context` (table/row/field).
    pub fn seal(&self, plaintext: &[u8], context: &str) -> Result<Vec<u8>, SealError> {
        seal(&self.0, plaintext, context.as_bytes())
    }

    /// Opens what [`Self::seal`] produced with the same `context`.
    pub fn open(&self, sealed: &[u8], context: &str) -> Result<Vec<u8>, SealError> {
        open(&self.0, sealed, context.as_bytes())
    }
}

fn seal(key: &[u8; 32], plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, SealError> {
    let cipher = Aes256Gcm::new(key.into());
    let mut nonce = [0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let ciphertext =
        cipher.encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext, aad }).map_err(|_| SealError::Corrupt)?;
    let mut out = nonce.to_vec();
    out.extend(ciphertext);
    Ok(out)
}

fn open(key: &[u8; 32], sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, SealError> {
    if sealed.len() < NONCE_LEN {
        return Err(SealError::Corrupt);
    }
    let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
    Aes256Gcm::new(key.into())
        .decrypt(Nonce::from_slice(nonce), Payload { msg: ciphertext, aad })
        .map_err(|_| SealError::Corrupt)
}

fn email_index(master: &[u8; 32], email: &str) -> Result<String, SealError> {
    // A key of its own for the index, derived from the master key.
    let mut derive = <Hmac<Sha256> as Mac>::new_from_slice(master).map_err(|_| SealError::Corrupt)?;
    derive.update(b"qiria email index v1");
    let index_key: Zeroizing<[u8; 32]> = Zeroizing::new(derive.finalize().into_bytes().into());
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(index_key.as_ref()).map_err(|_| SealError::Corrupt)?;
    mac.update(email.trim().to_lowercase().as_bytes());
    Ok(hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_opens_and_detects_tampering_and_context_swaps() {
        let dir = tempfile::tempdir().unwrap();
        MasterKeys::generate(dir.path(), "m1").unwrap();
        let keys = MasterKeys::load_dir(dir.path(), None).unwrap();
        let (data_key, sealed) = keys.new_data_key().unwrap();
        let ct = data_key.seal(b"ada@example.com", "users/1/email").unwrap();
        let reopened = keys.open_data_key(&sealed).unwrap();
        assert_eq!(reopened.open(&ct, "users/1/email").unwrap(), b"ada@example.com");
        assert!(reopened.open(&ct, "users/2/email").is_err(), "bound to its row and field");
        let mut altered = ct.clone();
        altered[15] ^= 1;
        assert!(reopened.open(&altered, "users/1/email").is_err());
        assert_eq!(keys.email_index("Ada@Example.com ").unwrap(), keys.email_index("ada@example.com").unwrap());
    }

    #[test]
    fn older_master_keys_still_open_and_unknown_ones_are_named() {
        let dir = tempfile::tempdir().unwrap();
        MasterKeys::generate(dir.path(), "m1").unwrap();
        let old = MasterKeys::load_dir(dir.path(), None).unwrap();
        let (_, sealed) = old.new_data_key().unwrap();
        MasterKeys::generate(dir.path(), "m2").unwrap();
        let both = MasterKeys::load_dir(dir.path(), Some("m2")).unwrap();
        assert!(both.open_data_key(&sealed).is_ok());
        assert_eq!(both.new_data_key().unwrap().1.master_kid, "m2");
        std::fs::remove_file(dir.path().join("m1.key")).unwrap();
        let only_new = MasterKeys::load_dir(dir.path(), None).unwrap();
        assert!(matches!(only_new.open_data_key(&sealed), Err(SealError::UnknownKey(k)) if k == "m1"));
    }
}

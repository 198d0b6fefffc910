//! Keyed hashing for cache keys: what a token or a request is filed under, without anyone
//! outside being able to make two of them collide.

/// SipHash-1-3 (128-bit) under a key drawn at startup: a PRF, so nobody who does not know
/// the key can make a token collide with another one's cache entry, at a fraction of
/// SHA-256's cost on the hot path.
#[derive(Clone)]
pub struct TokenHasher(siphasher::sip128::SipHasher13);

impl TokenHasher {
    /// A hasher with a fresh random key.
    pub fn random() -> Self {
        use rand::RngCore;
        let mut key = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut key);
        Self(siphasher::sip128::SipHasher13::new_with_key(&key))
    }

    /// The 128-bit hash of `parts`, each length-prefixed so that no two splits collide.
    pub fn hash_parts(&self, parts: &[&[u8]]) -> u128 {
        use siphasher::sip128::Hasher128;
        use std::hash::Hasher;
        let mut h = self.0;
        for part in parts {
            h.write_usize(part.len());
            h.write(part);
        }
        h.finish128().as_u128()
    }

    /// The 128-bit hash of `bytes`.
    pub fn hash(&self, bytes: &[u8]) -> u128 {
        self.hash_parts(&[bytes])
    }
}

/// Cache keys here are already keyed-hash outputs: hashing them again (the caches' default
/// is SipHash) is pure cost. This hasher passes their low 64 bits through.
#[derive(Clone, Copy, Default, Debug)]
pub struct PrehashedKey;

impl std::hash::BuildHasher for PrehashedKey {
    type Hasher = PassThrough;
    fn build_hasher(&self) -> PassThrough {
        PassThrough(0)
    }
}

/// The [`PrehashedKey`] hasher: keeps the last integer written.
#[derive(Debug)]
pub struct PassThrough(u64);

impl std::hash::Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only reached for non-integer keys; fold them in so the hasher stays correct.
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(word);
        }
    }
    fn write_u128(&mut self, value: u128) {
        self.0 = value as u64;
    }
}

//! A hasher for maps whose `u64` keys are already uniformly distributed (connection ids, whose
//! low 32 bits are random and whose high 32 bits are the kernel clock's low bits; hashes
//! computed by a seeded hasher): the key is its own hash, so a lookup costs no SipHash. The
//! bucket comes from the low bits.

use std::{
    collections::HashMap,
    hash::{BuildHasherDefault, Hasher},
};

#[derive(Default)]
pub struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    // Only reached if a key other than a u64 is hashed; still a correct (weak) hash.
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, key: u64) {
        self.0 = key;
    }
}

/// A map keyed by an already well-mixed `u64`.
pub type PrehashedMap<V> = HashMap<u64, V, BuildHasherDefault<Prehashed>>;

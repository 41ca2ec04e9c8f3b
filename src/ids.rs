//! Request ids and the hash mixing that makes them (and unseeded generators' seeds).

use std::time::{SystemTime, UNIX_EPOCH};

/// 24 hex digits from the key and the clock; unique per process, not guessable by design.
pub fn random_hex(key: u64) -> String {
    let t = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    let a = splitmix(t ^ key.rotate_left(32));
    let b = splitmix(a ^ key);
    format!("{:016x}{:08x}", a, b as u32)
}

/// SplitMix64's finalizer: a cheap, well-spread 64-bit mix.
pub fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

//! Deterministic, process-unique identifiers (`call_…`, `chatcmpl-…`, `req_…`).

use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Twelve base-62 digits of `n` (62^12 > 2^64, so this is injective).
fn push_base62(out: &mut String, mut n: u64) {
    for _ in 0..12 {
        out.push(char::from(ALPHABET[(n % 62) as usize]));
        n /= 62;
    }
}

/// A 24-character alphanumeric token, unique within the process: the sequence is
/// deterministic (driven by a global counter) and `splitmix64` is a bijection, so no two
/// calls ever return the same token.
pub fn unique_token() -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut out = String::with_capacity(24);
    push_base62(&mut out, splitmix64(n));
    push_base62(&mut out, splitmix64(n ^ 0x5DEE_CE66_D1CE_CAFE));
    out
}

/// `prefix` followed by a [`unique_token`].
pub fn with_prefix(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + 24);
    out.push_str(prefix);
    out.push_str(&unique_token());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_unique_and_alphanumeric() {
        let a = unique_token();
        let b = unique_token();
        assert_ne!(a, b);
        assert_eq!(a.len(), 24);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert!(with_prefix("call_").starts_with("call_"));
    }
}

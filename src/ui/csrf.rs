//! CSRF tokens: each session has one, sent by its pages in a form field (`csrf`) or, from a
//! script, in the `x-flowgate-csrf` header; every state-changing request must carry it. The
//! session cookie is also `SameSite=Strict`, so this is the second of two locks. Tokens (and
//! session ids) are made by `flowgate_actors::sessions`: 256 random bits.

/// Whether the sent token is the expected one, in time that does not depend on where they
/// differ.
pub fn same(sent: &str, expected: &str) -> bool {
    if sent.len() != expected.len() || expected.is_empty() {
        return false;
    }
    sent.bytes()
        .zip(expected.bytes())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_same_token_passes() {
        let token = flowgate_actors::share::new_token().unwrap();
        assert!(same(&token, &token));
        assert!(!same("", &token));
        assert!(!same(&token[1..], &token));
        assert!(!same("", ""));
        let mut other = token.clone().into_bytes();
        other[5] = if other[5] == b'a' { b'b' } else { b'a' };
        assert!(!same(std::str::from_utf8(&other).unwrap(), &token));
    }
}

//! The Bearer token check. Both sides are hashed first, so the comparison takes the same
//! time whatever the token's length and wherever the first difference is.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Whether `authorization` (the header's value) carries `token`. An empty `token` (a
/// loopback listener without one) lets every call through.
pub fn authorized(token: &str, authorization: Option<&[u8]>) -> bool {
    if token.is_empty() {
        return true;
    }
    let Some(given) = authorization.and_then(bearer) else {
        return false;
    };
    let want = Sha256::digest(token.as_bytes());
    let got = Sha256::digest(given);
    want.as_slice().ct_eq(got.as_slice()).into()
}

/// The credentials of `Bearer <credentials>` (the scheme is case-insensitive, RFC 9110).
fn bearer(header: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = header.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let start = rest.iter().position(|b| *b != b' ')?;
    let credentials = &rest[start..];
    let end = credentials
        .iter()
        .rposition(|b| *b != b' ')
        .map_or(0, |i| i + 1);
    Some(&credentials[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_token_passes() {
        let token = "s3cr3t-admin-token";
        assert!(authorized(token, Some(b"Bearer s3cr3t-admin-token")));
        assert!(authorized(token, Some(b"bearer  s3cr3t-admin-token ")));
        assert!(!authorized(token, None));
        assert!(!authorized(token, Some(b"Bearer s3cr3t-admin-toke")));
        assert!(!authorized(token, Some(b"Bearer s3cr3t-admin-token2")));
        assert!(!authorized(token, Some(b"Basic czNjcjN0")));
        assert!(!authorized(token, Some(b"Bearer ")));
        assert!(!authorized(token, Some(b"Bearer")));
        assert!(!authorized(token, Some(b"s3cr3t-admin-token")));
    }

    #[test]
    fn no_token_configured_lets_every_call_through() {
        assert!(authorized("", None));
        assert!(authorized("", Some(b"Bearer anything")));
    }
}

//! The `token` provider: a short-lived JWT (RFC 7519) signed with the node's ed25519 key
//! (JWS `EdDSA`, RFC 8037), and the JWKS that lets any service check it with a standard JWT
//! library. Written over `ed25519-dalek` directly: one algorithm, no negotiation, so there
//! is no `alg` confusion to get wrong.
use base64::Engine as _;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{CredError, MintCtx, Value};
use crate::audit::chain::NodeKey;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The key id: the RFC 7638 JWK thumbprint of the node key.
pub fn kid(key: &NodeKey) -> String {
    let x = b64(&key.public_bytes());
    // Members in lexicographic order, no whitespace (RFC 7638 §3).
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
    b64(&Sha256::digest(canonical.as_bytes()))
}

/// The JWKS document (`GET /.well-known/jwks.json`).
pub fn jwks(key: &NodeKey) -> serde_json::Value {
    json!({"keys": [{
        "kty": "OKP",
        "crv": "Ed25519",
        "x": b64(&key.public_bytes()),
        "kid": kid(key),
        "alg": "EdDSA",
        "use": "sig",
    }]})
}

/// The SPIFFE-style subject of a task's tokens.
pub fn subject(node: &str, task: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars().map(|c| if c.is_ascii_alphanumeric() || "-._".contains(c) { c } else { '_' }).collect()
    };
    format!("spiffe://warden/node/{}/task/{}", clean(node), clean(task))
}

/// A minted token.
pub struct Token {
    pub value: Value,
    pub jti: String,
}

/// Mints a token for secret `name` of the task in `ctx`, valid from `now` to `exp`.
pub fn mint(ctx: &MintCtx<'_>, name: &str, aud: &str, now: u64, exp: u64) -> Result<Token, CredError> {
    let mut r = [0u8; 16];
    // SAFETY: valid buffer of the given length.
    let n = unsafe { libc::getrandom(r.as_mut_ptr().cast(), r.len(), 0) };
    if n != r.len() as isize {
        return Err(CredError::Other {
            name: name.into(),
            message: format!("no randomness for a token id: {}", std::io::Error::last_os_error()),
        });
    }
    let jti = hex::encode(r);
    let header = json!({"alg": "EdDSA", "typ": "JWT", "kid": kid(ctx.key)});
    let claims = json!({
        "iss": ctx.issuer,
        "sub": subject(ctx.node, ctx.task),
        "aud": aud,
        "iat": now,
        "nbf": now,
        "exp": exp,
        "jti": jti,
        "warden_task": ctx.task,
        "warden_secret": name,
        "scope_hash": ctx.scope_hash,
    });
    let signing_input =
        format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
    let sig = ctx.key.sign_raw(signing_input.as_bytes());
    let jwt = format!("{signing_input}.{}", b64(&sig));
    Ok(Token { value: Value::new(jwt.into_bytes()), jti })
}

/// Checks a token's signature against `key` and returns its claims (for tests and
/// `warden`-side checks; services use their own JWT library with the JWKS).
pub fn verify(key: &NodeKey, jwt: &str) -> Option<serde_json::Value> {
    let (input, sig) = jwt.rsplit_once('.')?;
    let (h, c) = input.split_once('.')?;
    let dec = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s).ok();
    let header: serde_json::Value = serde_json::from_slice(&dec(h)?).ok()?;
    if header["alg"] != "EdDSA" {
        return None;
    }
    let sig: [u8; 64] = dec(sig)?.try_into().ok()?;
    let vk = ed25519_dalek::VerifyingKey::from_bytes(&key.public_bytes()).ok()?;
    vk.verify_strict(input.as_bytes(), &ed25519_dalek::Signature::from_bytes(&sig)).ok()?;
    serde_json::from_slice(&dec(c)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> (tempfile::TempDir, NodeKey) {
        let d = tempfile::tempdir().unwrap();
        let k = NodeKey::load_or_create(&d.path().join("k")).unwrap();
        (d, k)
    }

    #[test]
    fn tokens_verify_against_the_node_key_and_carry_the_claims() {
        let (_d, k) = key();
        let ctx = MintCtx {
            task: "t-1",
            node: "node a",
            scope_hash: "abc",
            task_expires_at: None,
            key: &k,
            issuer: "warden://node-a",
        };
        let t = mint(&ctx, "id-token", "https://ci.example.com", 100, 200).unwrap();
        let jwt = std::str::from_utf8(t.value.expose()).unwrap();
        let claims = verify(&k, jwt).expect("verifies");
        assert_eq!(claims["aud"], "https://ci.example.com");
        assert_eq!(claims["sub"], "spiffe://warden/node/node_a/task/t-1");
        assert_eq!(claims["exp"], 200);
        assert_eq!(claims["jti"], t.jti.as_str());
        assert_eq!(claims["scope_hash"], "abc");
        // Any change breaks the signature.
        let mut bad = jwt.to_string();
        bad.replace_range(bad.len() - 3..bad.len() - 2, if bad.ends_with('A') { "B" } else { "A" });
        let (_d2, other) = key();
        assert!(verify(&other, jwt).is_none());
        let tampered = jwt.replacen('.', ".e", 1);
        assert!(verify(&k, &tampered).is_none());
    }

    #[test]
    fn jwks_names_the_key_by_its_thumbprint() {
        let (_d, k) = key();
        let j = jwks(&k);
        assert_eq!(j["keys"][0]["kid"], kid(&k).as_str());
        assert_eq!(j["keys"][0]["crv"], "Ed25519");
        assert_eq!(kid(&k).len(), 43);
    }
}

//! JWT connection tokens: the signature and algorithm checked by
//! `jsonwebtoken` against the one key the vhost configured, the claims
//! (`exp`, `nbf`, `aud`, `iss`, `sub`, `topics` / `channels`) checked here
//! with an injected clock, so the rules are tested and fuzzed without I/O.

use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::grants::Grants;
use crate::config::{AuthConfig, MIN_HMAC_SECRET_LEN};

/// Longest token accepted, in bytes (it travels in the request head).
pub const MAX_TOKEN_LEN: usize = 8 * 1024;
/// Longest `sub`: it becomes a header value and a log field.
pub const MAX_USER_LEN: usize = 256;

/// Why a token was refused; the text is the 401's body (after "invalid token: ").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    Missing,
    TooLong,
    /// Not three base64url parts of JSON, or a claim of the wrong type.
    Malformed(String),
    /// The header's `alg` is not the configured key's (`none` included).
    Algorithm(String),
    Signature,
    Expired,
    NotYetValid,
    Audience,
    Issuer,
    /// A claim of the right type with a value we refuse.
    Claim(&'static str, &'static str),
    /// A refresh token for another user than the connection's.
    OtherUser,
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenError::Missing => f.write_str("no token: pass one as ?token= or Authorization: Bearer"),
            TokenError::TooLong => write!(f, "token longer than {MAX_TOKEN_LEN} bytes"),
            TokenError::Malformed(e) => write!(f, "malformed token: {e}"),
            TokenError::Algorithm(alg) => write!(f, "token algorithm {alg} is not this endpoint's"),
            TokenError::Signature => f.write_str("bad token signature"),
            TokenError::Expired => f.write_str("token expired"),
            TokenError::NotYetValid => f.write_str("token not valid yet (nbf)"),
            TokenError::Audience => f.write_str("token audience (aud) does not match"),
            TokenError::Issuer => f.write_str("token issuer (iss) does not match"),
            TokenError::Claim(name, why) => write!(f, "token claim {name}: {why}"),
            TokenError::OtherUser => f.write_str("the new token is for another user"),
        }
    }
}

impl std::error::Error for TokenError {}

/// A `[vhost.auth]` that cannot be used: its key.
#[derive(Debug)]
pub struct AuthSetupError(pub String);

impl std::fmt::Display for AuthSetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AuthSetupError {}

/// What a valid token says about its connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// `sub`.
    pub user: Option<Arc<str>>,
    /// The dialect's claim (`topics` or `channels`); None: no restriction.
    pub grants: Option<Arc<Grants>>,
    /// Unix ms at which the connection is closed (`exp` plus the leeway).
    pub expires_at_ms: Option<u64>,
}

/// Which claim lists what the connection may join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantsClaim {
    Topics,
    Channels,
    None,
}

/// The claim rules of a vhost, apart from the signature.
#[derive(Debug, Clone)]
pub struct Policy {
    pub leeway_ms: u64,
    pub aud: Option<String>,
    pub iss: Option<String>,
    pub grants: GrantsClaim,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn contains(&self, want: &str) -> bool {
        match self {
            OneOrMany::One(s) => s == want,
            OneOrMany::Many(v) => v.iter().any(|s| s == want),
        }
    }
}

/// The claims we read; others are ignored.
#[derive(Debug, Default, Deserialize)]
pub struct Claims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    exp: Option<f64>,
    #[serde(default)]
    nbf: Option<f64>,
    #[serde(default)]
    aud: Option<OneOrMany>,
    #[serde(default)]
    iss: Option<OneOrMany>,
    #[serde(default)]
    topics: Option<Vec<String>>,
    #[serde(default)]
    channels: Option<Vec<String>>,
}

/// A NumericDate (seconds, maybe fractional) as Unix ms.
fn date_ms(name: &'static str, seconds: f64) -> Result<u64, TokenError> {
    if !seconds.is_finite() || !(0.0..=1e13).contains(&seconds) {
        return Err(TokenError::Claim(name, "not a date in seconds since 1970"));
    }
    Ok((seconds * 1000.0) as u64)
}

/// Checks the claims at `now_ms` (Unix ms) under `policy`.
pub fn check(claims: Claims, now_ms: u64, policy: &Policy) -> Result<Identity, TokenError> {
    let mut expires_at_ms = None;
    if let Some(exp) = claims.exp {
        let deadline = date_ms("exp", exp)?.saturating_add(policy.leeway_ms);
        if now_ms >= deadline {
            return Err(TokenError::Expired);
        }
        expires_at_ms = Some(deadline);
    }
    if let Some(nbf) = claims.nbf {
        if now_ms.saturating_add(policy.leeway_ms) < date_ms("nbf", nbf)? {
            return Err(TokenError::NotYetValid);
        }
    }
    if let Some(want) = &policy.aud {
        if !claims.aud.as_ref().is_some_and(|a| a.contains(want)) {
            return Err(TokenError::Audience);
        }
    }
    if let Some(want) = &policy.iss {
        if !claims.iss.as_ref().is_some_and(|i| i.contains(want)) {
            return Err(TokenError::Issuer);
        }
    }
    let user = match claims.sub {
        Some(s) if s.is_empty() || s.len() > MAX_USER_LEN || s.chars().any(char::is_control) => {
            return Err(TokenError::Claim("sub", "1 to 256 bytes without control characters"))
        }
        Some(s) => Some(Arc::from(s)),
        None => None,
    };
    let (list, name) = match policy.grants {
        GrantsClaim::Topics => (claims.topics, "topics"),
        GrantsClaim::Channels => (claims.channels, "channels"),
        GrantsClaim::None => (None, ""),
    };
    let grants = match list {
        Some(list) => Some(Arc::new(
            Grants::parse(&list)
                .ok_or(TokenError::Claim(name, "at most 256 non-empty names or prefix patterns"))?,
        )),
        None => None,
    };
    Ok(Identity { user, grants, expires_at_ms })
}

/// Claims from JSON bytes (the fuzz target's way in; `verify` decodes its own).
pub fn parse_claims(json: &[u8]) -> Result<Claims, TokenError> {
    serde_json::from_slice(json).map_err(|e| TokenError::Malformed(format!("claims: {e}")))
}

/// A vhost's token check: one key, its algorithm, the claim policy.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
    alg: Algorithm,
    pub policy: Policy,
    /// `required = true`: no token, no connection.
    pub required: bool,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").field("alg", &self.alg).field("policy", &self.policy).finish()
    }
}

impl Verifier {
    /// The check `[vhost.auth]` describes; the public key file is read now.
    pub fn new(a: &AuthConfig, grants: GrantsClaim) -> Result<Verifier, AuthSetupError> {
        let (key, alg) = match (&a.jwt_hmac_secret, &a.jwt_public_key) {
            (Some(secret), None) => {
                if secret.len() < MIN_HMAC_SECRET_LEN {
                    return Err(AuthSetupError(format!(
                        "jwt_hmac_secret: use at least {MIN_HMAC_SECRET_LEN} bytes (e.g. `openssl rand -hex 32`)"
                    )));
                }
                let key = DecodingKey::from_secret(secret.as_bytes())
                    .map_err(|e| AuthSetupError(format!("jwt_hmac_secret: {e}")))?;
                (key, Algorithm::HS256)
            }
            (None, Some(path)) => {
                let pem = std::fs::read(path).map_err(|e| {
                    AuthSetupError(format!("jwt_public_key: cannot read {}: {e}", path.display()))
                })?;
                public_key(&pem).ok_or_else(|| {
                    AuthSetupError(format!(
                        "jwt_public_key: {} holds no RSA, EC P-256 or Ed25519 public key in PEM \
                         (-----BEGIN PUBLIC KEY-----)",
                        path.display()
                    ))
                })?
            }
            _ => {
                return Err(AuthSetupError(
                    "set exactly one of jwt_hmac_secret (HS256) and jwt_public_key (RS256, ES256, EdDSA)"
                        .into(),
                ))
            }
        };
        let mut validation = Validation::new(alg);
        // The claims are ours to check (`check`), with ms and a clock we pass.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        let policy = Policy { leeway_ms: a.leeway_ms, aud: a.aud.clone(), iss: a.iss.clone(), grants };
        Ok(Verifier { key, validation, alg, policy, required: a.required })
    }

    /// Checks a token at `now_ms` (Unix ms).
    pub fn verify(&self, token: &str, now_ms: u64) -> Result<Identity, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLong);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
            // `alg: none` and other names the crate does not know.
            jsonwebtoken::errors::ErrorKind::Json(_) if token.split('.').count() == 3 => {
                TokenError::Algorithm("(unknown or none)".into())
            }
            _ => TokenError::Malformed(e.to_string()),
        })?;
        if header.alg != self.alg {
            return Err(TokenError::Algorithm(format!("{:?}", header.alg)));
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::InvalidSignature => TokenError::Signature,
                K::InvalidAlgorithm => TokenError::Algorithm(format!("{:?}", header.alg)),
                // A key the crate cannot use for this signature is a refused token.
                K::InvalidEcdsaKey | K::InvalidRsaKey(_) | K::InvalidKeyFormat => TokenError::Signature,
                _ => TokenError::Malformed(e.to_string()),
            }
        })?;
        check(data.claims, now_ms, &self.policy)
    }
}

/// The key of a PEM public key and the algorithm its type means.
fn public_key(pem: &[u8]) -> Option<(DecodingKey, Algorithm)> {
    if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
        return Some((k, Algorithm::RS256));
    }
    if let Ok(k) = DecodingKey::from_ec_pem(pem) {
        return Some((k, Algorithm::ES256));
    }
    DecodingKey::from_ed_pem(pem).ok().map(|k| (k, Algorithm::EdDSA))
}

/// The Unix time in ms.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};

    const SECRET: &str = "0123456789abcdef0123456789abcdef";
    const NOW: u64 = 1_800_000_000_000;

    fn auth(toml: &str) -> AuthConfig {
        toml::from_str(toml).unwrap()
    }

    fn hs(claims: serde_json::Value) -> String {
        encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET.as_bytes()).unwrap())
            .unwrap()
    }

    fn verifier(extra: &str) -> Verifier {
        Verifier::new(&auth(&format!("jwt_hmac_secret = \"{SECRET}\"\n{extra}")), GrantsClaim::Topics)
            .unwrap()
    }

    #[test]
    fn a_valid_token_gives_the_user_grants_and_expiry() {
        let v = verifier("");
        let id = v
            .verify(&hs(serde_json::json!({"sub":"alice","exp":1_800_000_060,"topics":["news.*"]})), NOW)
            .unwrap();
        assert_eq!(id.user.as_deref(), Some("alice"));
        assert!(id.grants.unwrap().allows("news.eu"));
        assert_eq!(id.expires_at_ms, Some(1_800_000_060_000));
        let bare = v.verify(&hs(serde_json::json!({})), NOW).unwrap();
        assert_eq!(bare, Identity::default(), "no exp: no expiry; no topics: no restriction");
    }

    #[test]
    fn time_claims_with_and_without_leeway() {
        let v = verifier("");
        let exp = |s: f64| hs(serde_json::json!({ "exp": s }));
        assert_eq!(v.verify(&exp(1_800_000_000.0), NOW), Err(TokenError::Expired), "exp is exclusive");
        assert!(v.verify(&exp(1_800_000_000.5), NOW).is_ok(), "fractional seconds");
        let nbf = hs(serde_json::json!({ "nbf": 1_800_000_001 }));
        assert_eq!(v.verify(&nbf, NOW), Err(TokenError::NotYetValid));
        let lenient = verifier("leeway_ms = 2000");
        assert!(lenient.verify(&exp(1_799_999_999.0), NOW).is_ok());
        assert_eq!(lenient.verify(&exp(1_799_999_999.0), NOW).unwrap().expires_at_ms, Some(NOW + 1000));
        assert!(lenient.verify(&nbf, NOW).is_ok());
        assert_eq!(
            v.verify(&hs(serde_json::json!({ "exp": "tomorrow" })), NOW)
                .unwrap_err()
                .to_string()
                .split(':')
                .next(),
            Some("malformed token")
        );
        assert_eq!(
            v.verify(&hs(serde_json::json!({ "exp": -1 })), NOW),
            Err(TokenError::Claim("exp", "not a date in seconds since 1970"))
        );
    }

    #[test]
    fn audience_and_issuer_must_match_when_configured() {
        let v = verifier("aud = \"ringcast\"\niss = \"https://auth.example\"");
        let ok = serde_json::json!({"aud":["x","ringcast"],"iss":"https://auth.example"});
        assert!(v.verify(&hs(ok), NOW).is_ok());
        assert_eq!(
            v.verify(&hs(serde_json::json!({"iss":"https://auth.example"})), NOW),
            Err(TokenError::Audience)
        );
        assert_eq!(
            v.verify(&hs(serde_json::json!({"aud":"other","iss":"https://auth.example"})), NOW),
            Err(TokenError::Audience)
        );
        assert_eq!(v.verify(&hs(serde_json::json!({"aud":"ringcast"})), NOW), Err(TokenError::Issuer));
    }

    #[test]
    fn wrong_key_none_and_algorithm_confusion_are_refused() {
        let v = verifier("");
        let other = encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({}),
            &EncodingKey::from_secret(b"another secret of thirty-two bytes!").unwrap(),
        )
        .unwrap();
        assert_eq!(v.verify(&other, NOW), Err(TokenError::Signature));
        let hs384 = encode(
            &Header::new(Algorithm::HS384),
            &serde_json::json!({}),
            &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
        )
        .unwrap();
        assert!(matches!(v.verify(&hs384, NOW), Err(TokenError::Algorithm(_))));
        // {"alg":"none"}.{}. — the unsigned token.
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.e30.";
        assert!(matches!(v.verify(none, NOW), Err(TokenError::Algorithm(_))), "{:?}", v.verify(none, NOW));
        assert!(matches!(v.verify("garbage", NOW), Err(TokenError::Malformed(_))));
        assert_eq!(v.verify(&"a".repeat(MAX_TOKEN_LEN + 1), NOW), Err(TokenError::TooLong));
    }

    #[test]
    fn public_keys_pick_their_algorithm_and_refuse_hs256_signed_with_them() {
        let dir = tempfile::tempdir().unwrap();
        for (alg, sig) in
            [(Algorithm::ES256, &rcgen::PKCS_ECDSA_P256_SHA256), (Algorithm::EdDSA, &rcgen::PKCS_ED25519)]
        {
            let pair = rcgen::KeyPair::generate_for(sig).unwrap();
            let path = dir.path().join(format!("{alg:?}.pem"));
            std::fs::write(&path, pair.public_key_pem()).unwrap();
            let v =
                Verifier::new(&auth(&format!("jwt_public_key = {path:?}")), GrantsClaim::Channels).unwrap();
            let private = pair.serialize_pem();
            let key = match alg {
                Algorithm::ES256 => EncodingKey::from_ec_pem(private.as_bytes()).unwrap(),
                _ => EncodingKey::from_ed_pem(private.as_bytes()).unwrap(),
            };
            let token =
                encode(&Header::new(alg), &serde_json::json!({"sub":"bob","channels":["room"]}), &key)
                    .unwrap();
            let id = v.verify(&token, NOW).unwrap();
            assert_eq!(id.user.as_deref(), Some("bob"));
            assert!(id.grants.unwrap().allows("room"));
            // The classic confusion: HS256 with the public key as the secret.
            let forged = encode(
                &Header::new(Algorithm::HS256),
                &serde_json::json!({"sub":"mallory"}),
                &EncodingKey::from_secret(pair.public_key_pem().as_bytes()).unwrap(),
            )
            .unwrap();
            assert!(matches!(v.verify(&forged, NOW), Err(TokenError::Algorithm(_))), "{alg:?}");
        }
    }

    #[test]
    fn bad_claim_values_are_refused() {
        let v = verifier("");
        assert!(matches!(
            v.verify(&hs(serde_json::json!({"sub":"a\nb"})), NOW),
            Err(TokenError::Claim("sub", _))
        ));
        assert!(matches!(
            v.verify(&hs(serde_json::json!({"topics":[""]})), NOW),
            Err(TokenError::Claim("topics", _))
        ));
        assert!(matches!(
            v.verify(&hs(serde_json::json!({"topics":"news"})), NOW),
            Err(TokenError::Malformed(_))
        ));
    }

    #[test]
    fn setup_errors_name_the_key() {
        let e = |t: &str| Verifier::new(&auth(t), GrantsClaim::None).unwrap_err().to_string();
        assert!(e("jwt_hmac_secret = \"short\"").contains("at least 32 bytes"));
        assert!(e("").contains("exactly one of"));
        assert!(e("jwt_public_key = \"/nonexistent.pem\"").contains("cannot read /nonexistent.pem"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pem");
        std::fs::write(&path, "not a key").unwrap();
        assert!(
            e(&format!("jwt_public_key = {path:?}")).contains("holds no RSA, EC P-256 or Ed25519 public key")
        );
    }
}

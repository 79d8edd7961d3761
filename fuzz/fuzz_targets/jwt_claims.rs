//! Connection tokens (`[vhost.auth]`) from untrusted clients: the claims
//! check on any JSON, and the whole verifier (header, alg, signature,
//! claims) on any token string. Never a panic; whatever is accepted obeys
//! the policy it was checked under.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringcast::auth::token::{check, parse_claims, Policy};
use ringcast::auth::{GrantsClaim, Verifier};
use ringcast::config::AuthConfig;

const SECRET: &str = "fuzz-secret-of-at-least-32-bytes!!";

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let now_ms = 1_700_000_000_000u64 + u64::from(mode) * 1000;
    if mode % 2 == 0 {
        // The claims rules, apart from the signature.
        let grants = [GrantsClaim::Topics, GrantsClaim::Channels, GrantsClaim::None][usize::from(mode / 2) % 3];
        let policy = Policy {
            leeway_ms: u64::from(mode) * 10,
            aud: (mode & 4 != 0).then(|| "ringcast".to_string()),
            iss: (mode & 8 != 0).then(|| "issuer".to_string()),
            grants,
        };
        if let Ok(claims) = parse_claims(rest) {
            if let Ok(identity) = check(claims, now_ms, &policy) {
                assert!(identity.expires_at_ms.is_none_or(|at| at > now_ms), "accepted an expired token");
                assert!(identity.user.as_ref().is_none_or(|u| !u.is_empty() && u.len() <= 256));
                if grants == GrantsClaim::None {
                    assert!(identity.grants.is_none());
                }
                if let Some(g) = &identity.grants {
                    let _ = g.allows(std::str::from_utf8(rest).unwrap_or(""));
                }
            }
        }
    } else {
        // A whole token: only HS256 under SECRET may pass, and then only
        // with claims `check` accepts.
        let Ok(token) = std::str::from_utf8(rest) else { return };
        let config = AuthConfig { jwt_hmac_secret: Some(SECRET.into()), ..AuthConfig::default() };
        let verifier = Verifier::new(&config, GrantsClaim::Topics).expect("a valid secret");
        let _ = verifier.verify(token, now_ms);
    }
});

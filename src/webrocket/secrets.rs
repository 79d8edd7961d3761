//! User secrets: stored as salted argon2id hashes (PHC strings), checked in
//! constant time by the argon2 crate. Hashing is deliberately slow (tens of
//! milliseconds, ~19 MiB each), so it never runs on a shard: checks go to
//! tokio's blocking pool, at most `MAX_CONCURRENT` at once.

use std::sync::Arc;

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::Argon2;

/// Hash checks running at once (each holds ~19 MiB while it runs).
const MAX_CONCURRENT: usize = 4;

pub fn hash(secret: &str) -> Result<String, String> {
    Argon2::default()
        .hash_password(secret.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| format!("cannot hash the secret: {e}"))
}

/// Whether `phc` reads as an argon2 PHC string (as `hash` makes).
pub fn is_hash(phc: &str) -> bool {
    phc.len() <= 512 && phc.starts_with("$argon2") && PasswordHash::new(phc).is_ok()
}

pub fn verify(phc: &str, secret: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(h) => Argon2::default().verify_password(secret.as_bytes(), &h).is_ok(),
        Err(_) => false,
    }
}

/// Runs hash checks off the calling thread.
#[derive(Clone)]
pub struct Checker {
    runtime: tokio::runtime::Handle,
    permits: Arc<tokio::sync::Semaphore>,
}

impl Checker {
    pub fn new(runtime: tokio::runtime::Handle) -> Self {
        Checker { runtime, permits: Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT)) }
    }

    /// Resolves on any executor (the shard's glommio one included).
    pub async fn check(&self, phc: String, secret: String) -> bool {
        let permits = self.permits.clone();
        let job = self.runtime.spawn(async move {
            let Ok(_permit) = permits.acquire_owned().await else {
                return false;
            };
            tokio::task::spawn_blocking(move || verify(&phc, &secret)).await.unwrap_or(false)
        });
        job.await.unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_hash_verifies_its_secret_only() {
        let h = super::hash("s3cret").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(!h.contains("s3cret"));
        assert!(super::verify(&h, "s3cret"));
        assert!(!super::verify(&h, "s3cre"));
        assert!(!super::verify("garbage", "s3cret"));
    }
}

//! User secrets: stored as salted argon2id hashes (PHC strings), checked in
//! constant time by the argon2 crate. Hashing is deliberately slow (tens of
//! milliseconds, ~19 MiB each), and anonymous clients can ask for it, so it
//! never runs on a shard nor on a growing pool: a fixed set of threads (one
//! per core at most) takes jobs from a bounded queue, and a full queue
//! answers "busy" at once. Few threads also means few malloc arenas: 32
//! connections guessing through tokio's blocking pool once left 21 arenas of
//! 38–58 MiB behind (1.08 GB).

use std::sync::Arc;

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::Argon2;

use super::session::Verdict;

/// Jobs waiting for a hashing thread; past it checks answer `Busy`.
const QUEUE: usize = 64;
/// Hashing threads at most (fewer on fewer cores).
const MAX_THREADS: usize = 4;

/// Why a secret could not be hashed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashError {
    /// The hashing queue is full.
    Busy,
    /// The hashing pool has stopped (shutdown).
    Stopped,
    /// Argon2 refused the input.
    Failed(String),
}

impl std::fmt::Display for HashError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HashError::Busy => f.write_str("the secret hashing queue is full; retry in a moment"),
            HashError::Stopped => f.write_str("the secret hashing pool stopped"),
            HashError::Failed(why) => write!(f, "cannot hash the secret: {why}"),
        }
    }
}

impl std::error::Error for HashError {}

pub fn hash(secret: &str) -> Result<String, HashError> {
    Argon2::default()
        .hash_password(secret.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| HashError::Failed(e.to_string()))
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

/// A job for the pool: hash or check, answered through a oneshot.
enum Job {
    Check { phc: String, secret: String, answer: futures_channel::oneshot::Sender<bool> },
    Hash { secret: String, answer: futures_channel::oneshot::Sender<Result<String, HashError>> },
}

/// The hashing pool's front: cheap to clone, usable from any executor.
#[derive(Clone)]
pub struct Checker {
    jobs: crossbeam_channel::Sender<Job>,
    /// Checks answered `Busy` (counted in `ringcast_denied_total`).
    pub busy: Arc<std::sync::atomic::AtomicU64>,
}

impl Checker {
    /// Starts the pool's threads (`threads`, at least 1, at most `MAX_THREADS`).
    pub fn new(threads: usize) -> Self {
        let (jobs, queue) = crossbeam_channel::bounded::<Job>(QUEUE);
        for i in 0..threads.clamp(1, MAX_THREADS) {
            let queue = queue.clone();
            let spawned = std::thread::Builder::new().name(format!("hash{i}")).spawn(move || {
                for job in queue {
                    match job {
                        Job::Check { phc, secret, answer } => {
                            let _ = answer.send(verify(&phc, &secret));
                        }
                        Job::Hash { secret, answer } => {
                            let _ = answer.send(hash(&secret));
                        }
                    }
                }
            });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a secret hashing thread");
            }
        }
        Checker { jobs, busy: Arc::default() }
    }

    /// The pool for this machine: one thread per core, at most `MAX_THREADS`.
    pub fn for_this_machine() -> Self {
        Checker::new(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// Checks `secret` against `phc`; resolves on any executor (the shard's
    /// glommio one included). `Busy` at once when the queue is full.
    pub async fn check(&self, phc: String, secret: String) -> Verdict {
        let (answer, result) = futures_channel::oneshot::channel();
        if self.jobs.try_send(Job::Check { phc, secret, answer }).is_err() {
            crate::metrics::inc(&self.busy);
            return Verdict::Busy;
        }
        match result.await {
            Ok(true) => Verdict::Match,
            Ok(false) => Verdict::Mismatch,
            Err(_) => Verdict::Busy,
        }
    }

    /// Hashes a new secret (the admin API) on the same pool.
    pub async fn hash(&self, secret: String) -> Result<String, HashError> {
        let (answer, result) = futures_channel::oneshot::channel();
        if self.jobs.try_send(Job::Hash { secret, answer }).is_err() {
            crate::metrics::inc(&self.busy);
            return Err(HashError::Busy);
        }
        result.await.map_err(|_| HashError::Stopped)?
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

    #[test]
    fn the_pool_answers_and_a_full_queue_is_busy_at_once() {
        let h = super::hash("pw").unwrap();
        let pool = super::Checker::new(1);
        let verdict = |phc: &str, s: &str| futures_lite::future::block_on(pool.check(phc.into(), s.into()));
        assert_eq!(verdict(&h, "pw"), super::Verdict::Match);
        assert_eq!(verdict(&h, "nope"), super::Verdict::Mismatch);
        // Flood: far more jobs than the queue holds, none awaited.
        let flood: Vec<_> = (0..200).map(|_| pool.check(h.clone(), "x".into())).collect();
        let answers = futures_lite::future::block_on(futures_util::future::join_all(flood));
        let busy = answers.iter().filter(|v| **v == super::Verdict::Busy).count();
        assert!(busy >= 200 - 64 - 1, "{busy} busy of 200: the queue holds 64 and one runs");
        assert_eq!(pool.busy.load(std::sync::atomic::Ordering::Relaxed), busy as u64);
        assert!(answers.iter().all(|v| *v != super::Verdict::Match));
    }
}

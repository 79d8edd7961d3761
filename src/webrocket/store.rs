//! The persisted WebRocket state: vhosts added at run time, users, channels
//! and vhost access tokens, in one redb file under `server.data_dir`.
//!
//! redb because it is embedded, pure Rust, transactional, and commits with
//! fsync by default (`Durability::Immediate`): once `apply` resolved, a
//! `kill -9` loses nothing. One writer thread owns the database; the admin
//! API (and a replicated change) awaits its commit. Channels made by a
//! subscribe are never written: they live in memory only.

use std::path::{Path, PathBuf};
use std::sync::mpsc;

use futures_channel::oneshot;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

/// Runtime vhost path → anonymous rights (bits).
const VHOSTS: TableDefinition<&str, u8> = TableDefinition::new("vhosts");
/// `vhost \0 user` → `UserRecord` as JSON.
const USERS: TableDefinition<&str, &str> = TableDefinition::new("users");
/// `vhost \0 channel` → nothing.
const CHANNELS: TableDefinition<&str, ()> = TableDefinition::new("channels");
/// vhost path → worker access token.
const TOKENS: TableDefinition<&str, &str> = TableDefinition::new("tokens");

pub const FILE_NAME: &str = "ringcast.redb";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// Rights as bits (READ 1, WRITE 2, MANAGE 4).
    pub perms: u8,
    /// PHC string of the secret's argon2 hash; none accepts any secret.
    pub hash: Option<String>,
}

/// Everything in the store, read at start.
#[derive(Debug, Default)]
pub struct Loaded {
    pub vhosts: Vec<(String, u8)>,
    pub users: Vec<(String, String, UserRecord)>,
    pub channels: Vec<(String, String)>,
    pub tokens: Vec<(String, String)>,
}

/// One change; a list of them commits as one transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Write {
    PutVhost {
        path: String,
        anonymous: u8,
    },
    /// Removes the vhost record and all its users, channels and token.
    DeleteVhost {
        path: String,
    },
    PutUser {
        vhost: String,
        name: String,
        record: UserRecord,
    },
    DeleteUser {
        vhost: String,
        name: String,
    },
    PutChannel {
        vhost: String,
        name: String,
    },
    DeleteChannel {
        vhost: String,
        name: String,
    },
    PutToken {
        vhost: String,
        token: String,
    },
}

/// Why the state store could not do what was asked; cloned to every write
/// of a failed batch.
#[derive(Debug, Clone)]
pub enum StoreError {
    CreateDir {
        dir: PathBuf,
        reason: String,
    },
    /// The file could not be opened or read (`what`).
    Open {
        file: PathBuf,
        what: &'static str,
        reason: String,
    },
    Write {
        file: PathBuf,
        reason: String,
    },
    Thread {
        reason: String,
    },
    /// This gateway keeps no state.
    Disabled,
    /// The writer thread ended.
    Gone,
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::CreateDir { dir, reason } => {
                write!(f, "cannot create data directory {}: {reason}", dir.display())
            }
            StoreError::Open { file, what, reason } => write!(
                f,
                "state store {}: {what}: {reason} (another ringcast using the same server.data_dir, or a damaged \
                 file: move it away to start empty)",
                file.display()
            ),
            StoreError::Write { file, reason } => write!(f, "state store {}: write failed: {reason}", file.display()),
            StoreError::Thread { reason } => write!(f, "cannot start the store thread: {reason}"),
            StoreError::Disabled => {
                f.write_str("no state store: set server.admin_token or declare a webrocket vhost to keep state")
            }
            StoreError::Gone => f.write_str("state store thread is gone"),
        }
    }
}

impl std::error::Error for StoreError {}

type Job = (Vec<Write>, oneshot::Sender<Result<(), StoreError>>);

/// The handle to the writer thread; cheap to clone.
#[derive(Clone)]
pub struct Store {
    jobs: mpsc::Sender<Job>,
    file: PathBuf,
}

/// Jobs committed in one transaction at most.
const BATCH: usize = 4096;

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.file.display())
    }
}

fn key(vhost: &str, name: &str) -> String {
    format!("{vhost}\0{name}")
}

fn split(key: &str) -> Option<(String, String)> {
    let (v, n) = key.split_once('\0')?;
    Some((v.to_string(), n.to_string()))
}

impl Store {
    /// Opens (or creates) `dir/ringcast.redb` and reads it whole. An error
    /// names the file and what to do.
    pub fn open(dir: &Path) -> Result<(Store, Loaded), StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::CreateDir { dir: dir.to_path_buf(), reason: e.to_string() })?;
        let file = dir.join(FILE_NAME);
        let fail = |what: &'static str, e: &dyn std::fmt::Display| StoreError::Open {
            file: file.clone(),
            what,
            reason: e.to_string(),
        };
        let db = Database::create(&file).map_err(|e| fail("cannot open", &e))?;
        let loaded = read_all(&db).map_err(|e| fail("cannot read", &e))?;
        let (jobs, rx) = mpsc::channel::<Job>();
        let file_for_thread = file.clone();
        std::thread::Builder::new()
            .name("ringcast-store".into())
            .spawn(move || {
                // Everything queued meanwhile goes into one transaction (one
                // durable commit): a write waits for one batch, not behind a
                // commit per earlier write (replicated changes can come in
                // bursts).
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    while batch.len() < BATCH {
                        match rx.try_recv() {
                            Ok(job) => batch.push(job),
                            Err(_) => break,
                        }
                    }
                    let writes: Vec<&Write> = batch.iter().flat_map(|(w, _)| w.iter()).collect();
                    let result = commit(&db, writes).map_err(|e| StoreError::Write {
                        file: file_for_thread.clone(),
                        reason: e.to_string(),
                    });
                    if let Err(e) = &result {
                        tracing::error!(error = %e, "state store write failed");
                    }
                    for (_, done) in batch {
                        let _ = done.send(result.clone());
                    }
                }
            })
            .map_err(|e| StoreError::Thread { reason: e.to_string() })?;
        Ok((Store { jobs, file }, loaded))
    }

    /// A store for a gateway that keeps no state (no WebRocket vhost, no
    /// admin API): every write fails with a message saying so.
    pub fn disabled() -> Store {
        let (jobs, _) = mpsc::channel();
        Store { jobs, file: PathBuf::new() }
    }

    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Commits `writes` as one durable transaction; resolves once on disk.
    pub async fn apply(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.jobs.send((writes, tx)).map_err(|_| StoreError::Disabled)?;
        rx.await.map_err(|_| StoreError::Gone)?
    }
}

fn read_all(db: &Database) -> Result<Loaded, Box<dyn std::error::Error>> {
    let mut loaded = Loaded::default();
    // Tables are created by the first write; make them exist for reading.
    let w = db.begin_write()?;
    w.open_table(VHOSTS)?;
    w.open_table(USERS)?;
    w.open_table(CHANNELS)?;
    w.open_table(TOKENS)?;
    w.commit()?;
    let r = db.begin_read()?;
    for e in r.open_table(VHOSTS)?.iter()? {
        let (k, v) = e?;
        loaded.vhosts.push((k.value().to_string(), v.value()));
    }
    for e in r.open_table(USERS)?.iter()? {
        let (k, v) = e?;
        let (vhost, name) = split(k.value()).ok_or("a user key without a vhost")?;
        let record: UserRecord = serde_json::from_str(v.value())?;
        loaded.users.push((vhost, name, record));
    }
    for e in r.open_table(CHANNELS)?.iter()? {
        let (k, _) = e?;
        loaded.channels.push(split(k.value()).ok_or("a channel key without a vhost")?);
    }
    for e in r.open_table(TOKENS)?.iter()? {
        let (k, v) = e?;
        loaded.tokens.push((k.value().to_string(), v.value().to_string()));
    }
    Ok(loaded)
}

fn commit<'w>(
    db: &Database,
    writes: impl IntoIterator<Item = &'w Write>,
) -> Result<(), Box<dyn std::error::Error>> {
    let txn = db.begin_write()?;
    {
        let mut vhosts = txn.open_table(VHOSTS)?;
        let mut users = txn.open_table(USERS)?;
        let mut channels = txn.open_table(CHANNELS)?;
        let mut tokens = txn.open_table(TOKENS)?;
        for w in writes {
            match w {
                Write::PutVhost { path, anonymous } => {
                    vhosts.insert(path.as_str(), *anonymous)?;
                }
                Write::DeleteVhost { path } => {
                    vhosts.remove(path.as_str())?;
                    tokens.remove(path.as_str())?;
                    let prefix = format!("{path}\0");
                    users.retain(|k, _| !k.starts_with(&prefix))?;
                    channels.retain(|k, _| !k.starts_with(&prefix))?;
                }
                Write::PutUser { vhost, name, record } => {
                    users.insert(key(vhost, name).as_str(), serde_json::to_string(record)?.as_str())?;
                }
                Write::DeleteUser { vhost, name } => {
                    users.remove(key(vhost, name).as_str())?;
                }
                Write::PutChannel { vhost, name } => {
                    channels.insert(key(vhost, name).as_str(), ())?;
                }
                Write::DeleteChannel { vhost, name } => {
                    channels.remove(key(vhost, name).as_str())?;
                }
                Write::PutToken { vhost, token } => {
                    tokens.insert(vhost.as_str(), token.as_str())?;
                }
            }
        }
    }
    txn.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_survive_reopening_and_vhost_deletion_takes_its_records() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, loaded) = Store::open(dir.path()).unwrap();
            assert!(loaded.users.is_empty());
            let user = UserRecord { perms: 3, hash: None };
            futures_lite::future::block_on(store.apply(vec![
                Write::PutVhost { path: "/a".into(), anonymous: 1 },
                Write::PutUser { vhost: "/a".into(), name: "joe".into(), record: user.clone() },
                Write::PutUser { vhost: "/b".into(), name: "ann".into(), record: user },
                Write::PutChannel { vhost: "/a".into(), name: "room".into() },
                Write::PutToken { vhost: "/a".into(), token: "t".into() },
            ]))
            .unwrap();
            futures_lite::future::block_on(store.apply(vec![Write::DeleteVhost { path: "/a".into() }]))
                .unwrap();
        }
        // The writer thread may still hold the file for a moment after the
        // handle is dropped: retry briefly.
        let loaded = (0..100)
            .find_map(|_| {
                Store::open(dir.path()).ok().or_else(|| {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    None
                })
            })
            .expect("reopens")
            .1;
        assert!(loaded.vhosts.is_empty());
        assert!(loaded.channels.is_empty());
        assert!(loaded.tokens.is_empty());
        assert_eq!(loaded.users.len(), 1);
        assert_eq!(loaded.users[0].1, "ann");
    }

    #[test]
    fn a_damaged_file_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), b"this is not a redb file, not at all").unwrap();
        let err = Store::open(dir.path()).expect_err("refuses a damaged file");
        assert!(err.to_string().contains(FILE_NAME), "{err}");
    }
}

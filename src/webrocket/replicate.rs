//! Committed store writes applied to the live state: the directory, the
//! worker pools, and what the shards must be told. One path for the admin
//! API and for changes replicated from other nodes (docs/cluster.md), so a
//! change means the same everywhere.

use super::store::Write;
use super::WebRocket;
use crate::dialect::webrocket::Perms;

/// What every shard must hear of a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    UserChanged { vhost: Box<str>, user: Box<str> },
    ChannelDeleted { topic: Box<str> },
    VhostDeleted { vhost: Box<str> },
}

/// Whether `writes`, received from another node, are what the admin API
/// itself would commit: valid paths, names, rights, hashes and tokens, and
/// no vhost declared in this node's config file (`configured`, any dialect)
/// created or deleted. Users, channels and tokens of a configured WebRocket
/// vhost may change, as through the admin API. Checked before anything is
/// stored: a refused batch leaves no trace.
pub fn check(writes: &[Write], configured: &[String]) -> Result<(), Refused> {
    use crate::config::vhost_path_is_valid;
    use crate::dialect::webrocket::{channel_name_is_valid, user_name_is_valid};
    let path = |p: &str| if vhost_path_is_valid(p) { Ok(()) } else { Err(Refused::VhostPath(p.into())) };
    let not_configured =
        |p: &str| if configured.iter().any(|c| c == p) { Err(Refused::Configured(p.into())) } else { Ok(()) };
    let rights = |bits: u8| if bits <= Perms::ALL.bits() { Ok(()) } else { Err(Refused::Rights(bits)) };
    let user = |n: &str| if user_name_is_valid(n) { Ok(()) } else { Err(Refused::UserName(n.into())) };
    let channel =
        |n: &str| if channel_name_is_valid(n) { Ok(()) } else { Err(Refused::ChannelName(n.into())) };
    for w in writes {
        match w {
            Write::PutVhost { path: p, anonymous } => {
                path(p)?;
                not_configured(p)?;
                rights(*anonymous)?;
            }
            Write::DeleteVhost { path: p } => {
                path(p)?;
                not_configured(p)?;
            }
            Write::PutToken { vhost, token } => {
                path(vhost)?;
                if !super::directory::token_is_valid(token) {
                    return Err(Refused::Token(vhost.clone()));
                }
            }
            Write::PutUser { vhost, name, record } => {
                path(vhost)?;
                user(name)?;
                rights(record.perms)?;
                if record.hash.as_deref().is_some_and(|h| !super::secrets::is_hash(h)) {
                    return Err(Refused::Secret(name.clone()));
                }
            }
            Write::DeleteUser { vhost, name } => {
                path(vhost)?;
                user(name)?;
            }
            Write::PutChannel { vhost, name } | Write::DeleteChannel { vhost, name } => {
                path(vhost)?;
                channel(name)?;
            }
        }
    }
    Ok(())
}

/// Why a replicated batch of changes was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    VhostPath(String),
    /// A vhost this node's config file declares (only the file changes it).
    Configured(String),
    Rights(u8),
    UserName(String),
    ChannelName(String),
    /// A worker token of a shape this gateway never makes.
    Token(String),
    /// A user's secret that is not an argon2 hash.
    Secret(String),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::VhostPath(p) => write!(f, "invalid vhost path {p:?}"),
            Refused::Configured(p) => write!(f, "vhost {p} is declared in this node's config file"),
            Refused::Rights(bits) => write!(f, "unknown rights {bits}"),
            Refused::UserName(n) => write!(f, "invalid user name {n:?}"),
            Refused::ChannelName(n) => write!(f, "invalid channel name {n:?}"),
            Refused::Token(vhost) => write!(f, "a token for {vhost} that this gateway does not make"),
            Refused::Secret(name) => write!(f, "user {name}: a secret that is not an argon2 hash"),
        }
    }
}

impl std::error::Error for Refused {}

/// Applies `writes` (already committed to this node's store).
pub fn apply(wr: &WebRocket, writes: &[Write]) -> Vec<Effect> {
    let d = &wr.directory;
    let mut effects = Vec::new();
    for w in writes {
        match w {
            Write::PutVhost { path, anonymous } => {
                if d.vhost(path).is_none() {
                    let token = writes.iter().find_map(|t| match t {
                        Write::PutToken { vhost, token } if vhost == path => Some(token.clone()),
                        _ => None,
                    });
                    let token = token.unwrap_or_else(super::directory::new_token);
                    d.add_vhost(path, Perms::from_bits(*anonymous), token);
                }
            }
            Write::DeleteVhost { path } => {
                if d.vhost(path).is_some_and(|v| !v.from_config) {
                    d.remove_vhost(path);
                    wr.workers.drop_all(path);
                    effects.push(Effect::VhostDeleted { vhost: path.as_str().into() });
                }
            }
            Write::PutToken { vhost, token } => {
                if let Some(v) = d.vhost(vhost) {
                    if *v.token() != **token {
                        v.set_token(token.clone());
                        wr.workers.drop_stale(vhost, token);
                    }
                }
            }
            Write::PutUser { vhost, name, record } => {
                if let Some(v) = d.vhost(vhost) {
                    v.set_user(name, record);
                    effects.push(Effect::UserChanged {
                        vhost: vhost.as_str().into(),
                        user: name.as_str().into(),
                    });
                }
            }
            Write::DeleteUser { vhost, name } => {
                if let Some(v) = d.vhost(vhost) {
                    if v.remove_user(name) {
                        effects.push(Effect::UserChanged {
                            vhost: vhost.as_str().into(),
                            user: name.as_str().into(),
                        });
                    }
                }
            }
            Write::PutChannel { vhost, name } => {
                if let Some(v) = d.vhost(vhost) {
                    v.add_channel(name);
                }
            }
            Write::DeleteChannel { vhost, name } => {
                if let Some(v) = d.vhost(vhost) {
                    if v.remove_channel(name) {
                        effects.push(Effect::ChannelDeleted { topic: v.topic(name).into() });
                    }
                }
            }
        }
    }
    effects
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webrocket::store::UserRecord;

    fn refused(w: Write) -> String {
        check(&[w], &["/ws".to_string(), "/world".to_string()]).unwrap_err().to_string()
    }

    #[test]
    fn replicated_changes_pass_the_admin_apis_rules() {
        let ok = [
            Write::PutVhost { path: "/new".into(), anonymous: 1 },
            Write::PutToken { vhost: "/new".into(), token: super::super::directory::new_token() },
            Write::PutUser {
                vhost: "/world".into(),
                name: "joe".into(),
                record: UserRecord { perms: 7, hash: None },
            },
            Write::PutChannel { vhost: "/world".into(), name: "room".into() },
        ];
        check(&ok, &["/world".to_string()]).unwrap();
        assert!(refused(Write::PutToken { vhost: "/world".into(), token: String::new() }).contains("token"));
        assert!(refused(Write::PutVhost { path: "/ws".into(), anonymous: 7 }).contains("config file"));
        assert!(refused(Write::DeleteVhost { path: "/world".into() }).contains("config file"));
        assert!(refused(Write::PutVhost { path: "no-slash".into(), anonymous: 0 }).contains("path"));
        assert!(refused(Write::PutVhost { path: "/x".into(), anonymous: 9 }).contains("rights"));
        assert!(refused(Write::PutChannel { vhost: "/x".into(), name: "a b".into() }).contains("channel"));
        let bad_hash = UserRecord { perms: 1, hash: Some("plain".into()) };
        assert!(refused(Write::PutUser { vhost: "/x".into(), name: "u".into(), record: bad_hash })
            .contains("argon2"));
    }
}

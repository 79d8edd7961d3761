//! Committed store writes applied to the live state: the directory, the
//! worker pools, and what the shards must be told. One path for the admin
//! API and for changes replicated from other nodes (docs/cluster.md), so a
//! change means the same everywhere.

use super::store::Write;
use super::WebRocket;
use crate::dialect::webrocket::Perms;
use crate::shard::ShardMsg;

/// What every shard must hear of a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    UserChanged { vhost: Box<str>, user: Box<str> },
    ChannelDeleted { topic: Box<str> },
    VhostDeleted { vhost: Box<str> },
}

impl Effect {
    pub fn message(&self) -> ShardMsg {
        match self.clone() {
            Effect::UserChanged { vhost, user } => ShardMsg::UserChanged { vhost, user },
            Effect::ChannelDeleted { topic } => ShardMsg::ChannelDeleted { topic },
            Effect::VhostDeleted { vhost } => ShardMsg::VhostDeleted { vhost },
        }
    }
}

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

//! Connection tokens on the public port (`[vhost.auth]`, docs/security.md):
//! a JWT checked before the upgrade, what it grants, its expiry.

pub mod grants;
pub mod token;

pub use grants::Grants;
pub use token::{unix_ms, GrantsClaim, Identity, TokenError, Verifier};

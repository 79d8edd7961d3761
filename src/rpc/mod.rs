//! RoadRunner's RPC: goridge v3 frames over TCP (docs/protocols.md §3), so PHP's
//! `$rpc->call('broadcast.Publish', ...)` works against ringcast unchanged.

pub mod frame;
pub mod server;
pub mod service;

/// Generated from `proto/` by build.rs.
pub mod proto {
    pub mod websockets {
        include!(concat!(env!("OUT_DIR"), "/websockets.v1beta.rs"));
    }
    pub mod broadcast {
        include!(concat!(env!("OUT_DIR"), "/broadcast.v1.rs"));
    }
}

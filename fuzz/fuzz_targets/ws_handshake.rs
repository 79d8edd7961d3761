//! Upgrade request parsing: any bytes give a request, "need more", or an
//! HTTP error; the client address taken from its X-Forwarded-For and
//! X-Real-IP is the peer's unless the peer is a trusted proxy.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use libfuzzer_sys::fuzz_target;
use ringcast::limits::{client_address, Cidr};

fuzz_target!(|data: &[u8]| {
    match ringcast::ws::handshake::parse(data) {
        Ok(Some((upgrade, used))) => {
            assert!(used <= data.len());
            assert!(upgrade.response().starts_with(b"HTTP/1.1 101"));
            let forwarded = upgrade.forward.iter().find(|(k, _)| *k == "x-forwarded-for").map(|(_, v)| v.as_str());
            let real_ip = upgrade.real_ip.as_deref();
            let peer = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
            assert_eq!(client_address(peer, forwarded, real_ip, &[]), peer, "an untrusted peer's headers count");
            let trusted: [Cidr; 1] = ["192.0.2.0/24".parse().unwrap()];
            let _ = client_address(peer, forwarded, real_ip, &trusted);
        }
        Ok(None) => assert!(data.len() < ringcast::ws::handshake::MAX_REQUEST_HEAD),
        Err(e) => assert!((400..600).contains(&e.status)),
    }
});

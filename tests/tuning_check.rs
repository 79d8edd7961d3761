//! `tuning/check` gives a verdict that matches this host.

use std::process::Command;

fn check(connections: u64) -> (bool, String) {
    let out = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tuning/check"))
        .args(["--connections", &connections.to_string(), "--shards", "2"])
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string())
}

fn hard_fd_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit only writes the struct we pass.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    lim.rlim_max
}

#[test]
fn small_target_is_ready_here() {
    let (ok, out) = check(10);
    assert!(ok, "{out}");
    assert!(out.contains("OK       io_uring"), "ringcast's own tests need io_uring:\n{out}");
    assert!(out.contains("verdict: ready for 10 connections"), "{out}");
}

#[test]
fn a_target_above_the_hard_fd_limit_is_not_ready() {
    let hard = hard_fd_limit();
    if hard == libc::RLIM_INFINITY {
        return; // nothing to exceed on this host
    }
    let (ok, out) = check(hard);
    assert!(!ok, "{out}");
    assert!(out.contains("LOW      ulimit -n (hard)"), "{out}");
    assert!(out.contains(&format!("verdict: NOT READY for {hard} connections")), "{out}");
}

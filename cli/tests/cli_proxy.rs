//! `handover proxy` refuses what cannot work before it starts anything.

use std::process::Command;

fn proxy(args: &[&str], token: Option<&str>) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_handover"));
    cmd.arg("proxy").args(args).env_remove("HANDOVER_TOKEN");
    if let Some(t) = token {
        cmd.env("HANDOVER_TOKEN", t);
    }
    cmd.output().unwrap()
}

#[test]
fn a_non_loopback_listen_address_needs_the_explicit_flag() {
    let out = proxy(
        &["--listen", "0.0.0.0:0", "--gateway-url", "ws://127.0.0.1:9"],
        Some("cli-proxy-token"),
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--listen-allow-remote"), "{stderr}");
    assert!(!stderr.contains("cli-proxy-token"), "the token never shows");
}

#[test]
fn the_token_comes_from_the_environment() {
    let out = proxy(&["--listen", "0"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("HANDOVER_TOKEN"));
    let out = proxy(&["--gateway-url", "ws://127.0.0.1:9"], Some("t"));
    assert_eq!(out.status.code(), Some(2), "--listen is required");
}

//! The `vipgate` binary as an operator runs it.

mod common;

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;

use common::process::{ask, free_vip_port, line_member, Running, BINARY};
use common::{eventually_blocking, PATIENCE};

/// Writes `text` to a fresh file under the system temp directory.
fn config_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vipgate-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn vipgate(args: &[&str]) -> std::process::Output {
    Command::new(BINARY).args(args).output().unwrap()
}

#[test]
fn check_prints_the_plan_of_a_valid_file() {
    let output = vipgate(&["check", "-c", "config/vipgate.toml"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(stdout.contains("config/vipgate.toml is valid."), "{stdout}");
    assert!(
        stdout.contains("virtual vsCSP listen 127.0.0.100:9070"),
        "{stdout}"
    );
    assert!(stdout.contains("-> member 127.0.0.12:9075"), "{stdout}");
}

#[test]
fn check_lists_every_problem_and_exits_1() {
    let path = config_file(
        "broken.toml",
        "[pools.p]\nmembers = []\n[virtuals.v]\nlisten = \"127.0.0.100\"\npool = \"q\"\n",
    );
    let output = vipgate(&["check", "-c", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("has 3 problems; nothing was applied"),
        "{stderr}"
    );
    assert!(
        stderr.contains(":2:11: pools.p.members: the pool has no members"),
        "{stderr}"
    );
    assert!(
        stderr.contains(":4:10: virtuals.v.listen: \"127.0.0.100\" is not an IP address and port"),
        "{stderr}"
    );
    assert!(
        stderr.contains(":5:8: virtuals.v.pool: no pool named \"q\""),
        "{stderr}"
    );
}

#[test]
fn missing_file_is_a_clear_error() {
    let output = vipgate(&["check", "-c", "/nonexistent/vipgate.toml"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr.contains("cannot read configuration file /nonexistent/vipgate.toml"),
        "{stderr}"
    );
}

#[test]
fn run_refuses_an_invalid_file() {
    let path = config_file(
        "invalid-run.toml",
        "[virtuals.v]\nlisten = \"127.0.0.100:1\"\n",
    );
    let output = vipgate(&["run", "-c", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("virtuals.v.pool: `pool` is required"));
}

fn plain_config(name: &str, member: std::net::SocketAddr, port: u16, extra: &str) -> PathBuf {
    config_file(
        name,
        &format!(
            "[pools.p]\nmembers = [ {{ address = \"{member}\" }} ]\n[virtuals.v]\nlisten = \"127.0.0.100:{port}\"\npool = \"p\"\n{extra}\n"
        ),
    )
}

#[test]
fn run_serves_and_exits_0_on_sigterm() {
    let member = line_member("127.0.0.11");
    let port = free_vip_port();
    let mut running = Running::start(&plain_config("serve.toml", member, port, ""), "");
    assert_eq!(ask(port).as_deref(), Some("member hi\n"));
    let closed = running
        .wait_for("connection closed")
        .expect("a close log line");
    assert!(closed.contains(&format!("member={member}")), "{closed}");
    assert!(running.stop().success());
    assert!(
        running.wait_for("shut down").is_some(),
        "a drained shutdown"
    );
}

#[test]
fn sighup_reloads_the_configuration_and_certificates() {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["vip.example".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let cert_path = config_file("sighup.pem", &cert.pem());
    let key_path = config_file("sighup.key", &key.serialize_pem());
    let tls = format!(
        "tls = {{ mode = \"terminate\", certs = [ {{ cert = \"{}\", key = \"{}\" }} ] }}",
        cert_path.display(),
        key_path.display()
    );
    let member = "127.0.0.11:1".parse().unwrap();
    let path = plain_config("sighup.toml", member, free_vip_port(), &tls);
    let mut running = Running::start(&path, "");
    running.signal(libc::SIGHUP);
    assert!(
        running.wait_for("configuration reloaded").is_some(),
        "SIGHUP reloads the configuration, certificates included"
    );
    // A broken file is refused and the process keeps running.
    std::fs::write(&path, "[virtuals.vs]\nlisten = \"nowhere\"\n").unwrap();
    running.signal(libc::SIGHUP);
    assert!(
        running
            .wait_for("reload failed, the running configuration stays")
            .is_some(),
        "a broken file is refused"
    );
    assert!(running.stop().success());
}

#[test]
fn accept_loop_survives_running_out_of_file_descriptors() {
    let member = line_member("127.0.0.12");
    let port = free_vip_port();
    let config = plain_config("emfile.toml", member, port, "zero_copy = false");
    // Few descriptors: a few dozen clients exhaust them.
    let mut running = Running::start(&config, "ulimit -n 48 &&");
    let held: Vec<TcpStream> = (0..40)
        .filter_map(|_| TcpStream::connect(("127.0.0.100", port)).ok())
        .collect();
    assert!(
        running.wait_for("accept failed, backing off").is_some(),
        "EMFILE is logged"
    );
    drop(held);
    // The accept loop is still there: once descriptors are free again, new
    // clients are served.
    let served = eventually_blocking("vipgate serves again after EMFILE", PATIENCE, || ask(port));
    assert_eq!(served, "member hi\n");
    assert!(running.stop().success());
}

#[test]
fn check_shows_the_snat_ports_of_this_nodes_share() {
    let path = config_file(
        "share.toml",
        "[snat_pools.s]\naddresses = [\"127.0.0.21\"]\n[pools.p]\nmembers = [ { address = \"127.0.0.11:1\" } ]\n[virtuals.v]\nlisten = \"127.0.0.100:1\"\npool = \"p\"\nsnat = \"s\"\n",
    );
    let path = path.to_str().unwrap();
    let whole = vipgate(&["check", "-c", path]);
    assert!(String::from_utf8_lossy(&whole.stdout)
        .contains("snat pool s: 127.0.0.21, ports 1024-65535"));
    let second = vipgate(&["check", "-c", path, "--snat-share", "2/2"]);
    assert!(
        String::from_utf8_lossy(&second.stdout)
            .contains("snat pool s: 127.0.0.21, ports 33280-65535"),
        "{second:?}"
    );
    let wrong = vipgate(&["check", "-c", path, "--snat-share", "3/2"]);
    assert_eq!(wrong.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("the part must be from 1 to N"));
}

//! The `vipgate` binary as an operator runs it.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BINARY: &str = env!("CARGO_BIN_EXE_vipgate");

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

#[test]
fn run_serves_and_exits_0_on_sigterm() {
    // A member on an OS-chosen port; vipgate on another.
    let member = std::net::TcpListener::bind("127.0.0.11:0").unwrap();
    let member_addr = member.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in member.incoming().flatten() {
            let mut writer = stream.try_clone().unwrap();
            let mut line = String::new();
            if BufReader::new(stream).read_line(&mut line).is_ok() {
                let _ = writer.write_all(format!("member {line}").as_bytes());
            }
        }
    });
    let port = std::net::TcpListener::bind("127.0.0.100:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let path = config_file(
        "serve.toml",
        &format!(
            "[pools.p]\nmembers = [ {{ address = \"{member_addr}\" }} ]\n[virtuals.v]\nlisten = \"127.0.0.100:{port}\"\npool = \"p\"\n"
        ),
    );
    let mut child = Command::new(BINARY)
        .args(["run", "-c", path.to_str().unwrap()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let stream = loop {
        match TcpStream::connect(("127.0.0.100", port)) {
            Ok(stream) => break stream,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(error) => panic!("vipgate did not start listening: {error}"),
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    (&stream).write_all(b"hi\n").unwrap();
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer).unwrap();
    assert_eq!(answer, "member hi\n");
    drop(stream);

    // SAFETY: plain kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let status = child.wait().unwrap();
    let mut logs = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut logs).unwrap();
    assert!(status.success(), "{status:?}\n{logs}");
    assert!(logs.contains("connection closed"), "{logs}");
    assert!(logs.contains(&format!("member={member_addr}")), "{logs}");
    assert!(logs.contains("shut down"), "{logs}");
}

#[test]
fn sighup_reloads_certificates() {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["vip.example".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let cert_path = config_file("sighup.pem", &cert.pem());
    let key_path = config_file("sighup.key", &key.serialize_pem());
    let port = std::net::TcpListener::bind("127.0.0.100:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let path = config_file(
        "sighup.toml",
        &format!(
            "[pools.p]\nmembers = [ {{ address = \"127.0.0.11:1\" }} ]\n[virtuals.v]\nlisten = \"127.0.0.100:{port}\"\npool = \"p\"\ntls = {{ mode = \"terminate\", certs = [ {{ cert = \"{}\", key = \"{}\" }} ] }}\n",
            cert_path.display(),
            key_path.display()
        ),
    );
    let mut child = Command::new(BINARY)
        .args(["run", "-c", path.to_str().unwrap()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines, logs) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let wait_for = |needle: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while let Ok(line) = logs.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            if line.contains(needle) {
                return true;
            }
        }
        false
    };
    assert!(wait_for("listening"), "vipgate started");
    // SAFETY: plain kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGHUP) }, 0);
    assert!(
        wait_for("certificates reloaded"),
        "SIGHUP reloads the certificates"
    );
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    assert!(child.wait().unwrap().success());
}

#[test]
fn accept_loop_survives_running_out_of_file_descriptors() {
    // A member that answers each line, on its own threads.
    let member = std::net::TcpListener::bind("127.0.0.12:0").unwrap();
    let member_addr = member.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in member.incoming().flatten() {
            std::thread::spawn(move || {
                let mut writer = stream.try_clone().unwrap();
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if writer
                        .write_all(format!("member {line}\n").as_bytes())
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    let port = std::net::TcpListener::bind("127.0.0.100:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let path = config_file(
        "emfile.toml",
        &format!(
            "[pools.p]\nmembers = [ {{ address = \"{member_addr}\" }} ]\n[virtuals.v]\nlisten = \"127.0.0.100:{port}\"\npool = \"p\"\nzero_copy = false\n"
        ),
    );
    // Few descriptors: a few dozen clients exhaust them.
    let mut child = Command::new("sh")
        .args([
            "-c",
            &format!("ulimit -n 48 && exec {BINARY} run -c {}", path.display()),
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines, logs) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let wait_for = |needle: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while let Ok(line) = logs.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            if line.contains(needle) {
                return true;
            }
        }
        false
    };
    assert!(wait_for("listening"), "vipgate started");
    let ask = |stream: &TcpStream| -> Option<String> {
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        (&*stream).write_all(b"hi\n").ok()?;
        let mut answer = String::new();
        BufReader::new(stream).read_line(&mut answer).ok()?;
        (!answer.is_empty()).then_some(answer)
    };
    let held: Vec<TcpStream> = (0..40)
        .filter_map(|_| TcpStream::connect(("127.0.0.100", port)).ok())
        .collect();
    assert!(wait_for("accept failed, backing off"), "EMFILE is logged");
    drop(held);
    // The accept loop is still there: once descriptors are free again, new
    // clients are served.
    let deadline = Instant::now() + Duration::from_secs(20);
    let served = loop {
        if let Ok(stream) = TcpStream::connect(("127.0.0.100", port)) {
            if let Some(answer) = ask(&stream) {
                break answer;
            }
        }
        assert!(
            Instant::now() < deadline,
            "vipgate stopped serving after EMFILE"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(served, "member hi\n");
    // SAFETY: plain kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    assert!(child.wait().unwrap().success());
}

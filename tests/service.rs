//! vipgate as a Linux service: systemd's notify protocol over a real
//! `NOTIFY_SOCKET`, the watchdog, files found next to the configuration
//! whatever the working directory, JSON logs, `/ready` and `vipgate
//! ready`, and `check` reading everything `run` reads.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::admin::*;
use common::process::{line_member, Running, BINARY};
use common::tls_ca::{temp_dir, TestCa};
use common::*;
use vipgate::pool::Health;

fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind(format!("{ip}:0"))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn ask(address: SocketAddr) -> Option<String> {
    let stream = TcpStream::connect(address).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    (&stream).write_all(b"hi\n").ok()?;
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer).ok()?;
    (!answer.is_empty()).then_some(answer)
}

/// The service manager's end of `NOTIFY_SOCKET`.
struct Manager {
    socket: UnixDatagram,
    path: PathBuf,
}

impl Manager {
    fn bind(dir: &Path) -> Manager {
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).unwrap();
        Manager { socket, path }
    }

    /// The next message, within 20 s.
    fn next(&self) -> String {
        self.socket
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut buffer = [0u8; 4096];
        let read = self
            .socket
            .recv(&mut buffer)
            .expect("a notification in time");
        String::from_utf8_lossy(&buffer[..read]).into_owned()
    }

    /// The next message holding `line`, skipping others (watchdog pings,
    /// status refreshes).
    fn wait_for(&self, line: &str) -> String {
        eventually_blocking(&format!("a notification holding {line}"), PATIENCE, || {
            let message = self.next();
            message.lines().any(|l| l == line).then_some(message)
        })
    }
}

#[test]
fn systemd_hears_ready_reload_stop_and_the_watchdog() {
    let dir = temp_dir("notify");
    let manager = Manager::bind(&dir);
    let member = line_member("127.0.0.11");
    let vip: SocketAddr = format!("127.0.0.100:{}", free_port("127.0.0.100"))
        .parse()
        .unwrap();
    let config = dir.join("vipgate.toml");
    std::fs::write(
        &config,
        format!("[pools.p]\nmembers = [ {{ address = \"{member}\" }} ]\n[virtuals.v]\nlisten = \"{vip}\"\npool = \"p\"\n"),
    )
    .unwrap();
    let mut running = Running::spawn(
        Command::new(BINARY)
            .args(["run", "-c"])
            .arg(&config)
            .env("NOTIFY_SOCKET", &manager.path)
            // WatchdogSec=0.4s: a ping every 200 ms.
            .env("WATCHDOG_USEC", "400000"),
    );

    // The first message is READY=1, sent once the VIP accepts.
    let ready = manager.next();
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready}");
    assert!(
        ready.contains("STATUS=serving 1 virtual, 1/1 members up, 0 connections"),
        "{ready}"
    );
    assert_eq!(ask(vip).as_deref(), Some("member hi\n"));

    // The watchdog: pings at half the period, from vipgate's runtime.
    let started = Instant::now();
    let mut pings = Vec::new();
    while pings.len() < 5 {
        let message = manager.next();
        if message.lines().any(|l| l == "WATCHDOG=1") {
            pings.push(started.elapsed());
        }
    }
    for pair in pings.windows(2) {
        assert!(
            pair[1] - pair[0] < Duration::from_millis(400),
            "pings come within the watchdog period: {pings:?}"
        );
    }

    // SIGHUP: RELOADING=1 with the monotonic time, then READY=1.
    running.signal(libc::SIGHUP);
    let reloading = manager.wait_for("RELOADING=1");
    assert!(
        reloading.lines().any(|l| l.starts_with("MONOTONIC_USEC=")),
        "{reloading}"
    );
    let after = manager.wait_for("READY=1");
    assert!(after.contains("STATUS=serving 1 virtual"), "{after}");

    // SIGTERM: STOPPING=1 as the drain starts.
    running.signal(libc::SIGTERM);
    let stopping = manager.wait_for("STOPPING=1");
    assert!(
        stopping.contains("STATUS=draining 0 connections"),
        "{stopping}"
    );
    assert!(running.child.wait().unwrap().success());
}

#[test]
fn under_journald_text_lines_leave_the_timestamp_to_it() {
    let member = line_member("127.0.0.12");
    let port = free_port("127.0.0.100");
    let dir = temp_dir("journald");
    let config = dir.join("vipgate.toml");
    std::fs::write(
        &config,
        format!("[pools.p]\nmembers = [ {{ address = \"{member}\" }} ]\n[virtuals.v]\nlisten = \"127.0.0.100:{port}\"\npool = \"p\"\n"),
    )
    .unwrap();
    let mut running = Running::spawn(
        Command::new(BINARY)
            .args(["run", "-c"])
            .arg(&config)
            .env("JOURNAL_STREAM", "8:12345"),
    );
    let listening = running.wait_for("listening").expect("a listening line");
    assert!(listening.trim_start().starts_with("INFO"), "{listening}");
    assert!(
        !listening.contains('\u{1b}'),
        "no colours for the journal: {listening:?}"
    );
    let status = running.stop();
    assert!(status.success(), "{status:?}");
    // Outside journald, each line starts with its time.
    let mut running = Running::spawn(Command::new(BINARY).args(["run", "-c"]).arg(&config));
    let listening = running.wait_for("listening").expect("a listening line");
    assert!(listening.starts_with("20"), "{listening}");
    assert!(running.stop().success());
}

#[test]
fn files_are_found_next_to_the_configuration_wherever_vipgate_runs() {
    let ca = TestCa::new();
    let folder = temp_dir("relative-config");
    let elsewhere = temp_dir("relative-cwd");
    std::fs::create_dir_all(folder.join("tls")).unwrap();
    let (cert, key) = ca.write_pem(&folder.join("tls"), "vip.example");
    assert!(cert.ends_with("tls/vip.example.pem") && key.ends_with("tls/vip.example.key"));
    std::fs::write(
        folder.join("admin-token"),
        "a token of more than sixteen characters",
    )
    .unwrap();
    let member = line_member("127.0.0.13");
    let port = free_port("127.0.0.100");
    let config = folder.join("vipgate.toml");
    std::fs::write(
        &config,
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"admin-token\"\n[pools.p]\nmembers = [ {{ address = \"{member}\" }} ]\n[virtuals.v]\nlisten = \"127.0.0.100:{port}\"\npool = \"p\"\ntls = {{ mode = \"terminate\", certs = [ {{ cert = \"tls/vip.example.pem\", key = \"tls/vip.example.key\" }} ] }}\n"
        ),
    )
    .unwrap();

    // `check` and `run` agree, from a working directory that holds none of
    // the files.
    let check = Command::new(BINARY)
        .args(["check", "-c"])
        .arg(&config)
        .current_dir(&elsewhere)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let stdout = String::from_utf8_lossy(&check.stdout);
    assert!(
        stdout.contains(&format!("{}", folder.join("tls/vip.example.pem").display())),
        "{stdout}"
    );
    let mut running = Running::spawn(
        Command::new(BINARY)
            .args(["run", "-c"])
            .arg(&config)
            .current_dir(&elsewhere),
    );
    assert!(running.wait_for("listening").is_some());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let answer = runtime.block_on(async {
        let stream = tokio::net::TcpStream::connect(("127.0.0.100", port))
            .await
            .unwrap();
        let name = rustls_pki_types::ServerName::try_from("vip.example").unwrap();
        let mut tls = ca
            .client()
            .connect(name, stream)
            .await
            .expect("TLS with the relative certificate");
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        tls.write_all(b"hi\n").await.unwrap();
        let mut answer = String::new();
        tokio::io::BufReader::new(tls)
            .read_line(&mut answer)
            .await
            .unwrap();
        answer
    });
    assert_eq!(answer, "member hi\n");
    assert!(running.stop().success());
}

#[test]
fn json_logs_carry_every_field_of_a_connection() {
    let member = line_member("127.0.0.11");
    let port = free_port("127.0.0.100");
    let dir = temp_dir("json-logs");
    let config = dir.join("vipgate.toml");
    std::fs::write(
        &config,
        format!("[pools.p]\nmembers = [ {{ address = \"{member}\" }} ]\n[virtuals.v]\nlisten = \"127.0.0.100:{port}\"\npool = \"p\"\n"),
    )
    .unwrap();
    let mut running = Running::spawn(
        Command::new(BINARY)
            .args(["--log-format", "json", "run", "-c"])
            .arg(&config),
    );
    let listening = running.wait_for("listening").expect("a listening line");
    let line: serde_json::Value = serde_json::from_str(&listening).expect("JSON");
    assert_eq!(line["level"], "INFO");
    assert!(line["timestamp"].is_string(), "{line}");
    assert_eq!(
        ask(format!("127.0.0.100:{port}").parse().unwrap()).as_deref(),
        Some("member hi\n")
    );
    let established = running
        .wait_for("connection established")
        .expect("a line when the connection is established");
    let established: serde_json::Value = serde_json::from_str(&established).expect("JSON");
    assert_eq!(established["target"], "vipgate::connection");
    assert_eq!(established["fields"]["member"], member.to_string());
    assert!(
        established["fields"]["source"]
            .as_str()
            .is_some_and(|source| source.starts_with("127.")),
        "{established}"
    );
    let closed = running.wait_for("connection closed").expect("a close line");
    let closed: serde_json::Value = serde_json::from_str(&closed).expect("JSON");
    assert_eq!(closed["target"], "vipgate::connection");
    let fields = &closed["fields"];
    assert_eq!(fields["message"], "connection closed");
    assert_eq!(fields["virtual_server"], "v");
    assert_eq!(fields["member"], member.to_string());
    assert_eq!(fields["bytes_to_member"], 3);
    assert_eq!(fields["reason"], "finished");
    assert!(running.stop().success());

    // The environment variable does the same.
    let mut running = Running::spawn(
        Command::new(BINARY)
            .args(["run", "-c"])
            .arg(&config)
            .env("VIPGATE_LOG_FORMAT", "json"),
    );
    let listening = running.wait_for("listening").expect("a listening line");
    assert!(
        serde_json::from_str::<serde_json::Value>(&listening).is_ok(),
        "{listening}"
    );
    assert!(running.stop().success());
}

/// With `log_interval`, a connection still open is in the log every
/// interval with its bytes so far: a ten-hour session shows all along.
#[test]
fn a_long_connection_is_logged_every_log_interval() {
    let member = line_member("127.0.0.11");
    let port = free_port("127.0.0.100");
    let dir = temp_dir("log-interval");
    let config = dir.join("vipgate.toml");
    std::fs::write(
        &config,
        format!("[pools.p]\nmembers = [ {{ address = \"{member}\" }} ]\n[virtuals.v]\nlisten = \"127.0.0.100:{port}\"\npool = \"p\"\nlog_interval = \"1s\"\n"),
    )
    .unwrap();
    let mut running = Running::spawn(
        Command::new(BINARY)
            .args(["--log-format", "json", "run", "-c"])
            .arg(&config),
    );
    running.wait_for("listening").expect("a listening line");
    let stream = TcpStream::connect(("127.0.0.100", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    (&stream).write_all(b"hi\n").unwrap();
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer).unwrap();
    let open = running
        .wait_for("connection open")
        .expect("a line while the connection is open");
    let open: serde_json::Value = serde_json::from_str(&open).expect("JSON");
    assert_eq!(open["target"], "vipgate::connection");
    assert_eq!(open["fields"]["member"], member.to_string());
    assert_eq!(open["fields"]["bytes_to_member"], 3, "{open}");
    assert!(open["fields"]["source"].is_string(), "{open}");
    // And again a second later.
    assert!(running.wait_for("connection open").is_some());
    drop(stream);
    assert!(running.stop().success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_follows_the_last_usable_member_of_each_virtual() {
    let mut member = SwitchablePort::open("127.0.0.12", "csp").await;
    let toml = format!(
        "{ADMIN}[monitors.TCP]\ntype = \"tcp\"\ninterval = \"100ms\"\ntimeout = \"300ms\"\n[pools.p]\nmonitor = {{ all = [\"TCP\"] }}\nmembers = [ {{ address = \"{}\" }} ]\n[virtuals.vs]\nlisten = \"127.0.0.100:0\"\npool = \"p\"\n",
        member.addr
    );
    let vipgate = start(&toml).await;
    let admin = vipgate.admin.unwrap().to_string();
    let ready_command = || {
        tokio::process::Command::new(BINARY)
            .args(["ready", "--admin", &admin])
            .output()
    };
    wait_health(&vipgate, member.addr, Health::Up).await;
    let reply = common::admin::admin(&vipgate, "GET", "/ready", None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let output = ready_command().await.unwrap();
    assert!(output.status.success(), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("is ready"));

    member.close().await;
    wait_health(&vipgate, member.addr, Health::Down).await;
    let reply = common::admin::admin(&vipgate, "GET", "/ready", None).await;
    assert_eq!(reply.status, 503);
    let body: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(
        body["missing"][0],
        "virtual vs has no usable member (up and enabled) in pool p"
    );
    let output = ready_command().await.unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("is not ready: virtual vs has no usable member"),
        "{stderr}"
    );

    member.reopen().await;
    wait_health(&vipgate, member.addr, Health::Up).await;
    assert!(ready_command().await.unwrap().status.success());

    // The process metrics are there for the same scrape.
    let scrape = Scrape::of(&vipgate).await;
    for metric in [
        "process_open_fds",
        "process_max_fds",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_start_time_seconds",
    ] {
        let value = scrape
            .value(metric, &[])
            .unwrap_or_else(|| panic!("{metric}"));
        assert!(
            value > 0.0 || metric == "process_cpu_seconds_total",
            "{metric} {value}"
        );
    }
}

#[test]
fn ready_without_an_endpoint_says_why() {
    let output = Command::new(BINARY)
        .args(["ready", "--admin", "127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot ask 127.0.0.1:1/ready: "),
        "{stderr}"
    );
    let dir = temp_dir("ready-config");
    let config = dir.join("vipgate.toml");
    std::fs::write(&config, "[pools.p]\nmembers = [ { address = \"127.0.0.1:1\" } ]\n[virtuals.v]\nlisten = \"127.0.0.100:1\"\npool = \"p\"\n").unwrap();
    let output = Command::new(BINARY)
        .args(["ready", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("has no [admin] table"));
}

#[test]
fn check_reads_the_admin_token_file_as_run_does() {
    let dir = temp_dir("token-check");
    let config = dir.join("vipgate.toml");
    std::fs::write(&config, "[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"token\"\n[pools.p]\nmembers = [ { address = \"127.0.0.1:1\" } ]\n[virtuals.v]\nlisten = \"127.0.0.100:1\"\npool = \"p\"\n").unwrap();
    let check = || {
        Command::new(BINARY)
            .args(["check", "-c"])
            .arg(&config)
            .output()
            .unwrap()
    };
    let missing = check();
    assert_eq!(missing.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.contains(&format!(
            "admin.token_file: {} cannot be read",
            dir.join("token").display()
        )),
        "{stderr}"
    );
    std::fs::write(dir.join("token"), "short\n").unwrap();
    let short = check();
    assert!(String::from_utf8_lossy(&short.stderr).contains("holds fewer than 16 characters"));
    std::fs::write(dir.join("token"), "long enough to guard the admin API\n").unwrap();
    assert!(check().status.success());
}

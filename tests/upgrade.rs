//! Binary upgrade, through the real binary: `vipgate upgrade` (or SIGUSR2)
//! starts the binary again with the same arguments, the new process takes
//! the listening sockets, the state and every established TCP connection
//! over, and the old one drains what cannot move (TLS it terminates) and
//! exits. No client is refused and no line is lost while it happens, SNAT
//! ports stay accounted, and a successor that cannot serve leaves the old
//! process serving.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::process::{ask, free_vip_port, line_member, KillOnDrop, Running, BINARY};
use common::{eventually_blocking, PATIENCE};

struct Setup {
    dir: PathBuf,
    config: PathBuf,
    port: u16,
    admin: String,
}

fn setup(test: &str) -> Setup {
    let dir = common::tls_ca::temp_dir(&format!("upgrade-{test}"));
    let _ = std::fs::remove_file(dir.join("state.json"));
    let (first, second) = (line_member("127.0.0.11"), line_member("127.0.0.12"));
    let banner = slow_banners(&["127.0.0.11", "127.0.0.12"]);
    let port = free_vip_port();
    let admin = format!(
        "127.0.0.1:{}",
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    );
    let config = dir.join("vipgate.toml");
    // The monitor asks a banner that answers only after a second and a
    // half, every 30 s: a successor that did not carry the verdicts over
    // would have its members "unchecked", serving nobody, for that long.
    std::fs::write(
        &config,
        format!(
            "[settings]\nstate_file = \"state.json\"\nupgrade_drain_timeout = \"20s\"\n\
             [admin]\nlisten = \"{admin}\"\n\
             [monitors.TCP]\ntype = \"tcp\"\nport = {banner}\nexpect = \"READY\"\ninterval = \"30s\"\ntimeout = \"91s\"\n\
             [pools.p]\nmonitor = {{ all = [\"TCP\"] }}\n\
             members = [ {{ address = \"{first}\" }}, {{ address = \"{second}\" }} ]\n\
             [virtuals.vs]\nlisten = \"127.0.0.100:{port}\"\npool = \"p\"\n"
        ),
    )
    .unwrap();
    Setup {
        dir,
        config,
        port,
        admin,
    }
}

fn vipgate(arguments: &[&str], config: &Path) -> std::process::Output {
    Command::new(BINARY)
        .args(arguments)
        .arg("-c")
        .arg(config)
        .output()
        .unwrap()
}

/// `vipgate upgrade --admin ADMIN -c CONFIG`, which must succeed: what it
/// printed.
fn upgrade_ok(admin: &str, config: &Path) -> String {
    let output = vipgate(&["upgrade", "--admin", admin], config);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The same, which must fail (exit status 1): why, as it said.
fn upgrade_refused(admin: &str, config: &Path) -> String {
    let output = vipgate(&["upgrade", "--admin", admin], config);
    let said = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(1), "{said}");
    said
}

/// A banner on the same port of each of `ips` that says `READY` a second
/// and a half after a client connects: a monitor that takes its time.
fn slow_banners(ips: &[&str]) -> u16 {
    let first = std::net::TcpListener::bind((ips[0], 0)).unwrap();
    let port = first.local_addr().unwrap().port();
    let mut listeners = vec![first];
    for ip in &ips[1..] {
        listeners.push(std::net::TcpListener::bind((*ip, port)).unwrap());
    }
    for listener in listeners {
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(1500));
                    let _ = stream.write_all(b"READY\n");
                });
            }
        });
    }
    port
}

/// The process id the old process names as its successor.
fn successor_of(old: &Running) -> u32 {
    let line = old
        .wait_for("the new process serves; this one stops accepting")
        .expect("the old process hands over");
    line.rsplit("successor=")
        .next()
        .and_then(|pid| pid.trim().parse().ok())
        .unwrap_or_else(|| panic!("no successor pid in {line}"))
}

/// A client that opens a new connection every 10 ms until stopped, and
/// counts the ones that were not served.
struct Newcomers {
    stop: Arc<AtomicBool>,
    served: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
    thread: std::thread::JoinHandle<()>,
}

impl Newcomers {
    fn start(port: u16) -> Newcomers {
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicUsize::new(0));
        let refused = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (stop, served, refused) = (stop.clone(), served.clone(), refused.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match ask(port) {
                        Some(answer) if answer == "member hi\n" => {
                            served.fetch_add(1, Ordering::Relaxed)
                        }
                        _ => refused.fetch_add(1, Ordering::Relaxed),
                    };
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        Newcomers {
            stop,
            served,
            refused,
            thread,
        }
    }

    /// (served, not served)
    fn stop(self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
        (
            self.served.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
        )
    }
}

/// `method path` on the admin endpoint at `admin`: the whole answer.
fn admin_call(admin: &str, method: &str, path: &str) -> String {
    use std::io::Read;
    let mut stream = TcpStream::connect(admin).unwrap();
    write!(stream, "{method} {path} HTTP/1.0\r\nHost: admin\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

/// Waits until vipgate serves (its members' first probes passed).
fn wait_serving(port: u16) {
    eventually_blocking("vipgate serves", PATIENCE, || {
        (ask(port).as_deref() == Some("member hi\n")).then_some(())
    });
}

/// Agents that stay connected and send numbered lines every 10 ms, each
/// checking that every answer comes back, once and in order.
struct Talkers {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Result<usize, String>>>,
}

impl Talkers {
    fn start(port: u16, count: usize) -> Talkers {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..count)
            .map(|_| {
                let stop = stop.clone();
                let mut held = held_connection(port);
                std::thread::spawn(move || {
                    let mut line = 0usize;
                    while !stop.load(Ordering::Relaxed) {
                        let answer = say(&mut held, &line.to_string());
                        if answer != format!("member {line}\n") {
                            return Err(format!("line {line} came back as {answer:?}"));
                        }
                        line += 1;
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Ok(line)
                })
            })
            .collect();
        Talkers { stop, threads }
    }

    /// The lines each agent exchanged; fails on any lost or out of order.
    fn stop(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .map(|thread| thread.join().unwrap().unwrap_or_else(|e| panic!("{e}")))
            .sum()
    }
}

fn held_connection(port: u16) -> (TcpStream, BufReader<TcpStream>) {
    let stream = TcpStream::connect(("127.0.0.100", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let reader = BufReader::new(stream.try_clone().unwrap());
    (stream, reader)
}

fn say(held: &mut (TcpStream, BufReader<TcpStream>), line: &str) -> String {
    writeln!(held.0, "{line}").unwrap();
    let mut answer = String::new();
    held.1.read_line(&mut answer).unwrap();
    answer
}

/// SIGTERM to a vipgate this test started (through an upgrade), and the
/// wait until it is gone.
fn stop_process(pid: u32) {
    // SAFETY: kill(2) on a process this test started (through vipgate).
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    eventually_blocking(&format!("process {pid} stops"), PATIENCE, || {
        (!alive(pid)).then_some(())
    });
}

fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only asks whether the process exists.
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

#[test]
fn an_upgrade_moves_every_connection_refusing_nobody_and_the_old_process_exits() {
    let setup = setup("hand-over");
    let mut old = Running::start(&setup.config, "");
    wait_serving(setup.port);
    let mut held = held_connection(setup.port);
    assert_eq!(say(&mut held, "before"), "member before\n");
    // An operator decision the successor must keep.
    let second = std::fs::read_to_string(&setup.config).unwrap();
    let second = second
        .split("address = \"")
        .nth(2)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_string();
    let disabled = admin_call(
        &setup.admin,
        "POST",
        &format!("/pools/p/members/{second}/disable"),
    );
    assert!(disabled.contains("\"saved\": true"), "{disabled}");

    let newcomers = Newcomers::start(setup.port);
    let talkers = Talkers::start(setup.port, 100);
    std::thread::sleep(Duration::from_millis(200));
    let asked = std::time::Instant::now();
    let said = upgrade_ok(&setup.admin, &setup.config);
    let took = asked.elapsed();
    assert!(said.contains("upgraded: process"), "{said}");
    let successor = successor_of(&old);
    let _reap = KillOnDrop(successor);
    assert_ne!(successor, old.child.id());
    // New clients keep coming for a while after the hand-over.
    std::thread::sleep(Duration::from_millis(300));
    let (served, refused) = newcomers.stop();
    let lines = talkers.stop();
    println!(
        "upgrade: handed over in {} ms (command to answer); {served} new clients served during it, {refused} not served; 100 held agents exchanged {lines} lines, none lost or out of order",
        took.as_millis()
    );
    assert!(served > 20, "{served} served");
    assert_eq!(refused, 0, "no new client is refused during an upgrade");

    // Every TCP connection moved: the held one answers through the new
    // process, and the old one, left with nothing, exits.
    let moved = said
        .split("took ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|count| count.parse::<usize>().ok())
        .unwrap_or_else(|| panic!("no count of connections moved in {said}"));
    assert!(moved >= 101, "the held agents moved: {said}");
    let upgraded_at = std::time::Instant::now();
    let exited = eventually_blocking("the old process exits", PATIENCE, || {
        old.child.try_wait().unwrap()
    });
    println!(
        "upgrade: {moved} connections moved; the old process was gone {} ms after the command answered",
        upgraded_at.elapsed().as_millis()
    );
    assert!(exited.success(), "{exited:?}");
    assert_eq!(
        say(&mut held, "after"),
        "member after
"
    );
    // The successor serves, with the decision and health it was handed:
    // every new client goes to the first member at once.
    for _ in 0..4 {
        assert_eq!(ask(setup.port).as_deref(), Some("member hi\n"));
    }
    let status = admin_call(&setup.admin, "GET", "/status");
    assert!(status.contains("\"state\": \"disabled\""), "{status}");
    assert!(
        !status.contains("unchecked"),
        "health was carried over: {status}"
    );
    assert!(alive(successor));
    // A scrape sees counters start again, and the upgrade counted.
    let metrics = admin_call(&setup.admin, "GET", "/metrics");
    assert!(
        metrics.contains("\nvipgate_upgrades_total 1\n"),
        "{metrics}"
    );

    // A second upgrade in a row, of the successor: the held agent moves
    // again.
    let again = upgrade_ok(&setup.admin, &setup.config);
    assert_eq!(ask(setup.port).as_deref(), Some("member hi\n"));
    assert_eq!(say(&mut held, "twice"), "member twice\n");
    let metrics = admin_call(&setup.admin, "GET", "/metrics");
    assert!(
        metrics.contains("\nvipgate_upgrades_total 2\n"),
        "{metrics}"
    );
    let third: u32 = again
        .split("process ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|pid| pid.parse().ok())
        .expect("the third process's id");
    let _reap_third = KillOnDrop(third);
    eventually_blocking("the second process exits", PATIENCE, || {
        (!alive(successor)).then_some(())
    });
    drop(held);
    stop_process(third);
    let _ = std::fs::remove_dir_all(&setup.dir);
}

#[test]
fn a_successor_that_cannot_serve_leaves_the_old_process_serving() {
    let setup = setup("refused");
    let old = Running::start(&setup.config, "");
    wait_serving(setup.port);
    let mut held = held_connection(setup.port);
    assert_eq!(say(&mut held, "before"), "member before\n");

    // The configuration on disk has gone bad since the start.
    let good = std::fs::read_to_string(&setup.config).unwrap();
    std::fs::write(
        &setup.config,
        good.replace("pool = \"p\"", "pool = \"nope\""),
    )
    .unwrap();
    let said = upgrade_refused(&setup.admin, &setup.config);
    assert!(
        said.contains("the new process refused to take over"),
        "{said}"
    );
    assert!(said.contains("no pool named \"nope\""), "{said}");
    assert!(said.contains("this vipgate serves on"), "{said}");

    // SIGUSR2 the same way: logged, nothing changes.
    old.signal(libc::SIGUSR2);
    assert!(old
        .wait_for("binary upgrade failed; this process serves on")
        .is_some());
    assert_eq!(say(&mut held, "still here"), "member still here\n");
    assert_eq!(ask(setup.port).as_deref(), Some("member hi\n"));

    // Fixed again: the upgrade goes through.
    std::fs::write(&setup.config, good).unwrap();
    upgrade_ok(&setup.admin, &setup.config);
    let successor = successor_of(&old);
    let _reap = KillOnDrop(successor);
    drop(held);
    stop_process(successor);
    let _ = std::fs::remove_dir_all(&setup.dir);
}

#[test]
fn upgrade_without_an_admin_endpoint_says_how_else() {
    let dir = common::tls_ca::temp_dir("upgrade-no-admin");
    let config = dir.join("vipgate.toml");
    std::fs::write(
        &config,
        "[pools.p]\nmembers = [ { address = \"127.0.0.11:1\" } ]\n[virtuals.v]\nlisten = \"127.0.0.100:1\"\npool = \"p\"\n",
    )
    .unwrap();
    let output = vipgate(&["upgrade"], &config);
    let said = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{said}");
    assert!(said.contains("has no [admin] table"), "{said}");
    assert!(said.contains("kill -USR2"), "{said}");
}

#[test]
fn an_upgrade_asked_during_a_reload_waits_for_it_and_serves_the_new_file() {
    let setup = setup("during-reload");
    let old = Running::start(&setup.config, "");
    wait_serving(setup.port);
    // A second virtual, added by editing the file: the reload and the
    // upgrade are asked at once.
    let added = free_vip_port();
    let text = std::fs::read_to_string(&setup.config).unwrap();
    std::fs::write(
        &setup.config,
        format!("{text}[virtuals.added]\nlisten = \"127.0.0.100:{added}\"\npool = \"p\"\n"),
    )
    .unwrap();
    old.signal(libc::SIGHUP);
    upgrade_ok(&setup.admin, &setup.config);
    let successor = successor_of(&old);
    let _reap = KillOnDrop(successor);
    // The successor serves both virtuals: the one it inherited and the
    // added one (inherited too if the reload came first, bound otherwise).
    for port in [setup.port, added] {
        wait_serving(port);
    }
    stop_process(successor);
    let _ = std::fs::remove_dir_all(&setup.dir);
}

#[test]
fn tcp_and_passthrough_connections_move_while_terminated_tls_finishes_in_the_old_process() {
    let setup = setup("mixed");
    let ca = common::tls_ca::TestCa::new();
    let (cert, key) = ca.write_pem(&setup.dir, "vip.example");
    let secure = free_vip_port();
    // TLS that vipgate only passes through (routed by SNI) moves like
    // plain TCP: vipgate never holds its keys.
    let passed = free_vip_port();
    let tls_member = tls_line_member(&ca, "127.0.0.13");
    let text = std::fs::read_to_string(&setup.config).unwrap();
    std::fs::write(
        &setup.config,
        format!(
            "{text}[virtuals.secure]\nlisten = \"127.0.0.100:{secure}\"\npool = \"p\"\n\
             tls = {{ mode = \"terminate\", certs = [ {{ cert = \"{cert}\", key = \"{key}\" }} ] }}\n\
             [pools.tls]\nmembers = [ {{ address = \"{tls_member}\" }} ]\n\
             [virtuals.passed]\nlisten = \"127.0.0.100:{passed}\"\npool = \"tls\"\n\
             tls = {{ mode = \"passthrough\", sni_routes = {{ \"vip.example\" = \"tls\" }} }}\n"
        ),
    )
    .unwrap();
    let old = Running::start(&setup.config, "");
    wait_serving(setup.port);
    let mut plain = held_connection(setup.port);
    assert_eq!(say(&mut plain, "plain"), "member plain\n");
    let mut tls = tls_connection(&ca, secure);
    assert_eq!(tls_say(&mut tls, "secure"), "member secure\n");
    let mut passthrough = tls_connection(&ca, passed);
    assert_eq!(tls_say(&mut passthrough, "through"), "tls member through\n");

    let said = upgrade_ok(&setup.admin, &setup.config);
    assert!(said.contains("took 2 TCP connections over"), "{said}");
    let successor = successor_of(&old);
    let _reap = KillOnDrop(successor);
    // Both go on: the plain one in the new process, the TLS one in the old,
    // which drains it and so stays.
    assert_eq!(say(&mut plain, "moved"), "member moved\n");
    assert_eq!(tls_say(&mut passthrough, "moved"), "tls member moved\n");
    assert_eq!(tls_say(&mut tls, "stayed"), "member stayed\n");
    let mut old = old;
    assert!(
        old.child.try_wait().unwrap().is_none(),
        "the old process drains"
    );
    // One old process at most: the successor is not upgraded while its
    // predecessor drains.
    let told = upgrade_refused(&setup.admin, &setup.config);
    assert!(
        told.contains(&format!(
            "the previous vipgate (process {}) still drains",
            old.child.id()
        )),
        "{told}"
    );
    // Its last connection ends: the old process exits.
    drop(tls);
    let exited = eventually_blocking("the old process exits", PATIENCE, || {
        old.child.try_wait().unwrap()
    });
    assert!(exited.success(), "{exited:?}");
    assert_eq!(say(&mut plain, "still"), "member still\n");
    assert_eq!(tls_say(&mut passthrough, "still"), "tls member still\n");
    drop(plain);
    drop(passthrough);
    stop_process(successor);
    let _ = std::fs::remove_dir_all(&setup.dir);
}

type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn tls_connection(ca: &common::tls_ca::TestCa, port: u16) -> TlsStream {
    let config = Arc::new(ca.client_builder().with_no_client_auth());
    let name = rustls::pki_types::ServerName::try_from("vip.example").unwrap();
    let connection = rustls::ClientConnection::new(config, name).unwrap();
    let socket = TcpStream::connect(("127.0.0.100", port)).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    rustls::StreamOwned::new(connection, socket)
}

/// A member on `ip` that speaks TLS (as `vip.example`) and answers each
/// line `L` with `tls member L`.
fn tls_line_member(ca: &common::tls_ca::TestCa, ip: &str) -> std::net::SocketAddr {
    let (chain, key) = ca.issue("vip.example");
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap(),
    );
    let listener = std::net::TcpListener::bind((ip, 0)).unwrap();
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for socket in listener.incoming().flatten() {
            let config = Arc::clone(&config);
            std::thread::spawn(move || {
                let connection = rustls::ServerConnection::new(config).unwrap();
                let mut stream = rustls::StreamOwned::new(connection, socket);
                let mut line = Vec::new();
                let mut byte = [0u8; 1];
                use std::io::Read;
                while let Ok(1) = stream.read(&mut byte) {
                    line.push(byte[0]);
                    if byte[0] == b'\n' {
                        let answer = [b"tls member ".as_slice(), &line].concat();
                        if stream
                            .write_all(&answer)
                            .and_then(|()| stream.flush())
                            .is_err()
                        {
                            return;
                        }
                        line.clear();
                    }
                }
            });
        }
    });
    address
}

fn tls_say(stream: &mut TlsStream, line: &str) -> String {
    writeln!(stream, "{line}").unwrap();
    stream.flush().unwrap();
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while !answer.ends_with(b"\n") {
        use std::io::Read;
        assert_eq!(stream.read(&mut byte).unwrap(), 1, "the answer ends early");
        answer.push(byte[0]);
    }
    String::from_utf8(answer).unwrap()
}

#[test]
fn snat_ports_in_use_move_with_their_connections() {
    let member = source_telling_member("127.0.0.13");
    let port = free_vip_port();
    let admin = format!("127.0.0.1:{}", free_local_port());
    let dir = common::tls_ca::temp_dir("upgrade-snat");
    let config = dir.join("vipgate.toml");
    std::fs::write(
        &config,
        format!(
            "[admin]\nlisten = \"{admin}\"\n\
             [snat_pools.sp]\naddresses = [\"127.0.0.21\"]\nports = \"41000-41007\"\n\
             [pools.p]\nmembers = [ {{ address = \"{member}\" }} ]\n\
             [virtuals.vs]\nlisten = \"127.0.0.100:{port}\"\npool = \"p\"\nsnat = \"sp\"\n"
        ),
    )
    .unwrap();
    let old = Running::start(&config, "");
    let mut held: Vec<_> = (0..5).map(|_| held_connection(port)).collect();
    let mut sources: Vec<String> = held.iter_mut().map(|h| say(h, "who")).collect();
    upgrade_ok(&admin, &config);
    let successor = successor_of(&old);
    let _reap = KillOnDrop(successor);
    // The new process counts the five ports its connections hold (once
    // it has taken them: the command answers when they are sent).
    eventually_blocking("the moved connections' ports are counted", PATIENCE, || {
        admin_call(&admin, "GET", "/status")
            .contains("\"in_use\": 5")
            .then_some(())
    });
    // Three more fill the range, each from a port nobody holds; the ports
    // the moved connections hold are theirs still.
    for (connection, source) in held.iter_mut().zip(&sources) {
        assert_eq!(&say(connection, "who"), source, "the same connection");
    }
    for _ in 0..3 {
        let mut newcomer = held_connection(port);
        sources.push(say(&mut newcomer, "who"));
        held.push(newcomer);
    }
    let mut distinct = sources.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 8, "no port leased twice: {sources:?}");
    let status = admin_call(&admin, "GET", "/status");
    assert!(status.contains("\"in_use\": 8"), "{status}");
    drop(held);
    stop_process(successor);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A member on `ip` that answers every line with the address the
/// connection comes from.
fn source_telling_member(ip: &str) -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind((ip, 0)).unwrap();
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let peer = stream.peer_addr().unwrap();
                let mut writer = stream.try_clone().unwrap();
                for _ in BufReader::new(stream).lines().map_while(Result::ok) {
                    if writeln!(writer, "from {peer}").is_err() {
                        return;
                    }
                }
            });
        }
    });
    address
}

fn free_local_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn a_new_binary_that_exits_at_once_leaves_the_old_process_serving() {
    let setup = setup("broken-binary");
    // Started from a copy, so that the copy can be replaced as a package
    // upgrade replaces the installed binary.
    let installed = setup.dir.join("vipgate");
    std::fs::copy(BINARY, &installed).unwrap();
    let command = format!(
        "exec {} run -c {}",
        installed.display(),
        setup.config.display()
    );
    let old = Running::spawn(Command::new("sh").args(["-c", &command]));
    assert!(old.wait_for("listening").is_some(), "vipgate started");
    wait_serving(setup.port);
    let mut held = held_connection(setup.port);
    assert_eq!(say(&mut held, "before"), "member before\n");

    let broken = setup.dir.join("vipgate.new");
    std::fs::write(&broken, "#!/bin/sh\nexit 3\n").unwrap();
    std::fs::set_permissions(&broken, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::rename(&broken, &installed).unwrap();
    let said = upgrade_refused(&setup.admin, &setup.config);
    assert!(
        said.contains("the new process exited (exit status: 3)"),
        "{said}"
    );
    assert!(said.contains("this vipgate serves on"), "{said}");
    // Nothing was dropped, and newcomers are served.
    assert_eq!(say(&mut held, "after"), "member after\n");
    assert_eq!(ask(setup.port).as_deref(), Some("member hi\n"));
    drop(held);
    let _ = std::fs::remove_dir_all(&setup.dir);
}

/// A timed drain under way goes on at its pace in the new process: the
/// deadline and the count it started with come along, and the member is
/// drained by the deadline.
#[test]
fn a_timed_drain_goes_on_through_an_upgrade() {
    let setup = setup("drain");
    let old = Running::start(&setup.config, "");
    wait_serving(setup.port);
    let first = std::fs::read_to_string(&setup.config).unwrap();
    let first = first
        .split("address = \"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_string();
    // Connections on the first member (round-robin: every other one).
    let mut held: Vec<_> = (0..20).map(|_| held_connection(setup.port)).collect();
    for connection in &mut held {
        assert_eq!(say(connection, "hi"), "member hi\n");
    }
    let asked = std::time::Instant::now();
    let drained = admin_call(
        &setup.admin,
        "POST",
        &format!("/pools/p/members/{first}/drain?within=6s"),
    );
    assert!(
        drained.contains("\"draining_within_seconds\": 6.0"),
        "{drained}"
    );
    std::thread::sleep(Duration::from_secs(1));
    upgrade_ok(&setup.admin, &setup.config);
    let successor = successor_of(&old);
    let _reap = KillOnDrop(successor);
    let status = admin_call(&setup.admin, "GET", "/status");
    assert!(status.contains("\"started_with\": 10"), "{status}");
    let done = eventually_blocking("the member drained in the new process", PATIENCE, || {
        admin_call(&setup.admin, "GET", "/status")
            .contains("\"drained\": true")
            .then(|| asked.elapsed())
    });
    println!(
        "drain of 10 within 6 s through an upgrade: drained after {:.1} s",
        done.as_secs_f64()
    );
    assert!(done < Duration::from_secs(8), "{done:?}");
    drop(held);
    stop_process(successor);
    let _ = std::fs::remove_dir_all(&setup.dir);
}

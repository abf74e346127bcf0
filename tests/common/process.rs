//! The `vipgate` binary as a child process, for what only a process shows:
//! signals, the environment a service manager gives, log output, exit
//! status.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const BINARY: &str = env!("CARGO_BIN_EXE_vipgate");

/// A `vipgate` child process whose stderr lines can be waited for.
pub struct Running {
    pub child: std::process::Child,
    logs: std::sync::mpsc::Receiver<String>,
}

impl Running {
    /// Runs `vipgate run -c CONFIG`, through `sh -c` with `limits` (such as
    /// `ulimit -n 48 &&`) when given, and waits for its first listener.
    pub fn start(config: &Path, limits: &str) -> Running {
        let command = format!("{limits} exec {BINARY} run -c {}", config.display());
        let running = Running::spawn(Command::new("sh").args(["-c", &command]));
        assert!(running.wait_for("listening").is_some(), "vipgate started");
        running
    }

    /// Runs `vipgate run -c CONFIG` inside the network namespace
    /// `namespace` and waits for its admin endpoint.
    pub fn in_namespace(namespace: &str, config: &Path) -> Running {
        let running = Running::spawn(
            Command::new("ip")
                .args(["netns", "exec", namespace, BINARY, "run", "-c"])
                .arg(config),
        );
        assert!(
            running.wait_for("admin endpoint listening").is_some(),
            "vipgate in {namespace} started"
        );
        running
    }

    /// Spawns `command` (a `vipgate` command line) with stderr captured.
    pub fn spawn(command: &mut Command) -> Running {
        let mut child = command
            .stderr(Stdio::piped())
            .spawn()
            .expect("the vipgate binary starts");
        let (lines, logs) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = lines.send(line);
            }
        });
        Running { child, logs }
    }

    /// The first log line containing `needle` within 20 s.
    pub fn wait_for(&self, needle: &str) -> Option<String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while let Ok(line) = self
            .logs
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            if line.contains(needle) {
                return Some(line);
            }
        }
        None
    }

    /// The log lines not read yet (waiting up to 1 s for the last ones).
    pub fn rest_of_log(&self) -> Vec<String> {
        let mut lines = Vec::new();
        while let Ok(line) = self.logs.recv_timeout(Duration::from_secs(1)) {
            lines.push(line);
        }
        lines
    }

    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: plain kill(2) on our own child.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, signal) }, 0);
    }

    /// SIGTERM, then the exit status (the log lines stay readable).
    pub fn stop(&mut self) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM);
        self.child.wait().unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A helper a test started (keepalived, BIRD, a script): asked to stop
/// (SIGTERM) and waited for when dropped, also when the test fails.
pub struct Daemon(pub std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

/// A process a test started indirectly (a binary upgrade's successor):
/// killed when dropped, so a test that fails leaves none behind.
pub struct KillOnDrop(pub u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: kill(2) on a process this test started; signal 0 first
        // only asks whether it still runs.
        unsafe {
            if libc::kill(self.0 as i32, 0) == 0 {
                libc::kill(self.0 as i32, libc::SIGKILL);
            }
        }
    }
}

/// A port free on the VIP address.
pub fn free_vip_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.100:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A member on `ip` answering each line `L` with `member L`, on threads.
pub fn line_member(ip: &str) -> std::net::SocketAddr {
    let member = std::net::TcpListener::bind(format!("{ip}:0")).unwrap();
    let address = member.local_addr().unwrap();
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
    address
}

/// Sends one line through vipgate at 127.0.0.100:`port`; the answer.
pub fn ask(port: u16) -> Option<String> {
    let stream = std::net::TcpStream::connect(("127.0.0.100", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    (&stream).write_all(b"hi\n").ok()?;
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer).ok()?;
    (!answer.is_empty()).then_some(answer)
}

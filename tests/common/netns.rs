//! Network namespaces for tests that need addresses loopback cannot give
//! (one that never answers, several hosts). Everything a test creates stays
//! inside its namespaces: the host namespace gets no address, route or
//! interface, and nothing leaves the machine. Namespaces are removed when
//! their guard drops, whether the test passed or not.
//!
//! A test that must run inside a namespace runs its own binary again there
//! (`ip netns exec NS <test binary> <test> --exact`); [`inside`] tells the
//! second run where it is.

use std::process::{Command, Output};

/// The environment variable that marks the run inside a namespace.
const INSIDE: &str = "VIPGATE_TEST_NETNS";

/// The namespace this test process runs in, when it was started by
/// [`Namespace::run_test_inside`].
pub fn inside() -> Option<String> {
    std::env::var(INSIDE).ok()
}

/// A network namespace, deleted on drop.
pub struct Namespace {
    pub name: String,
}

impl Namespace {
    /// Creates `vg-{tag}-{pid}-{n}` with its loopback up. Needs root and
    /// iproute2 (CI has both); fails the test with the reason otherwise.
    pub fn create(tag: &str) -> Namespace {
        static CREATED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = CREATED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("vg-{tag}-{}-{n}", std::process::id());
        remove_orphans();
        // A namespace left by a crashed run with the same pid goes first.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run("ip", &["netns", "add", &name]);
        let namespace = Namespace { name };
        namespace.ip(&["link", "set", "lo", "up"]);
        namespace
    }

    /// A switch: a namespace holding one bridge, `br0`, that hosts plug
    /// into with [`Namespace::host`].
    pub fn switch(tag: &str) -> Namespace {
        let switch = Namespace::create(tag);
        switch.ip(&["link", "add", "name", "br0", "type", "bridge"]);
        switch.ip(&["link", "set", "br0", "up"]);
        switch
    }

    /// A host plugged into this switch: a new namespace whose `eth0` (a
    /// veth whose other end is on the switch's bridge) has `address`/24.
    pub fn host(&self, tag: &str, address: &str) -> Namespace {
        let namespace = Namespace::create(tag);
        let port = format!("p-{tag}");
        self.veth(&port, &namespace, "eth0");
        self.ip(&["link", "set", &port, "master", "br0"]);
        self.ip(&["link", "set", &port, "up"]);
        namespace.ip(&["addr", "add", &format!("{address}/24"), "dev", "eth0"]);
        namespace.ip(&["link", "set", "eth0", "up"]);
        namespace
    }

    /// A veth pair: `name` here, `peer_name` in `peer`.
    pub fn veth(&self, name: &str, peer: &Namespace, peer_name: &str) {
        self.ip(&[
            "link", "add", "name", name, "type", "veth", "peer", "name", peer_name, "netns",
            &peer.name,
        ]);
    }

    /// `ip -n NS ARGS...`; panics with ip's message if it fails.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all);
    }

    /// Runs `program ARGS...` inside the namespace.
    pub fn exec(&self, program: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run ip netns exec: {e}"))
    }

    /// Runs `work` on a new thread that has entered the namespace: sockets
    /// it (or a runtime it builds) creates belong to the namespace.
    pub fn spawn_in<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            // SAFETY: setns(2) with a namespace file we hold open; it moves
            // only this thread.
            let entered = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(
                entered,
                0,
                "setns {path}: {}",
                std::io::Error::last_os_error()
            );
            work()
        })
    }

    /// Runs test `test` of this test binary again inside the namespace and
    /// fails if it fails, showing its output.
    pub fn run_test_inside(&self, test: &str) {
        let binary = std::env::current_exe().unwrap();
        let output = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .arg(binary)
            // The test is #[ignore]d (it needs root): run it all the same.
            .args([
                test,
                "--exact",
                "--include-ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(INSIDE, &self.name)
            .output()
            .unwrap_or_else(|e| panic!("cannot run ip netns exec: {e}"));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            output.status.success() && text.contains("1 passed"),
            "{test} inside {}:\n{text}",
            self.name
        );
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Deletes test namespaces whose process is gone (killed before its
/// guards ran): `vg-TAG-PID-N` with no process PID.
fn remove_orphans() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let mut parts = name.rsplitn(3, '-');
        let (Some(_), Some(pid), Some(prefix)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let alive = std::path::Path::new(&format!("/proc/{pid}")).exists();
        if prefix.starts_with("vg-") && pid.parse::<u32>().is_ok() && !alive {
            let _ = Command::new("ip").args(["netns", "del", &name]).output();
        }
    }
}

/// Fails the test, saying why, unless this machine lets it build
/// namespaces (root, iproute2). Tests that call it are `#[ignore]`d with
/// that need, so only `--include-ignored` runs them.
pub fn require() {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    assert!(
        unsafe { libc::geteuid() } == 0,
        "tests with network namespaces need root"
    );
    let name = format!("vg-probe-{}", std::process::id());
    match Command::new("ip").args(["netns", "add", &name]).output() {
        Ok(output) if output.status.success() => {
            let _ = Command::new("ip").args(["netns", "del", &name]).output();
        }
        Ok(output) => panic!(
            "tests with network namespaces: ip netns add failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ),
        Err(error) => {
            panic!("tests with network namespaces need iproute2 (the ip command): {error}")
        }
    }
}

/// Runs a setup command; panics with its output if it fails.
pub fn run(program: &str, args: &[&str]) {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {program} (tests with namespaces need root and iproute2): {e}")
        });
    assert!(
        output.status.success(),
        "{program} {}: {}(tests with namespaces need root and iproute2)",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

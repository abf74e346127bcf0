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
        // A namespace left by a crashed run with the same pid goes first.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run("ip", &["netns", "add", &name]);
        let namespace = Namespace { name };
        namespace.ip(&["link", "set", "lo", "up"]);
        namespace
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

    /// Runs test `test` of this test binary again inside the namespace and
    /// fails if it fails, showing its output.
    pub fn run_test_inside(&self, test: &str) {
        let binary = std::env::current_exe().unwrap();
        let output = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .arg(binary)
            .args([test, "--exact", "--nocapture", "--test-threads=1"])
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

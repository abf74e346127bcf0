//! A real browser for tests: headless Chromium driven over the DevTools
//! protocol on a pipe (`--remote-debugging-pipe`: commands on its fd 3,
//! answers and events on its fd 4, each JSON message ended by a NUL), so
//! no debugging port is opened. Nothing leaves the machine: every host name
//! resolves to nothing and everything but loopback goes to a proxy that
//! does not exist; Chromium's background services are off.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;

/// How long one DevTools call may take.
const CALL_PATIENCE: Duration = Duration::from_secs(30);

/// The Chromium binary, or `None` when it is not installed.
pub fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|dir| dir.join(name))
                    .find(|path| path.is_file())
            })
        })
}

/// A headless Chromium with one page open.
pub struct Browser {
    child: Child,
    commands: pipe::Sender,
    answers: pipe::Receiver,
    pending: Vec<u8>,
    next_id: u64,
    session: String,
    profile: PathBuf,
    /// Exceptions and console errors the page raised.
    pub errors: Vec<String>,
}

/// Two pipes, the second end of each already marked close-on-exec.
fn pipe_pair() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array it is given.
    let result = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(result, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just created and are owned by no one else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

impl Browser {
    /// Starts Chromium at `binary` with a fresh profile and opens a blank page
    /// of `width` x `height` CSS pixels.
    pub async fn start(binary: &Path, width: u32, height: u32) -> Browser {
        // A profile of its own: tests run browsers side by side.
        static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let profile = std::env::temp_dir().join(format!(
            "vipgate-chromium-{}-{}",
            std::process::id(),
            STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&profile);
        let (command_read, command_write) = pipe_pair();
        let (answer_read, answer_write) = pipe_pair();
        let (child_in, child_out) = (command_read.as_raw_fd(), answer_write.as_raw_fd());
        let mut command = Command::new(binary);
        command
            .args([
                "--headless=new",
                "--remote-debugging-pipe",
                "--no-sandbox", // tests run as root, where the sandbox refuses to start
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-sync",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-default-apps",
                "--disable-domain-reliability",
                "--disable-client-side-phishing-detection",
                "--no-pings",
                "--proxy-server=http://127.0.0.1:9",
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                &format!("--window-size={width},{height}"),
                &format!("--user-data-dir={}", profile.display()),
                "about:blank",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: between fork and exec only dup2 runs (async-signal-safe);
        // it puts the pipe ends where Chromium looks for them, and dup2
        // leaves the copies open across exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
                // An end that already sits on 3 or 4 is moved out of the way
                // first, so neither dup2 overwrites the other end or is a
                // no-op that leaves close-on-exec set.
                let out_of_the_way = |fd: i32| {
                    if fd == 3 || fd == 4 {
                        libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10)
                    } else {
                        fd
                    }
                };
                let (input, output) = (out_of_the_way(child_in), out_of_the_way(child_out));
                if input < 0 || output < 0 || libc::dup2(input, 3) < 0 || libc::dup2(output, 4) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        drop((command_read, answer_write));
        let mut browser = Browser {
            child,
            commands: pipe::Sender::from_owned_fd(command_write).expect("command pipe"),
            answers: pipe::Receiver::from_owned_fd(answer_read).expect("answer pipe"),
            pending: Vec::new(),
            next_id: 0,
            session: String::new(),
            profile,
            errors: Vec::new(),
        };
        let target = browser
            .call("Target.createTarget", json!({ "url": "about:blank" }))
            .await;
        let target_id = target["targetId"]
            .as_str()
            .expect("a target id")
            .to_string();
        let attached = browser
            .call(
                "Target.attachToTarget",
                json!({ "targetId": target_id, "flatten": true }),
            )
            .await;
        browser.session = attached["sessionId"]
            .as_str()
            .expect("a session id")
            .to_string();
        browser.call("Runtime.enable", json!({})).await;
        browser.call("Page.enable", json!({})).await;
        browser
            .call(
                "Emulation.setDeviceMetricsOverride",
                json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false }),
            )
            .await;
        browser
    }

    /// One DevTools command on the page (or on the browser before a page is
    /// attached); its result, or a panic with the protocol's error.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if !self.session.is_empty() {
            message["sessionId"] = Value::from(self.session.clone());
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        self.commands
            .write_all(&bytes)
            .await
            .expect("Chromium reads commands");
        tokio::time::timeout(CALL_PATIENCE, self.answer(id))
            .await
            .unwrap_or_else(|_| panic!("Chromium did not answer {method} within {CALL_PATIENCE:?}"))
            .unwrap_or_else(|error| panic!("{method} failed: {error}"))
    }

    /// Reads messages until the answer to `id`, keeping the errors events report.
    async fn answer(&mut self, id: u64) -> Result<Value, Value> {
        loop {
            while let Some(end) = self.pending.iter().position(|&b| b == 0) {
                let message: Value =
                    serde_json::from_slice(&self.pending[..end]).expect("DevTools speaks JSON");
                self.pending.drain(..=end);
                self.note_event(&message);
                if message["id"].as_u64() == Some(id) {
                    return match message.get("error") {
                        Some(error) => Err(error.clone()),
                        None => Ok(message["result"].clone()),
                    };
                }
            }
            let mut chunk = [0u8; 64 * 1024];
            let read = self
                .answers
                .read(&mut chunk)
                .await
                .expect("Chromium answers");
            assert!(
                read > 0,
                "Chromium closed its DevTools pipe (did it crash?)"
            );
            self.pending.extend_from_slice(&chunk[..read]);
        }
    }

    fn note_event(&mut self, message: &Value) {
        match message["method"].as_str() {
            Some("Runtime.exceptionThrown") => self.errors.push(format!(
                "exception: {}",
                message["params"]["exceptionDetails"]
            )),
            Some("Runtime.consoleAPICalled") if message["params"]["type"] == "error" => self
                .errors
                .push(format!("console.error: {}", message["params"]["args"])),
            _ => {}
        }
    }

    /// Opens `url` in the page.
    pub async fn open(&mut self, url: &str) {
        let navigated = self.call("Page.navigate", json!({ "url": url })).await;
        assert!(
            navigated.get("errorText").is_none(),
            "cannot open {url}: {navigated}"
        );
    }

    /// The value of a JavaScript expression in the page (promises awaited).
    pub async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
            )
            .await;
        if let Some(exception) = result.get("exceptionDetails") {
            panic!("{expression} threw: {exception}");
        }
        result["result"]["value"].clone()
    }

    /// Waits until `expression` is true in the page, up to `patience`;
    /// panics with `what` and the page's text otherwise.
    pub async fn wait_for(&mut self, what: &str, expression: &str, patience: Duration) {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            if self.eval(expression).await == Value::Bool(true) {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                let text = self.eval("document.body.innerText").await;
                panic!("the page did not show {what} within {patience:?}; it shows:\n{text}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A PNG of the whole page, saved at `path`.
    pub async fn screenshot(&mut self, path: &Path) {
        let shot = self
            .call(
                "Page.captureScreenshot",
                json!({ "format": "png", "captureBeyondViewport": true }),
            )
            .await;
        let png = decode_base64(shot["data"].as_str().expect("screenshot data"));
        assert!(png.starts_with(b"\x89PNG"), "Chromium sent a PNG");
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Standard base64 (with padding), as DevTools sends binary data.
fn decode_base64(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            other => panic!("not base64: {other}"),
        }
    };
    let symbols: Vec<u8> = text.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::with_capacity(symbols.len() * 3 / 4);
    for chunk in symbols.chunks(4) {
        let bits = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &c)| acc | value(c) << (18 - 6 * i));
        let bytes = [(bits >> 16) as u8, (bits >> 8) as u8, bits as u8];
        out.extend_from_slice(&bytes[..chunk.len() - 1]);
    }
    out
}

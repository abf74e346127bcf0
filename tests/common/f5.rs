//! For the `import-f5` tests: converting a fixture, making the result run
//! in a test (the VIP on a port of the OS's choosing, monitors every 100
//! ms, the cookie secret in a temporary file), and the health endpoints the
//! fixtures' monitors probe.

use std::net::SocketAddr;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Converts `text`, failing the test with the error.
pub fn import(text: &str, name: &str) -> vipgate::f5::Imported {
    vipgate::f5::import(text, name).unwrap_or_else(|e| panic!("{e}"))
}

/// The converted `toml` made to run in a test: every VIP on
/// 127.0.0.100 takes an OS-chosen port, monitors probe every 100 ms and
/// give up after 400 ms, and the cookie secret is a temporary file.
pub fn runnable(toml: &str, test: &str) -> String {
    let secret = super::tls_ca::temp_dir(&format!("f5-{test}")).join("cookie-secret");
    std::fs::write(&secret, "a test secret of more than sixteen bytes").unwrap();
    toml.lines()
        .map(|line| {
            if line.starts_with("interval = ") {
                "interval = \"100ms\"".to_string()
            } else if line.starts_with("timeout = ") {
                "timeout = \"400ms\"".to_string()
            } else if line.starts_with("listen = \"127.0.0.100:") {
                "listen = \"127.0.0.100:0\"".to_string()
            } else if line.starts_with("secret_file = ") {
                format!("secret_file = \"{}\"", secret.display())
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A proxy's banner port on `address`: reads `HELLO` and answers `CSP
/// READY`. Abort the task to close it.
pub async fn banner(address: &str) -> JoinHandle<()> {
    let listener = TcpListener::bind(address)
        .await
        .unwrap_or_else(|e| panic!("cannot listen on {address}: {e}"));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut reader = BufReader::new(stream);
                let mut line = String::new();
                if reader.read_line(&mut line).await.is_ok() && line.starts_with("HELLO") {
                    let _ = reader.get_mut().write_all(b"CSP READY\r\n").await;
                }
            });
        }
    })
}

/// An HTTP health endpoint on `address` that answers 200 only to requests
/// for `Host: {host}`, 421 otherwise. Abort the task to close it.
pub async fn http_health(address: &str, host: &'static str) -> JoinHandle<()> {
    let listener = TcpListener::bind(address)
        .await
        .unwrap_or_else(|e| panic!("cannot listen on {address}: {e}"));
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = vec![0; 2048];
                let read = stream.read(&mut request).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&request[..read]).to_string();
                let wanted = format!("\r\nHost: {host}\r\n");
                let status = if request.contains(&wanted) {
                    "200 OK"
                } else {
                    "421 Misdirected Request"
                };
                let reply = format!("HTTP/1.0 {status}\r\nContent-Length: 0\r\n\r\n");
                let _ = stream.write_all(reply.as_bytes()).await;
            });
        }
    })
}

/// Starts a tagged member (named by its address) on each of `addresses`.
pub async fn members(addresses: &[&str]) -> Vec<SocketAddr> {
    let mut started = Vec::new();
    for address in addresses {
        let address: SocketAddr = address.parse().unwrap();
        started.push(
            vipgate::demo::spawn_tagged_echo(address, address.to_string())
                .await
                .unwrap_or_else(|e| panic!("cannot listen on {address}: {e}")),
        );
    }
    started
}

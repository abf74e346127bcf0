//! One probe of one target: a TCP connect (optionally send and expect), or
//! an HTTP/1.0 GET whose status is compared. Every read is bounded, so a
//! misbehaving target can only make a probe fail, never grow memory; the
//! caller bounds the time.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::Probe;

/// Most bytes read from a target while looking for `expect` or a status
/// line.
const MAX_RESPONSE: usize = 4096;

/// Runs `probe` against `target`. `Err` carries a short reason for the log
/// and the status page.
pub async fn run(probe: &Probe, target: SocketAddr) -> Result<(), String> {
    let mut stream = TcpStream::connect(target)
        .await
        .map_err(|error| describe(&error))?;
    match probe {
        Probe::Tcp { send, expect } => {
            if !send.is_empty() {
                stream
                    .write_all(send.as_bytes())
                    .await
                    .map_err(|e| describe(&e))?;
            }
            if !expect.is_empty() {
                let response =
                    read_until(&mut stream, |seen| contains(seen, expect.as_bytes())).await?;
                if !contains(&response, expect.as_bytes()) {
                    return Err(format!("response did not contain {expect:?}"));
                }
            }
            Ok(())
        }
        Probe::Http {
            path,
            expect_status,
        } => {
            let request = format!(
                "GET {path} HTTP/1.0\r\nHost: {target}\r\nUser-Agent: vipgate-monitor\r\nConnection: close\r\n\r\n"
            );
            stream
                .write_all(request.as_bytes())
                .await
                .map_err(|e| describe(&e))?;
            let response = read_until(&mut stream, |seen| seen.contains(&b'\n')).await?;
            let status = status_code(&response)
                .ok_or_else(|| "no HTTP status line in the response".to_string())?;
            if status == *expect_status {
                Ok(())
            } else {
                Err(format!("HTTP status {status}, expected {expect_status}"))
            }
        }
    }
}

/// Reads until `done` says so, the peer closes, or [`MAX_RESPONSE`] bytes.
async fn read_until(
    stream: &mut TcpStream,
    done: impl Fn(&[u8]) -> bool,
) -> Result<Vec<u8>, String> {
    let mut seen = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    while seen.len() < MAX_RESPONSE && !done(&seen) {
        let read = stream.read(&mut chunk).await.map_err(|e| describe(&e))?;
        if read == 0 {
            break;
        }
        seen.extend_from_slice(&chunk[..read.min(MAX_RESPONSE - seen.len())]);
    }
    Ok(seen)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty()
        || haystack
            .windows(needle.len())
            .any(|window| window == needle)
}

/// The status of an `HTTP/1.x NNN ...` line.
fn status_code(response: &[u8]) -> Option<u16> {
    let line = response.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    parts
        .next()
        .filter(|version| version.starts_with("HTTP/"))?;
    parts
        .next()?
        .parse()
        .ok()
        .filter(|status| (100..=599).contains(status))
}

fn describe(error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
        std::io::ErrorKind::ConnectionReset => "connection reset".into(),
        _ => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(status_code(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(
            status_code(b"HTTP/1.0 503 Service Unavailable\r\nx"),
            Some(503)
        );
        assert_eq!(status_code(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(status_code(b"HTTP/1.1 99999 x"), None);
        assert_eq!(status_code(b""), None);
    }

    #[test]
    fn contains_finds_substrings() {
        assert!(contains(b"hello world", b"o w"));
        assert!(!contains(b"hello", b"world"));
        assert!(contains(b"", b""));
    }
}

//! A simulated web-engagement server, enough to see HTTP persistence work:
//! it names itself (its route) in every answer, hands out jvmRoute-style
//! session ids, long-polls like CometD, echoes WebSocket messages, and
//! reports what vipgate told it (`X-Forwarded-*`, which of its connections
//! carried the request). `examples/web_engagement.rs` runs two of them;
//! the integration tests put them behind vipgate.
//!
//! Paths:
//! - `GET /gwe/session`: a new session: `Set-Cookie: JSESSIONID=<id>.<route>`
//!   and the id in the body;
//! - `GET /gwe/cometd?wait=MS`: answers after MS milliseconds (at most 60 s);
//! - `GET /gwe/ws` with `Upgrade: websocket`: a WebSocket that echoes
//!   every message;
//! - `POST /gwe/echo`: the request body back, streamed;
//! - `GET /gwe/crash`: closes the connection without answering;
//! - `GET /gwe/headers`: the request's header fields, one `name: value` a
//!   line;
//! - anything else: `<route> <method> <target>`.
//!
//! Every answer carries `x-served-by` (the route), `x-connection` (which of
//! this server's connections carried it: 1, 2, ...), `x-seen-forwarded-*`
//! (the `X-Forwarded-For`, `-Proto` and `-Host` it received) and
//! `x-seen-cookie` (its `Cookie` field).

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

type Body = BoxBody<Bytes, hyper::Error>;

/// Largest WebSocket message the echo takes: 1 MiB.
const MAX_MESSAGE: u64 = 1 << 20;

/// Starts a simulated web-engagement server on `address` known by `route`.
/// Returns the address it listens on (useful with port 0).
pub async fn spawn_web_engagement(address: SocketAddr, route: String) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(address).await?;
    let local = listener.local_addr()?;
    tokio::spawn(serve_web_engagement(listener, route));
    Ok(local)
}

/// Serves the simulated server on `listener` until dropped.
pub async fn serve_web_engagement(listener: TcpListener, route: String) {
    let route: Arc<str> = route.into();
    let connections = Arc::new(AtomicU64::new(0));
    let sessions = Arc::new(AtomicU64::new(0));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let number = connections.fetch_add(1, Ordering::Relaxed) + 1;
        let (route, sessions) = (Arc::clone(&route), Arc::clone(&sessions));
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                answer(request, Arc::clone(&route), number, Arc::clone(&sessions))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}

async fn answer(
    mut request: Request<Incoming>,
    route: Arc<str>,
    connection: u64,
    sessions: Arc<AtomicU64>,
) -> Result<Response<Body>, io::Error> {
    let path = request.uri().path().to_string();
    let seen = [
        ("x-seen-forwarded-for", "x-forwarded-for"),
        ("x-seen-forwarded-proto", "x-forwarded-proto"),
        ("x-seen-forwarded-host", "x-forwarded-host"),
        ("x-seen-cookie", "cookie"),
    ]
    .map(|(seen, name)| (seen, request.headers().get(name).cloned()));
    let mut response = match path.as_str() {
        "/gwe/session" => {
            let id = format!(
                "{:08X}.{route}",
                sessions.fetch_add(1, Ordering::Relaxed) + 1
            );
            let mut response = text(format!("{id}\n"));
            if let Ok(cookie) = HeaderValue::from_str(&format!("JSESSIONID={id}; Path=/gwe")) {
                response.headers_mut().insert("set-cookie", cookie);
            }
            response
        }
        "/gwe/cometd" => {
            let wait = request
                .uri()
                .query()
                .and_then(|q| q.split('&').find_map(|p| p.strip_prefix("wait=")))
                .and_then(|ms| ms.parse::<u64>().ok())
                .unwrap_or(0)
                .min(60_000);
            tokio::time::sleep(Duration::from_millis(wait)).await;
            text(format!("{route} cometd after {wait} ms\n"))
        }
        "/gwe/ws" => websocket(&mut request),
        "/gwe/echo" => Response::new(request.into_body().boxed()),
        "/gwe/crash" => return Err(io::Error::other("asked to crash")),
        "/gwe/headers" => {
            let mut lines = String::new();
            for (name, value) in request.headers() {
                lines.push_str(&format!(
                    "{name}: {}\n",
                    String::from_utf8_lossy(value.as_bytes())
                ));
            }
            text(lines)
        }
        _ => text(format!("{route} {} {}\n", request.method(), request.uri())),
    };
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&route) {
        headers.insert("x-served-by", value);
    }
    headers.insert("x-connection", HeaderValue::from(connection));
    for (name, value) in seen {
        if let Some(value) = value {
            headers.insert(name, value);
        }
    }
    Ok(response)
}

fn text(body: String) -> Response<Body> {
    Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    )
}

/// Answers a WebSocket handshake and echoes messages once upgraded.
fn websocket(request: &mut Request<Incoming>) -> Response<Body> {
    let Some(key) = request.headers().get("sec-websocket-key").cloned() else {
        let mut refused = text("a WebSocket handshake needs Sec-WebSocket-Key\n".into());
        *refused.status_mut() = StatusCode::BAD_REQUEST;
        return refused;
    };
    let upgrade = hyper::upgrade::on(request);
    tokio::spawn(async move {
        if let Ok(upgraded) = upgrade.await {
            let _ = echo_messages(TokioIo::new(upgraded)).await;
        }
    });
    let mut response = Response::new(
        Empty::new()
            .map_err(|never: Infallible| match never {})
            .boxed(),
    );
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert("upgrade", HeaderValue::from_static("websocket"));
    headers.insert("connection", HeaderValue::from_static("upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&websocket_accept(key.as_bytes())) {
        headers.insert(HeaderName::from_static("sec-websocket-accept"), accept);
    }
    response
}

/// `Sec-WebSocket-Accept` for a key (RFC 6455 section 4.2.2).
pub fn websocket_accept(key: &[u8]) -> String {
    let mut input = key.to_vec();
    input.extend_from_slice(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &input);
    base64(digest.as_ref())
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |n, b| n << 8 | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Echoes WebSocket frames: each client frame (masked) comes back with
/// the same opcode and payload, unmasked, as a server sends it. Ends after
/// echoing a close frame.
async fn echo_messages(mut io: impl AsyncRead + AsyncWrite + Unpin) -> io::Result<()> {
    loop {
        let mut head = [0u8; 2];
        io.read_exact(&mut head).await?;
        let opcode = head[0] & 0x0f;
        let length = match head[1] & 0x7f {
            126 => u64::from(io.read_u16().await?),
            127 => io.read_u64().await?,
            short => u64::from(short),
        };
        if length > MAX_MESSAGE {
            return Err(io::Error::other("message too large"));
        }
        let mut mask = [0u8; 4];
        if head[1] & 0x80 != 0 {
            io.read_exact(&mut mask).await?;
        }
        let mut payload = vec![0u8; length as usize];
        io.read_exact(&mut payload).await?;
        for (i, byte) in payload.iter_mut().enumerate() {
            *byte ^= mask[i % 4];
        }
        io.write_all(&frame_head(opcode, payload.len())).await?;
        io.write_all(&payload).await?;
        if opcode == 8 {
            return io.shutdown().await;
        }
    }
}

/// The head of an unmasked final frame.
fn frame_head(opcode: u8, length: usize) -> Vec<u8> {
    let mut head = vec![0x80 | opcode];
    match length {
        0..=125 => head.push(length as u8),
        126..=65535 => {
            head.push(126);
            head.extend_from_slice(&(length as u16).to_be_bytes());
        }
        _ => {
            head.push(127);
            head.extend_from_slice(&(length as u64).to_be_bytes());
        }
    }
    head
}

#[cfg(test)]
mod tests {
    #[test]
    fn websocket_accept_matches_the_rfc_example() {
        assert_eq!(
            super::websocket_accept(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}

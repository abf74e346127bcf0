//! The one client of the admin endpoint, for what asks another vipgate:
//! `vipgate ready` and `vipgate upgrade` (the local one), and a pair's
//! peers (`peers`).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};

/// The most of an answer read: far more than `/status` of a large site.
const MAX_ANSWER: usize = 4 << 20;

/// One call: `method path` with `body` (JSON, when not empty) and the
/// bearer `token`, within `timeout` from connect to the answer's last
/// byte. The status and the body, or why there is none.
pub async fn call(
    address: SocketAddr,
    method: http::Method,
    path: &str,
    token: Option<&str>,
    body: Bytes,
    timeout: Duration,
) -> Result<(u16, Bytes), String> {
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|e| e.to_string())?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        let mut request = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, address.to_string());
        if let Some(token) = token {
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if !body.is_empty() {
            request = request.header(http::header::CONTENT_TYPE, "application/json");
        }
        let request = request.body(Full::new(body)).map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "no answer within {}",
                humantime::format_duration(timeout)
            ))
        })
}

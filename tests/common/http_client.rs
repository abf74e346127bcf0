//! An HTTP/1.1 client for the tests: one kept-alive connection (plain or
//! TLS) to send requests on, and the answers as plain values.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::PATIENCE;

/// One client connection.
pub struct HttpClient {
    sender: SendRequest<Full<Bytes>>,
}

/// An answer, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub body: String,
    /// The body as it came.
    pub raw: Bytes,
}

impl Reply {
    /// A header as text ("" when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The member that answered (the simulated server's route).
    pub fn served_by(&self) -> &str {
        self.header("x-served-by")
    }

    /// `NAME=VALUE` of the persistence cookie set, if any.
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with(&format!("{name}=")))
            .map(|v| v.split(';').next().unwrap_or("").to_string())
    }
}

impl HttpClient {
    pub async fn connect(addr: SocketAddr) -> HttpClient {
        HttpClient::over(TcpStream::connect(addr).await.unwrap()).await
    }

    /// A client over any stream (a TLS one, say).
    pub async fn over<S>(stream: S) -> HttpClient
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        HttpClient { sender }
    }

    /// `GET path` with `headers`.
    pub async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.send("GET", path, headers, Bytes::new()).await.unwrap()
    }

    /// Sends a request; `Err` when the connection fails.
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Reply, hyper::Error> {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "gwe.example");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(body)).unwrap();
        let exchange = async {
            self.sender.ready().await?;
            let response = self.sender.send_request(request).await?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok(Reply {
                status: parts.status,
                headers: parts.headers,
                body: String::from_utf8_lossy(&body).into_owned(),
                raw: body,
            })
        };
        tokio::time::timeout(PATIENCE, exchange)
            .await
            .expect("no answer in time")
    }

    /// Whether vipgate has closed this connection.
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }
}

/// `GET path` on a new connection.
pub async fn get_once(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    HttpClient::connect(addr).await.get(path, headers).await
}

/// Starts a simulated web-engagement server on `ip` known as `route`.
pub async fn web_member(ip: &str, route: &str) -> SocketAddr {
    vipgate::demo::spawn_web_engagement(format!("{ip}:0").parse().unwrap(), route.to_string())
        .await
        .unwrap()
}

//! An HTTP/1.1 client for the tests: one kept-alive connection (plain or
//! TLS) to send requests on, and the answers as plain values.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

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
    /// A response, read whole.
    async fn read(response: hyper::Response<hyper::body::Incoming>) -> Result<Reply, hyper::Error> {
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
            raw: body,
        })
    }

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
            Reply::read(self.sender.send_request(request).await?).await
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

/// One HTTP/2 client connection: many requests at once on it.
#[derive(Clone)]
pub struct Http2Client {
    sender: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
}

impl Http2Client {
    /// HTTP/2 in clear text, by prior knowledge.
    pub async fn connect(addr: SocketAddr) -> Http2Client {
        Http2Client::over(TcpStream::connect(addr).await.unwrap()).await
    }

    /// HTTP/2 over any stream (a TLS one that agreed on `h2`, say).
    pub async fn over<S>(stream: S) -> Http2Client
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, connection) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            TokioIo::new(stream),
        )
        .await
        .unwrap();
        tokio::spawn(connection);
        Http2Client { sender }
    }

    /// `GET path` with `headers` (`:authority` gwe.example).
    pub async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.try_get(path, headers).await.unwrap()
    }

    /// `GET path`; `Err` when the stream or the connection fails.
    pub async fn try_get(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Reply, hyper::Error> {
        let mut request = Request::builder()
            .method("GET")
            .uri(format!("http://gwe.example{path}"))
            .version(hyper::Version::HTTP_2);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(Bytes::new())).unwrap();
        let exchange = async {
            self.sender.ready().await?;
            Reply::read(self.sender.send_request(request).await?).await
        };
        tokio::time::timeout(PATIENCE, exchange)
            .await
            .expect("no answer in time")
    }

    /// Whether the connection has closed.
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }
}

// HTTP virtuals in front of simulated web-engagement servers.

pub const SECRET: &[u8] = b"a secret both instances of the pair share";

/// A secret file for one test.
pub fn secret_file(test: &str) -> PathBuf {
    let dir = super::tls_ca::temp_dir(&format!("http-{test}"));
    let path = dir.join("cookie-secret");
    std::fs::write(&path, SECRET).unwrap();
    path
}

/// One HTTP virtual `web` in front of pool `gwe` with these members and
/// routes.
pub fn http_config(members: &[(SocketAddr, &str)], virtual_extra: &str, secret: &Path) -> String {
    let members: Vec<String> = members
        .iter()
        .map(|(address, route)| format!("{{ address = \"{address}\", route = \"{route}\" }}"))
        .collect();
    format!(
        "[virtuals.web]\nlisten = \"127.0.0.100:0\"\nmode = \"http\"\npool = \"gwe\"\n{virtual_extra}\n\n\
         [pools.gwe]\nmembers = [ {} ]\n\n[persistence]\nsecret_file = \"{}\"\n",
        members.join(", "),
        secret.display()
    )
}

/// The HTTP counters of virtual `web`.
pub fn counts(vipgate: &super::Vipgate) -> vipgate::stats::HttpCounts {
    vipgate.virtual_stats("web").http.counts()
}

pub const COOKIE: &str = "persistence = { cookie = \"GWELB\", max_age = \"8h\" }";
pub const URL_PARAM: &str = "persistence = { url_param = \"jsessionid\", in_cookie = true }";

pub async fn two_nodes() -> [(SocketAddr, &'static str); 2] {
    [
        (web_member("127.0.0.11", "GWE_Node1").await, "GWE_Node1"),
        (web_member("127.0.0.12", "GWE_Node2").await, "GWE_Node2"),
    ]
}

/// One HTTP virtual `web` (with the admin endpoint) in front of one
/// simulated server, GWE_Node1 on 127.0.0.11; `extra` goes on the virtual.
pub async fn one_node(test: &str, extra: &str) -> (SocketAddr, super::Vipgate) {
    let node = web_member("127.0.0.11", "GWE_Node1").await;
    let config = http_config(&[(node, "GWE_Node1")], extra, &secret_file(test));
    (
        node,
        super::start(&format!("{config}{}", super::admin::ADMIN)).await,
    )
}

/// A member's side: reads one request head (up to its empty line) from
/// `socket`, byte by byte so nothing after it is taken; `None` at the end
/// of the connection.
pub async fn read_request_head(socket: &mut tokio::net::TcpStream) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if socket.read(&mut byte).await.unwrap_or(0) == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

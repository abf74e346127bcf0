//! The admin endpoint (`[admin] listen`, loopback by default):
//!
//! - `GET /`: the status page, one self-contained HTML file (`page.html`)
//!   that reads `/status` while someone looks at it;
//! - `GET /metrics`: Prometheus text format ([`crate::metrics`]);
//! - `GET /status`: the same live state as JSON;
//! - `GET /ready`: 200 when every virtual listens and has a usable member,
//!   else 503 naming what is missing (for load balancers, keepalived and
//!   `vipgate ready`);
//! - `POST /pools/{pool}/members/{member}/{enable|disable|offline}`, and
//!   `.../drain?within=10m` (a timed drain);
//! - `GET /connections`: the open TCP connections, filtered, a page at a
//!   time ([`crate::connections`]);
//! - `POST /reload`: read the configuration file again.
//!
//! Errors are JSON `{"error": "..."}` with a fitting status: 404 for an
//! unknown pool, member or path, 400 for a bad action or a configuration
//! that does not load, 401 for a change without the token when
//! `token_file` is set, 403 for a change sent by another site's page (its
//! `Origin` is not this endpoint), 405 for a wrong method. Reading needs
//! no token, except `/connections`, which names every client.

pub mod client;
mod connections;
mod peers;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{Admin, AdminAuth, AdminState};
use crate::server::{Control, ReloadError};
use crate::status::Status;
use crate::upgrade::{UpgradeError, Upgrader};
pub use peers::Peers;

/// Why the admin endpoint cannot start.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("admin.listen: cannot listen on {address}: {error}")]
    Bind {
        address: SocketAddr,
        error: std::io::Error,
    },
    #[error("admin.token_file: {} {why}", path.display())]
    Token { path: PathBuf, why: String },
}

/// How long to wait after a failed accept (out of descriptors) before
/// trying again.
const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(100);

/// The most a peer's `PUT /decisions` may send: far more than decisions
/// about every member of a large site take.
const MAX_DECISIONS_BODY: usize = 4 << 20;

/// The admin listener, the token changes need, and the peers.
#[derive(Debug)]
pub struct Endpoint {
    listener: TcpListener,
    token: Option<String>,
    peers: Vec<SocketAddr>,
}

impl Endpoint {
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// A copy of the listening socket (the same socket), for a successor.
    pub fn socket_copy(&self) -> Option<std::net::TcpListener> {
        let socket = socket2::SockRef::from(&self.listener).try_clone().ok()?;
        Some(socket.into())
    }

    /// The other nodes member decisions are shared with, if any.
    pub fn peers(&self) -> Option<Peers> {
        Peers::new(
            &self.peers,
            self.local_addr()?,
            self.token.as_deref().map(Into::into),
        )
    }
}

/// The admin token, when the plan sets `token_file`: read, checked for
/// length. `vipgate check` calls this too, so a missing or short token
/// file is found before `run`.
pub fn token(admin: &Admin) -> Result<Option<String>, EndpointError> {
    let Admin::On {
        auth: AdminAuth::Token(path),
        ..
    } = admin
    else {
        return Ok(None);
    };
    let refused = |why: String| EndpointError::Token {
        path: path.clone(),
        why,
    };
    let text = std::fs::read_to_string(path).map_err(|error| {
        refused(format!(
            "cannot be read ({error}); create it with `head -c 24 /dev/urandom | base64 > {}`",
            path.display()
        ))
    })?;
    let token = text.trim_end_matches(['\n', '\r']).to_string();
    if token.len() < 16 {
        return Err(refused(format!(
            "holds fewer than 16 characters; use e.g. `head -c 24 /dev/urandom | base64 > {}`",
            path.display()
        )));
    }
    Ok(Some(token))
}

/// Opens the admin listener and reads its token, if the plan has one.
/// Must be called inside a tokio runtime.
pub fn bind(admin: &Admin) -> Result<Option<Endpoint>, EndpointError> {
    bind_inherited(admin, None)
}

/// [`bind`], taking over `inherited` (the predecessor's listening socket,
/// after a binary upgrade) instead of binding when it is given.
pub fn bind_inherited(
    admin: &Admin,
    inherited: Option<std::net::TcpListener>,
) -> Result<Option<Endpoint>, EndpointError> {
    let Admin::On { listen, peers, .. } = admin else {
        return Ok(None);
    };
    let token = token(admin)?;
    let failed = |error| EndpointError::Bind {
        address: *listen,
        error,
    };
    // The predecessor's socket only for the same address: a changed
    // `listen` is bound anew.
    let inherited = inherited.filter(|socket| {
        socket.local_addr().is_ok_and(|bound| {
            bound == *listen || (listen.port() == 0 && bound.ip() == listen.ip())
        })
    });
    let socket = match inherited {
        Some(socket) => socket,
        None => std::net::TcpListener::bind(listen).map_err(failed)?,
    };
    socket.set_nonblocking(true).map_err(failed)?;
    let listener = TcpListener::from_std(socket).map_err(failed)?;
    Ok(Some(Endpoint {
        listener,
        token,
        peers: peers.clone(),
    }))
}

/// Serves the admin endpoint until `stop`; `POST /upgrade` goes to
/// `upgrader`.
pub async fn serve(
    endpoint: Endpoint,
    control: Arc<Control>,
    upgrader: Arc<Upgrader>,
    stop: CancellationToken,
) {
    let registry = Arc::new(crate::metrics::registry(
        Arc::clone(control.live()),
        control.reloads(),
        control.worker_cpu_moves(),
    ));
    if let Some(address) = endpoint.local_addr() {
        tracing::info!(%address, "admin endpoint listening: http://{address}/ (status page), /metrics, /status");
    }
    let token: Option<Arc<str>> = endpoint.token.map(Into::into);
    loop {
        let accepted = tokio::select! {
            accepted = endpoint.listener.accept() => accepted,
            () = stop.cancelled() => return,
        };
        let Ok((stream, _)) = accepted else {
            // Out of descriptors: do not spin.
            tokio::time::sleep(ACCEPT_BACKOFF).await;
            continue;
        };
        let calls = Calls {
            control: Arc::clone(&control),
            registry: Arc::clone(&registry),
            upgrader: Arc::clone(&upgrader),
            token: token.clone(),
        };
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let calls = calls.clone();
                async move { Ok::<_, Infallible>(route(request, &calls).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

type Answer = Response<Full<Bytes>>;

/// The status page: static, built into the binary, so serving it costs a
/// copy of a pointer.
const PAGE: &str = include_str!("page.html");

/// Only this page's own inline script and style run, it talks only to this
/// endpoint, and no other site may frame it (its buttons change members).
const PAGE_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn page() -> Answer {
    let mut response = Response::new(Full::new(Bytes::from_static(PAGE.as_bytes())));
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::CONTENT_SECURITY_POLICY, PAGE_POLICY),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-cache"),
    ] {
        headers.insert(name, header::HeaderValue::from_static(value));
    }
    response
}

fn answer(status: StatusCode, content_type: &'static str, body: String) -> Answer {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

fn json_answer(status: StatusCode, value: Value) -> Answer {
    answer(status, "application/json", format!("{value:#}\n"))
}

fn error(status: StatusCode, message: impl Into<String>) -> Answer {
    json_answer(status, json!({ "error": message.into() }))
}

/// What answering a call takes.
#[derive(Clone)]
struct Calls {
    control: Arc<Control>,
    registry: Arc<prometheus::Registry>,
    upgrader: Arc<Upgrader>,
    token: Option<Arc<str>>,
}

async fn route(request: Request<Incoming>, calls: &Calls) -> Answer {
    let (control, registry, token) = (&*calls.control, &*calls.registry, calls.token.as_deref());
    let path = request.uri().path().to_string();
    // Browsers escape what a path may not hold (the page escapes every
    // pool and member name it puts in one); the names are matched as typed.
    let Some(decoded) = path
        .trim_matches('/')
        .split('/')
        .map(percent_decode)
        .collect::<Option<Vec<String>>>()
    else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{path}: a %-escape is not two hex digits of UTF-8 text"),
        );
    };
    let segments: Vec<&str> = decoded.iter().map(String::as_str).collect();
    let method = request.method().clone();
    if method == Method::POST || method == Method::PUT {
        if let Some(refused) = cross_site(&request) {
            return refused;
        }
    }
    match (segments.as_slice(), method == Method::POST) {
        ([""], false) if method == Method::GET => page(),
        (["metrics"], false) if method == Method::GET => answer(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            crate::metrics::render(registry),
        ),
        (["status"], false) if method == Method::GET => {
            json_answer(StatusCode::OK, status(control, token.is_some()))
        }
        (["ready"], false) if method == Method::GET => match control.readiness().await {
            Ok(()) => json_answer(StatusCode::OK, json!({ "ready": true })),
            Err(missing) => json_answer(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({ "ready": false, "missing": missing }),
            ),
        },
        (["reload"], true) => {
            if let Some(refused) = unauthorized(&request, token) {
                return refused;
            }
            match control.reload().await {
                Ok(report) => json_answer(StatusCode::OK, json!({ "reloaded": report })),
                Err(ReloadError::Config(config)) => {
                    let problems: Vec<String> = config.problems().iter().map(ToString::to_string).collect();
                    json_answer(
                        StatusCode::BAD_REQUEST,
                        json!({ "error": "the new configuration is not valid; the running one stays", "detail": config.to_string(), "problems": problems }),
                    )
                }
                Err(replaced @ ReloadError::Replaced) => {
                    error(StatusCode::CONFLICT, replaced.to_string())
                }
                Err(other) => error(
                    StatusCode::BAD_REQUEST,
                    format!("{other}; the running configuration stays"),
                ),
            }
        }
        (["upgrade"], true) => {
            if let Some(refused) = unauthorized(&request, token) {
                return refused;
            }
            match calls.upgrader.upgrade().await {
                Ok(report) => json_answer(
                    StatusCode::OK,
                    json!({
                        "upgraded": true,
                        "successor_pid": report.successor_pid,
                        "connections_moved": report.connections_moved,
                        "took_ms": report.took_ms,
                    }),
                ),
                Err(
                    refused @ (UpgradeError::Busy
                    | UpgradeError::Replaced
                    | UpgradeError::Stopping
                    | UpgradeError::PredecessorDraining(_)),
                ) => {
                    error(StatusCode::CONFLICT, refused.to_string())
                }
                Err(failed) => error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("{failed}; this vipgate serves on"),
                ),
            }
        }
        (["decisions"], false) if method == Method::GET => {
            json_answer(StatusCode::OK, json!(control.decisions_to_share()))
        }
        (["decisions"], false) if method == Method::PUT => {
            if let Some(refused) = unauthorized(&request, token) {
                return refused;
            }
            let body = match http_body_util::BodyExt::collect(http_body_util::Limited::new(
                request.into_body(),
                MAX_DECISIONS_BODY,
            ))
            .await
            {
                Ok(body) => body.to_bytes(),
                Err(failed) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("cannot read the decisions: {failed}"),
                    )
                }
            };
            let merged = serde_json::from_slice(&body)
                .map_err(|e| e.to_string())
                .and_then(|set| control.merge_decisions(&set));
            match merged {
                Ok(taken) => json_answer(StatusCode::OK, json!({ "taken": taken })),
                Err(why) => error(
                    StatusCode::BAD_REQUEST,
                    format!("these are not member decisions vipgate can take: {why}"),
                ),
            }
        }
        (["connections"], false) if method == Method::GET => {
            if let Some(refused) = unauthorized(&request, token) {
                return refused;
            }
            connections::list(control, request.uri().query())
        }
        (["pools", pool, "members", member, "drain"], true) => {
            if let Some(refused) = unauthorized(&request, token) {
                return refused;
            }
            connections::drain(control, pool, member, request.uri().query())
        }
        (["pools", pool, "members", member, action], true) => {
            if let Some(refused) = unauthorized(&request, token) {
                return refused;
            }
            let state = match *action {
                "enable" => AdminState::Enabled,
                "disable" => AdminState::Disabled,
                "offline" => AdminState::ForcedOffline,
                other => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("unknown action \"{other}\"; use enable, disable, offline or drain?within=10m"),
                    )
                }
            };
            match control.set_member_state(pool, member, state) {
                Ok(change) => {
                    let mut answer = json!({ "pool": pool, "member": change.address.to_string(), "state": state.to_string(), "saved": change.saved.is_ok() });
                    if let Err(why) = change.saved {
                        answer["not_saved_because"] = json!(why);
                    }
                    json_answer(StatusCode::OK, answer)
                }
                Err(refused) => error(StatusCode::NOT_FOUND, refused.to_string()),
            }
        }
        ([""] | ["metrics"] | ["status"] | ["ready"] | ["decisions"] | ["connections"], _) | (["reload"] | ["upgrade"], false) | (["pools", _, "members", _, _], false) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} is not allowed on {path}: read with GET /, GET /metrics and GET /status; change with POST"),
        ),
        _ => error(
            StatusCode::NOT_FOUND,
            format!("no such endpoint {path}; try GET / (the status page), GET /metrics, GET /status, GET /ready, GET /connections, POST /reload, POST /pools/POOL/members/ADDRESS/enable|disable|offline, POST /pools/POOL/members/ADDRESS/drain?within=10m"),
        ),
    }
}

/// `segment` with its `%XX` escapes decoded; `None` if an escape is
/// malformed or the result is not UTF-8.
fn percent_decode(segment: &str) -> Option<String> {
    if !segment.contains('%') {
        return Some(segment.to_string());
    }
    let bytes = segment.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            // Two hex digits exactly: from_str_radix alone would take a
            // sign ("%+1").
            let digits = bytes.get(index + 1..index + 3)?;
            if !digits.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            let hex = std::str::from_utf8(digits).ok()?;
            decoded.push(u8::from_str_radix(hex, 16).ok()?);
            index += 3;
        } else {
            decoded.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8(decoded).ok()
}

/// `Some(403)` for a change a browser sends from another site's page: its
/// `Origin` names another host than the one it sent the request to. Without
/// a token, this is what stops any web page an operator opens from changing
/// members through their browser; tools like curl send no `Origin`.
fn cross_site(request: &Request<Incoming>) -> Option<Answer> {
    let origin = request
        .headers()
        .get(header::ORIGIN)?
        .to_str()
        .unwrap_or("");
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|host| host.to_str().ok())
        .unwrap_or("");
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .unwrap_or("");
    (host.is_empty() || origin_host != host).then(|| {
        error(
            StatusCode::FORBIDDEN,
            format!("a change sent by the page of another site ({origin}) is refused; use this endpoint's own page or a tool such as curl"),
        )
    })
}

/// `Some(401)` when a token is set and the request does not carry it.
fn unauthorized(request: &Request<Incoming>, token: Option<&str>) -> Option<Answer> {
    let token = token?;
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or("");
    // The same time whatever bytes differ (the length is not hidden).
    let matches: bool =
        subtle::ConstantTimeEq::ct_eq(presented.as_bytes(), token.as_bytes()).into();
    (!matches).then(|| {
        let mut refused = error(
            StatusCode::UNAUTHORIZED,
            "this call needs Authorization: Bearer <the content of admin.token_file> (every change does, and the list of connections)",
        );
        refused
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        refused
    })
}

/// The live state as JSON.
fn status(control: &Control, token_required: bool) -> Value {
    let mut status = Status::of(&control.live().load(), control.reloads().counts());
    status.admin.token_required = token_required;
    // Plain structs of strings and numbers: serializing cannot fail.
    let mut value = serde_json::to_value(status).unwrap_or(Value::Null);
    value["member_decisions"] =
        serde_json::to_value(control.member_decisions()).unwrap_or(Value::Null);
    value
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn escapes_in_path_segments_are_decoded_and_bad_ones_refused() {
        assert_eq!(
            percent_decode("10.0.0.11:9070").as_deref(),
            Some("10.0.0.11:9070")
        );
        assert_eq!(
            percent_decode("10.0.0.11%3A9070").as_deref(),
            Some("10.0.0.11:9070")
        );
        assert_eq!(
            percent_decode("%5B%3A%3A1%5D%3a9070").as_deref(),
            Some("[::1]:9070")
        );
        assert_eq!(percent_decode("pool%20A").as_deref(), Some("pool A"));
        for bad in ["%", "%4", "%zz", "a%e9", "%ff%fe", "%+1", "%-1", "a%+fb"] {
            assert_eq!(percent_decode(bad), None, "{bad}");
        }
    }
}

//! The admin endpoint (`[admin] listen`, loopback by default):
//!
//! - `GET /metrics`: Prometheus text format ([`crate::metrics`]);
//! - `GET /status`: the same live state as JSON;
//! - `GET /ready`: 200 when every virtual listens and has a usable member,
//!   else 503 naming what is missing (for load balancers, keepalived and
//!   `vipgate ready`);
//! - `POST /pools/{pool}/members/{member}/{enable|disable|offline}`;
//! - `POST /reload`: read the configuration file again.
//!
//! Errors are JSON `{"error": "..."}` with a fitting status: 404 for an
//! unknown pool, member or path, 400 for a bad action or a configuration
//! that does not load, 401 for a change without the token when
//! `token_file` is set, 405 for a wrong method. Reading never needs the
//! token.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{Admin, AdminAuth, AdminState, Mode, Persistence};
use crate::server::{Control, ReloadError, StartError};

/// The admin listener and the token changes need.
#[derive(Debug)]
pub struct Endpoint {
    listener: TcpListener,
    token: Option<String>,
}

impl Endpoint {
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }
}

/// The admin token, when the plan sets `token_file`: read, checked for
/// length. `vipgate check` calls this too, so a missing or short token
/// file is found before `run`.
pub fn token(admin: &Admin) -> Result<Option<String>, StartError> {
    let Admin::On {
        auth: AdminAuth::Token(path),
        ..
    } = admin
    else {
        return Ok(None);
    };
    let refused = |why: String| StartError::AdminToken {
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
pub fn bind(admin: &Admin) -> Result<Option<Endpoint>, StartError> {
    let Admin::On { listen, .. } = admin else {
        return Ok(None);
    };
    let token = token(admin)?;
    let failed = |error| StartError::Admin {
        address: *listen,
        error,
    };
    let socket = std::net::TcpListener::bind(listen).map_err(failed)?;
    socket.set_nonblocking(true).map_err(failed)?;
    let listener = TcpListener::from_std(socket).map_err(failed)?;
    Ok(Some(Endpoint { listener, token }))
}

/// Serves the admin endpoint until `stop`.
pub async fn serve(endpoint: Endpoint, control: Arc<Control>, stop: CancellationToken) {
    let registry = Arc::new(crate::metrics::registry(Arc::clone(&control)));
    if let Some(address) = endpoint.local_addr() {
        tracing::info!(%address, "admin endpoint listening: /metrics, /status");
    }
    let token: Option<Arc<str>> = endpoint.token.map(Into::into);
    loop {
        let accepted = tokio::select! {
            accepted = endpoint.listener.accept() => accepted,
            () = stop.cancelled() => return,
        };
        let Ok((stream, _)) = accepted else {
            // Out of descriptors: do not spin.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        };
        let (control, registry, token) =
            (Arc::clone(&control), Arc::clone(&registry), token.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let (control, registry, token) =
                    (Arc::clone(&control), Arc::clone(&registry), token.clone());
                async move {
                    Ok::<_, Infallible>(route(request, &control, &registry, token.as_deref()).await)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

type Answer = Response<Full<Bytes>>;

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

async fn route(
    request: Request<Incoming>,
    control: &Control,
    registry: &prometheus::Registry,
    token: Option<&str>,
) -> Answer {
    let path = request.uri().path().to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = request.method().clone();
    match (segments.as_slice(), method == Method::POST) {
        (["metrics"], false) if method == Method::GET => answer(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            crate::metrics::render(registry),
        ),
        (["status"], false) if method == Method::GET => json_answer(StatusCode::OK, status(control)),
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
                Err(other) => error(
                    StatusCode::BAD_REQUEST,
                    format!("{other}; the running configuration stays"),
                ),
            }
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
                        format!("unknown action \"{other}\"; use enable, disable or offline"),
                    )
                }
            };
            match control.set_member_state(pool, member, state) {
                Ok(address) => json_answer(
                    StatusCode::OK,
                    json!({ "pool": pool, "member": address.to_string(), "state": state.to_string() }),
                ),
                Err(refused) => error(StatusCode::NOT_FOUND, refused.to_string()),
            }
        }
        (["metrics"] | ["status"] | ["ready"], _) | (["reload"], false) | (["pools", _, "members", _, _], false) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} is not allowed on {path}: read with GET /metrics and GET /status; change with POST"),
        ),
        _ => error(
            StatusCode::NOT_FOUND,
            format!("no such endpoint {path}; try GET /metrics, GET /status, GET /ready, POST /reload, POST /pools/POOL/members/ADDRESS/enable|disable|offline"),
        ),
    }
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
    let matches =
        crate::http::persistence::constant_time_eq(presented.as_bytes(), token.as_bytes());
    (!matches).then(|| {
        let mut refused = error(
            StatusCode::UNAUTHORIZED,
            "this call changes vipgate and needs Authorization: Bearer <the content of admin.token_file>",
        );
        refused
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        refused
    })
}

/// The live state as JSON.
fn status(control: &Control) -> Value {
    let snapshot = control.live().load();
    let plan = snapshot.plan();
    let (succeeded, failed) = control.reloads.counts();
    let virtuals: Vec<Value> = plan
        .virtuals
        .iter()
        .filter_map(|virtual_plan| {
            let live = snapshot.virtual_server(&virtual_plan.name)?;
            let stats = &live.stats;
            let mut entry = json!({
                "name": virtual_plan.name,
                "listen": virtual_plan.listen.to_string(),
                "pool": virtual_plan.pool,
                "mode": if matches!(virtual_plan.mode, Mode::Http(_)) { "http" } else { "tcp" },
                "connections": { "active": stats.active_connections(), "total": stats.accepted() },
                "rejected": {
                    "connection_limit": stats.rejected_connection_limit(),
                    "no_member": stats.rejected_no_member(),
                    "snat_exhausted": stats.rejected_snat_exhausted(),
                },
            });
            if let Mode::Http(http) = &virtual_plan.mode {
                let counts = stats.http.counts();
                entry["http"] = json!({
                    "persistence": match &http.persistence {
                        Persistence::None => "none".to_string(),
                        Persistence::UrlParam { name, .. } => format!("url_param {name}"),
                        Persistence::Cookie { name, .. } => format!("cookie {name}"),
                    },
                    "requests": counts.requests,
                    "persistence_hits": counts.persistence_hits,
                    "persistence_misses": counts.persistence_misses,
                    "persistence_reroutes": counts.persistence_reroutes,
                    "cookies_set": counts.cookies_set,
                    "answered_503": counts.no_member,
                    "answered_502": counts.member_failed,
                    "answered_504": counts.member_timed_out,
                    "answered_408": counts.request_timeouts,
                    "upgrades": counts.upgrades,
                });
            }
            Some(entry)
        })
        .collect();
    let pools: Vec<Value> = plan
        .pools
        .values()
        .filter_map(|pool| {
            let live = snapshot.pool(&pool.name)?;
            let members: Vec<Value> = live
                .members()
                .iter()
                .map(|member| {
                    let state = &member.state;
                    let address = state.address();
                    let (to_member, to_client) = state.bytes();
                    let monitors: Vec<Value> = snapshot
                        .health()
                        .probes_of(&pool.name, address)
                        .into_iter()
                        .map(|(key, status)| {
                            let (health, detail) = status.verdict();
                            json!({ "monitor": key.monitor, "target": key.target_text(), "result": health.as_str(), "detail": detail })
                        })
                        .collect();
                    json!({
                        "address": address.to_string(),
                        "route": member.route,
                        "health": member.health.health().as_str(),
                        "state": state.admin_state().to_string(),
                        "connections": { "active": state.active_connections(), "total": state.total_connections() },
                        "connect_failures": state.connect_failures(),
                        "bytes": { "to_member": to_member, "to_client": to_client },
                        "monitors": monitors,
                    })
                })
                .collect();
            Some(json!({ "name": pool.name, "algorithm": pool.algorithm.to_string(), "members": members }))
        })
        .collect();
    let snat: Vec<Value> = snapshot
        .snat_pools()
        .map(|pool| {
            let addresses: Vec<Value> = pool
                .addresses()
                .iter()
                .map(|address| {
                    let mut toward: Vec<Value> = address
                        .usage()
                        .map(|(member, ports)| json!({ "member": member.to_string(), "in_use": ports.in_use(), "free": ports.free() }))
                        .collect();
                    toward.sort_by(|a, b| a["member"].as_str().cmp(&b["member"].as_str()));
                    json!({ "address": address.address.to_string(), "exhausted": address.exhausted(), "members": toward })
                })
                .collect();
            json!({ "name": pool.name(), "addresses": addresses })
        })
        .collect();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "config": {
            "hash": control.reloads.config_hash(),
            "loaded_at": control.reloads.last_success(),
            "reloads": { "succeeded": succeeded, "failed": failed },
            "last_reload_error": control.reloads.last_error(),
        },
        "virtuals": virtuals,
        "pools": pools,
        "snat_pools": snat,
    })
}

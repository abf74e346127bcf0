//! One request: what its persistence claims, which member takes it, how
//! it is sent, and the response (the member's, or vipgate's own 502, 503
//! or 504) with the persistence cookie when one is due.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper::{Request, Response};
use tokio::time::Instant;

use super::client_io::InFlight;
use super::headers::{add_forwarded, insert_all, remove_cookie, remove_hop_by_hop, wants_upgrade};
use super::members::Sent;
use super::persistence::{
    cookie_value_any_case, cookie_values, route_of, set_cookie, url_param_route,
};
use super::request_body::{ClientBodyError, RequestBody};
use super::response_body::{AnswerBody, ResponseBody};
use super::{tunnel, Connection, HttpVirtual};
use crate::clock::unix_seconds;
use crate::config::{CookieLifetime, Persistence, Redirect};
use crate::dial::Attempts;
use crate::logging::Address;
use crate::pool::{Choice, Pool, Reservation, Tried};
use crate::stats::{HttpEvent, HttpStats, Rejection};

/// What the request's persistence information names.
#[derive(Debug, Default)]
struct Claim {
    /// The member (index in the pool) it names, if it names one the pool
    /// has.
    member: Option<usize>,
    /// It carried persistence information at all.
    present: bool,
    /// The cookie is valid for the member but should be renewed.
    renew: bool,
}

/// Serves one request of `connection`.
pub(super) async fn handle(
    connection: Arc<Connection>,
    request: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let started = Instant::now();
    crate::workers::check_placement();
    let in_flight = connection.phase.start();
    let http = &connection.http;
    let stats = &http.stats.http;
    stats.count(HttpEvent::Request);
    if request.version() == Version::HTTP_2 {
        stats.count(HttpEvent::Http2Request);
    }
    if let Err(problem) = check_host(&request) {
        return Ok(bad_request(&connection, in_flight, problem));
    }
    if let Some(redirect) = &http.plan.redirect {
        return Ok(redirected(&connection, in_flight, redirect, &request));
    }
    let pool = &http.pool;
    let now = unix_seconds();
    let claim = claim(http, pool, &request, now);
    // Upgrades are HTTP/1.1's; an h2c upgrade is not one vipgate makes
    // (the request is served over HTTP/1.1 as if it had not asked).
    let upgrade = request.version() == Version::HTTP_11 && wants_upgrade(request.headers());
    let mut request = request.map(RequestBody::from);
    prepare(
        http,
        &mut request,
        &connection.forwarded_for,
        connection.tls,
        upgrade,
    );
    if let (true, Persistence::Cookie { name, .. }) = (claim.present, &http.plan.persistence) {
        remove_cookie(request.headers_mut(), name);
    }
    let method = request.method().clone();

    let mut tried = Tried::default();
    let mut attempts = Attempts::default();
    let (mut persistent, choice) = match (&http.source_affinity, claim.member) {
        (Some(affinity), _) => affinity.choice(pool, connection.peer.ip()),
        (None, member) => (member, Choice::Algorithm),
    };
    // As for TCP virtuals: a member held back by its connect rate is
    // waited for, up to the connect timeout (from the request's start: a
    // clock read fewer per request).
    let deadline = started + http.dialer.connect_timeout;
    loop {
        let reserved = pool
            .reserve_next(&mut persistent, &mut tried, deadline, choice)
            .await;
        let Some(reserved) = reserved else {
            return Ok(refuse(&connection, in_flight, attempts.exhausted()));
        };
        let index = reserved.index;
        let member = &pool.members()[index].state;
        let sent = if upgrade {
            tunnel::send(&connection, index, request).await
        } else {
            http.send(index, request).await
        };
        match sent {
            Sent::Answered(response) => {
                let duration = started.elapsed();
                http.stats.record_request(duration);
                count_persistence(http, stats, &claim, index);
                if let Some(affinity) = &http.source_affinity {
                    affinity.used(connection.peer.ip(), member.address());
                }
                let response = respond(&connection, in_flight, response, reserved, &claim, now);
                log(
                    &connection,
                    &method,
                    member.address(),
                    response.status(),
                    duration,
                );
                return Ok(response);
            }
            Sent::Unreachable(unsent, error) => {
                if let Some(refusal) = attempts.failed(member, &http.name, &error) {
                    return Ok(refuse(&connection, in_flight, refusal));
                }
                request = unsent;
            }
            Sent::Failed(error) if ClientBodyError::caused(&*error) => {
                return Ok(bad_request(&connection, in_flight, error.to_string()));
            }
            Sent::Failed(error) => {
                stats.count(HttpEvent::MemberFailed);
                tracing::info!(target: "vipgate::request", virtual_server = %http.name, client = %Address(connection.peer), member = %Address(member.address()), %error, "member failed while answering: 502");
                return Ok(local(
                    &connection,
                    in_flight,
                    StatusCode::BAD_GATEWAY,
                    "the member failed to answer\n",
                ));
            }
            Sent::TimedOut => {
                stats.count(HttpEvent::MemberTimedOut);
                tracing::info!(target: "vipgate::request", virtual_server = %http.name, client = %Address(connection.peer), member = %Address(member.address()), "member did not answer within idle_timeout: 504");
                return Ok(local(
                    &connection,
                    in_flight,
                    StatusCode::GATEWAY_TIMEOUT,
                    "the member did not answer in time\n",
                ));
            }
        }
    }
}

/// What the request's persistence information names, if anything.
fn claim(http: &HttpVirtual, pool: &Pool, request: &Request<Incoming>, now: u64) -> Claim {
    let cookies = || {
        request
            .headers()
            .get_all(header::COOKIE)
            .into_iter()
            .filter_map(|value| value.to_str().ok())
    };
    match &http.plan.persistence {
        Persistence::None => Claim::default(),
        Persistence::UrlParam { name, in_cookie } => {
            let target = request.uri().path_and_query().map_or("", |p| p.as_str());
            let in_a_cookie = || {
                cookies()
                    .find_map(|header| cookie_value_any_case(header, name))
                    .and_then(route_of)
            };
            let route =
                url_param_route(target, name).or_else(|| in_cookie.then(in_a_cookie).flatten());
            match route {
                None => Claim::default(),
                Some(route) => Claim {
                    member: pool.member_by_route(route),
                    present: true,
                    renew: false,
                },
            }
        }
        Persistence::Cookie { name, lifetime, .. } => {
            let Some(seal) = http.seal.as_ref() else {
                return Claim::default();
            };
            // A browser may hold two cookies of the name (one per path or
            // domain): any genuine one that names a member counts.
            let mut present = false;
            let mut first_genuine = None;
            for token in cookies().flat_map(|header| cookie_values(header, name)) {
                present = true;
                let Ok(opened) = seal.open(token, now) else {
                    continue;
                };
                if let Some(member) = pool.member_by_address(opened.member) {
                    first_genuine = Some((member, opened));
                    break;
                }
            }
            let Some((member, opened)) = first_genuine else {
                return Claim {
                    member: None,
                    present,
                    renew: false,
                };
            };
            let renew = opened.legacy
                || match lifetime {
                    CookieLifetime::MaxAge(max_age) => {
                        opened.expires.saturating_sub(now) < max_age.as_secs() / 2
                    }
                    CookieLifetime::Session => false,
                };
            Claim {
                member: Some(member),
                present,
                renew,
            }
        }
    }
}

/// Whether the request names its site as HTTP requires: HTTP/1.1 needs
/// exactly one `Host` (RFC 9112 3.2), HTTP/2 an `:authority` or a `Host`
/// (RFC 9113 8.3.1). HTTP/1.0 may go without.
fn check_host(request: &Request<Incoming>) -> Result<(), String> {
    let hosts = request.headers().get_all(header::HOST).iter().count();
    if hosts > 1 {
        return Err(format!("{hosts} Host header fields"));
    }
    let named = hosts == 1 || request.uri().authority().is_some();
    match request.version() {
        Version::HTTP_09 | Version::HTTP_10 => Ok(()),
        _ if named => Ok(()),
        _ => Err("no Host header field".into()),
    }
}

/// The request as the member gets it: hop-by-hop fields removed,
/// `X-Forwarded-*` and the virtual's own fields added, in origin form over
/// HTTP/1.1 (so the member connection can be kept alive whatever the
/// client speaks).
fn prepare(
    http: &HttpVirtual,
    request: &mut Request<RequestBody>,
    forwarded_for: &HeaderValue,
    tls: bool,
    upgrade: bool,
) {
    remove_hop_by_hop(request.headers_mut(), upgrade);
    if let Some(authority) = request.uri().authority() {
        // An absolute-form target (`GET http://host/path`) or an HTTP/2
        // `:authority`: the site it names is the Host (RFC 9112 3.2.2),
        // and the member wants the path.
        if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
            request.headers_mut().insert(header::HOST, host);
        }
        let origin = request
            .uri()
            .path_and_query()
            .map_or_else(|| Uri::from_static("/"), |p| Uri::from(p.clone()));
        *request.uri_mut() = origin;
    }
    add_forwarded(request.headers_mut(), forwarded_for, tls);
    insert_all(request.headers_mut(), &http.request_headers);
    *request.version_mut() = Version::HTTP_11;
}

fn count_persistence(http: &HttpVirtual, stats: &HttpStats, claim: &Claim, index: usize) {
    if matches!(http.plan.persistence, Persistence::None) {
        return;
    }
    stats.count(match (claim.present, claim.member) {
        (false, _) => HttpEvent::PersistenceMiss,
        (true, Some(named)) if named == index => HttpEvent::PersistenceHit,
        (true, _) => HttpEvent::PersistenceReroute,
    });
}

/// A request no member can take: counted by why (the dial path's verdict,
/// the same as for a TCP client), answered 503.
fn refuse(
    connection: &Connection,
    in_flight: InFlight,
    refusal: Rejection,
) -> Response<ResponseBody> {
    let stats = &connection.http.stats;
    stats.count_rejected(refusal);
    stats.http.count(HttpEvent::NoMember);
    let text = match refusal {
        Rejection::NoMember => "no member is available\n",
        _ => "no member can be reached now\n",
    };
    local(connection, in_flight, StatusCode::SERVICE_UNAVAILABLE, text)
}

/// A request that is the client's mistake (no `Host`, a malformed body):
/// counted and logged as such, answered 400, no member blamed.
fn bad_request(
    connection: &Connection,
    in_flight: InFlight,
    problem: String,
) -> Response<ResponseBody> {
    let http = &connection.http;
    http.stats.http.count(HttpEvent::BadRequest);
    tracing::info!(target: "vipgate::request", virtual_server = %http.name, client = %Address(connection.peer), status = 400, error = %problem, "request refused");
    local(
        connection,
        in_flight,
        StatusCode::BAD_REQUEST,
        "the request is malformed\n",
    )
}

/// A redirect virtual's answer: the same host and path over the
/// redirect's scheme (and port).
fn redirected(
    connection: &Connection,
    in_flight: InFlight,
    redirect: &Redirect,
    request: &Request<Incoming>,
) -> Response<ResponseBody> {
    let http = &connection.http;
    // HTTP/2 names the host in :authority, HTTP/1.1 in Host.
    let host = request
        .uri()
        .authority()
        .map(|authority| authority.as_str())
        .or_else(|| request.headers().get(header::HOST)?.to_str().ok());
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |path| path.as_str());
    let location = host
        .and_then(|host| redirect.location(host, path))
        .and_then(|location| HeaderValue::try_from(location).ok());
    let Some(location) = location else {
        return bad_request(
            connection,
            in_flight,
            "a redirect needs the request's host, and it has none usable".into(),
        );
    };
    http.stats.http.count(HttpEvent::Redirected);
    let status = StatusCode::from_u16(redirect.status).unwrap_or(StatusCode::MOVED_PERMANENTLY);
    tracing::info!(target: "vipgate::request", virtual_server = %http.name, client = %Address(connection.peer), status = status.as_u16(), location = ?location, "request redirected");
    let mut response = local(connection, in_flight, status, "moved\n");
    response.headers_mut().insert(header::LOCATION, location);
    response
}

/// The member's response on its way to the client: hop-by-hop fields
/// removed, the virtual's own fields and the persistence cookie (when due)
/// added, and the connection handed back (or turned into a tunnel) when it
/// is done.
fn respond(
    connection: &Arc<Connection>,
    in_flight: InFlight,
    response: Response<AnswerBody>,
    Reservation { index, slot }: Reservation,
    claim: &Claim,
    now: u64,
) -> Response<ResponseBody> {
    let http = &connection.http;
    let (mut parts, body) = response.into_parts();
    http.stats
        .http
        .count(HttpEvent::member_answered(parts.status));
    let switching = parts.status == StatusCode::SWITCHING_PROTOCOLS;
    remove_hop_by_hop(&mut parts.headers, switching);
    insert_all(&mut parts.headers, &http.response_headers);
    if let Persistence::Cookie { .. } = &http.plan.persistence {
        if claim.member != Some(index) || claim.renew {
            if let Some(cookie) = persistence_cookie(connection, slot.member().address(), now) {
                parts.headers.append(header::SET_COOKIE, cookie);
                http.stats.http.count(HttpEvent::CookieSet);
            }
        }
    }
    let body = if switching {
        if !tunnel::arrange(connection, slot) {
            http.stats.http.count(HttpEvent::MemberFailed);
            return local(
                connection,
                in_flight,
                StatusCode::BAD_GATEWAY,
                "the member switched protocols unasked\n",
            );
        }
        // hyper hands the client connection over once this response is
        // written; the tunnel takes it from there.
        connection.phase.tunnel();
        http.stats.http.count(HttpEvent::Upgrade);
        drop(body);
        ResponseBody::text(in_flight, Bytes::new())
    } else {
        ResponseBody::member(in_flight, body, slot, (Arc::clone(connection), index))
    };
    Response::from_parts(parts, body)
}

/// The `Set-Cookie` value naming `member`, with the virtual's attributes.
fn persistence_cookie(
    connection: &Connection,
    member: SocketAddr,
    now: u64,
) -> Option<HeaderValue> {
    let http = &connection.http;
    let seal = http.seal.as_ref()?;
    let Persistence::Cookie {
        name,
        lifetime,
        attributes,
        ..
    } = &http.plan.persistence
    else {
        return None;
    };
    let expires = match lifetime {
        CookieLifetime::Session => 0,
        CookieLifetime::MaxAge(max_age) => now + max_age.as_secs(),
    };
    let cookie = set_cookie(
        name,
        &seal.seal(member, expires),
        *lifetime,
        attributes,
        connection.tls,
    );
    HeaderValue::from_str(&cookie).ok()
}

/// vipgate's own short answer.
fn local(
    connection: &Connection,
    in_flight: InFlight,
    status: StatusCode,
    text: &'static str,
) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::text(
        in_flight,
        Bytes::from_static(text.as_bytes()),
    ));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    insert_all(headers, &connection.http.response_headers);
    response
}

fn log(
    connection: &Connection,
    method: &Method,
    member: SocketAddr,
    status: StatusCode,
    duration: Duration,
) {
    tracing::info!(
        target: "vipgate::request",
        virtual_server = %connection.http.name,
        client = %Address(connection.peer),
        member = %Address(member),
        method = %method,
        status = status.as_u16(),
        duration_ms = duration.as_millis() as u64,
        "request"
    );
}

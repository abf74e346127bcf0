//! One request: what its persistence claims, which member takes it, how
//! it is sent, and the response (the member's, or vipgate's own 502, 503
//! or 504) with the persistence cookie when one is due.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, StatusCode, Uri, Version};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::{Request, Response};
use tokio::time::Instant;

use super::client_io::Phase;
use super::headers::{add_forwarded, remove_hop_by_hop, wants_upgrade};
use super::members::{Sender, Sent};
use super::persistence::{
    cookie_value, cookie_value_any_case, route_of, url_param_route, TokenError,
};
use super::{tunnel, Connection, HttpVirtual};
use crate::clock::unix_seconds;
use crate::config::{CookieLifetime, Persistence};
use crate::dial::Attempts;
use crate::pool::{MemberSlot, Pool, Tried};
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
    mut request: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let started = Instant::now();
    connection.phase.waiting();
    let http = &connection.http;
    let stats = &http.stats.http;
    stats.count(HttpEvent::Request);
    let pool = &http.pool;
    let now = unix_seconds();
    let claim = claim(http, pool, &request, now);
    let upgrade = wants_upgrade(request.headers());
    prepare(&mut request, connection.peer, connection.tls, upgrade);
    let method = request.method().clone();

    let mut tried = Tried::default();
    let mut attempts = Attempts::default();
    let mut persistent = claim.member;
    // As for TCP virtuals: a member held back by its connect rate is
    // waited for, up to the connect timeout.
    let deadline = Instant::now() + http.dialer.connect_timeout;
    loop {
        let reserved = match persistent.take() {
            Some(index) => match pool.reserve_persistent(index, &mut tried) {
                Some(slot) => Some((index, slot)),
                // Down, forced offline or full: it counts as tried, and the
                // request is balanced over the others.
                None => continue,
            },
            None => pool.reserve_paced(&mut tried, deadline).await,
        };
        let Some((index, slot)) = reserved else {
            return Ok(refuse(&connection, attempts.exhausted()));
        };
        let member = &pool.members()[index].state;
        let sent = if upgrade {
            tunnel::send(&connection, index, request).await
        } else {
            http.send(index, request).await
        };
        match sent {
            Sent::Answered(response, sender) => {
                count_persistence(http, stats, &claim, index);
                let response = respond(&connection, response, sender, (index, slot), &claim, now);
                log(
                    &connection,
                    &method,
                    member.address(),
                    response.status(),
                    started,
                );
                return Ok(response);
            }
            Sent::Unreachable(unsent, error) => {
                if let Some(refusal) = attempts.failed(member, &http.name, &error) {
                    return Ok(refuse(&connection, refusal));
                }
                request = unsent;
            }
            Sent::Failed(error) => {
                stats.count(HttpEvent::MemberFailed);
                tracing::info!(target: "vipgate::request", virtual_server = %http.name, client = %connection.peer, member = %member.address(), %error, "member failed while answering: 502");
                return Ok(local(
                    &connection,
                    StatusCode::BAD_GATEWAY,
                    "the member failed to answer\n",
                ));
            }
            Sent::TimedOut => {
                stats.count(HttpEvent::MemberTimedOut);
                tracing::info!(target: "vipgate::request", virtual_server = %http.name, client = %connection.peer, member = %member.address(), "member did not answer within idle_timeout: 504");
                return Ok(local(
                    &connection,
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
            let Some(token) = cookies().find_map(|header| cookie_value(header, name)) else {
                return Claim::default();
            };
            let opened = http
                .seal
                .as_ref()
                .ok_or(TokenError::Malformed)
                .and_then(|seal| seal.open(token, now));
            let member = opened.as_ref().ok().and_then(|token| {
                let address: SocketAddr = token.member.parse().ok()?;
                pool.member_by_address(address)
            });
            let renew = match (lifetime, &opened) {
                (CookieLifetime::MaxAge(max_age), Ok(token)) => {
                    token.expires.saturating_sub(now) < max_age.as_secs() / 2
                }
                _ => false,
            };
            Claim {
                member,
                present: true,
                renew,
            }
        }
    }
}

/// The request as the member gets it: hop-by-hop fields removed,
/// `X-Forwarded-*` added, in origin form over HTTP/1.1 (so the member
/// connection can be kept alive whatever the client speaks).
fn prepare(request: &mut Request<Incoming>, peer: SocketAddr, tls: bool, upgrade: bool) {
    remove_hop_by_hop(request.headers_mut(), upgrade);
    add_forwarded(request.headers_mut(), peer.ip(), tls);
    if request.uri().authority().is_some() {
        // An absolute-form target (`GET http://host/path`): the member
        // wants the path; Host already names the site.
        let origin = request
            .uri()
            .path_and_query()
            .map_or_else(|| Uri::from_static("/"), |p| Uri::from(p.clone()));
        *request.uri_mut() = origin;
    }
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
fn refuse(connection: &Connection, refusal: Rejection) -> Response<ResponseBody> {
    let stats = &connection.http.stats;
    stats.count_rejected(refusal);
    stats.http.count(HttpEvent::NoMember);
    let text = match refusal {
        Rejection::NoMember => "no member is available\n",
        _ => "no member can be reached now\n",
    };
    local(connection, StatusCode::SERVICE_UNAVAILABLE, text)
}

/// The member's response on its way to the client: hop-by-hop fields
/// removed, the persistence cookie added when due, and the connection
/// handed back (or turned into a tunnel) when it is done.
fn respond(
    connection: &Arc<Connection>,
    response: Response<Incoming>,
    sender: Sender,
    (index, slot): (usize, MemberSlot),
    claim: &Claim,
    now: u64,
) -> Response<ResponseBody> {
    let http = &connection.http;
    let (mut parts, body) = response.into_parts();
    let switching = parts.status == StatusCode::SWITCHING_PROTOCOLS;
    remove_hop_by_hop(&mut parts.headers, switching);
    if let Persistence::Cookie { name, lifetime, .. } = &http.plan.persistence {
        if claim.member != Some(index) || claim.renew {
            if let Some(cookie) =
                persistence_cookie(connection, name, *lifetime, slot.member().address(), now)
            {
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
                StatusCode::BAD_GATEWAY,
                "the member switched protocols unasked\n",
            );
        }
        // hyper hands the client connection over once this response is
        // written; the tunnel takes it from there.
        connection.phase.tunnel();
        http.stats.http.count(HttpEvent::Upgrade);
        drop((body, sender));
        ResponseBody::text(&connection.phase, Bytes::new())
    } else {
        connection.phase.sending();
        ResponseBody {
            content: Content::Member(body),
            ended: false,
            phase: Arc::clone(&connection.phase),
            slot: Some(slot),
            reuse: Some((Arc::clone(http), index, sender)),
        }
    };
    Response::from_parts(parts, body)
}

/// `NAME=<token>; Path=/; HttpOnly`, with `Secure` for a TLS client and
/// `Max-Age` when the cookie has one.
fn persistence_cookie(
    connection: &Connection,
    name: &str,
    lifetime: CookieLifetime,
    member: SocketAddr,
    now: u64,
) -> Option<HeaderValue> {
    let seal = connection.http.seal.as_ref()?;
    let (expires, max_age) = match lifetime {
        CookieLifetime::Session => (0, None),
        CookieLifetime::MaxAge(max_age) => (now + max_age.as_secs(), Some(max_age.as_secs())),
    };
    let mut cookie = format!(
        "{name}={}; Path=/; HttpOnly",
        seal.seal(&member.to_string(), expires)
    );
    if connection.tls {
        cookie.push_str("; Secure");
    }
    if let Some(max_age) = max_age {
        cookie.push_str(&format!("; Max-Age={max_age}"));
    }
    HeaderValue::from_str(&cookie).ok()
}

/// vipgate's own short answer.
fn local(
    connection: &Connection,
    status: StatusCode,
    text: &'static str,
) -> Response<ResponseBody> {
    connection.phase.sending();
    let mut response = Response::new(ResponseBody::text(
        &connection.phase,
        Bytes::from_static(text.as_bytes()),
    ));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

fn log(
    connection: &Connection,
    method: &Method,
    member: SocketAddr,
    status: StatusCode,
    started: Instant,
) {
    tracing::info!(
        target: "vipgate::request",
        virtual_server = %connection.http.name,
        client = %connection.peer,
        member = %member,
        method = %method,
        status = status.as_u16(),
        duration_ms = started.elapsed().as_millis() as u64,
        "request"
    );
}

/// A response body: the member's, streamed as it comes, or vipgate's own
/// text. Dropping it ends the request: the member connection goes back to
/// its idle queue if the body was read to the end (otherwise it closes),
/// the member's request slot is freed, and the client connection waits
/// for its next request.
pub(super) struct ResponseBody {
    content: Content,
    ended: bool,
    phase: Arc<Phase>,
    slot: Option<MemberSlot>,
    reuse: Option<(Arc<HttpVirtual>, usize, Sender)>,
}

enum Content {
    Member(Incoming),
    Text(Option<Bytes>),
}

impl ResponseBody {
    fn text(phase: &Arc<Phase>, text: Bytes) -> ResponseBody {
        ResponseBody {
            content: Content::Text(Some(text)),
            ended: false,
            phase: Arc::clone(phase),
            slot: None,
            reuse: None,
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = match &mut this.content {
            Content::Member(body) => Pin::new(body).poll_frame(cx),
            Content::Text(text) => Poll::Ready(text.take().map(|text| Ok(Frame::data(text)))),
        };
        if let Poll::Ready(None) = polled {
            this.ended = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.content {
            Content::Member(body) => body.is_end_stream(),
            Content::Text(text) => text.as_ref().is_none_or(Bytes::is_empty),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.content {
            Content::Member(body) => body.size_hint(),
            Content::Text(text) => {
                SizeHint::with_exact(text.as_ref().map_or(0, |t| t.len() as u64))
            }
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        self.phase.done();
        if let Some((http, index, sender)) = self.reuse.take() {
            if self.ended || self.is_end_stream() {
                http.members.checkin(index, sender);
            }
        }
        self.slot = None;
    }
}

//! Upgrades (WebSocket and any other `Connection: upgrade`): the request
//! goes to its member over a connection of its own, and when the member
//! answers `101 Switching Protocols` both connections become one tunnel,
//! carried by the client's connection task until either side closes, the
//! client is idle for `idle_timeout`, or the server closes.

use std::sync::Arc;

use http::StatusCode;
use hyper::client::conn::http1;
use hyper::upgrade::OnUpgrade;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;

use super::members::Sent;
use super::request_body::RequestBody;
use super::response_body::{AnswerBody, UpgradeSender};
use super::{Connection, HttpVirtual};
use crate::dial::{DialError, Dialed};
use crate::pool::{MemberSlot, MemberState};
use crate::snat::SourceLease;
use crate::stop_signal::StopSignal;
use crate::streams::Back;
use crate::sync::lock;

/// Both ends of an upgrade, waiting for hyper to let go of them.
pub(super) struct Tunnel {
    client: OnUpgrade,
    member: OnUpgrade,
    /// The member connection's source port, shared with the task that
    /// drove it until the upgrade.
    _lease: Arc<SourceLease>,
    slot: Option<MemberSlot>,
}

/// Sends an upgrade request to the member at `index` over a new
/// connection; on `101`, leaves the tunnel ready for the connection task.
pub(super) async fn send(
    connection: &Arc<Connection>,
    index: usize,
    mut request: Request<RequestBody>,
) -> Sent {
    let http = &connection.http;
    let Some(member) = http.pool.members().get(index) else {
        return Sent::Unreachable(
            request,
            DialError::Member(std::io::Error::other("no such member")),
        );
    };
    let (mut sender, member_connection, lease) = match dial(http, &member.state).await {
        Ok(opened) => opened,
        Err(error) => return Sent::Unreachable(request, error),
    };
    let lease = Arc::new(lease);
    let held = Arc::clone(&lease);
    tokio::spawn(async move {
        let _lease = held;
        let _ = member_connection.with_upgrades().await;
    });
    let client = hyper::upgrade::on(&mut request);
    let answer = sender.send_request(request);
    match tokio::time::timeout(http.idle_timeout, answer).await {
        Err(_) => Sent::TimedOut,
        Ok(Err(error)) => Sent::Failed(Box::new(error)),
        Ok(Ok(mut response)) => {
            if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                let member = hyper::upgrade::on(&mut response);
                *lock(&connection.tunnel) = Some(Tunnel {
                    client,
                    member,
                    _lease: lease,
                    slot: None,
                });
            }
            Sent::Answered(response.map(|body| AnswerBody::Upgrade {
                body,
                _sender: sender,
            }))
        }
    }
}

/// A member connection for an upgrade: hyper's client, which hands the
/// connection over on `101`.
type UpgradeConnection = http1::Connection<TokioIo<Back>, RequestBody>;

/// Opens a connection to `member` the way the virtual opens any (its
/// SNAT, connect timeout, its pool's TLS).
async fn dial(
    http: &HttpVirtual,
    member: &MemberState,
) -> Result<(UpgradeSender, UpgradeConnection, SourceLease), DialError> {
    let Dialed { stream, lease } = http.dialer.dial(&http.pool, member, None).await?;
    let (sender, connection) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        // Setting up a client connection does no I/O yet.
        .map_err(|error| DialError::Member(std::io::Error::other(error)))?;
    Ok((sender, connection, lease))
}

/// Whether a `101` answer belongs to an upgrade this connection asked for
/// (a member switching protocols unasked is answered 502). Hands the
/// tunnel the member's request slot.
pub(super) fn arrange(connection: &Connection, slot: MemberSlot) -> bool {
    match lock(&connection.tunnel).as_mut() {
        Some(tunnel) => {
            tunnel.slot = Some(slot);
            true
        }
        None => false,
    }
}

impl Tunnel {
    /// Carries bytes both ways until the tunnel ends.
    pub(super) async fn run(self, connection: &Connection, close: &CancellationToken) {
        let name = &connection.http.name;
        let (client, member) = tokio::join!(self.client, self.member);
        let (mut client, mut member) = match (client, member) {
            (Ok(client), Ok(member)) => (TokioIo::new(client), TokioIo::new(member)),
            (Err(error), _) | (_, Err(error)) => {
                tracing::info!(target: "vipgate::connection", virtual_server = %name, client = %connection.peer, %error, "upgrade failed, closing");
                return;
            }
        };
        let carried = tokio::select! {
            carried = tokio::io::copy_bidirectional(&mut client, &mut member) => carried,
            () = StopSignal::new(close.clone()) => return,
        };
        let member_address = self.slot.as_ref().map(|slot| slot.member().address());
        match carried {
            Ok((to_member, to_client)) => {
                if let Some(slot) = &self.slot {
                    slot.member().record_bytes(to_member, to_client);
                }
                tracing::info!(target: "vipgate::connection", virtual_server = %name, client = %connection.peer, member = member_address.map(tracing::field::display), bytes_to_member = to_member, bytes_to_client = to_client, "tunnel closed");
            }
            Err(error) => {
                tracing::info!(target: "vipgate::connection", virtual_server = %name, client = %connection.peer, member = member_address.map(tracing::field::display), %error, "tunnel ended");
            }
        }
    }
}

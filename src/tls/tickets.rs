//! TLS session tickets both nodes of a pair read: sealed (ChaCha20-Poly1305)
//! with a key derived from the shared secret and the current rotation
//! period, which every node computes from the clock alike. A client that
//! reconnects to the other node after a failover resumes its session
//! instead of making a full handshake.
//!
//! A ticket is `period (8 bytes) | nonce (12) | sealed state`. The keys of
//! the period before and after the current one are accepted too, so a
//! ticket issued just before a rotation, or by a node whose clock is a
//! little ahead, still opens; older ones do not. The trade-off of sharing:
//! whoever holds the secret file can open tickets, so it is guarded like a
//! private key, and replacing it on both nodes ends every session.

use std::sync::Arc;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use rustls::server::ProducesTickets;

/// How long one ticket key is used: 12 hours. A ticket stays valid for
/// one period (its lifetime) and opens for up to two.
pub const ROTATION_SECONDS: u64 = 12 * 3600;

/// The bytes in front of the sealed state.
const HEADER: usize = 8 + NONCE_LEN;

/// Issues and opens tickets with keys derived from a shared secret.
pub struct SharedTickets {
    secret: Vec<u8>,
    random: SystemRandom,
    /// Seconds since the Unix epoch; a parameter for the tests.
    clock: fn() -> u64,
}

impl std::fmt::Debug for SharedTickets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedTickets")
    }
}

impl SharedTickets {
    /// Tickets sealed with keys derived from `secret`.
    pub fn new(secret: &[u8]) -> Arc<SharedTickets> {
        Arc::new(SharedTickets::with_clock(
            secret,
            crate::clock::unix_seconds,
        ))
    }

    fn with_clock(secret: &[u8], clock: fn() -> u64) -> SharedTickets {
        SharedTickets {
            secret: secret.to_vec(),
            random: SystemRandom::new(),
            clock,
        }
    }

    fn period(&self) -> u64 {
        (self.clock)() / ROTATION_SECONDS
    }

    /// The key of rotation period `period`.
    fn key(&self, period: u64) -> LessSafeKey {
        let mut bytes = [0u8; 32];
        crate::secret::derive(
            &self.secret,
            &[b"tls session tickets", &period.to_be_bytes()],
            &mut bytes,
        );
        // A 32-byte key is what ChaCha20-Poly1305 takes.
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, &bytes)
            .unwrap_or_else(|_| unreachable!("a 32-byte ChaCha20-Poly1305 key"));
        LessSafeKey::new(unbound)
    }
}

impl ProducesTickets for SharedTickets {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        ROTATION_SECONDS as u32
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let period = self.period();
        let mut nonce = [0u8; NONCE_LEN];
        self.random.fill(&mut nonce).ok()?;
        let mut ticket = Vec::with_capacity(HEADER + plain.len() + CHACHA20_POLY1305.tag_len());
        ticket.extend_from_slice(&period.to_be_bytes());
        ticket.extend_from_slice(&nonce);
        let mut sealed = plain.to_vec();
        self.key(period)
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&ticket[..8]),
                &mut sealed,
            )
            .ok()?;
        ticket.extend_from_slice(&sealed);
        Some(ticket)
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        if ticket.len() < HEADER + CHACHA20_POLY1305.tag_len() {
            return None;
        }
        let period = u64::from_be_bytes(ticket[..8].try_into().ok()?);
        if period.abs_diff(self.period()) > 1 {
            return None;
        }
        let nonce = Nonce::try_assume_unique_for_key(&ticket[8..HEADER]).ok()?;
        let mut sealed = ticket[HEADER..].to_vec();
        let plain = self
            .key(period)
            .open_in_place(nonce, Aad::from(&ticket[..8]), &mut sealed)
            .ok()?;
        Some(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> u64 {
        1_800_000_000
    }
    fn next_period() -> u64 {
        now() + ROTATION_SECONDS
    }
    fn two_periods_later() -> u64 {
        now() + 2 * ROTATION_SECONDS
    }

    #[test]
    fn a_node_with_the_same_secret_opens_the_others_tickets() {
        let first = SharedTickets::with_clock(b"the pair's shared secret", now);
        let second = SharedTickets::with_clock(b"the pair's shared secret", now);
        let ticket = first.encrypt(b"session state").unwrap();
        assert_eq!(
            second.decrypt(&ticket).as_deref(),
            Some(&b"session state"[..])
        );
        assert_ne!(
            first.encrypt(b"session state").unwrap(),
            ticket,
            "a fresh nonce each time"
        );
        let stranger = SharedTickets::with_clock(b"another secret entirely", now);
        assert_eq!(stranger.decrypt(&ticket), None);
    }

    #[test]
    fn tickets_open_across_one_rotation_and_not_two() {
        let issued = SharedTickets::with_clock(b"the pair's shared secret", now)
            .encrypt(b"state")
            .unwrap();
        let later = SharedTickets::with_clock(b"the pair's shared secret", next_period);
        assert!(later.decrypt(&issued).is_some());
        let much_later = SharedTickets::with_clock(b"the pair's shared secret", two_periods_later);
        assert!(much_later.decrypt(&issued).is_none());
    }

    #[test]
    fn tampered_or_short_tickets_do_not_open() {
        let tickets = SharedTickets::with_clock(b"the pair's shared secret", now);
        let ticket = tickets.encrypt(b"state").unwrap();
        for at in [0, 7, 8, 19, 20, ticket.len() - 1] {
            let mut bent = ticket.clone();
            bent[at] ^= 1;
            assert!(tickets.decrypt(&bent).is_none(), "byte {at}");
        }
        assert!(tickets.decrypt(&ticket[..HEADER + 3]).is_none());
        assert!(tickets.decrypt(&[]).is_none());
    }
}

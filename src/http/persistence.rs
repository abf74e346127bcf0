//! Session persistence for web-engagement servers, as the pair of load
//! balancers in front of them does it:
//!
//! - by URL parameter: the route is the text after the last `.` of a
//!   parameter's value (`;jsessionid=8F3A9C.GWE_Node1`, the jvmRoute
//!   pattern), found as a path parameter or in the query string;
//! - by a cookie the load balancer inserts: its value is a [`CookieSeal`]
//!   token naming the member, encrypted and authenticated with keys derived
//!   from a secret shared by every vipgate instance, so a client can
//!   neither read which member it names (F5's readable `BIGipServer`
//!   cookie is a classic audit finding) nor forge one, and any instance
//!   with the same secret reads any other's cookies.
//!
//! Every function here works on untrusted input: no panic, and nothing
//! allocated beyond the output.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ring::{aead, hkdf, hmac};
use subtle::ConstantTimeEq;

use crate::config::{CookieAttributes, CookieLifetime, CookieSecure, SameSite};

/// The route a request carries in parameter `name`: as a path parameter
/// (`/app;jsessionid=ABC.node1/x`) or in the query (`?jsessionid=ABC.node1`),
/// the path first. `None` when absent or without a `.route` suffix.
/// Parameter names match without regard to ASCII case.
pub fn url_param_route<'a>(target: &'a str, name: &str) -> Option<&'a str> {
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    let in_path = path
        .split('/')
        .flat_map(|segment| segment.split(';').skip(1))
        .find_map(|parameter| value_of(parameter, name));
    let in_query = || {
        query?
            .split('#')
            .next()?
            .split('&')
            .find_map(|parameter| value_of(parameter, name))
    };
    in_path.or_else(in_query).and_then(route_of)
}

/// The route part of a session id: what follows its last `.`.
pub fn route_of(value: &str) -> Option<&str> {
    let (_, route) = value.rsplit_once('.')?;
    (!route.is_empty()).then_some(route)
}

fn value_of<'a>(parameter: &'a str, name: &str) -> Option<&'a str> {
    let (key, value) = parameter.split_once('=')?;
    key.trim()
        .eq_ignore_ascii_case(name)
        .then_some(value.trim())
}

/// The value of cookie `name` in a `Cookie:` header (`a=1; b=2`): the
/// first of that name.
pub fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    cookies(header).find_map(|(key, value)| (key == name).then_some(value))
}

/// Every value of cookie `name` in a `Cookie:` header, in order: a browser
/// sends two of one name when they were set for different paths or
/// domains.
pub fn cookie_values<'a>(header: &'a str, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    cookies(header).filter_map(move |(key, value)| (key == name).then_some(value))
}

/// The value of the cookie named `name` in any case: a session id in the
/// URL as `jsessionid` travels in a cookie as `JSESSIONID`.
pub fn cookie_value_any_case<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    cookies(header).find_map(|(key, value)| key.eq_ignore_ascii_case(name).then_some(value))
}

/// The `Cookie:` header without the cookies named `name`: `None` when it
/// has none of them (the header stays as it is), else what is left, in
/// order and joined as browsers join them (`a=1; b=2`), empty when
/// nothing is.
///
/// vipgate takes its own persistence cookie out of requests before they
/// reach a member: the member cannot read a sealed token, and need not
/// parse or log it (HAProxy's `cookie ... insert indirect` does the same).
pub fn without_cookie(header: &str, name: &str) -> Option<String> {
    // Most requests carry it alone or not at all: look before building.
    cookie_values(header, name).next()?;
    let mut rest = String::new();
    for pair in header.split(';') {
        let named = pair
            .split_once('=')
            .is_some_and(|(key, _)| key.trim() == name);
        let pair = pair.trim();
        if named || pair.is_empty() {
            continue;
        }
        if !rest.is_empty() {
            rest.push_str("; ");
        }
        rest.push_str(pair);
    }
    Some(rest)
}

fn cookies(header: &str) -> impl Iterator<Item = (&str, &str)> {
    header.split(';').filter_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        Some((key.trim(), value.trim().trim_matches('"')))
    })
}

/// The `Set-Cookie` value for persistence cookie `name` holding `token`:
/// `Path`, `Domain`, `Max-Age`, `HttpOnly`, `Secure` (always, never, or
/// when the client came over TLS) and `SameSite`, as configured.
pub fn set_cookie(
    name: &str,
    token: &str,
    lifetime: CookieLifetime,
    attributes: &CookieAttributes,
    tls: bool,
) -> String {
    use std::fmt::Write;
    let mut cookie = format!("{name}={token}; Path={}", attributes.path);
    if let Some(domain) = &attributes.domain {
        let _ = write!(cookie, "; Domain={domain}");
    }
    if let CookieLifetime::MaxAge(max_age) = lifetime {
        let _ = write!(cookie, "; Max-Age={}", max_age.as_secs());
    }
    if attributes.http_only {
        cookie.push_str("; HttpOnly");
    }
    let secure = match attributes.secure {
        CookieSecure::Auto => tls,
        CookieSecure::Always => true,
        CookieSecure::Never => false,
    };
    if secure {
        cookie.push_str("; Secure");
    }
    match attributes.same_site {
        SameSite::Lax => cookie.push_str("; SameSite=Lax"),
        SameSite::Strict => cookie.push_str("; SameSite=Strict"),
        SameSite::None => cookie.push_str("; SameSite=None"),
        SameSite::Omitted => {}
    }
    cookie
}

/// A genuine token, opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// The member it names.
    pub member: SocketAddr,
    /// Unix seconds; 0: no expiry.
    pub expires: u64,
    /// Sealed in the previous (readable, `v1`) format: still honoured, and
    /// replaced by a current one on the response.
    pub legacy: bool,
}

/// Why a persistence cookie was not accepted. Any of these means: ignore
/// it, balance normally, and set a fresh cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("not a vipgate persistence token")]
    Malformed,
    #[error("the token does not open with this secret (forged, or another secret)")]
    Forged,
    #[error("the token has expired")]
    Expired,
}

/// Seals and opens persistence tokens under a shared secret.
///
/// A token is `v2.<hex>`: a 12-byte nonce, then the member's address and
/// the expiry encrypted and authenticated with AES-256-GCM. The key and
/// the nonce key are derived from the secret with HKDF-SHA256, and the
/// nonce is an HMAC of what is sealed (a synthetic nonce, as in SIV), so
/// every instance with the secret seals the same member and expiry to the
/// same token, and no nonce is ever reused for different contents.
///
/// Tokens of the previous format, `v1.<member, hex>.<expiry>.<HMAC tag>`
/// (readable, authenticated only), still open until they expire, so an
/// upgrade does not unstick sessions; each is replaced on its next
/// response.
pub struct CookieSeal {
    aead: aead::LessSafeKey,
    nonce_key: hmac::Key,
    legacy: hmac::Key,
}

impl std::fmt::Debug for CookieSeal {
    /// Never shows the keys.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CookieSeal")
    }
}

/// Bytes of the HMAC kept in a `v1` token: 128 bits.
const LEGACY_TAG_BYTES: usize = 16;

/// Longest sealed contents: family, IPv6 address, port, expiry.
const MAX_PLAIN: usize = 1 + 16 + 2 + 8;

/// Longest `v2` token body, in bytes before hex.
const MAX_SEALED: usize = aead::NONCE_LEN + MAX_PLAIN + 16;

/// The HKDF salt: names what the keys are for, so the same secret used for
/// TLS session tickets yields unrelated keys.
const KEY_SALT: &[u8] = b"vipgate persistence cookie v2";

impl CookieSeal {
    /// A seal for `secret` (at least 16 bytes is sensible; the caller
    /// checks that).
    pub fn new(secret: &[u8]) -> CookieSeal {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, KEY_SALT).extract(secret);
        // Expanding fails only when asked for more than 255 hashes' worth.
        let aead_key: aead::UnboundKey = prk
            .expand(&[b"aead key"], &aead::AES_256_GCM)
            .expect("32 bytes is a valid HKDF length")
            .into();
        let nonce_key: hmac::Key = prk
            .expand(&[b"nonce key"], hmac::HMAC_SHA256)
            .expect("32 bytes is a valid HKDF length")
            .into();
        CookieSeal {
            aead: aead::LessSafeKey::new(aead_key),
            nonce_key,
            legacy: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    /// A token naming `member`, valid until `expires` (unix seconds; 0 for
    /// a token that does not expire, as for a session cookie).
    pub fn seal(&self, member: SocketAddr, expires: u64) -> String {
        let mut plain = [0u8; MAX_PLAIN];
        let length = encode(member, expires, &mut plain);
        let mut sealed = [0u8; MAX_SEALED];
        let nonce_bytes = hmac::sign(&self.nonce_key, &plain[..length]);
        let (nonce, rest) = sealed.split_at_mut(aead::NONCE_LEN);
        nonce.copy_from_slice(&nonce_bytes.as_ref()[..aead::NONCE_LEN]);
        rest[..length].copy_from_slice(&plain[..length]);
        let nonce_value = aead::Nonce::assume_unique_for_key(
            nonce
                .try_into()
                .expect("the nonce slice has NONCE_LEN bytes"),
        );
        // Sealing fails only for contents over GCM's limit (64 GiB).
        let tag = self
            .aead
            .seal_in_place_separate_tag(nonce_value, aead::Aad::empty(), &mut rest[..length])
            .expect("a few bytes are within GCM's limit");
        rest[length..length + 16].copy_from_slice(tag.as_ref());
        let total = aead::NONCE_LEN + length + 16;
        format!("v2.{}", hex(&sealed[..total]))
    }

    /// What a token says, if it is genuine and not expired at `now` (unix
    /// seconds).
    pub fn open(&self, token: &str, now: u64) -> Result<Token, TokenError> {
        let opened = match token.split_once('.') {
            Some(("v2", body)) => self.open_current(body)?,
            Some(("v1", _)) => self.open_legacy(token)?,
            _ => return Err(TokenError::Malformed),
        };
        if opened.expires != 0 && opened.expires <= now {
            return Err(TokenError::Expired);
        }
        Ok(opened)
    }

    fn open_current(&self, body: &str) -> Result<Token, TokenError> {
        let mut sealed = [0u8; MAX_SEALED];
        let length = unhex_into(body, &mut sealed).ok_or(TokenError::Malformed)?;
        if length < aead::NONCE_LEN + 16 {
            return Err(TokenError::Malformed);
        }
        let (nonce, rest) = sealed[..length].split_at_mut(aead::NONCE_LEN);
        let nonce =
            aead::Nonce::try_assume_unique_for_key(nonce).map_err(|_| TokenError::Malformed)?;
        let plain = self
            .aead
            .open_in_place(nonce, aead::Aad::empty(), rest)
            .map_err(|_| TokenError::Forged)?;
        let (member, expires) = decode(plain).ok_or(TokenError::Malformed)?;
        Ok(Token {
            member,
            expires,
            legacy: false,
        })
    }

    /// `v1.<member, hex>.<expiry>.<tag, hex>`.
    fn open_legacy(&self, token: &str) -> Result<Token, TokenError> {
        let (body, tag) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let mut parts = body.split('.');
        let (Some("v1"), Some(member), Some(expires), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let mut tag_bytes = [0u8; LEGACY_TAG_BYTES];
        if unhex_into(tag, &mut tag_bytes) != Some(LEGACY_TAG_BYTES) {
            return Err(TokenError::Malformed);
        }
        let expires: u64 = expires.parse().map_err(|_| TokenError::Malformed)?;
        let mut member_bytes = [0u8; 64];
        let member_length = unhex_into(member, &mut member_bytes).ok_or(TokenError::Malformed)?;
        let member: SocketAddr = std::str::from_utf8(&member_bytes[..member_length])
            .ok()
            .and_then(|text| text.parse().ok())
            .ok_or(TokenError::Malformed)?;
        let expected = hmac::sign(&self.legacy, body.as_bytes());
        let genuine: bool = expected.as_ref()[..LEGACY_TAG_BYTES]
            .ct_eq(&tag_bytes)
            .into();
        if !genuine {
            return Err(TokenError::Forged);
        }
        Ok(Token {
            member,
            expires,
            legacy: true,
        })
    }
}

/// `member` and `expires` as sealed: family (4 or 6), address, port,
/// expiry, big-endian. Returns the length written.
fn encode(member: SocketAddr, expires: u64, out: &mut [u8; MAX_PLAIN]) -> usize {
    let address_end = match member.ip() {
        IpAddr::V4(ip) => {
            out[0] = 4;
            out[1..5].copy_from_slice(&ip.octets());
            5
        }
        IpAddr::V6(ip) => {
            out[0] = 6;
            out[1..17].copy_from_slice(&ip.octets());
            17
        }
    };
    out[address_end..address_end + 2].copy_from_slice(&member.port().to_be_bytes());
    out[address_end + 2..address_end + 10].copy_from_slice(&expires.to_be_bytes());
    address_end + 10
}

fn decode(plain: &[u8]) -> Option<(SocketAddr, u64)> {
    let (ip, rest): (IpAddr, &[u8]) = match plain.split_first()? {
        (4, rest) if rest.len() == 4 + 10 => {
            let octets: [u8; 4] = rest[..4].try_into().ok()?;
            (Ipv4Addr::from(octets).into(), &rest[4..])
        }
        (6, rest) if rest.len() == 16 + 10 => {
            let octets: [u8; 16] = rest[..16].try_into().ok()?;
            (Ipv6Addr::from(octets).into(), &rest[16..])
        }
        _ => return None,
    };
    let port = u16::from_be_bytes(rest[..2].try_into().ok()?);
    let expires = u64::from_be_bytes(rest[2..10].try_into().ok()?);
    Some((SocketAddr::new(ip, port), expires))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for &byte in bytes {
        text.push(DIGITS[usize::from(byte >> 4)] as char);
        text.push(DIGITS[usize::from(byte & 15)] as char);
    }
    text
}

/// Decodes hex `text` into `out`; the number of bytes, or `None` when the
/// text is not hex or does not fit.
fn unhex_into(text: &str, out: &mut [u8]) -> Option<usize> {
    if text.len() % 2 != 0 || text.len() / 2 > out.len() {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    for (slot, pair) in out.iter_mut().zip(text.as_bytes().chunks(2)) {
        *slot = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(text.len() / 2)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn url_parameter_in_the_path_or_the_query() {
        assert_eq!(
            url_param_route("/gwe/cometd;jsessionid=8F3A9C.GWE_Node1", "jsessionid"),
            Some("GWE_Node1")
        );
        assert_eq!(
            url_param_route("/gwe/x;jsessionid=8F3A9C.GWE_Node2/more?a=1", "jsessionid"),
            Some("GWE_Node2")
        );
        assert_eq!(
            url_param_route("/gwe/x?a=1&JSESSIONID=AB.CD.node3#frag", "jsessionid"),
            Some("node3")
        );
        assert_eq!(
            url_param_route("/gwe;jsessionid=A.path?jsessionid=B.query", "jsessionid"),
            Some("path"),
            "the path parameter wins"
        );
        assert_eq!(
            url_param_route("/gwe?jsessionid=NOROUTE", "jsessionid"),
            None
        );
        assert_eq!(url_param_route("/gwe?jsessionid=ends.", "jsessionid"), None);
        assert_eq!(url_param_route("/gwe?other=a.b", "jsessionid"), None);
        assert_eq!(url_param_route("", "jsessionid"), None);
    }

    #[test]
    fn cookies_by_name() {
        assert_eq!(
            cookie_value("a=1; GWELB=v1.ab.0.cd; b=2", "GWELB"),
            Some("v1.ab.0.cd")
        );
        assert_eq!(
            cookie_value("JSESSIONID=\"X.node1\"", "JSESSIONID"),
            Some("X.node1")
        );
        assert_eq!(
            cookie_value("gwelb=1", "GWELB"),
            None,
            "cookie names are case-sensitive"
        );
        assert_eq!(
            cookie_value_any_case("JSESSIONID=8F.GWE_Node2", "jsessionid"),
            Some("8F.GWE_Node2")
        );
        assert_eq!(cookie_value("", "GWELB"), None);
    }

    fn member(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    /// A token in the previous format, as vipgate 0.1 sealed it.
    fn legacy_token(secret: &[u8], member: &str, expires: u64) -> String {
        let body = format!("v1.{}.{expires}", hex(member.as_bytes()));
        let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), body.as_bytes());
        format!("{body}.{}", hex(&tag.as_ref()[..LEGACY_TAG_BYTES]))
    }

    #[test]
    fn tokens_round_trip_and_agree_across_instances() {
        let seal = CookieSeal::new(b"demo secret, shared by the pair");
        let token = seal.seal(member("127.0.0.31:9081"), 2_000_000_000);
        assert!(token.starts_with("v2."), "{token}");
        assert_eq!(
            seal.open(&token, 1_900_000_000).unwrap().member,
            member("127.0.0.31:9081")
        );
        // Another instance (or a restart) with the same secret: same token.
        let twin = CookieSeal::new(b"demo secret, shared by the pair");
        assert_eq!(twin.seal(member("127.0.0.31:9081"), 2_000_000_000), token);
        assert_eq!(
            twin.open(&token, 0).unwrap(),
            Token {
                member: member("127.0.0.31:9081"),
                expires: 2_000_000_000,
                legacy: false,
            }
        );
        let v6 = member("[2001:db8::31]:9081");
        let session = seal.seal(v6, 0);
        assert_eq!(
            seal.open(&session, u64::MAX).map(|t| t.member),
            Ok(v6),
            "0: no expiry"
        );
    }

    #[test]
    fn a_token_does_not_show_its_member() {
        let seal = CookieSeal::new(b"demo secret, shared by the pair");
        let a = seal.seal(member("127.0.0.31:9081"), 0);
        let b = seal.seal(member("127.0.0.32:9081"), 0);
        for readable in [
            hex(b"127.0.0.31"),
            hex(&[127, 0, 0, 31]),
            hex(&9081u16.to_be_bytes()),
        ] {
            assert!(!a.contains(&readable), "{a} shows {readable}");
        }
        // Members one apart share no visible structure past the version.
        let common = a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count();
        assert!(common < 6, "{a} and {b} share {common} leading bytes");
    }

    #[test]
    fn tokens_of_the_previous_format_still_open_until_they_expire() {
        let secret = b"demo secret, shared by the pair";
        let seal = CookieSeal::new(secret);
        let old = legacy_token(secret, "127.0.0.31:9081", 2_000);
        assert_eq!(
            seal.open(&old, 1_000),
            Ok(Token {
                member: member("127.0.0.31:9081"),
                expires: 2_000,
                legacy: true,
            })
        );
        assert_eq!(seal.open(&old, 2_000), Err(TokenError::Expired));
        let foreign = legacy_token(b"another pair's secret", "127.0.0.31:9081", 0);
        assert_eq!(seal.open(&foreign, 0), Err(TokenError::Forged));
        let moved = old.replacen(&hex(b"127.0.0.31:9081"), &hex(b"127.0.0.32:9081"), 1);
        assert_eq!(seal.open(&moved, 0), Err(TokenError::Forged));
    }

    #[test]
    fn forged_expired_and_malformed_tokens_are_refused() {
        let seal = CookieSeal::new(b"secret one");
        let token = seal.seal(member("127.0.0.31:9081"), 2_000);
        assert_eq!(seal.open(&token, 2_000), Err(TokenError::Expired));
        assert_eq!(
            CookieSeal::new(b"secret two").open(&token, 0),
            Err(TokenError::Forged)
        );
        for bad in [
            "",
            "v1",
            "v2",
            "v2.",
            "v2.zz",
            "v2.00",
            "v3.00",
            "v1.zz.0.00",
            "v1.00.x.00",
            "v1.00.0.0",
            "v1.00.0.00.00",
        ] {
            assert_eq!(seal.open(bad, 0), Err(TokenError::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn set_cookie_carries_the_configured_attributes() {
        let lax = CookieAttributes::default();
        assert_eq!(
            set_cookie("GWELB", "v2.ab", CookieLifetime::Session, &lax, false),
            "GWELB=v2.ab; Path=/; HttpOnly; SameSite=Lax"
        );
        assert_eq!(
            set_cookie(
                "GWELB",
                "v2.ab",
                CookieLifetime::MaxAge(std::time::Duration::from_secs(3600)),
                &lax,
                true
            ),
            "GWELB=v2.ab; Path=/; Max-Age=3600; HttpOnly; Secure; SameSite=Lax"
        );
        let custom = CookieAttributes {
            http_only: false,
            secure: CookieSecure::Always,
            same_site: SameSite::None,
            domain: Some("example.com".into()),
            path: "/gwe".into(),
        };
        assert_eq!(
            set_cookie("GWELB", "t", CookieLifetime::Session, &custom, false),
            "GWELB=t; Path=/gwe; Domain=example.com; Secure; SameSite=None"
        );
        let bare = CookieAttributes {
            secure: CookieSecure::Never,
            same_site: SameSite::Omitted,
            ..CookieAttributes::default()
        };
        assert_eq!(
            set_cookie("GWELB", "t", CookieLifetime::Session, &bare, true),
            "GWELB=t; Path=/; HttpOnly"
        );
    }

    #[test]
    fn the_persistence_cookie_is_taken_out_and_the_others_stay() {
        assert_eq!(without_cookie("a=1; b=2", "GWELB"), None);
        assert_eq!(without_cookie("GWELB=v2.abc", "GWELB"), Some(String::new()));
        assert_eq!(
            without_cookie("a=1; GWELB=x;b=\"q=r\" ; GWELB=y", "GWELB"),
            Some("a=1; b=\"q=r\"".into())
        );
        // Names are case-sensitive, as the cookie's lookup is; a valueless
        // pair or one that only ends in the name stays.
        assert_eq!(
            without_cookie("gwelb=1; XGWELB=2; flag; GWELB=3", "GWELB"),
            Some("gwelb=1; XGWELB=2; flag".into())
        );
    }

    #[test]
    fn every_cookie_of_a_name_is_found() {
        let values: Vec<_> = cookie_values("GWELB=a; x=1; GWELB=b", "GWELB").collect();
        assert_eq!(values, ["a", "b"]);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

        #[test]
        fn persistence_parsers_never_panic(text in "\\PC{0,200}", name in "[a-zA-Z]{1,12}") {
            let _ = url_param_route(&text, &name);
            let _ = cookie_value(&text, &name);
            let _ = cookie_value_any_case(&text, &name);
            let _ = route_of(&text);
            if let Some(rest) = without_cookie(&text, &name) {
                let others = cookies(&text).filter(|(key, _)| *key != name);
                prop_assert!(cookies(&rest).eq(others));
                prop_assert_eq!(cookie_value(&rest, &name), None);
            }
            let seal = CookieSeal::new(b"property test secret");
            let _ = seal.open(&text, 1);
        }

        #[test]
        fn sealed_tokens_open_to_their_member_and_mutations_never_do(
            address in any::<SocketAddr>(),
            expires in any::<u64>(),
            flip in any::<prop::sample::Index>(),
            replacement in "[0-9a-f.v]",
        ) {
            // What a member is: its address and port (no IPv6 scope).
            let address = SocketAddr::new(address.ip(), address.port());
            let seal = CookieSeal::new(b"property test secret");
            let token = seal.seal(address, expires);
            let opened = seal.open(&token, 0).map(|t| (t.member, t.expires));
            prop_assert_eq!(opened, Ok((address, expires)));
            let at = flip.index(token.len());
            let mut mutated = token.clone();
            mutated.replace_range(at..at + 1, &replacement);
            if mutated != token {
                prop_assert!(seal.open(&mutated, 1).is_err(), "{} opened", mutated);
            }
        }
    }
}

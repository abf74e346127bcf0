//! Session persistence for web-engagement servers, as the pair of load
//! balancers in front of them does it:
//!
//! - by URL parameter: the route is the text after the last `.` of a
//!   parameter's value (`;jsessionid=8F3A9C.GWE_Node1`, the jvmRoute
//!   pattern), found as a path parameter or in the query string;
//! - by a cookie the load balancer inserts: its value is a [`CookieSeal`]
//!   token naming the member, authenticated with a secret shared by every
//!   vipgate instance, so a client cannot forge a route, and any instance
//!   with the same secret reads any other's cookies.
//!
//! Every function here works on untrusted input: no panic, no allocation
//! beyond the output.

use ring::hmac;

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

/// The value of cookie `name` in a `Cookie:` header (`a=1; b=2`).
pub fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    find_cookie(header, |key| key == name)
}

/// The value of the cookie named `name` in any case: a session id in the
/// URL as `jsessionid` travels in a cookie as `JSESSIONID`.
pub fn cookie_value_any_case<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    find_cookie(header, |key| key.eq_ignore_ascii_case(name))
}

fn find_cookie(header: &str, matches: impl Fn(&str) -> bool) -> Option<&str> {
    header.split(';').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        matches(key.trim()).then(|| value.trim().trim_matches('"'))
    })
}

/// A genuine token, opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// The member it names (its address, as written when sealed).
    pub member: String,
    /// Unix seconds; 0: no expiry.
    pub expires: u64,
}

/// Why a persistence cookie was not accepted. Any of these means: ignore
/// it, balance normally, and set a fresh cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("not a vipgate persistence token")]
    Malformed,
    #[error("the token's signature does not match (forged, or another secret)")]
    Forged,
    #[error("the token has expired")]
    Expired,
}

/// Seals and opens persistence tokens with HMAC-SHA256 under a shared
/// secret. A token is `v1.<member, hex>.<expiry, unix seconds; 0 = none>.<tag, hex>`:
/// only hex digits, dots and digits, safe in a cookie without quoting.
pub struct CookieSeal {
    key: hmac::Key,
}

impl std::fmt::Debug for CookieSeal {
    /// Never shows the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CookieSeal")
    }
}

/// Bytes of the HMAC kept in the token: 128 bits.
const TAG_BYTES: usize = 16;

impl CookieSeal {
    /// A seal for `secret` (at least 16 bytes is sensible; the caller
    /// checks that).
    pub fn new(secret: &[u8]) -> CookieSeal {
        CookieSeal {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    /// A token naming `member`, valid until `expires` (unix seconds; 0 for
    /// a token that does not expire, as for a session cookie).
    pub fn seal(&self, member: &str, expires: u64) -> String {
        let body = format!("v1.{}.{expires}", hex(member.as_bytes()));
        let tag = hmac::sign(&self.key, body.as_bytes());
        format!("{body}.{}", hex(&tag.as_ref()[..TAG_BYTES]))
    }

    /// What a token says, if it is genuine and not expired at `now` (unix
    /// seconds).
    pub fn open(&self, token: &str, now: u64) -> Result<Token, TokenError> {
        let (body, tag) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let mut parts = body.split('.');
        let (Some("v1"), Some(member), Some(expires), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let tag = unhex(tag)
            .filter(|tag| tag.len() == TAG_BYTES)
            .ok_or(TokenError::Malformed)?;
        let expires: u64 = expires.parse().map_err(|_| TokenError::Malformed)?;
        let member = unhex(member)
            .and_then(|m| String::from_utf8(m).ok())
            .ok_or(TokenError::Malformed)?;
        // Compare in constant time against the full tag's prefix.
        let expected = hmac::sign(&self.key, body.as_bytes());
        if !constant_time_eq(&expected.as_ref()[..TAG_BYTES], &tag) {
            return Err(TokenError::Forged);
        }
        if expires != 0 && expires <= now {
            return Err(TokenError::Expired);
        }
        Ok(Token { member, expires })
    }
}

/// Whether `a` and `b` are equal, taking the same time whatever bytes
/// differ (for secrets; the length is not hidden).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .fold(0u8, |difference, (x, y)| difference | (x ^ y))
            == 0
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

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 || text.len() > 512 {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    text.as_bytes()
        .chunks(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
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

    #[test]
    fn tokens_round_trip_and_agree_across_instances() {
        let seal = CookieSeal::new(b"demo secret, shared by the pair");
        let token = seal.seal("127.0.0.31:9081", 2_000_000_000);
        assert!(token
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b'.' || b == b'v'));
        assert_eq!(
            seal.open(&token, 1_900_000_000).unwrap().member,
            "127.0.0.31:9081"
        );
        // Another instance (or a restart) with the same secret: same token.
        let twin = CookieSeal::new(b"demo secret, shared by the pair");
        assert_eq!(twin.seal("127.0.0.31:9081", 2_000_000_000), token);
        assert_eq!(
            twin.open(&token, 0).unwrap(),
            Token {
                member: "127.0.0.31:9081".into(),
                expires: 2_000_000_000
            }
        );
        let session = seal.seal("m", 0);
        assert_eq!(
            seal.open(&session, u64::MAX).map(|t| t.member),
            Ok("m".into()),
            "0: no expiry"
        );
    }

    #[test]
    fn forged_expired_and_malformed_tokens_are_refused() {
        let seal = CookieSeal::new(b"secret one");
        let token = seal.seal("127.0.0.31:9081", 2_000);
        assert_eq!(seal.open(&token, 2_000), Err(TokenError::Expired));
        assert_eq!(
            CookieSeal::new(b"secret two").open(&token, 0),
            Err(TokenError::Forged)
        );
        // Pointing the token at another member breaks the tag.
        let other = token.replacen(&hex(b"127.0.0.31:9081"), &hex(b"127.0.0.32:9081"), 1);
        assert_eq!(seal.open(&other, 0), Err(TokenError::Forged));
        // Extending its life too.
        let longer = token.replacen(".2000.", ".9999999999.", 1);
        assert_eq!(seal.open(&longer, 0), Err(TokenError::Forged));
        for bad in [
            "",
            "v1",
            "v2.00.0.00",
            "v1.zz.0.00",
            "v1.00.x.00",
            "v1.00.0.0",
            "v1.00.0.00.00",
        ] {
            assert_eq!(seal.open(bad, 0), Err(TokenError::Malformed), "{bad:?}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

        #[test]
        fn persistence_parsers_never_panic(text in "\\PC{0,200}", name in "[a-zA-Z]{1,12}") {
            let _ = url_param_route(&text, &name);
            let _ = cookie_value(&text, &name);
            let _ = cookie_value_any_case(&text, &name);
            let _ = route_of(&text);
            let seal = CookieSeal::new(b"property test secret");
            let _ = seal.open(&text, 1);
        }

        #[test]
        fn sealed_tokens_open_to_their_member_and_mutations_never_do(
            member in "[ -~]{0,40}",
            flip in any::<prop::sample::Index>(),
            replacement in "[0-9a-f.v]",
        ) {
            let seal = CookieSeal::new(b"property test secret");
            let token = seal.seal(&member, 0);
            prop_assert_eq!(seal.open(&token, 1).map(|t| t.member), Ok(member.clone()));
            let at = flip.index(token.len());
            let mut mutated = token.clone();
            mutated.replace_range(at..at + 1, &replacement);
            if mutated != token {
                prop_assert!(seal.open(&mutated, 1).is_err(), "{} opened", mutated);
            }
        }
    }
}

//! Header rules at the proxy: hop-by-hop fields end at each hop (RFC 9110
//! section 7.6.1), and members learn who the client is from
//! `X-Forwarded-For`, `-Proto` and `-Host`; vipgate's own persistence
//! cookie stays between the client and vipgate.

use std::net::IpAddr;

use bytes::Bytes;
use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};

use super::persistence::without_cookie;

/// Fields that describe one connection, never the message: removed in both
/// directions, with every field the `Connection` header names.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    // Belongs to an h2c upgrade, which is never passed on.
    HeaderName::from_static("http2-settings"),
];

/// Whether a request asks to switch protocols (WebSocket and the like):
/// `Connection: upgrade` with an `Upgrade` field.
pub(crate) fn wants_upgrade(headers: &HeaderMap) -> bool {
    let protocol = headers
        .get(header::UPGRADE)
        .and_then(|value| value.to_str().ok());
    // `Upgrade: h2c` asks to switch this connection to HTTP/2, which
    // vipgate does not do in mid-connection (a client that wants HTTP/2 in
    // clear text starts with it): the request is served over HTTP/1.1, as
    // RFC 9113 3.1 allows, and the header is not passed on.
    let h2c = protocol.is_some_and(|p| {
        p.split(',')
            .any(|offered| offered.trim().eq_ignore_ascii_case("h2c"))
    });
    protocol.is_some() && !h2c && connection_lists(headers, "upgrade")
}

/// Sets each of `fields` (lower-case names, validated by the
/// configuration), replacing what was there.
pub(crate) fn insert_all(headers: &mut HeaderMap, fields: &[(HeaderName, HeaderValue)]) {
    for (name, value) in fields {
        headers.insert(name.clone(), value.clone());
    }
}

/// Whether the `Connection` fields list `token` (any case).
pub(crate) fn connection_lists(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|listed| listed.trim().eq_ignore_ascii_case(token))
}

/// Removes hop-by-hop fields. With `upgrade`, the `Upgrade` field and a
/// `Connection: upgrade` stay, so the next hop switches protocols too.
pub(crate) fn remove_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // Fields named by Connection other than the usual ones are rare; only
    // they cost an allocation.
    let mut named: Vec<HeaderName> = Vec::new();
    for value in headers.get_all(header::CONNECTION) {
        let Ok(value) = value.to_str() else { continue };
        for listed in value.split(',').map(str::trim) {
            let usual = ["close", "keep-alive", "upgrade", ""]
                .iter()
                .any(|usual| listed.eq_ignore_ascii_case(usual));
            if !usual {
                if let Ok(name) = HeaderName::from_bytes(listed.as_bytes()) {
                    named.push(name);
                }
            }
        }
    }
    for name in &named {
        headers.remove(name);
    }
    let kept_upgrade = if upgrade {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    };
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if let Some(protocol) = kept_upgrade {
        headers.insert(header::UPGRADE, protocol);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// The client's address as the value `X-Forwarded-For` ends with, made
/// once per client connection: every request of the connection then adds
/// it without formatting or allocating.
pub(crate) fn client_address_value(client: IpAddr) -> HeaderValue {
    // An address's text is always a valid header value.
    HeaderValue::from_str(&client.to_string()).unwrap_or(HeaderValue::from_static("unknown"))
}

/// Adds the client's address (`client`, from [`client_address_value`]) to
/// `X-Forwarded-For` (after any the request already carries, as each
/// proxy on the way does), and sets `X-Forwarded-Proto` and
/// `X-Forwarded-Host` to what the client used.
pub(crate) fn add_forwarded(headers: &mut HeaderMap, client: &HeaderValue, tls: bool) {
    const FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
    const FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
    const FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
    // Several X-Forwarded-For fields are one list: the joined one, with
    // the client at the end, replaces them. Values that are not text are
    // dropped rather than passed on.
    let mut chain = String::new();
    for earlier in headers.get_all(&FORWARDED_FOR) {
        if let Ok(earlier) = earlier.to_str() {
            if !earlier.trim().is_empty() {
                chain.push_str(earlier.trim());
                chain.push_str(", ");
            }
        }
    }
    let forwarded_for = if chain.is_empty() {
        // Most requests: the connection's own value, shared.
        Some(client.clone())
    } else {
        chain.push_str(client.to_str().unwrap_or_default());
        HeaderValue::from_str(&chain).ok()
    };
    if let Some(value) = forwarded_for {
        headers.insert(FORWARDED_FOR, value);
    }
    headers.insert(
        FORWARDED_PROTO,
        HeaderValue::from_static(if tls { "https" } else { "http" }),
    );
    match headers.get(header::HOST).cloned() {
        Some(host) => {
            headers.insert(FORWARDED_HOST, host);
        }
        None => {
            headers.remove(FORWARDED_HOST);
        }
    }
}

/// Takes the cookies named `name` out of the request's `Cookie` fields,
/// dropping a field that had nothing else (an HTTP/2 client may send one
/// field per cookie). Fields that are not text pass as they are.
pub(crate) fn remove_cookie(headers: &mut HeaderMap, name: &str) {
    let Entry::Occupied(mut fields) = headers.entry(header::COOKIE) else {
        return;
    };
    let mut emptied = false;
    for value in fields.iter_mut() {
        let Some(rest) = value
            .to_str()
            .ok()
            .and_then(|text| without_cookie(text, name))
        else {
            continue;
        };
        emptied |= rest.is_empty();
        // What is left of a valid field is valid: this only fails if
        // that stops being true, and then the field passes as it was.
        if let Ok(rest) = HeaderValue::from_maybe_shared(Bytes::from(rest)) {
            *value = rest;
        }
    }
    if emptied {
        // Collecting nothing allocates nothing: the usual request carries
        // one field holding only the persistence cookie.
        let kept: Vec<HeaderValue> = fields
            .remove_entry_mult()
            .1
            .filter(|value| !value.is_empty())
            .collect();
        for value in kept {
            headers.append(header::COOKIE, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn hop_by_hop_fields_and_the_ones_connection_names_are_removed() {
        let mut map = headers(&[
            ("connection", "keep-alive, X-Session-Hop"),
            ("keep-alive", "timeout=5"),
            ("x-session-hop", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("proxy-connection", "keep-alive"),
            ("upgrade", "websocket"),
            ("cookie", "a=1"),
            ("host", "gwe.example"),
        ]);
        remove_hop_by_hop(&mut map, false);
        let left: Vec<&str> = map.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["cookie", "host"]);
    }

    #[test]
    fn an_upgrade_keeps_its_protocol() {
        let mut map = headers(&[
            ("connection", "Upgrade, keep-alive"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ]);
        assert!(wants_upgrade(&map));
        remove_hop_by_hop(&mut map, true);
        assert_eq!(map["upgrade"], "websocket");
        assert_eq!(map["connection"], "upgrade");
        assert!(map.contains_key("sec-websocket-key"));
        assert!(!wants_upgrade(&headers(&[("upgrade", "websocket")])));
        assert!(!wants_upgrade(&headers(&[("connection", "upgrade")])));
    }

    #[test]
    fn forwarded_fields_extend_the_chain_and_name_the_scheme_and_host() {
        let mut map = headers(&[
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-for", "10.1.1.1"),
            ("host", "gwe.example:8080"),
            ("x-forwarded-proto", "https"),
        ]);
        add_forwarded(
            &mut map,
            &client_address_value("127.0.0.5".parse().unwrap()),
            false,
        );
        assert_eq!(map["x-forwarded-for"], "203.0.113.7, 10.1.1.1, 127.0.0.5");
        assert_eq!(map.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(
            map["x-forwarded-proto"], "http",
            "the client cannot claim TLS"
        );
        assert_eq!(map["x-forwarded-host"], "gwe.example:8080");

        let mut bare = headers(&[("x-forwarded-host", "spoofed")]);
        add_forwarded(
            &mut bare,
            &client_address_value("::1".parse().unwrap()),
            true,
        );
        assert_eq!(bare["x-forwarded-for"], "::1");
        assert_eq!(bare["x-forwarded-proto"], "https");
        assert!(!bare.contains_key("x-forwarded-host"));
    }

    #[test]
    fn the_persistence_cookie_is_removed_from_every_cookie_field() {
        let mut map = headers(&[("cookie", "a=1; GWELB=x"), ("cookie", "GWELB=y")]);
        remove_cookie(&mut map, "GWELB");
        let left: Vec<_> = map.get_all(header::COOKIE).iter().collect();
        assert_eq!(left, ["a=1"]);

        let mut map = headers(&[("cookie", "GWELB=only"), ("x-other", "1")]);
        remove_cookie(&mut map, "GWELB");
        assert!(map.get(header::COOKIE).is_none());
        assert_eq!(map.len(), 1);

        let mut map = headers(&[("cookie", "a=1"), ("cookie", "b=2")]);
        remove_cookie(&mut map, "GWELB");
        let left: Vec<_> = map.get_all(header::COOKIE).iter().collect();
        assert_eq!(left, ["a=1", "b=2"], "untouched");
    }
}

//! `GET /connections` (which agents are on which member, without
//! tcpdump) and `POST /pools/{pool}/members/{member}/drain?within=10m`.
//! Both need the token when one is configured: the list names every
//! client.

use std::time::Duration;

use http::StatusCode;
use serde_json::json;

use super::{error, json_answer, percent_decode, Answer};
use crate::connections::Filter;
use crate::server::Control;

/// Shortest and longest drain an operator may ask for.
const DRAIN_RANGE: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(7 * 24 * 3600));

/// A query string's `key=value` pairs, decoded.
fn query_pairs(query: Option<&str>) -> Result<Vec<(String, String)>, String> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |text: &str| {
                percent_decode(&text.replace('+', " ")).ok_or_else(|| {
                    format!("{pair}: a %-escape is not two hex digits of UTF-8 text")
                })
            };
            Ok((decode(key)?, decode(value)?))
        })
        .collect()
}

/// `GET /connections?virtual=&pool=&member=&client=&after=&limit=`.
pub(super) fn list(control: &Control, query: Option<&str>) -> Answer {
    let pairs = match query_pairs(query) {
        Ok(pairs) => pairs,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    let filter = match Filter::from_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))) {
        Ok(filter) => filter,
        Err(why) => return error(StatusCode::BAD_REQUEST, why.to_string()),
    };
    json_answer(StatusCode::OK, json!(control.connections(&filter)))
}

/// `POST /pools/{pool}/members/{member}/drain?within=DURATION`.
pub(super) fn drain(control: &Control, pool: &str, member: &str, query: Option<&str>) -> Answer {
    let pairs = match query_pairs(query) {
        Ok(pairs) => pairs,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    let within = pairs
        .iter()
        .find(|(key, _)| key == "within")
        .map(|(_, value)| value.as_str());
    let Some(within) = within else {
        return error(
            StatusCode::BAD_REQUEST,
            "drain needs a deadline: POST .../drain?within=10m",
        );
    };
    let within = match humantime::parse_duration(within) {
        Ok(within) if (DRAIN_RANGE.0..=DRAIN_RANGE.1).contains(&within) => within,
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("within={within}: give a duration from 1s to 7d, e.g. within=10m"),
            )
        }
    };
    match control.drain_member(pool, member, within) {
        Ok(change) => {
            let mut answer = json!({
                "pool": pool,
                "member": change.address.to_string(),
                "state": "disabled",
                "draining_within_seconds": within.as_secs_f64(),
                "saved": change.saved.is_ok(),
            });
            if let Err(why) = change.saved {
                answer["not_saved_because"] = json!(why);
            }
            json_answer(StatusCode::OK, answer)
        }
        Err(refused) => error(StatusCode::NOT_FOUND, refused.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_pairs_are_decoded() {
        let pairs = query_pairs(Some("member=127.0.0.11%3A9070&client=10.0.0.5&limit=")).unwrap();
        assert_eq!(
            pairs,
            vec![
                ("member".to_string(), "127.0.0.11:9070".to_string()),
                ("client".to_string(), "10.0.0.5".to_string()),
                ("limit".to_string(), String::new()),
            ]
        );
        assert!(query_pairs(Some("pool=%zz")).is_err());
        assert!(query_pairs(None).unwrap().is_empty());
    }
}

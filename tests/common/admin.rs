//! The admin endpoint as tests read it: one call, the status JSON, and a
//! `/metrics` scrape parsed by a Prometheus text parser.

use bytes::Bytes;
use serde_json::Value;

use super::http_client::{HttpClient, Reply};
use super::Vipgate;

/// The admin table every test here uses: an OS-chosen port on loopback.
pub const ADMIN: &str = "[admin]\nlisten = \"127.0.0.1:0\"\n";

/// A scrape of `/metrics`, parsed.
pub struct Scrape(pub prometheus_parse::Scrape);

impl Scrape {
    pub async fn of(vipgate: &Vipgate) -> Scrape {
        let reply = admin(vipgate, "GET", "/metrics", None).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert!(reply
            .header("content-type")
            .starts_with("text/plain; version=0.0.4"));
        let lines = reply.body.lines().map(|line| Ok(line.to_string()));
        Scrape(prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text"))
    }

    /// The value of `metric` with exactly these labels (among others).
    pub fn value(&self, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.0
            .samples
            .iter()
            .find(|sample| {
                sample.metric == metric
                    && labels
                        .iter()
                        .all(|(name, value)| sample.labels.get(name) == Some(*value))
            })
            .map(|sample| match sample.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
    }

    pub fn get(&self, metric: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(metric, labels)
            .unwrap_or_else(|| panic!("no {metric} {labels:?}"))
    }
}

/// One call to the admin endpoint.
pub async fn admin(vipgate: &Vipgate, method: &str, path: &str, token: Option<&str>) -> Reply {
    let address = vipgate.admin.expect("the configuration has [admin]");
    let mut client = HttpClient::connect(address).await;
    let bearer = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = bearer
        .iter()
        .map(|b| ("authorization", b.as_str()))
        .collect();
    client
        .send(method, path, &headers, Bytes::new())
        .await
        .unwrap()
}

pub async fn status(vipgate: &Vipgate) -> Value {
    let reply = admin(vipgate, "GET", "/status", None).await;
    assert_eq!(reply.status, 200);
    serde_json::from_str(&reply.body).expect("status is JSON")
}

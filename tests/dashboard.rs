//! The Grafana dashboard in `dist/grafana/vipgate.json` stays true to what
//! vipgate exports: every metric and label its queries name exists in a real
//! `/metrics` scrape of a vipgate with a TCP virtual behind SNAT and
//! monitors, and a TLS-terminating HTTP virtual with cookie persistence.
//! And it imports as is: one data source variable, unique panel ids, every
//! query with an id.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::admin::admin;
use common::http_client::{secret_file, web_member};
use common::{start, SwitchablePort};
use serde_json::Value;

const DASHBOARD: &str = include_str!("../dist/grafana/vipgate.json");

/// Labels Prometheus adds to every series it scrapes (not in `/metrics`).
const TARGET_LABELS: [&str; 2] = ["instance", "job"];

fn dashboard() -> Value {
    serde_json::from_str(DASHBOARD).expect("the dashboard is JSON")
}

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut all = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        all.push(panel);
        if let Some(nested) = panel["panels"].as_array() {
            all.extend(nested);
        }
    }
    all
}

/// Every PromQL text the dashboard runs: panel queries, variable queries,
/// annotations.
fn queries(dashboard: &Value) -> Vec<String> {
    let mut queries: Vec<String> = panels(dashboard)
        .iter()
        .flat_map(|panel| panel["targets"].as_array().into_iter().flatten())
        .map(|target| {
            target["expr"]
                .as_str()
                .expect("each target has an expr")
                .to_string()
        })
        .collect();
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(query) = variable["query"]["query"].as_str() {
            queries.push(query.to_string());
        }
    }
    for annotation in dashboard["annotations"]["list"].as_array().unwrap() {
        queries.push(annotation["expr"].as_str().unwrap().to_string());
    }
    queries
}

/// The words of `text` that start with `vipgate_`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("vipgate_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// The label names a PromQL query uses: in `by (...)`/`without (...)`, in
/// `{name="..."}` matchers, and as `label_values`'s second argument.
fn label_names(query: &str) -> BTreeSet<String> {
    let mut labels = BTreeSet::new();
    let words = |list: &str| -> Vec<String> {
        list.split(',')
            .map(|word| word.trim().to_string())
            .filter(|word| !word.is_empty())
            .collect()
    };
    for keyword in ["by (", "without ("] {
        for (at, _) in query.match_indices(keyword) {
            let list = &query[at + keyword.len()..];
            labels.extend(words(&list[..list.find(')').expect("a closed list")]));
        }
    }
    for (at, _) in query.match_indices('{') {
        let inside = &query[at + 1..];
        let matchers = &inside[..inside.find('}').expect("a closed matcher")];
        for matcher in matchers.split(',') {
            if let Some(end) = matcher.find(['=', '!']) {
                labels.insert(matcher[..end].trim().to_string());
            }
        }
    }
    if let Some(arguments) = query.strip_prefix("label_values(") {
        let arguments = arguments.trim_end_matches(')');
        let label = arguments.rsplit(',').next().unwrap().trim();
        labels.insert(label.to_string());
    }
    labels
}

/// The labels an aggregating query groups by (`None` if it does not).
fn grouped_by(query: &str) -> Option<BTreeSet<String>> {
    let mut grouped = BTreeSet::new();
    for (at, _) in query.match_indices("by (") {
        let list = &query[at + "by (".len()..];
        grouped.extend(
            list[..list.find(')')?]
                .split(',')
                .map(|label| label.trim().to_string()),
        );
    }
    (!grouped.is_empty()).then_some(grouped)
}

/// The `{{label}}` names of a legend.
fn legend_labels(legend: &str) -> BTreeSet<String> {
    legend
        .split("{{")
        .skip(1)
        .filter_map(|part| part.split_once("}}"))
        .map(|(label, _)| label.trim().to_string())
        .collect()
}

#[test]
fn the_dashboard_imports_as_is() {
    let dashboard = dashboard();
    assert_eq!(dashboard["uid"], "vipgate");
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    assert!(
        variables
            .iter()
            .any(|v| v["type"] == "datasource" && v["name"] == "datasource"),
        "a data source variable, so import asks nothing"
    );
    let mut ids = BTreeSet::new();
    for panel in panels(&dashboard) {
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "duplicate panel id {}",
            panel["id"]
        );
        let grid = &panel["gridPos"];
        assert!(
            grid["w"].as_u64().unwrap() <= 24
                && grid["x"].as_u64().unwrap() + grid["w"].as_u64().unwrap() <= 24
        );
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "{}",
            panel["title"]
        );
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{} queries nothing", panel["title"]);
        let refs: BTreeSet<&str> = targets
            .iter()
            .map(|t| t["refId"].as_str().unwrap())
            .collect();
        assert_eq!(
            refs.len(),
            targets.len(),
            "{}: refIds repeat",
            panel["title"]
        );
    }
    assert!(
        ids.len() > 20,
        "the panels the issue asks for: {}",
        ids.len()
    );
}

#[test]
fn the_query_scanner_finds_metrics_and_labels() {
    let query = r#"sum by (virtual, reason) (rate(vipgate_virtual_rejected_total{instance=~"$instance", virtual!="x"}[5m])) / vipgate_a"#;
    assert_eq!(
        metric_names(query),
        ["vipgate_a", "vipgate_virtual_rejected_total"]
            .map(String::from)
            .into()
    );
    assert_eq!(
        label_names(query),
        ["instance", "reason", "virtual"].map(String::from).into()
    );
    assert_eq!(
        label_names("label_values(vipgate_build_info, version)"),
        ["version".to_string()].into()
    );
    assert_eq!(
        legend_labels("{{virtual}} member {{ class }}"),
        ["class", "virtual"].map(String::from).into()
    );
}

/// Metric names with the label names seen on them, from Prometheus text.
fn scrape_families(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut families: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name_end = line.find(['{', ' ']).expect("a sample line");
        let labels = families.entry(line[..name_end].to_string()).or_default();
        if line[name_end..].starts_with('{') {
            let inside = &line[name_end + 1..line.rfind('}').unwrap()];
            // Label values are quoted and may hold commas: take the names
            // before each `="`.
            for part in inside.split("\",") {
                if let Some((name, _)) = part.split_once("=\"") {
                    labels.insert(name.trim().to_string());
                }
            }
        }
    }
    families
}

#[tokio::test]
async fn every_metric_and_label_the_dashboard_queries_is_in_a_real_scrape() {
    let ca = common::tls_ca::TestCa::new();
    let dir = common::tls_ca::temp_dir("dashboard");
    let (cert, key) = ca.write_pem(&dir, "gwe.example");
    let proxy = SwitchablePort::open("127.0.0.11", "csproxy").await;
    let web = web_member("127.0.0.12", "GWE_Node1").await;
    let toml = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [monitors.TCP]\ntype = \"tcp\"\ninterval = \"100ms\"\ntimeout = \"300ms\"\n\n\
         [snat_pools.outbound]\naddresses = [\"127.0.0.21\"]\n\n\
         [pools.agents]\nmonitor = {{ all = [\"TCP\"] }}\nmembers = [ {{ address = \"{}\" }} ]\n\n\
         [pools.gwe]\nmembers = [ {{ address = \"{web}\", route = \"GWE_Node1\" }} ]\n\n\
         [virtuals.agents]\nlisten = \"127.0.0.100:0\"\npool = \"agents\"\nsnat = \"outbound\"\n\n\
         [virtuals.web]\nlisten = \"127.0.0.100:0\"\nmode = \"http\"\npool = \"gwe\"\n\
         persistence = {{ cookie = \"GWELB\" }}\n\
         tls = {{ mode = \"terminate\", certs = [ {{ cert = \"{cert}\", key = \"{key}\" }} ] }}\n\n\
         [persistence]\nsecret_file = \"{}\"\n",
        proxy.addr,
        secret_file("dashboard").display()
    );
    let vipgate = start(&toml).await;
    common::wait_health(&vipgate, proxy.addr, vipgate::pool::Health::Up).await;
    // One connection through the SNAT address, so its port use is shown.
    let _agent = common::LineClient::connect(vipgate.addr("agents")).await;
    let scrape = admin(&vipgate, "GET", "/metrics", None).await;
    assert_eq!(scrape.status, 200);
    let families = scrape_families(&scrape.body);
    let exported: BTreeSet<String> = families.values().flatten().cloned().collect();

    let dashboard = dashboard();
    let mut missing = Vec::new();
    for query in queries(&dashboard) {
        for metric in metric_names(&query) {
            if !families.contains_key(&metric) {
                missing.push(format!("metric {metric} (in {query})"));
            }
        }
        for label in label_names(&query) {
            if !exported.contains(&label) && !TARGET_LABELS.contains(&label.as_str()) {
                missing.push(format!("label {label} (in {query})"));
            }
        }
        // What a query groups by must be on the metrics it reads.
        if let Some(grouped) = grouped_by(&query) {
            for metric in metric_names(&query) {
                let Some(labels) = families.get(&metric) else {
                    continue;
                };
                for label in &grouped {
                    if !labels.contains(label) && !TARGET_LABELS.contains(&label.as_str()) {
                        missing.push(format!("label {label} on {metric} (in {query})"));
                    }
                }
            }
        }
    }
    for panel in panels(&dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let query = target["expr"].as_str().unwrap();
            for label in legend_labels(target["legendFormat"].as_str().unwrap_or("")) {
                // An aggregated query keeps only what it groups by; a plain
                // one keeps its metrics' labels and the target's.
                let kept = match grouped_by(query) {
                    Some(grouped) => grouped.contains(&label),
                    None => {
                        TARGET_LABELS.contains(&label.as_str())
                            || metric_names(query)
                                .iter()
                                .all(|m| families.get(m).is_some_and(|l| l.contains(&label)))
                    }
                };
                if !kept {
                    missing.push(format!("legend label {label} (in {query})"));
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "the dashboard queries what vipgate does not export:\n{}",
        missing.join("\n")
    );
}

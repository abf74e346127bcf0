//! The documentation stays in step with the code: every metric the code
//! exports, every reason a client is refused for and every admin route is
//! described in docs/operations.md; every configuration key the checker
//! accepts and every monitor type in docs/configuration.md; the README's
//! count of tests that need more than a toolchain is right; every page
//! the README links exists.

use std::collections::BTreeSet;

const OPERATIONS: &str = include_str!("../docs/operations.md");
const CONFIGURATION: &str = include_str!("../docs/configuration.md");

/// The metric names written as string literals in `source`.
fn metric_names(source: &str) -> BTreeSet<String> {
    source
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|literal| {
            literal.starts_with("vipgate_")
                && literal.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        })
        .map(str::to_string)
        .collect()
}

#[test]
fn every_exported_metric_is_documented() {
    let names: BTreeSet<String> = [
        include_str!("../src/metrics.rs"),
        include_str!("../src/stats/mod.rs"),
        include_str!("../src/pool/member.rs"),
    ]
    .into_iter()
    .flat_map(metric_names)
    .collect();
    assert!(names.len() > 25, "the metrics were found: {names:?}");
    let missing: Vec<&String> = names
        .iter()
        .filter(|name| !OPERATIONS.contains(&format!("`{name}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/operations.md does not describe {missing:?}"
    );
}

#[test]
fn every_rejection_reason_is_documented() {
    let stats = include_str!("../src/stats/mod.rs");
    let reasons: Vec<&str> = stats
        .split("Rejection::")
        .skip(1)
        .filter_map(|rest| rest.split_once("=> \"")?.1.split_once('"'))
        .map(|(reason, _)| reason)
        .collect();
    assert_eq!(reasons.len(), 6, "{reasons:?}");
    for reason in reasons {
        assert!(
            OPERATIONS.contains(&format!("`{reason}`")),
            "docs/operations.md does not describe the rejection reason {reason}"
        );
    }
}

#[test]
fn the_readme_links_pages_that_exist() {
    let readme = include_str!("../README.md");
    let root = env!("CARGO_MANIFEST_DIR");
    let mut linked = 0;
    for link in readme.split("](").skip(1) {
        let Some((target, _)) = link.split_once(')') else {
            continue;
        };
        let path = target.split('#').next().unwrap_or("");
        if path.is_empty() || path.starts_with("http") {
            continue;
        }
        assert!(
            std::path::Path::new(root).join(path).exists(),
            "README links {path}, which does not exist"
        );
        linked += 1;
    }
    assert!(linked >= 5, "the documentation pages are linked");
}

/// Every key of every table the checker accepts: the fields of the
/// `#[serde(deny_unknown_fields)]` structs in src/config (renamed where
/// serde renames them), with the struct they belong to.
fn configuration_keys() -> Vec<(String, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/config");
    let mut keys = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for item in text.split("#[serde(deny_unknown_fields)]").skip(1) {
            let Some((head, rest)) = item.split_once('{') else {
                continue;
            };
            let name = head.split_whitespace().last().unwrap_or("?").to_string();
            let body = rest.split("\n}").next().unwrap_or("");
            let mut rename = None;
            for line in body.lines().map(str::trim) {
                if let Some(renamed) = line.strip_prefix("#[serde(rename = \"") {
                    rename = renamed.split('"').next().map(str::to_string);
                    continue;
                }
                let field = line.strip_prefix("pub ").unwrap_or(line);
                let Some((field, _)) = field.split_once(':') else {
                    continue;
                };
                if field.chars().all(|c| c.is_ascii_lowercase() || c == '_') && !field.is_empty() {
                    keys.push((name.clone(), rename.take().unwrap_or(field.to_string())));
                }
            }
        }
    }
    keys
}

#[test]
fn every_configuration_key_is_documented() {
    let keys = configuration_keys();
    // The file's tables, a pool, a member, a virtual, monitors, TLS, ...
    assert!(keys.len() > 60, "the keys were found: {keys:?}");
    for table in [
        "RawConfig",
        "RawPool",
        "RawMember",
        "RawVirtual",
        "RawMonitor",
    ] {
        assert!(keys.iter().any(|(s, _)| s == table), "{table} in {keys:?}");
    }
    assert!(keys.iter().any(|(_, key)| key == "type"), "renamed fields");
    // Written as `key`, `key = ...`, `{ key = ... }` or `[key]`/`[key.NAME]`;
    // the `[admin]` table is described with the admin endpoint.
    let documented = |table: &str, key: &str| {
        let page = if table == "RawAdmin" {
            OPERATIONS
        } else {
            CONFIGURATION
        };
        [
            format!("`{key}`"),
            format!("`{key} ="),
            format!("{{ {key} ="),
            format!(", {key} ="),
            format!("`[{key}]"),
            format!("`[{key}."),
            format!("\n{key} ="),
        ]
        .iter()
        .any(|form| page.contains(form.as_str()))
    };
    let missing: Vec<String> = keys
        .iter()
        .filter(|(table, key)| !documented(table, key))
        .map(|(table, key)| format!("{key} (of {table})"))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/configuration.md does not describe these keys: {missing:?}"
    );
}

#[test]
fn every_monitor_type_is_documented() {
    let source = include_str!("../src/config/monitors.rs");
    let variants = source
        .split("pub enum MonitorType {")
        .nth(1)
        .and_then(|rest| rest.split_once('}'))
        .map(|(variants, _)| variants)
        .expect("MonitorType in src/config/monitors.rs");
    let types: Vec<String> = variants
        .split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_lowercase)
        .collect();
    assert_eq!(types, ["tcp", "http", "icmp"]);
    let readme = include_str!("../README.md");
    for kind in types {
        assert!(
            CONFIGURATION.contains(&format!("`\"{kind}\"`")),
            "docs/configuration.md does not describe monitors of type {kind}"
        );
        assert!(
            readme.contains(&kind.to_uppercase()),
            "the README does not name {kind} monitors"
        );
    }
}

#[test]
fn every_admin_route_is_documented() {
    let source = include_str!("../src/admin/mod.rs");
    // The routes as the router matches them: `(["pools", pool, ...], true)`.
    let mut routes = Vec::new();
    for arm in source.split("\n        ([").skip(1) {
        let Some((segments, rest)) = arm.split_once("], ") else {
            continue;
        };
        // The arm that refuses a wrong method lists several paths.
        if segments.contains('|') {
            continue;
        }
        let method = if rest.starts_with("true") {
            "POST"
        } else if rest.starts_with("false) if method == Method::PUT") {
            "PUT"
        } else {
            "GET"
        };
        let path: Vec<String> = segments
            .split(", ")
            .map(|segment| match segment.trim_matches('"') {
                s if segment.starts_with('"') => s.to_string(),
                "pool" => "{pool}".to_string(),
                "member" => "{address}".to_string(),
                other => format!("{{{other}}}"),
            })
            .collect();
        routes.push(format!("{method} /{}", path.join("/")));
    }
    assert!(routes.len() >= 8, "the routes were found: {routes:?}");
    assert!(routes.contains(&"PUT /decisions".to_string()), "{routes:?}");
    for route in routes {
        // A route ending in {action} is documented once per action.
        let route = route.replace("{action}", "");
        assert!(
            OPERATIONS.contains(&format!("`{route}")),
            "docs/operations.md does not describe {route}"
        );
    }
    for action in ["enable", "disable", "offline"] {
        assert!(source.contains(&format!("\"{action}\" =>")), "{action}");
        assert!(
            OPERATIONS.contains(&format!("/members/{{address}}/{action}`")),
            "docs/operations.md does not describe the {action} action"
        );
    }
}

#[test]
fn the_readme_counts_the_tests_that_need_more_than_a_toolchain() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let mut ignored = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            let marked = text.matches("\n#[ignore = \"needs ").count();
            assert_eq!(
                marked,
                text.matches("\n#[ignore").count(),
                "{}: every ignored test says what it needs (#[ignore = \"needs ...\"])",
                path.display()
            );
            ignored += marked;
        }
    }
    let readme = include_str!("../README.md");
    assert!(
        readme.contains(&format!("and the {ignored} tests `cargo test` lists as")),
        "the README's Tests table should say {ignored} tests are left out by cargo test"
    );
}

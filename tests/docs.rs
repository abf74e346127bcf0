//! The documentation stays in step with the code: every metric the code
//! exports, and every reason a client is refused for, is described in
//! docs/operations.md; every page the README links exists.

use std::collections::BTreeSet;

const OPERATIONS: &str = include_str!("../docs/operations.md");

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
    assert_eq!(reasons.len(), 4, "{reasons:?}");
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

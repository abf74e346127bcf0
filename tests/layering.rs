//! The rule `src/lib.rs` states, checked: modules depend one way. At every
//! level (the crate's modules, and the files inside each module's folder,
//! but for `config`'s: see below) no module reaches back to one that
//! reaches it, and `config`, the bottom layer, uses no other module of the
//! crate. A change that closes a circle
//! fails here with the circle and the files that make it.
//!
//! Read from the source text: every `crate::`, `super::` and `self::` path,
//! in `use` trees and inline, outside comments, strings and test modules.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// A module's path from the crate root: `["http", "wire", "head"]`.
type ModulePath = Vec<String>;

/// Edges between sibling modules, per parent: parent -> (from, to) ->
/// the files that make the edge.
type Graphs = BTreeMap<ModulePath, BTreeMap<(String, String), BTreeSet<String>>>;

#[test]
fn modules_depend_one_way_at_every_level() {
    let (modules, files) = read_crate();
    let graphs = graphs(&modules, &files);
    let mut circles = Vec::new();
    for (parent, edges) in &graphs {
        // config's files are cut by concept, not by stage: each holds its
        // raw type, its plan type and its checks, which `raw`, `validate`
        // and `plan` gather; inside it the stages run one way by type.
        if parent == &["config"] {
            continue;
        }
        if let Some(circle) = find_circle(edges) {
            let place = if parent.is_empty() {
                "the crate".to_string()
            } else {
                format!("src/{}/", parent.join("/"))
            };
            let steps: Vec<String> = circle
                .windows(2)
                .map(|pair| {
                    let files = &edges[&(pair[0].clone(), pair[1].clone())];
                    let files: Vec<&str> = files.iter().map(String::as_str).collect();
                    format!("  {} -> {} ({})", pair[0], pair[1], files.join(", "))
                })
                .collect();
            circles.push(format!("in {place}:\n{}", steps.join("\n")));
        }
    }
    assert!(
        circles.is_empty(),
        "modules depend on each other in a circle; move what both need into a \
         module below them, or pass it in:\n{}",
        circles.join("\n")
    );
}

#[test]
fn config_is_the_bottom_layer() {
    let (modules, files) = read_crate();
    let graphs = graphs(&modules, &files);
    let used: Vec<String> = graphs[&Vec::new()]
        .iter()
        .filter(|((from, _), _)| from == "config")
        .map(|((_, to), files)| format!("{to} ({})", Vec::from_iter(files.clone()).join(", ")))
        .collect();
    assert!(
        used.is_empty(),
        "config must use no other module of the crate (it is what `vipgate check` \
         runs anywhere); it uses: {}",
        used.join("; ")
    );
}

#[test]
fn the_reader_sees_paths_through_comments_strings_and_use_trees() {
    let text = r#"
        // use crate::commented::Out;
        /* crate::block::Comment */
        let s = "crate::in_a_string";
        use crate::{alpha, beta::{Gamma, delta::Epsilon}};
        use super::sibling::Thing;
        fn f() { crate::inline::call(); let c = ('"', '{', '\'', 'x'); }
        #[cfg(test)]
        mod tests { use crate::only_in_tests; }
    "#;
    let found = references(text);
    let expect = [
        "crate::alpha",
        "crate::beta::Gamma",
        "crate::beta::delta::Epsilon",
        "super::sibling::Thing",
        "crate::inline::call",
    ];
    for path in expect {
        assert!(found.iter().any(|f| f == path), "{path} in {found:?}");
    }
    for hidden in ["commented", "block", "in_a_string", "only_in_tests"] {
        assert!(
            !found.iter().any(|f| f.contains(hidden)),
            "{hidden} in {found:?}"
        );
    }
}

/// Every module of the crate, and each source file with its module path.
fn read_crate() -> (BTreeSet<ModulePath>, Vec<(ModulePath, String, String)>) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&src, &src, &mut files);
    let modules = files.iter().map(|(module, _, _)| module.clone()).collect();
    (modules, files)
}

fn walk(root: &Path, dir: &Path, files: &mut Vec<(ModulePath, String, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            walk(root, &path, files);
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let relative = path
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let mut module: ModulePath = relative
            .trim_end_matches(".rs")
            .split('/')
            .map(str::to_string)
            .collect();
        let last = module.last().unwrap().clone();
        // `main.rs` is the binary, not the library; `tests.rs` files are
        // test modules (`#[cfg(test)] mod tests;`).
        if relative == "main.rs" || last == "tests" {
            continue;
        }
        if matches!(last.as_str(), "mod" | "lib") {
            module.pop();
        }
        files.push((module, relative, std::fs::read_to_string(&path).unwrap()));
    }
}

/// The sibling edges at every level that the files' references make.
fn graphs(modules: &BTreeSet<ModulePath>, files: &[(ModulePath, String, String)]) -> Graphs {
    let mut graphs = Graphs::new();
    graphs.entry(Vec::new()).or_default();
    for (module, file, text) in files {
        for reference in references(text) {
            let Some(target) = resolve(module, &reference, modules) else {
                continue;
            };
            let common = module
                .iter()
                .zip(&target)
                .take_while(|(a, b)| a == b)
                .count();
            // A module using its own parent or child is not a sibling edge.
            if common == module.len() || common == target.len() {
                continue;
            }
            graphs
                .entry(module[..common].to_vec())
                .or_default()
                .entry((module[common].clone(), target[common].clone()))
                .or_default()
                .insert(file.clone());
        }
    }
    graphs
}

/// The module a path names, from `module`: the longest prefix of the
/// absolute path that is a module of the crate.
fn resolve(module: &ModulePath, path: &str, modules: &BTreeSet<ModulePath>) -> Option<ModulePath> {
    let mut segments = path.split("::");
    let mut absolute: ModulePath = match segments.next()? {
        "crate" => Vec::new(),
        "self" => module.clone(),
        "super" => module[..module.len().checked_sub(1)?].to_vec(),
        _ => return None,
    };
    let mut rest: Vec<&str> = segments.collect();
    while rest.first() == Some(&"super") {
        absolute.pop();
        rest.remove(0);
    }
    let mut found = None;
    for segment in rest {
        absolute.push(segment.to_string());
        if modules.contains(&absolute) {
            found = Some(absolute.clone());
        } else {
            break;
        }
    }
    found
}

/// A circle in `edges`, as the modules along it (first repeated last).
fn find_circle(edges: &BTreeMap<(String, String), BTreeSet<String>>) -> Option<Vec<String>> {
    let mut next: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (from, to) in edges.keys() {
        next.entry(from).or_default().push(to);
    }
    // Depth first from each module, keeping the path walked.
    fn visit<'a>(
        node: &'a str,
        next: &BTreeMap<&'a str, Vec<&'a str>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|n| *n == node) {
            let mut circle: Vec<String> = path[start..].iter().map(|n| n.to_string()).collect();
            circle.push(node.to_string());
            return Some(circle);
        }
        if !done.insert(node) {
            return None;
        }
        path.push(node);
        for to in next.get(node).into_iter().flatten() {
            if let Some(circle) = visit(to, next, path, done) {
                return Some(circle);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    for node in next.keys() {
        if let Some(circle) = visit(node, &next, &mut Vec::new(), &mut done) {
            return Some(circle);
        }
    }
    None
}

/// Every `crate::`/`super::`/`self::` path in `text` outside comments,
/// strings and `#[cfg(test)]` modules, with `use` trees expanded.
fn references(text: &str) -> Vec<String> {
    let code = strip_tests(&strip_comments_and_strings(text));
    let mut found = Vec::new();
    let bytes = code.as_bytes();
    let mut index = 0;
    while index < code.len() {
        let rest = &code[index..];
        let starts = ["crate::", "super::", "self::"]
            .iter()
            .any(|root| rest.starts_with(root));
        let boundary = index == 0 || !is_word(bytes[index - 1]);
        if !(starts && boundary) {
            index += 1;
            continue;
        }
        let length = path_length(rest);
        let path = &rest[..length];
        if rest[length..].starts_with('{') {
            let end = matching_brace(rest, length);
            for tail in use_tree(&rest[length + 1..end]) {
                found.push(format!("{path}{tail}"));
            }
            index += end + 1;
        } else {
            found.push(path.trim_end_matches("::").to_string());
            index += length;
        }
    }
    found
}

fn is_word(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_'
}

/// The length of `a::b::c` or `a::b::` at the start of `text`.
fn path_length(text: &str) -> usize {
    let bytes = text.as_bytes();
    let mut end = 0;
    loop {
        while end < bytes.len() && is_word(bytes[end]) {
            end += 1;
        }
        if text[end..].starts_with("::") {
            end += 2;
        } else {
            return end;
        }
    }
}

/// The index of the `}` closing the `{` at `open`.
fn matching_brace(text: &str, open: usize) -> usize {
    let mut depth = 0;
    for (index, byte) in text.bytes().enumerate().skip(open) {
        match byte {
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return index;
                }
            }
            _ => {}
        }
    }
    text.len()
}

/// The paths of a `use` group's inside (`a, b::{C, d::E}`).
fn use_tree(inside: &str) -> Vec<String> {
    let mut paths = Vec::new();
    let mut index = 0;
    while index < inside.len() {
        let rest = &inside[index..];
        let Some(start) = rest.find(|c: char| c.is_alphanumeric() || c == '_') else {
            break;
        };
        let rest = &rest[start..];
        let length = path_length(rest);
        let path = &rest[..length];
        if rest[length..].starts_with('{') {
            let end = matching_brace(rest, length);
            paths.extend(
                use_tree(&rest[length + 1..end])
                    .into_iter()
                    .map(|tail| format!("{path}{tail}")),
            );
            index += start + end + 1;
        } else {
            paths.push(path.trim_end_matches("::").to_string());
            index += start + length;
        }
    }
    paths
}

/// `text` with comments, string and character literals blanked.
fn strip_comments_and_strings(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut index = 0;
    while index < bytes.len() {
        let rest = &text[index..];
        if rest.starts_with("//") {
            index += rest.find('\n').unwrap_or(rest.len());
        } else if rest.starts_with("/*") {
            index += rest.find("*/").map_or(rest.len(), |end| end + 2);
        } else if let Some((opening, hashes)) = raw_string_start(rest) {
            let close = format!("\"{}", "#".repeat(hashes));
            index += rest[opening..]
                .find(&close)
                .map_or(rest.len(), |end| opening + end + close.len());
            out.push_str("\"\"");
        } else if rest.starts_with('"') {
            let mut end = 1;
            while end < rest.len() && rest.as_bytes()[end] != b'"' {
                end += if rest.as_bytes()[end] == b'\\' { 2 } else { 1 };
            }
            index += end + 1;
            out.push_str("\"\"");
        } else if let Some(length) = char_literal(rest) {
            index += length;
        } else {
            let c = rest.chars().next().unwrap();
            out.push(c);
            index += c.len_utf8();
        }
    }
    out
}

/// For a raw string literal starting `text` (`r"`, `r#"`, `br#"`): the
/// length of its opening and its number of `#`.
fn raw_string_start(text: &str) -> Option<(usize, usize)> {
    let after = text.strip_prefix("br").or_else(|| text.strip_prefix('r'))?;
    let hashes = after.len() - after.trim_start_matches('#').len();
    let prefix = text.len() - after.len();
    after[hashes..]
        .starts_with('"')
        .then_some((prefix + hashes + 1, hashes))
}

/// The length of a character literal starting `text` (`'{'`, `'\''`,
/// `'\u{7f}'`); `None` for a lifetime or anything else.
fn char_literal(text: &str) -> Option<usize> {
    let mut chars = text.char_indices();
    if chars.next()?.1 != '\'' {
        return None;
    }
    let (_, first) = chars.next()?;
    if first == '\\' {
        let end = text[2..].find('\'')?;
        return Some(2 + end + 1);
    }
    let (at, close) = chars.next()?;
    (close == '\'').then_some(at + 1)
}

/// `code` without `#[cfg(test)] mod name { ... }` blocks.
fn strip_tests(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = rest[at + "#[cfg(test)]".len()..].trim_start();
        if after.starts_with("mod ") {
            match after.find(['{', ';']) {
                Some(open) if after.as_bytes()[open] == b'{' => {
                    let end = matching_brace(after, open);
                    rest = &after[(end + 1).min(after.len())..];
                }
                _ => rest = after,
            }
        } else {
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

//! vipgate names for F5 objects: short where the file allows, by path
//! where two objects of a kind share a name, the same whatever order
//! they are met in.

use std::collections::{BTreeMap, BTreeSet};

use super::words::name;

/// vipgate names for F5 objects, the same whatever order they are met
/// in: an object's own name (in vipgate's alphabet) when no other object
/// of its kind in the file has that name; otherwise its whole path
/// without `/Common` (`/Tenant/app1/serviceMain` becomes
/// `Tenant_app1_serviceMain`), so names stay unique and say where they
/// came from. Every such rename is reported.
#[derive(Debug, Default)]
pub(super) struct Names {
    /// Names two or more paths of this kind end in.
    shared: BTreeSet<String>,
    given: BTreeMap<String, String>,
    taken: BTreeSet<String>,
    /// `(path, name)` of the objects not named by their own name.
    pub renamed: Vec<(String, String)>,
}

/// `text` in vipgate's alphabet for names.
fn clean(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl Names {
    /// Names for objects among `paths` (every object of the kind in the
    /// file, whether converted or not).
    pub(super) fn over<'p>(paths: impl IntoIterator<Item = &'p String>) -> Names {
        let mut seen = BTreeSet::new();
        let mut shared = BTreeSet::new();
        for path in paths {
            let base = clean(name(path));
            if !seen.insert(base.clone()) {
                shared.insert(base);
            }
        }
        Names {
            shared,
            ..Names::default()
        }
    }

    /// How the report names the object: its own name, or its whole path
    /// when another object of its kind has the same name.
    pub(super) fn label<'p>(&self, path: &'p str) -> &'p str {
        if self.shared.contains(&clean(name(path))) {
            path
        } else {
            name(path)
        }
    }

    pub(super) fn of(&mut self, path: &str) -> String {
        if let Some(given) = self.given.get(path) {
            return given.clone();
        }
        let base = match clean(name(path)) {
            empty if empty.is_empty() => "unnamed".to_string(),
            base => base,
        };
        let preferred = if self.shared.contains(&base) {
            let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
            let segments = match segments.as_slice() {
                ["Common", rest @ ..] if !rest.is_empty() => rest,
                all => all,
            };
            clean(&segments.join("_"))
        } else {
            base.clone()
        };
        let chosen = std::iter::once(preferred.clone())
            .chain((2..).map(|n| format!("{preferred}_{n}")))
            .find(|candidate| !self.taken.contains(candidate))
            .unwrap_or(preferred);
        if chosen != base {
            self.renamed.push((path.to_string(), chosen.clone()));
        }
        self.taken.insert(chosen.clone());
        self.given.insert(path.to_string(), chosen.clone());
        chosen
    }
}

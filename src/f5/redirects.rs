//! The iRules that only send browsers to HTTPS: F5's built-in
//! `_sys_https_redirect` and the one-line rule sites write themselves
//! (`when HTTP_REQUEST { HTTP::redirect https://[HTTP::host][HTTP::uri] }`).
//! A virtual whose iRule is one of them becomes a vipgate redirect
//! virtual; every other iRule stays reported.

use super::model::{Model, Virtual};
use super::syntax::Statement;
use super::words::name;

/// F5's built-in iRule that redirects every request to HTTPS.
pub(super) const SYS_HTTPS_REDIRECT: &str = "_sys_https_redirect";

/// The status `HTTP::redirect` answers with.
const HTTP_REDIRECT_STATUS: u16 = 302;

/// Longest iRule text looked at, in bytes: the rules recognised are one
/// line; anything longer is something else, and is not read further.
const MAX_RULE_TEXT: usize = 512;

/// The status of the redirect to HTTPS that iRule `statement` (an `ltm
/// rule NAME { ... }` or bigpipe `rule NAME { ... }`) makes of every
/// request, if that is all it does.
pub(super) fn redirect_status(statement: &Statement) -> Option<u16> {
    let mut text = String::new();
    for child in statement.children() {
        flatten(child, &mut text)?;
    }
    // Spacing, quotes and `getfield` stripping the port do not change
    // what the rule does.
    let text = text.replace("[getfield[HTTP::host]:1]", "[HTTP::host]");
    let target = "https://[HTTP::host][HTTP::uri]";
    if text == format!("whenHTTP_REQUEST{{HTTP::redirect{target}}}") {
        return Some(HTTP_REDIRECT_STATUS);
    }
    let respond = text
        .strip_prefix("whenHTTP_REQUEST{HTTP::respond")?
        .strip_suffix('}')?;
    let (status, rest) = respond.split_at(3.min(respond.len()));
    let status: u16 = status.parse().ok()?;
    let rest = rest.strip_prefix("Location")?;
    let rest = rest.strip_prefix(target)?;
    ([301, 302, 303, 307, 308].contains(&status) && rest.is_empty()).then_some(status)
}

/// Appends the words of `statement` and its block without spaces or
/// quotes; `None` once the text is longer than [`MAX_RULE_TEXT`].
fn flatten(statement: &Statement, text: &mut String) -> Option<()> {
    for word in &statement.words {
        text.extend(
            word.text
                .chars()
                .filter(|c| !c.is_whitespace() && *c != '"'),
        );
        if text.len() > MAX_RULE_TEXT {
            return None;
        }
    }
    if let Some(block) = &statement.block {
        text.push('{');
        for child in block {
            flatten(child, text)?;
        }
        text.push('}');
    }
    Some(())
}

impl Model {
    /// Reads iRule `path`: a redirect to HTTPS is kept for the virtuals
    /// that use it; any other is reported once, as a group.
    pub(super) fn irule(&mut self, path: &str, statement: &Statement, group: &str) {
        match redirect_status(statement) {
            Some(status) => {
                self.redirect_rules.insert(path.to_string(), status);
            }
            None => self.dropped(
                statement.at,
                group,
                "iRules: vipgate has no scripting; express their routing with pools, SNI routes or persistence",
            ),
        }
    }

    /// The redirect status of the first of `source`'s iRules that only
    /// redirects to HTTPS, with that rule's reference.
    pub(super) fn redirect_of<'a>(&self, source: &'a Virtual) -> Option<(u16, &'a str)> {
        source.rules.iter().find_map(|(rule, _)| {
            if name(rule) == SYS_HTTPS_REDIRECT {
                return Some((HTTP_REDIRECT_STATUS, rule.as_str()));
            }
            let status = super::model::find(&self.redirect_rules, rule).map(|(_, s)| *s)?;
            Some((status, rule.as_str()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_of(text: &str) -> Option<u16> {
        let parsed = super::super::syntax::parse(text).unwrap();
        redirect_status(&parsed.statements[0])
    }

    #[test]
    fn the_one_line_redirects_are_recognised() {
        assert_eq!(
            status_of("ltm rule /Common/r {\n    when HTTP_REQUEST {\n        HTTP::redirect https://[HTTP::host][HTTP::uri]\n    }\n}\n"),
            Some(302)
        );
        assert_eq!(
            status_of("ltm rule r { when HTTP_REQUEST { HTTP::redirect \"https://[getfield [HTTP::host] \":\" 1][HTTP::uri]\" } }"),
            Some(302)
        );
        assert_eq!(
            status_of("ltm rule r {\nwhen HTTP_REQUEST {\n  HTTP::respond 301 Location \"https://[HTTP::host][HTTP::uri]\"\n}\n}"),
            Some(301)
        );
    }

    #[test]
    fn anything_more_is_not_a_redirect() {
        for text in [
            "ltm rule r { when HTTP_REQUEST { HTTP::redirect https://other.example[HTTP::uri] } }",
            "ltm rule r { when HTTP_REQUEST { if { [HTTP::uri] starts_with \"/a\" } { HTTP::redirect https://[HTTP::host][HTTP::uri] } } }",
            "ltm rule r { when HTTP_REQUEST { HTTP::respond 200 content ok } }",
            "ltm rule r { when HTTP_REQUEST { HTTP::respond 301 Location \"https://[HTTP::host][HTTP::uri]\" Connection close } }",
            "ltm rule r { }",
        ] {
            assert_eq!(status_of(text), None, "{text}");
        }
    }
}

//! Writing the converted objects as a vipgate configuration, in the order an
//! operator reads one: monitors, nodes, SNAT pools, pools, virtuals.

use std::collections::BTreeSet;
use std::fmt::Write;

use super::convert::{MemberOut, Output, PoolOut, RuleOut, VirtualOut};
use super::model::MemberState;
use super::monitors::{Check, Converted};
use super::report::Summary;

/// The path a cookie-persistence secret is expected at, next to the
/// configuration file.
pub const SECRET_FILE: &str = "cookie-secret";

/// A TOML basic string on one line, control characters escaped (`\r\n`
/// reads as F5 wrote it).
fn quote(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for c in text.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            '\n' => quoted.push_str("\\n"),
            '\r' => quoted.push_str("\\r"),
            '\t' => quoted.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(quoted, "\\u{:04X}", u32::from(c));
            }
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

/// A table key: bare when it can be, quoted otherwise.
fn table_key(name: &str) -> String {
    if !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        name.to_string()
    } else {
        quote(name)
    }
}

fn rule(rule: &RuleOut) -> String {
    let names: Vec<String> = rule.monitors.iter().map(|m| quote(m)).collect();
    match rule.min {
        Some(min) => format!("{{ min = {min}, of = [{}] }}", names.join(", ")),
        None => format!("{{ all = [{}] }}", names.join(", ")),
    }
}

/// Appends one formatted line to a `String` (which cannot fail).
macro_rules! put {
    ($out:expr) => {{
        $out.push('\n');
    }};
    ($out:expr, $($format:tt)*) => {{
        let _ = writeln!($out, $($format)*);
    }};
}

/// The configuration for `output`, headed by a comment naming `source`.
pub(super) fn emit(output: &Output, source: &str) -> (String, Summary) {
    let mut out = String::new();
    put!(
        out,
        "# Converted by `vipgate import-f5` from {source}.\n# Check it with `vipgate check -c FILE`; what could not be carried over was\n# listed on stderr, with line numbers in {source}.\n"
    );
    let used = used_monitors(output);
    for (name, monitor) in output
        .monitors
        .iter()
        .filter(|(name, _)| used.contains(name))
    {
        monitor_table(&mut out, name, monitor);
    }
    for (address, node) in &output.nodes {
        put!(
            out,
            "[nodes.{}]\nmonitor = {}\n",
            quote(&address.to_string()),
            rule(node)
        );
    }
    for (name, addresses) in &output.snat_pools {
        let listed: Vec<String> = addresses.iter().map(|a| quote(&a.to_string())).collect();
        put!(
            out,
            "[snat_pools.{}]\naddresses = [{}]\n",
            table_key(name),
            listed.join(", ")
        );
    }
    for pool in &output.pools {
        pool_table(&mut out, pool);
    }
    let mut secret_needed = false;
    for virtual_server in &output.virtuals {
        secret_needed |= virtual_table(&mut out, virtual_server);
    }
    if secret_needed {
        put!(out, "# Cookie persistence seals its cookies with this secret, next to this file;\n# create it with `head -c 32 /dev/urandom > {SECRET_FILE}` and give every\n# vipgate instance of a pair the same file.\n[persistence]\nsecret_file = \"{SECRET_FILE}\"");
    }
    let summary = Summary {
        virtuals: output.virtuals.len(),
        pools: output.pools.len(),
        members: output.pools.iter().map(|p| p.members.len()).sum(),
        monitors: used.len(),
        nodes: output.nodes.len(),
        snat_pools: output.snat_pools.len(),
    };
    (out, summary)
}

/// The monitors some pool, member or node uses: only those are written.
fn used_monitors(output: &Output) -> BTreeSet<&String> {
    output
        .pools
        .iter()
        .flat_map(|pool| {
            pool.monitor.iter().chain(
                pool.members
                    .iter()
                    .filter_map(|m| m.monitor.as_ref()?.as_ref()),
            )
        })
        .chain(output.nodes.values())
        .flat_map(|rule| rule.monitors.iter())
        .collect()
}

/// `[monitors.NAME]`.
fn monitor_table(out: &mut String, name: &str, monitor: &Converted) {
    put!(out, "[monitors.{}]", table_key(name));
    match &monitor.check {
        Check::Tcp { send, expect } => {
            put!(out, "type = \"tcp\"");
            if !send.is_empty() {
                put!(out, "send = {}", quote(send));
            }
            if !expect.is_empty() {
                put!(out, "expect = {}", quote(expect));
            }
        }
        Check::Http {
            path,
            host,
            status,
            expect,
            tls,
        } => {
            put!(out, "type = \"http\"\npath = {}", quote(path));
            if !host.is_empty() {
                put!(out, "host = {}", quote(host));
            }
            put!(out, "expect_status = {status}");
            if !expect.is_empty() {
                put!(out, "expect = {}", quote(expect));
            }
            if *tls {
                put!(out, "tls = true");
            }
        }
        Check::Icmp => put!(out, "type = \"icmp\""),
    }
    if let Some(port) = monitor.port {
        put!(out, "port = {port}");
    }
    put!(
        out,
        "interval = {}\ntimeout = {}\n",
        monitor.interval,
        monitor.timeout
    );
}

/// `[pools.NAME]` with its members.
fn pool_table(out: &mut String, pool: &PoolOut) {
    put!(out, "[pools.{}]", table_key(&pool.name));
    if let Some(algorithm) = pool.algorithm {
        put!(out, "algorithm = \"{algorithm}\"");
    }
    if let Some(monitor) = &pool.monitor {
        put!(out, "monitor = {}", rule(monitor));
    }
    if pool.reset_on_down {
        put!(out, "action_on_service_down = \"reset\"");
    }
    if let Some(seconds) = pool.slow_ramp {
        put!(out, "slow_ramp = {seconds}");
    }
    if let Some(count) = pool.min_active_members {
        put!(out, "min_active_members = {count}");
    }
    if let Some((ca, server_name)) = &pool.tls {
        let mut fields = vec![match ca {
            Some(ca) => format!("ca = {}", quote(ca)),
            None => "verify = false".into(),
        }];
        if let Some(server_name) = server_name {
            fields.push(format!("server_name = {}", quote(server_name)));
        }
        put!(out, "tls = {{ {} }}", fields.join(", "));
    }
    put!(out, "members = [");
    for member in &pool.members {
        put!(out, "  {{ {} }},", member_fields(member).join(", "));
    }
    put!(out, "]\n");
}

/// One member's inline table, field by field.
fn member_fields(member: &MemberOut) -> Vec<String> {
    let mut fields = vec![format!("address = {}", quote(&member.address.to_string()))];
    if let Some(Some(own)) = &member.monitor {
        fields.push(format!("monitor = {}", rule(own)));
    }
    if let Some(ratio) = member.ratio {
        fields.push(format!("ratio = {ratio}"));
    }
    if let Some(priority) = member.priority {
        fields.push(format!("priority = {priority}"));
    }
    if let Some(limit) = member.connection_limit {
        fields.push(format!("connection_limit = {limit}"));
    }
    if let Some(rate) = member.rate_limit {
        fields.push(format!("connect_rate_limit = {rate}"));
    }
    match member.state {
        Some(MemberState::Disabled) => fields.push("state = \"disabled\"".into()),
        Some(MemberState::ForcedOffline) => fields.push("state = \"forced-offline\"".into()),
        None => {}
    }
    fields
}

/// `[virtuals.NAME]`; true when it needs the cookie secret.
fn virtual_table(out: &mut String, virtual_server: &VirtualOut) -> bool {
    put!(
        out,
        "[virtuals.{}]\nlisten = {}",
        table_key(&virtual_server.name),
        quote(&virtual_server.listen.to_string()),
    );
    if let Some(pool) = &virtual_server.pool {
        put!(out, "pool = {}", quote(pool));
    }
    if let Some(snat) = &virtual_server.snat {
        put!(out, "snat = {}", quote(snat));
    }
    if let Some(limit) = virtual_server.connection_limit {
        put!(out, "connection_limit = {limit}");
    }
    if let Some(idle) = virtual_server.idle_timeout {
        put!(out, "idle_timeout = {idle}");
    }
    if !virtual_server.certificates.is_empty() {
        let certs: Vec<String> = virtual_server
            .certificates
            .iter()
            .map(|certificate| match &certificate.chain {
                Some(chain) => format!(
                    "{{ cert = {}, key = {}, chain = {} }}",
                    quote(&certificate.cert),
                    quote(&certificate.key),
                    quote(chain)
                ),
                None => format!(
                    "{{ cert = {}, key = {} }}",
                    quote(&certificate.cert),
                    quote(&certificate.key)
                ),
            })
            .collect();
        put!(out, "# Export the client-ssl certificates and keys from the BIG-IP as PEM files\n# under these names, next to this file.\ntls = {{ mode = \"terminate\", certs = [ {} ] }}", certs.join(", "));
    }
    if virtual_server.http {
        put!(out, "mode = \"http\"");
        if let Some(status) = virtual_server.redirect {
            put!(
                out,
                "redirect = {{ scheme = \"https\", status = {status} }}"
            );
        }
        if !virtual_server.request_headers.is_empty() {
            let fields: Vec<String> = virtual_server
                .request_headers
                .iter()
                .map(|(name, value)| format!("{} = {}", quote(name), quote(value)))
                .collect();
            put!(out, "request_headers = {{ {} }}", fields.join(", "));
        }
    }
    if let Some((timeout, mask)) = virtual_server.source_address {
        put!(
            out,
            "persistence = {{ source_address = {{ timeout = {timeout}, mask = {mask} }} }}"
        );
    }
    let Some((cookie, max_age)) = &virtual_server.cookie else {
        put!(out);
        return false;
    };
    match max_age {
        Some(seconds) => put!(
            out,
            "persistence = {{ cookie = {}, max_age = {seconds} }}",
            quote(cookie)
        ),
        None => put!(out, "persistence = {{ cookie = {} }}", quote(cookie)),
    }
    put!(out);
    true
}

#[cfg(test)]
mod tests {
    use super::quote;

    #[test]
    fn strings_stay_on_one_line_and_read_back_the_same() {
        for text in ["HELLO\r\n", "say \"hi\"\\", "tab\there", "bell\u{7}", "Süd"] {
            let quoted = quote(text);
            assert!(!quoted.contains('\n'), "{quoted}");
            let parsed: toml::Value = toml::from_str(&format!("v = {quoted}")).unwrap();
            assert_eq!(parsed["v"].as_str(), Some(text));
        }
        assert_eq!(quote("HELLO\r\n"), "\"HELLO\\r\\n\"");
    }
}

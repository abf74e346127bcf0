//! `import-f5`, second round: files as F5 keeps them per partition (AS3
//! tenants and applications, profiles and monitors in /Common, route
//! domains), bigpipe v4's `vip` and `snat map`, and input that once took
//! quadratic time. What the converted file does must never be weaker than
//! what the BIG-IP did, and every difference is said.

mod common;

use std::process::Command;
use std::time::Instant;

use common::f5::import;
use common::process::BINARY;
use common::tls_ca::{temp_dir, TestCa};
use common::*;
use vipgate::config::{Reencrypt, Tls};

const PARTITIONS: &str = include_str!("data/f5/partitions-as3.conf");
const V4_VIP: &str = include_str!("data/f5/bigpipe-v4-vip.conf");

fn report_text(imported: &vipgate::f5::Imported) -> String {
    imported.report.to_string()
}

#[test]
fn a_partition_file_keeps_its_tls_names_and_says_what_lives_elsewhere() {
    let imported = import(PARTITIONS, "partitions-as3.conf");
    let report = report_text(&imported);
    let plan = vipgate::config::parse(&imported.toml, "converted")
        .unwrap_or_else(|e| panic!("{e}\n{}", imported.toml));

    // AS3 names: both applications' serviceMain and web_pool, recognisable
    // and unique, and each rename said.
    let names: Vec<&str> = plan.virtuals.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(
        names,
        ["Tenant_app1_serviceMain", "Tenant_app2_serviceMain"],
        "{report}"
    );
    assert!(
        plan.pools.contains_key("Tenant_app1_web_pool")
            && plan.pools.contains_key("Tenant_app2_web_pool")
    );
    assert!(
        report.contains("virtual /Tenant/app1/serviceMain is named Tenant_app1_serviceMain"),
        "{report}"
    );

    // The client-ssl and server-ssl profiles of /Common are not in this
    // file: still TLS on both sides, with the files to export named.
    let app1 = &plan.virtuals[0];
    let Tls::Terminate(terminate) = &app1.tls else {
        panic!("app1 terminates TLS, as the BIG-IP did: {:?}", app1.tls);
    };
    assert!(terminate.certs[0]
        .cert
        .ends_with("f5-export/www.example.com_clientssl.crt"));
    assert!(
        report.contains(
            "client-ssl profile /Common/www.example.com_clientssl is not defined in this file"
        ),
        "{report}"
    );
    let Reencrypt::On { .. } = &plan.pools["Tenant_app1_web_pool"].tls else {
        panic!(
            "the members are still spoken to in TLS: {:?}",
            plan.pools["Tenant_app1_web_pool"].tls
        );
    };
    assert!(
        imported.toml.contains("f5-export/members_serverssl-ca.pem"),
        "{}",
        imported.toml
    );

    // A chain and an encrypted key are carried and said.
    let Tls::Terminate(bridged) = &plan.virtuals[1].tls else {
        panic!("app2 terminates TLS");
    };
    assert!(bridged.certs[0]
        .chain
        .as_ref()
        .is_some_and(|c| c.ends_with("intermediate-ca.crt")));
    assert!(
        report.contains("chain intermediate-ca.crt is carried as `chain`"),
        "{report}"
    );
    assert!(
        report.contains("is encrypted on the BIG-IP (a passphrase protects it)"),
        "{report}"
    );
    assert!(
        !imported.toml.contains("encryptedsecretvalue") && !report.contains("encryptedsecretvalue")
    );

    // A TLS-looking profile with no side: the virtual is left out, and its
    // own settings are not listed besides.
    assert!(
        report.contains("virtual ambiguous: its profile /Common/shared_tls looks like TLS"),
        "{report}"
    );
    assert!(!report.contains("virtual `vlans`"), "{report}");

    // The monitor of /Common is said to be missing, not of an unknown type.
    assert!(
        report.contains(
            "monitor custom_csp_monitor is left out of its rule: it is not defined in this file"
        ),
        "{report}"
    );
    assert!(!report.contains("has no vipgate equivalent"), "{report}");
    // `partition` says whose an object is: nothing to report.
    assert!(!report.contains("partition`"), "{report}");
    // Route domains: one grouped line.
    assert_eq!(
        report
            .matches("route domain (`%N` after an address)")
            .count(),
        1,
        "{report}"
    );
}

#[test]
fn the_converted_partition_file_fails_check_until_the_tls_files_are_exported() {
    let imported = import(PARTITIONS, "partitions-as3.conf");
    let dir = temp_dir("f5-partitions-check");
    let config = dir.join("vipgate.toml");
    std::fs::write(&config, &imported.toml).unwrap();
    let checked = Command::new(BINARY)
        .args(["check", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&checked.stderr).to_string()
        + &String::from_utf8_lossy(&checked.stdout);
    assert!(!checked.status.success(), "{said}");
    // The first file missing is named, with where it is expected.
    assert!(said.contains("/f5-export/"), "{said}");

    // Exported: it checks, and serves TLS only.
    let ca = TestCa::new();
    let export = dir.join("f5-export");
    std::fs::create_dir_all(&export).unwrap();
    let (cert, key) = ca.write_pem(&export, "www.example.com");
    std::fs::rename(cert, export.join("www.example.com_clientssl.crt")).unwrap();
    std::fs::rename(key, export.join("www.example.com_clientssl.key")).unwrap();
    std::fs::write(export.join("members_serverssl-ca.pem"), ca.cert_pem()).unwrap();
    let (cert, key) = ca.write_pem(&export, "bridged");
    std::fs::rename(cert, dir.join("bridged.crt")).unwrap();
    std::fs::rename(key, dir.join("bridged.key")).unwrap();
    std::fs::write(dir.join("intermediate-ca.crt"), ca.cert_pem()).unwrap();
    let checked = Command::new(BINARY)
        .args(["check", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        checked.status.success(),
        "{}",
        String::from_utf8_lossy(&checked.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_encrypted_key_is_named_as_such_with_how_to_decrypt_it() {
    let dir = temp_dir("encrypted-key");
    let ca = TestCa::new();
    let (cert, _) = ca.write_pem(&dir, "vip.example");
    let key = dir.join("encrypted.key");
    std::fs::write(
        &key,
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIFHzBJBgkqhkiG9w0BBQ0wPDAbBgkqhkiG9w0BBQwwDgQI\n-----END ENCRYPTED PRIVATE KEY-----\n",
    )
    .unwrap();
    let config = dir.join("vipgate.toml");
    std::fs::write(
        &config,
        format!(
            "[pools.p]\nmembers = [ {{ address = \"127.0.0.11:9070\" }} ]\n[virtuals.v]\nlisten = \"127.0.0.100:0\"\npool = \"p\"\ntls = {{ mode = \"terminate\", certs = [ {{ cert = \"{cert}\", key = \"{}\" }} ] }}\n",
            key.display()
        ),
    )
    .unwrap();
    let checked = Command::new(BINARY)
        .args(["check", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&checked.stderr).to_string();
    assert!(!checked.status.success());
    assert!(said.contains("the key is encrypted"), "{said}");
    assert!(said.contains("openssl pkey -in"), "{said}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_v4_vip_with_a_snat_map_default_converts_and_serves() {
    let imported = import(V4_VIP, "bigpipe-v4-vip.conf");
    let report = report_text(&imported);
    let plan = vipgate::config::parse(&imported.toml, "converted")
        .unwrap_or_else(|e| panic!("{e}\n{}", imported.toml));
    assert_eq!(plan.virtuals.len(), 1, "{report}");
    let vip = &plan.virtuals[0];
    assert_eq!(vip.listen, "127.0.0.100:9070".parse().unwrap());
    assert_eq!(plan.pool_of(vip).map(|p| p.members.len()), Some(2));
    assert!(
        imported.toml.contains("snat = \"snat_map_default\""),
        "{}",
        imported.toml
    );
    assert!(report.contains("`snat map` by origin"), "{report}");

    // Served, from the SNAT address the map gave.
    let first = tagged_member("127.0.0.71", "m71").await;
    let second = tagged_member("127.0.0.72", "m72").await;
    let toml = common::f5::runnable(&imported.toml, "v4-vip")
        .replace("127.0.0.71:9070", &first.to_string())
        .replace("127.0.0.72:9070", &second.to_string());
    let vipgate = start(&toml).await;
    let mut client = LineClient::connect(vipgate.addr(&vip.name)).await;
    assert!(client.ask("hello").await.is_some());
    let status = vipgate.status();
    let listed: Vec<&str> = status
        .snat_pools
        .iter()
        .flat_map(|p| p.addresses.iter().map(|a| a.address.as_str()))
        .collect();
    assert_eq!(listed, ["127.0.0.21"]);
}

/// Reading, converting and reporting stay linear: a megabyte of one
/// unknown statement (once quadratic: 52 s for 200 KB) and a large
/// real-looking file convert in well under a minute, and no report line
/// quotes more than a short prefix. Prints the times.
#[test]
fn large_and_hostile_files_convert_in_linear_time_with_short_report_lines() {
    let hostile = "<".repeat(1 << 20);
    let started = Instant::now();
    let result = vipgate::f5::import(&hostile, "hostile.conf");
    let hostile_took = started.elapsed();
    if let Err(error) = &result {
        assert!(
            error.to_string().len() < 2_000,
            "the error quotes a prefix only"
        );
    }

    let mut large = String::new();
    for n in 0..3_000 {
        large.push_str(&format!(
            "ltm pool /Common/pool{n} {{\n    members {{\n        /Common/10.{}.{}.1:9070 {{ address 10.{}.{}.1 }}\n    }}\n    monitor /Common/tcp\n}}\nltm virtual /Common/vs{n} {{\n    destination /Common/10.200.{}.{}:443\n    pool /Common/pool{n}\n    rules {{ /Common/rule{n} }}\n}}\nltm rule /Common/rule{n} {{\n{}}}\n",
            n / 250, n % 250, n / 250, n % 250, n / 250, n % 250,
            "when HTTP_REQUEST { if { [HTTP::uri] starts_with \"/a\" } { pool p } }\n".repeat(20)
        ));
    }
    let started = Instant::now();
    let imported = import(&large, "large.conf");
    let large_took = started.elapsed();
    println!(
        "1 MiB of `<`: {:.2} s; {} KiB real-looking file (3,000 virtuals, pools and iRules): {:.2} s",
        hostile_took.as_secs_f64(),
        large.len() / 1024,
        large_took.as_secs_f64()
    );
    assert!(hostile_took.as_secs() < 60 && large_took.as_secs() < 60);
    assert!(imported.toml.contains("[virtuals.vs2999]"));
    for line in imported.report.to_string().lines() {
        assert!(line.len() < 1_000, "a report line of {} bytes", line.len());
    }
}

/// Several files read as one BIG-IP: the partition's virtuals find the
/// profiles and monitors of /Common, and each note names its file.
#[test]
fn a_partition_imported_with_common_finds_its_profiles_and_monitors() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/f5");
    let output = Command::new(BINARY)
        .arg("import-f5")
        .arg(dir.join("common-base.conf"))
        .arg(dir.join("partitions-as3.conf"))
        .output()
        .unwrap();
    let toml = String::from_utf8_lossy(&output.stdout).to_string();
    let report = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(output.status.success(), "{report}");
    let plan = vipgate::config::parse(&toml, "converted").unwrap_or_else(|e| panic!("{e}\n{toml}"));
    // The client-ssl profile's own files, chain included, and the
    // server-ssl profile's CA and name.
    let Tls::Terminate(terminate) = &plan.virtuals[0].tls else {
        panic!("TLS: {:?}", plan.virtuals[0].tls);
    };
    assert!(
        terminate.certs[0].cert.ends_with("www.example.com.crt"),
        "{toml}"
    );
    assert!(terminate.certs[0]
        .chain
        .as_ref()
        .is_some_and(|c| c.ends_with("example-intermediate.crt")));
    assert!(
        toml.contains("ca = \"members-ca.crt\"") && toml.contains("server_name = \"csp.internal\""),
        "{toml}"
    );
    assert!(!toml.contains("f5-export/"), "{toml}");
    // The monitor of /Common watches the members.
    assert!(plan.monitors.contains_key("custom_csp_monitor"), "{toml}");
    // The profile whose side was unknown is a client-ssl profile: the
    // third virtual is converted.
    assert_eq!(plan.virtuals.len(), 3, "{report}");
    // Notes name their file.
    assert!(report.contains("partitions-as3.conf:"), "{report}");
    assert!(!report.contains("not defined in this file"), "{report}");
}

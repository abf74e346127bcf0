//! The operator's member decisions (enable, disable, force offline) kept in
//! `settings.state_file`: they outlive a restart and a SIGKILL, an edited
//! configuration wins over them, members that leave the configuration are
//! forgotten, and a corrupt file is reported and left alone.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use common::admin::{admin, status};
use common::process::{Running, BINARY};
use common::*;
use serde_json::Value;
use vipgate::config::AdminState;

fn config(members: &[(SocketAddr, &str)], admin_listen: &str) -> String {
    let members: Vec<String> = members
        .iter()
        .map(|(address, extra)| format!("{{ address = \"{address}\"{extra} }}"))
        .collect();
    format!(
        "[settings]\nstate_file = \"state.json\"\n\n[admin]\nlisten = \"{admin_listen}\"\n\n\
         [pools.p]\nmembers = [ {} ]\n\n[virtuals.vs]\nlisten = \"127.0.0.100:0\"\npool = \"p\"\n",
        members.join(", ")
    )
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("vipgate.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn fresh_dir(test: &str) -> PathBuf {
    let dir = common::tls_ca::temp_dir(&format!("decisions-{test}"));
    let _ = std::fs::remove_file(dir.join("state.json"));
    dir
}

fn admin_state(vipgate: &Vipgate, member: SocketAddr) -> AdminState {
    vipgate
        .snapshot()
        .member(&member)
        .expect("the member is configured")
        .admin_state()
}

/// The decisions the state file holds: member -> state.
fn saved(dir: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(dir.join("state.json")).unwrap_or_default();
    if text.is_empty() {
        return Vec::new();
    }
    let file: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(file["version"], 1);
    file["members"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(member, decision)| {
            (
                member.clone(),
                decision["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

async fn decide(vipgate: &Vipgate, member: SocketAddr, action: &str) -> Value {
    let reply = admin(
        vipgate,
        "POST",
        &format!("/pools/p/members/{member}/{action}"),
        None,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    serde_json::from_str(&reply.body).unwrap()
}

async fn stop(mut vipgate: Vipgate) {
    vipgate.begin_shutdown().await.unwrap();
}

#[tokio::test]
async fn a_decision_outlives_a_restart_and_an_edited_configuration_wins() {
    let dir = fresh_dir("restart");
    let first = tagged_member("127.0.0.11", "m11").await;
    let second = tagged_member("127.0.0.12", "m12").await;
    let path = write_config(&dir, &config(&[(first, ""), (second, "")], "127.0.0.1:0"));

    let vipgate = start_file(&path).await;
    let answer = decide(&vipgate, second, "disable").await;
    assert_eq!(answer["saved"], true, "{answer}");
    assert_eq!(saved(&dir), [(second.to_string(), "disabled".to_string())]);
    let decisions = status(&vipgate).await["member_decisions"].clone();
    assert_eq!(decisions["members"][0]["member"], second.to_string());
    assert_eq!(decisions["members"][0]["configured"], "enabled");
    assert!(decisions["problem"].is_null(), "{decisions}");
    stop(vipgate).await;

    // A new process: the decision holds from the first connection on.
    let vipgate = start_file(&path).await;
    assert_eq!(admin_state(&vipgate, second), AdminState::Disabled);
    for _ in 0..4 {
        assert_eq!(
            tag_of_answer(vipgate.addr("vs")).await.as_deref(),
            Some("m11")
        );
    }

    // The configuration's `state` edited since: it is the newer decision,
    // and the record goes.
    std::fs::write(
        &path,
        config(
            &[(first, ""), (second, ", state = \"forced-offline\"")],
            "127.0.0.1:0",
        ),
    )
    .unwrap();
    assert_eq!(admin(&vipgate, "POST", "/reload", None).await.status, 200);
    assert_eq!(admin_state(&vipgate, second), AdminState::ForcedOffline);
    assert!(saved(&dir).is_empty(), "{:?}", saved(&dir));

    // Back to what the configuration says: nothing to record.
    decide(&vipgate, first, "offline").await;
    assert_eq!(
        saved(&dir),
        [(first.to_string(), "forced-offline".to_string())]
    );
    decide(&vipgate, first, "enable").await;
    assert!(saved(&dir).is_empty());

    // A member that leaves the configuration is forgotten.
    decide(&vipgate, first, "disable").await;
    std::fs::write(&path, config(&[(second, "")], "127.0.0.1:0")).unwrap();
    assert_eq!(admin(&vipgate, "POST", "/reload", None).await.status, 200);
    assert!(saved(&dir).is_empty(), "{:?}", saved(&dir));
    stop(vipgate).await;
}

#[tokio::test]
async fn a_corrupt_state_file_is_reported_and_left_alone() {
    let dir = fresh_dir("corrupt");
    let member = tagged_member("127.0.0.11", "m11").await;
    let path = write_config(&dir, &config(&[(member, "")], "127.0.0.1:0"));
    std::fs::write(dir.join("state.json"), "{ half a file").unwrap();

    let check = std::process::Command::new(BINARY)
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&check.stderr);
    assert_eq!(check.status.code(), Some(1), "{said}");
    assert!(
        said.contains("state.json is not one vipgate wrote"),
        "{said}"
    );
    assert!(said.contains("move it aside"), "{said}");

    // `run` starts all the same, from the configuration.
    let vipgate = start_file(&path).await;
    assert_eq!(admin_state(&vipgate, member), AdminState::Enabled);
    let problem = status(&vipgate).await["member_decisions"]["problem"].clone();
    assert!(
        problem.as_str().unwrap().contains("not one vipgate wrote"),
        "{problem}"
    );
    let answer = decide(&vipgate, member, "disable").await;
    assert_eq!(answer["saved"], false, "{answer}");
    assert!(answer["not_saved_because"]
        .as_str()
        .unwrap()
        .contains("left as it was"));
    assert_eq!(
        admin_state(&vipgate, member),
        AdminState::Disabled,
        "it holds in memory"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("state.json")).unwrap(),
        "{ half a file"
    );
    stop(vipgate).await;
}

#[test]
fn a_decision_survives_sigkill() {
    let dir = fresh_dir("sigkill");
    let member = process::line_member("127.0.0.11");
    let admin_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let admin_listen = format!("127.0.0.1:{admin_port}");
    let path = write_config(&dir, &config(&[(member, "")], &admin_listen));
    let call = |method: &str, path: &str| -> Value {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", admin_port)).unwrap();
        write!(stream, "{method} {path} HTTP/1.0\r\nHost: admin\r\n\r\n").unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        let (_, body) = text.split_once("\r\n\r\n").unwrap();
        serde_json::from_str(body).unwrap()
    };

    let running = Running::start(&path, "");
    let answer = call("POST", &format!("/pools/p/members/{member}/offline"));
    assert_eq!(answer["saved"], true, "{answer}");
    running.signal(libc::SIGKILL);
    drop(running);

    let mut running = Running::start(&path, "");
    let status = call("GET", "/status");
    let state = &status["pools"][0]["members"][0]["state"];
    assert_eq!(state, "forced-offline", "{status}");
    assert!(running.stop().success());
}

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
    decide_with(vipgate, member, action, None).await
}

async fn decide_with(
    vipgate: &Vipgate,
    member: SocketAddr,
    action: &str,
    token: Option<&str>,
) -> Value {
    let reply = admin(
        vipgate,
        "POST",
        &format!("/pools/p/members/{member}/{action}"),
        token,
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

    // Back to what the configuration says: recorded all the same (a
    // peer learns from it that the member was enabled again).
    decide(&vipgate, first, "offline").await;
    assert_eq!(
        saved(&dir),
        [(first.to_string(), "forced-offline".to_string())]
    );
    decide(&vipgate, first, "enable").await;
    assert_eq!(saved(&dir), [(first.to_string(), "enabled".to_string())]);

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

fn free_admin_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

const TOKEN: &str = "pair-admin-token-0123456789";

/// Node `name` of a pair: its own folder, state file and admin port, the
/// other node as its peer, the token both share.
fn pair_node(name: &str, members: &[(SocketAddr, &str)], own: u16, peer: u16) -> PathBuf {
    let dir = fresh_dir(&format!("pair-{name}"));
    std::fs::write(dir.join("admin-token"), TOKEN).unwrap();
    let text = config(members, &format!("127.0.0.1:{own}")).replace(
        "[admin]\n",
        &format!("[admin]\ntoken_file = \"admin-token\"\npeers = [\"http://127.0.0.1:{peer}\"]\n"),
    );
    write_config(&dir, &text)
}

#[tokio::test]
async fn a_pair_shares_decisions_and_a_restarted_node_asks_before_serving() {
    let first = tagged_member("127.0.0.11", "m11").await;
    let second = tagged_member("127.0.0.12", "m12").await;
    let members = [(first, ""), (second, "")];
    let (port_a, port_b) = (free_admin_port(), free_admin_port());
    let path_a = pair_node("a", &members, port_a, port_b);
    let path_b = pair_node("b", &members, port_b, port_a);
    let node_a = start_file(&path_a).await;
    let node_b = start_file(&path_b).await;

    // A change on one node reaches the other.
    decide_with(&node_a, second, "disable", Some(TOKEN)).await;
    eventually("node b takes node a's decision", || {
        admin_state(&node_b, second) == AdminState::Disabled
    })
    .await;
    assert_eq!(
        saved(path_b.parent().unwrap()),
        [(second.to_string(), "disabled".to_string())]
    );
    // A peer's decisions need the token.
    let refused = admin(&node_b, "PUT", "/decisions", None).await;
    assert_eq!(refused.status, 401);

    // While node b is away, node a enables m12 and forces m11 offline.
    stop(node_b).await;
    decide_with(&node_a, second, "enable", Some(TOKEN)).await;
    decide_with(&node_a, first, "offline", Some(TOKEN)).await;

    // Node b comes back: its own file says m12 disabled and m11 enabled,
    // but it asks node a before it serves, so its very first clients go
    // to m12 (node a sends again only every 2 s).
    let node_b = start_file(&path_b).await;
    for _ in 0..4 {
        assert_eq!(
            tag_of_answer(node_b.addr("vs")).await.as_deref(),
            Some("m12")
        );
    }
    assert_eq!(admin_state(&node_b, first), AdminState::ForcedOffline);
    let shared: Value =
        serde_json::from_str(&admin(&node_b, "GET", "/decisions", None).await.body).unwrap();
    assert_eq!(
        shared["members"][first.to_string()]["state"],
        "forced-offline"
    );
    assert_eq!(shared["members"][second.to_string()]["state"], "enabled");
    stop(node_b).await;
    stop(node_a).await;
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

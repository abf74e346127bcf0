//! The admin status page (`GET /`) as operators use it: served by a running
//! vipgate, rendered by a real headless Chromium that reads `/status`,
//! showing a member that goes down in red with its monitor's error, and
//! changing a member with the admin token typed into the page. Also the
//! page's HTTP side (content type, policy headers, cross-site changes
//! refused) without a browser.
//!
//! Chromium is Debian's `chromium` package. The browser tests are
//! `#[ignore]`d, so a plain `cargo test` names them as left out;
//! `cargo test -- --include-ignored` (what `.ci/run` runs, after installing
//! Chromium) runs them, and they fail saying how to install it when it is
//! missing.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use common::admin::{admin, status};
use common::browser::{chromium, Browser};
use common::http_client::HttpClient;
use common::{start, wait_health, SwitchablePort, Vipgate};
use serde_json::Value;
use vipgate::pool::Health;

/// The page asks for `/status` every 2 s.
const REFRESH: Duration = Duration::from_secs(2);
const TOKEN: &str = "status-page-admin-token-0123";

fn temp_file(name: &str, text: &str) -> PathBuf {
    let path = common::tls_ca::temp_dir("status-page").join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Pool `agents` of `members`, each watched by a tcp monitor every 100 ms,
/// behind virtual `vs` with SNAT from five ports of 127.0.0.21; the admin
/// endpoint with `token_file` when given.
fn config(members: &[SocketAddr], token_file: Option<&std::path::Path>) -> String {
    let members: Vec<String> = members
        .iter()
        .map(|m| format!("{{ address = \"{m}\" }}"))
        .collect();
    let token = token_file.map_or_else(String::new, |path| {
        format!("token_file = \"{}\"\n", path.display())
    });
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n{token}\n\
         [monitors.TCP]\ntype = \"tcp\"\ninterval = \"100ms\"\ntimeout = \"300ms\"\n\n\
         [pools.agents]\nmonitor = {{ all = [\"TCP\"] }}\nmembers = [ {} ]\n\n\
         [snat_pools.outbound]\naddresses = [\"127.0.0.21\"]\nports = \"40100-40104\"\n\n\
         [virtuals.vs]\nlisten = \"127.0.0.100:0\"\npool = \"agents\"\nsnat = \"outbound\"\n",
        members.join(", ")
    )
}

async fn browser() -> Browser {
    let binary = chromium().expect(
        "the status page tests need Chromium: apt-get install chromium (.ci/run installs it)",
    );
    Browser::start(&binary, 1280, 900).await
}

fn page_url(vipgate: &Vipgate) -> String {
    format!("http://{}/", vipgate.admin.expect("an admin endpoint"))
}

/// The JS expression reading one member row's attribute or text.
fn row(member: SocketAddr) -> String {
    format!("document.querySelector('tr[data-pool=\"agents\"][data-member=\"{member}\"]')")
}

fn member_state(status: &Value, member: SocketAddr) -> String {
    status["pools"][0]["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["address"] == member.to_string())
        .map(|m| m["state"].as_str().unwrap().to_string())
        .expect("the member is listed")
}

/// Types `token` into the page as an operator would, waits until `button`
/// (a JS expression for it) is enabled, and clicks it.
async fn type_token_and_click(browser: &mut Browser, token: &str, button: &str) {
    browser
        .eval(&format!(
            "document.getElementById('token').value = '{token}'; document.getElementById('token-save').click(); true"
        ))
        .await;
    browser
        .wait_for(
            "the button enabled once a token is typed",
            &format!("{button}.disabled === false"),
            REFRESH * 2,
        )
        .await;
    browser.eval(&format!("{button}.click(); true")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium: apt-get install chromium"]
async fn the_page_shows_a_member_going_down_and_disables_one_with_the_token() {
    let mut first = SwitchablePort::open("127.0.0.11", "one").await;
    let second = SwitchablePort::open("127.0.0.12", "two").await;
    let third = SwitchablePort::open("127.0.0.13", "three").await;
    let members = [first.addr, second.addr, third.addr];
    let token_file = temp_file("admin-token", &format!("{TOKEN}\n"));
    let vipgate = start(&config(&members, Some(&token_file))).await;
    for member in members {
        wait_health(&vipgate, member, Health::Up).await;
    }

    let mut browser = browser().await;
    browser.open(&page_url(&vipgate)).await;
    browser
        .wait_for(
            "three members up",
            "document.querySelectorAll('tr[data-member][data-health=\"up\"]').length === 3",
            REFRESH * 2,
        )
        .await;
    // The buttons wait for the token, and the page says why.
    assert_eq!(
        browser
            .eval(&format!(
                "{}.querySelector('button[data-action=\"disable\"]').disabled",
                row(third.addr)
            ))
            .await,
        Value::Bool(true)
    );
    let why = browser
        .eval("document.getElementById('token-state').textContent")
        .await;
    assert!(why.as_str().unwrap().contains("admin token"), "{why}");

    // Agents connect: four to each member fill four of the five SNAT ports
    // toward it, and the bars turn amber (80 %).
    let mut agents = Vec::new();
    for _ in 0..12 {
        let mut agent = common::LineClient::connect(vipgate.addr("vs")).await;
        assert!(agent.ask("hello").await.is_some());
        agents.push(agent);
    }
    browser
        .wait_for(
            "three amber SNAT bars",
            "document.querySelectorAll('tr[data-snat] .bar.amber').length === 3",
            REFRESH * 2,
        )
        .await;
    let open = browser
        .eval("document.querySelector('tr[data-virtual=\"vs\"] td:nth-child(6)').textContent")
        .await;
    assert_eq!(open, "12", "connections open on the virtual");

    // A proxy dies: red, with the monitor's error, within two refreshes of
    // vipgate knowing it.
    first.close().await;
    wait_health(&vipgate, first.addr, Health::Down).await;
    browser
        .wait_for(
            "the first member down",
            &format!("{}.dataset.health === 'down'", row(first.addr)),
            REFRESH * 2 + Duration::from_millis(500),
        )
        .await;
    let shown = browser
        .eval(&format!(
            "(() => {{ const health = {}.querySelector('.health'); \
             return [health.textContent, getComputedStyle(health).color, \
             {}.querySelector('.why').textContent]; }})()",
            row(first.addr),
            row(first.addr)
        ))
        .await;
    assert_eq!(shown[0], "down", "{shown}");
    assert_eq!(shown[1], "rgb(207, 34, 46)", "shown in red: {shown}");
    let why = shown[2].as_str().unwrap();
    assert!(
        why.starts_with(&format!("TCP {}", first.addr)) && why.contains("refused"),
        "names the monitor, its target and its error: {why}"
    );
    let summary = browser
        .eval("document.querySelector('details.pool summary').textContent")
        .await;
    assert!(summary.as_str().unwrap().contains("1 down"), "{summary}");
    // How often it went down is counted and shown.
    let went_down = browser
        .eval(&format!(
            "{}.textContent.includes('went down 1 time')",
            row(first.addr)
        ))
        .await;
    assert_eq!(went_down, true, "the count of times down is shown");
    assert_eq!(
        vipgate.status().pools[0].members[0].times_down,
        1,
        "counted in /status"
    );

    // A wrong token: vipgate refuses (401) and the page says so.
    let disable_third = format!(
        "{}.querySelector('button[data-action=\"disable\"]')",
        row(third.addr)
    );
    type_token_and_click(&mut browser, "not-the-token-at-all", &disable_third).await;
    browser
        .wait_for(
            "the refusal",
            "document.getElementById('notice').textContent.includes('401')",
            REFRESH * 2,
        )
        .await;
    let now = status(&vipgate).await;
    assert_eq!(member_state(&now, third.addr), "enabled");

    // The right token: the member is disabled, in vipgate and on the page.
    browser
        .eval("document.getElementById('token-forget').click(); true")
        .await;
    browser
        .wait_for(
            "the token field again",
            "document.getElementById('token').hidden === false",
            REFRESH * 2,
        )
        .await;
    type_token_and_click(&mut browser, TOKEN, &disable_third).await;
    browser
        .wait_for(
            "the member disabled",
            &format!("{}.dataset.health === 'disabled'", row(third.addr)),
            REFRESH * 2,
        )
        .await;
    let now = status(&vipgate).await;
    assert_eq!(member_state(&now, third.addr), "disabled");
    let token_in_storage = browser
        .eval("sessionStorage.getItem('vipgate-admin-token')")
        .await;
    assert_eq!(token_in_storage, TOKEN, "kept in the tab's session storage");
    let url = browser.eval("location.href").await;
    assert!(!url.as_str().unwrap().contains(TOKEN), "never in the URL");

    browser
        .screenshot(&PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/target/status-page.png"
        )))
        .await;
    assert!(
        browser.errors.is_empty(),
        "the page raised {:?}",
        browser.errors
    );
    drop((second, agents));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium: apt-get install chromium"]
async fn without_a_token_file_the_buttons_stay_off_and_say_why() {
    let member = SwitchablePort::open("127.0.0.11", "one").await;
    let vipgate = start(&config(&[member.addr], None)).await;
    wait_health(&vipgate, member.addr, Health::Up).await;
    let mut browser = browser().await;
    browser.open(&page_url(&vipgate)).await;
    browser
        .wait_for(
            "the member up",
            &format!("{}?.dataset.health === 'up'", row(member.addr)),
            REFRESH * 2,
        )
        .await;
    let state = browser
        .eval(&format!(
            "[{}.querySelector('button[data-action=\"offline\"]').disabled, \
             document.getElementById('token').hidden, \
             document.getElementById('token-state').textContent]",
            row(member.addr)
        ))
        .await;
    assert_eq!(state[0], true, "{state}");
    assert_eq!(state[1], true, "no token to type: {state}");
    assert!(
        state[2].as_str().unwrap().contains("admin.token_file"),
        "{state}"
    );
    assert!(
        browser.errors.is_empty(),
        "the page raised {:?}",
        browser.errors
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium: apt-get install chromium"]
async fn fifty_pools_of_twenty_start_collapsed_and_the_filter_finds_a_member() {
    // Unmonitored members are up without probes: addresses are enough.
    let mut pools = String::new();
    for pool in 0..50 {
        let members: Vec<String> = (0..20)
            .map(|m| {
                format!(
                    "{{ address = \"127.0.0.{}:{}\" }}",
                    11 + m % 3,
                    20000 + pool * 20 + m
                )
            })
            .collect();
        pools += &format!(
            "[pools.pool{pool:02}]\nmembers = [ {} ]\n",
            members.join(", ")
        );
    }
    let toml = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n{pools}[virtuals.vs]\nlisten = \"127.0.0.100:0\"\npool = \"pool00\"\n"
    );
    let vipgate = start(&toml).await;
    let mut browser = browser().await;
    browser.open(&page_url(&vipgate)).await;
    browser
        .wait_for(
            "fifty pools",
            "document.querySelectorAll('details.pool').length === 50",
            REFRESH * 2,
        )
        .await;
    let shown = browser
        .eval(
            "[document.querySelectorAll('details.pool[open]').length, \
             document.querySelectorAll('tr[data-member]').length, \
             document.getElementById('pool-summary').textContent]",
        )
        .await;
    assert_eq!(shown[0], 0, "all healthy, so all collapsed: {shown}");
    assert_eq!(shown[1], 1000, "{shown}");
    assert_eq!(shown[2], "50 pools, 1000 members, 0 down", "{shown}");
    browser
        .eval(
            "const f = document.getElementById('filter'); f.value = '127.0.0.13:20985'; \
             f.dispatchEvent(new Event('input')); true",
        )
        .await;
    let found = browser
        .eval(
            "[...document.querySelectorAll('details.pool')].map(d => [d.dataset.pool, d.open, \
             d.querySelectorAll('tr[data-member]').length])",
        )
        .await;
    assert_eq!(found, serde_json::json!([["pool49", true, 1]]));
    assert!(
        browser.errors.is_empty(),
        "the page raised {:?}",
        browser.errors
    );
}

#[tokio::test]
async fn the_page_is_served_with_a_strict_policy_and_other_sites_cannot_change_members() {
    let member = SwitchablePort::open("127.0.0.11", "one").await;
    let vipgate = start(&config(&[member.addr], None)).await;
    let page = admin(&vipgate, "GET", "/", None).await;
    assert_eq!(page.status, 200);
    assert_eq!(page.header("content-type"), "text/html; charset=utf-8");
    let policy = page.header("content-security-policy");
    assert!(
        policy.contains("default-src 'none'") && policy.contains("connect-src 'self'"),
        "{policy}"
    );
    assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
    assert_eq!(page.header("x-frame-options"), "DENY");
    assert!(page.body.contains("<title>vipgate</title>"));
    // Self-contained: nothing fetched from anywhere else.
    for outside in ["http://", "https://", "//cdn", "@import"] {
        assert!(!page.body.contains(outside), "the page refers to {outside}");
    }
    let now = status(&vipgate).await;
    assert_eq!(now["admin"]["token_required"], false);
    assert!(now["uptime_seconds"].is_u64() && now["started_at"].as_u64() > Some(0));

    // Another site's page posting through the operator's browser: refused.
    let address = vipgate.admin.unwrap();
    let path = format!("/pools/agents/members/{}/offline", member.addr);
    let post_from = |origin: &'static str| {
        let path = path.clone();
        async move {
            let mut client = HttpClient::connect(address).await;
            let headers = [("origin", origin)];
            client
                .send("POST", &path, &headers, bytes::Bytes::new())
                .await
                .unwrap()
        }
    };
    let refused = post_from("http://evil.example").await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(refused.body.contains("another site"), "{}", refused.body);
    // A page of the host the request went to (the test client sends
    // `Host: gwe.example`): allowed.
    let allowed = post_from("http://gwe.example").await;
    assert_eq!(allowed.status, 200, "{}", allowed.body);
    let now = status(&vipgate).await;
    assert_eq!(member_state(&now, member.addr), "forced-offline");
}

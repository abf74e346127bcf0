//! `settings.cpu_affinity`: the worker threads of a running vipgate run on
//! the CPUs the file names, as the kernel reports them in /proc.
//!
//! One test in its own binary: it finds the workers by thread name, so no
//! other vipgate may run in the same process.

mod common;

use common::{config, start, tagged_member, LineClient, PATIENCE};

/// For each thread named `vg-worker-*` of this process: its name and
/// the CPUs it may run on (`Cpus_allowed_list`, e.g. "0-1" or "3").
fn workers_cpus() -> Vec<(String, String)> {
    let mut found = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let Ok(name) = std::fs::read_to_string(task.path().join("comm")) else {
            continue;
        };
        if !name.starts_with("vg-worker-") {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        let cpus = status
            .lines()
            .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
            .unwrap()
            .trim()
            .to_string();
        found.push((name.trim().to_string(), cpus));
    }
    found.sort();
    found
}

/// `workers_cpus` once `count` workers are there: a thread takes its name
/// when it first runs, which may be after vipgate has started.
async fn workers_cpus_of(count: usize) -> Vec<(String, String)> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let found = workers_cpus();
        if found.len() == count {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected {count} workers: {found:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn workers_run_where_the_configuration_says() {
    let allowed = vipgate::workers::allowed_cpus().unwrap();
    let last = *allowed.last().unwrap();
    let member = tagged_member("127.0.0.11", "csp1").await;
    let pool_and_virtual = config(&[member], "");

    // Both workers on one named CPU, and connections are carried.
    let mut vipgate = start(&format!(
        "[settings]\nworker_threads = 2\ncpu_affinity = [{last}]\n{pool_and_virtual}"
    ))
    .await;
    assert_eq!(
        workers_cpus_of(2).await,
        vec![
            ("vg-worker-0".to_string(), last.to_string()),
            ("vg-worker-1".to_string(), last.to_string()),
        ]
    );
    for _ in 0..4 {
        let mut client = LineClient::connect(vipgate.addr("vs")).await;
        assert_eq!(client.ask("hello").await.as_deref(), Some("csp1 hello"));
    }
    vipgate.begin_shutdown().await.unwrap();
    workers_cpus_of(0).await;

    // auto with the default thread count: each worker on its own CPU.
    let mut vipgate = start(&format!(
        "[settings]\ncpu_affinity = \"auto\"\n{pool_and_virtual}"
    ))
    .await;
    let expected: Vec<(String, String)> = allowed
        .iter()
        .enumerate()
        .map(|(index, cpu)| (format!("vg-worker-{index}"), cpu.to_string()))
        .collect();
    let mut found = workers_cpus_of(allowed.len()).await;
    // "vg-worker-10" sorts before "vg-worker-2".
    found.sort_by_key(|(name, _)| name["vg-worker-".len()..].parse::<usize>().unwrap());
    assert_eq!(found, expected);
    let mut client = LineClient::connect(vipgate.addr("vs")).await;
    assert_eq!(client.ask("hello").await.as_deref(), Some("csp1 hello"));
    drop(client);
    vipgate.begin_shutdown().await.unwrap();
    workers_cpus_of(0).await;

    // off, the default: the kernel places them anywhere this process may run.
    let all = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim()
        .to_string();
    let mut vipgate = start(&format!(
        "[settings]\nworker_threads = 2\n{pool_and_virtual}"
    ))
    .await;
    assert_eq!(
        workers_cpus_of(2).await,
        vec![
            ("vg-worker-0".to_string(), all.clone()),
            ("vg-worker-1".to_string(), all),
        ]
    );
    vipgate.begin_shutdown().await.unwrap();
}

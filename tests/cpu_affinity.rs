//! `settings.cpu_affinity`: the worker threads of a running vipgate run on
//! the CPUs the file names, as the kernel reports them in /proc.
//!
//! One test in its own binary: it finds the workers by thread name, so no
//! other vipgate may run in the same process.

mod common;

use common::admin::{Scrape, ADMIN};
use common::{config, start, tagged_member, LineClient, PATIENCE};

/// The CPUs the task or process whose `status` file is at `path` may run
/// on (`Cpus_allowed_list`, e.g. "0-1" or "3").
fn cpus_allowed(path: &std::path::Path) -> Option<String> {
    let status = std::fs::read_to_string(path).ok()?;
    let list = status
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))?;
    Some(list.trim().to_string())
}

/// For each thread named `vg-worker-N` of this process, by N: its name and
/// the CPUs it may run on.
fn workers_cpus() -> Vec<(String, String)> {
    let mut found = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let Ok(name) = std::fs::read_to_string(task.path().join("comm")) else {
            continue;
        };
        let Some(index) = name.trim().strip_prefix("vg-worker-") else {
            continue;
        };
        let index: usize = index.parse().unwrap();
        if let Some(cpus) = cpus_allowed(&task.path().join("status")) {
            found.push((index, name.trim().to_string(), cpus));
        }
    }
    found.sort();
    found
        .into_iter()
        .map(|(_, name, cpus)| (name, cpus))
        .collect()
}

/// What `workers_cpus` says when worker i runs on `cpus[i]`.
fn placed(cpus: &[String]) -> Vec<(String, String)> {
    let names = (0..).map(|index| format!("vg-worker-{index}"));
    names.zip(cpus.iter().cloned()).collect()
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
        placed(&[last.to_string(), last.to_string()])
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
    let each: Vec<String> = allowed.iter().map(usize::to_string).collect();
    assert_eq!(workers_cpus_of(allowed.len()).await, placed(&each));
    let mut client = LineClient::connect(vipgate.addr("vs")).await;
    assert_eq!(client.ask("hello").await.as_deref(), Some("csp1 hello"));
    drop(client);
    vipgate.begin_shutdown().await.unwrap();
    workers_cpus_of(0).await;

    // off: the kernel places them anywhere this process may run.
    let all = cpus_allowed("/proc/self/status".as_ref()).unwrap();
    let mut vipgate = start(&format!(
        "[settings]\nworker_threads = 2\ncpu_affinity = \"off\"\n{pool_and_virtual}{ADMIN}"
    ))
    .await;
    assert_eq!(
        workers_cpus_of(2).await,
        placed(&[all.clone(), all.clone()])
    );
    let scrape = Scrape::of(&vipgate).await;
    assert_eq!(scrape.get("vipgate_worker_cpu_moves_total", &[]), 0.0);
    vipgate.begin_shutdown().await.unwrap();
    workers_cpus_of(0).await;

    // spread, the default: the same, and still the same after busy work
    // on both workers (a worker that moves itself to a free CPU is given
    // the whole set back at once); the moves are exported. (Whether one
    // happens is the kernel's doing; the move itself is tested in
    // workers::spread.)
    let mut vipgate = start(&format!(
        "[settings]\nworker_threads = 2\n{pool_and_virtual}{ADMIN}"
    ))
    .await;
    assert_eq!(
        workers_cpus_of(2).await,
        placed(&[all.clone(), all.clone()])
    );
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(LineClient::connect(vipgate.addr("vs")).await);
    }
    for round in 0..200 {
        for client in &mut clients {
            let line = format!("ping {round}");
            assert_eq!(
                client.ask(&line).await.as_deref(),
                Some(format!("csp1 {line}").as_str())
            );
        }
    }
    assert_eq!(workers_cpus_of(2).await, placed(&[all.clone(), all]));
    let scrape = Scrape::of(&vipgate).await;
    assert!(
        scrape
            .value("vipgate_worker_cpu_moves_total", &[])
            .is_some(),
        "the moves counter is exported"
    );
    drop(clients);
    vipgate.begin_shutdown().await.unwrap();
}

//! `settings.cpu_affinity`: the worker threads of a running vipgate run on
//! the CPUs the file names, as the kernel reports them in /proc.
//!
//! One test in its own binary: it finds the workers by thread name, so no
//! other vipgate may run in the same process.

mod common;

use common::admin::{Scrape, ADMIN};
use common::{config, start, tagged_member, LineClient, Vipgate, PATIENCE};

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

/// Starts vipgate with `settings` (lines of `[settings]`) before `rest`,
/// and checks its workers may run on `cpus` (one entry per worker).
async fn start_placed(settings: &str, rest: &str, cpus: &[String]) -> Vipgate {
    let vipgate = start(&format!("[settings]\n{settings}{rest}")).await;
    assert_eq!(
        workers_cpus_of(cpus.len()).await,
        placed(cpus),
        "{settings}"
    );
    vipgate
}

/// Stops `vipgate` and waits until its workers are gone.
async fn stop(mut vipgate: Vipgate) {
    vipgate.begin_shutdown().await.unwrap();
    workers_cpus_of(0).await;
}

#[tokio::test]
async fn workers_run_where_the_configuration_says() {
    let allowed = vipgate::workers::allowed_cpus().unwrap();
    let last = allowed.last().unwrap().to_string();
    let all = cpus_allowed("/proc/self/status".as_ref()).unwrap();
    let member = tagged_member("127.0.0.11", "csp1").await;
    let pool_and_virtual = config(&[member], "");
    let with_admin = format!("{pool_and_virtual}{ADMIN}");

    // Both workers on one named CPU, and connections are carried.
    let vipgate = start_placed(
        &format!("worker_threads = 2\ncpu_affinity = [{last}]\n"),
        &pool_and_virtual,
        &[last.clone(), last],
    )
    .await;
    for _ in 0..4 {
        let mut client = LineClient::connect(vipgate.addr("vs")).await;
        assert_eq!(client.ask("hello").await.as_deref(), Some("csp1 hello"));
    }
    stop(vipgate).await;

    // auto with the default thread count: each worker on its own CPU.
    let each: Vec<String> = allowed.iter().map(usize::to_string).collect();
    let vipgate = start_placed("cpu_affinity = \"auto\"\n", &pool_and_virtual, &each).await;
    let mut client = LineClient::connect(vipgate.addr("vs")).await;
    assert_eq!(client.ask("hello").await.as_deref(), Some("csp1 hello"));
    drop(client);
    stop(vipgate).await;

    // off: the kernel places them anywhere this process may run.
    let both_anywhere = [all.clone(), all.clone()];
    let vipgate = start_placed(
        "worker_threads = 2\ncpu_affinity = \"off\"\n",
        &with_admin,
        &both_anywhere,
    )
    .await;
    let scrape = Scrape::of(&vipgate).await;
    assert_eq!(scrape.get("vipgate_worker_cpu_moves_total", &[]), 0.0);
    stop(vipgate).await;

    // spread, the default: the same, and still the same after busy work
    // on both workers (a worker that moves itself to a free CPU is given
    // the whole set back at once); the moves are exported. (Whether one
    // happens is the kernel's doing; the move itself is tested in
    // workers::spread.)
    let vipgate = start_placed("worker_threads = 2\n", &with_admin, &both_anywhere).await;
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
    assert_eq!(workers_cpus_of(2).await, placed(&both_anywhere));
    let scrape = Scrape::of(&vipgate).await;
    assert!(
        scrape
            .value("vipgate_worker_cpu_moves_total", &[])
            .is_some(),
        "the moves counter is exported"
    );
    drop(clients);
    stop(vipgate).await;
}

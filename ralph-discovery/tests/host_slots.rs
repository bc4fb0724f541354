//! The host-wide slot file shared by processes: never more slots held than the total, and a
//! SIGKILLed holder's slots come back (the kernel drops its locks). The file is a temporary
//! one; nothing host-wide is touched.

use std::process::Stdio;
use std::time::Duration;

use ralph_discovery::slots::HostSlots;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

const CHILD_ENV: &str = "RALPH_HOST_SLOTS_CHILD";
const TOTAL: u64 = 64;

/// The child's half: `hold PATH` takes every free slot and keeps them until killed; `wait PATH`
/// reports what it could take at once, then waits until it holds the whole pool.
#[tokio::test]
#[ignore = "child process of the host_slots tests"]
async fn host_slots_child() {
    let spec = std::env::var(CHILD_ENV).expect("run by the parent test");
    let (mode, path) = spec.split_once(' ').expect("MODE PATH");
    let slots = HostSlots::open(path.as_ref(), 0, TOTAL).expect("open");
    let mut held = Vec::new();
    while let Some(slot) = slots.try_acquire().expect("lock") {
        held.push(slot);
    }
    println!("HELD {}", held.len());
    if mode == "hold" {
        tokio::time::sleep(Duration::from_secs(120)).await;
        return;
    }
    while held.len() < usize::try_from(TOTAL).expect("small") {
        held.push(slots.acquire().await.expect("acquire"));
        assert!(slots.held() <= TOTAL);
    }
    assert!(slots.try_acquire().expect("lock").is_none(), "never more than the total");
    println!("HELD {}", held.len());
}

fn spawn(mode: &str, path: &std::path::Path) -> (Child, Lines<BufReader<ChildStdout>>) {
    let mut child = Command::new(std::env::current_exe().expect("exe"))
        .args(["host_slots_child", "--exact", "--ignored", "--nocapture", "--test-threads", "1"])
        .env(CHILD_ENV, format!("{mode} {}", path.display()))
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn child");
    let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    (child, lines)
}

async fn held(lines: &mut Lines<BufReader<ChildStdout>>) -> u64 {
    let read = async {
        while let Some(line) = lines.next_line().await.expect("read") {
            // libtest may print its "test NAME ... " before the child's line.
            if let Some((_, n)) = line.split_once("HELD ") {
                return n.trim().parse().expect("count");
            }
        }
        panic!("the child ended without reporting");
    };
    tokio::time::timeout(Duration::from_secs(60), read).await.expect("the child reports in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_share_the_pool_and_a_killed_holders_slots_come_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("neighbour-slots");
    let (mut holder, mut holder_out) = spawn("hold", &path);
    assert_eq!(held(&mut holder_out).await, TOTAL, "the first process takes the whole pool");
    let (mut waiter, mut waiter_out) = spawn("wait", &path);
    assert_eq!(held(&mut waiter_out).await, 0, "nothing left for a second process");
    // And nothing for this one either.
    let here = HostSlots::open(&path, 0, TOTAL).expect("open");
    assert!(here.try_acquire().expect("lock").is_none());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(waiter.try_wait().expect("wait").is_none(), "the second process waits for slots");
    holder.kill().await.expect("SIGKILL the holder");
    assert_eq!(held(&mut waiter_out).await, TOTAL, "the killed holder's slots came back, all of them");
    let status = tokio::time::timeout(Duration::from_secs(30), waiter.wait()).await.expect("in time").expect("wait");
    assert!(status.success(), "the waiter never saw more than the total");
    assert!(here.try_acquire().expect("lock").is_some(), "and freed when it exited");
}

//! Reconciliation of facts for 10,000 addresses against a store of 10,000 devices: plan
//! (snapshot load included) and apply, devices/s, cold (every device created) then warm (every
//! device's host name changed), on SQLite and PostgreSQL; the same-run baseline is the naive
//! way, one inventory update per device (its own transaction, history included). Then one
//! object's history read among all the rows written.
//! `cargo bench -p ralph-benches --bench reconcile`
#![allow(missing_docs, unreachable_pub, clippy::unwrap_used)]

#[allow(dead_code)] // MariaDB is not measured here
mod store_common;

use std::time::Instant;

use chrono::{DateTime, Utc};
use ralph_core::history::{Actor, HistoryStore};
use ralph_core::reconcile::{Facts, ReconcileStore, Reconciler, Scan, Source, plan_and_store};
use ralph_core::{ComponentKind, Device, DeviceType, InventoryStore, MacAddress, Repository};
use ralph_store::{PgStore, SqliteStore};

const DEVICES: u32 = 10_000;
const NAIVE: u32 = 2_000;

fn facts(i: u32, at: DateTime<Utc>, hostname: &str) -> Facts {
    let ip = std::net::IpAddr::from((0x0a40_0000 + i).to_be_bytes());
    let mut f = Facts::new(ip, Source::new("redfish", 50).unwrap(), at);
    f.serial_number = Some(format!("BENCH{i:06}"));
    f.model = Some("PowerEdge R640".into());
    f.manufacturer = Some("Dell".into());
    f.device_type = Some(DeviceType::RackServer);
    f.hostname = Some(format!("{hostname}{i}.dc1.example.com").parse().unwrap());
    f.is_management = true;
    f.components = (0..2u32)
        .map(|p| ComponentKind::Ethernet {
            mac: MacAddress::parse(&format!("a0:36:9f:{:02x}:{:02x}:{p:02x}", i >> 8, i & 0xff)).unwrap(),
            label: None,
            speed_mbps: None,
        })
        .collect();
    f
}

struct Line {
    backend: &'static str,
    cold: (f64, f64),
    warm: (f64, f64),
    noop_ms: f64,
    naive: f64,
    history_us: f64,
}

/// Plans and applies `facts`; returns (plan devices/s, apply devices/s).
async fn run<S: ReconcileStore>(store: &S, reconciler: &Reconciler, scan: &str, facts: &[Facts]) -> (f64, f64) {
    let t = Instant::now();
    let (id, plan) = plan_and_store(store, reconciler, &Scan::new(scan), facts).await.unwrap();
    let plan_rate = f64::from(DEVICES) / t.elapsed().as_secs_f64();
    assert!(plan.writes());
    let t = Instant::now();
    let report = store.apply_plan(id, &Actor::source("bench")).await.unwrap();
    let apply_rate = f64::from(DEVICES) / t.elapsed().as_secs_f64();
    assert_eq!(report.failed, 0);
    (plan_rate, apply_rate)
}

async fn bench<S: ReconcileStore + HistoryStore + InventoryStore>(store: &S, backend: &'static str) -> Line {
    let reconciler = Reconciler::default();
    let t0 = Utc::now();
    let first: Vec<Facts> = (0..DEVICES).map(|i| facts(i, t0, "a")).collect();
    let cold = run(store, &reconciler, "cold", &first).await;
    let t1 = t0 + chrono::Duration::hours(1);
    let second: Vec<Facts> = (0..DEVICES).map(|i| facts(i, t1, "b")).collect();
    let warm = run(store, &reconciler, "warm", &second).await;
    let t = Instant::now();
    let (_, plan) = plan_and_store(store, &reconciler, &Scan::new("noop"), &second).await.unwrap();
    let noop_ms = t.elapsed().as_secs_f64() * 1000.0;
    assert!(!plan.writes());

    // The naive way: one inventory update per device, each its own transaction.
    let devices = Repository::<Device>::list(store).await.unwrap();
    let t = Instant::now();
    for d in devices.iter().take(NAIVE as usize) {
        let mut value = d.value.clone();
        value.hostname = Some(format!("naive-{}", d.id));
        store.update(d.id, &value).await.unwrap();
    }
    let naive = f64::from(NAIVE) / t.elapsed().as_secs_f64();

    let reads = 1_000u32;
    let t = Instant::now();
    let mut seen = 0;
    for n in 0..reads {
        let d = &devices[(n as usize * 7919) % devices.len()];
        seen += store.object_history("device", d.id.get(), 50).await.unwrap().len();
    }
    let history_us = t.elapsed().as_secs_f64() * 1e6 / f64::from(reads);
    assert!(seen >= reads as usize * 2);
    Line { backend, cold, warm, noop_ms, naive, history_us }
}

#[tokio::main]
async fn main() {
    let mut lines = Vec::new();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("bench.sqlite3").display());
    let store = SqliteStore::connect(&url).await.unwrap();
    lines.push(bench(&store, "SQLite (file, WAL)").await);
    store.close().await;

    if let Some((url, admin, name)) =
        store_common::fresh("RALPH_TEST_PG_URL", store_common::PG_DEFAULT, "reconcile").await
    {
        let store = PgStore::connect(&url).await.unwrap();
        lines.push(bench(&store, "PostgreSQL").await);
        store.close().await;
        store_common::drop_db(&admin, &name).await;
    }

    println!();
    println!("reconciliation of {DEVICES} addresses (2 ports each) against {DEVICES} devices; devices/s");
    println!(
        "{:<20} {:>12} {:>12} {:>12} {:>12} {:>10} {:>14} {:>16}",
        "backend", "cold plan", "cold apply", "warm plan", "warm apply", "no-op ms", "naive upd/s", "history read µs"
    );
    for l in &lines {
        println!(
            "{:<20} {:>12.0} {:>12.0} {:>12.0} {:>12.0} {:>10.0} {:>14.0} {:>16.0}",
            l.backend, l.cold.0, l.cold.1, l.warm.0, l.warm.1, l.noop_ms, l.naive, l.history_us
        );
    }
    println!("(cold: every device created with its ports; warm: every host name changed; naive: one");
    println!(" Repository::update per device, its own transaction, on {NAIVE} devices; history read:");
    println!(" object_history of one device, 50 rows, averaged over 1,000 reads)");
}

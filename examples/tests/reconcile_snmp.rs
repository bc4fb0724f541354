//! End to end: the loopback snmpd's system group and interface table → reconciliation facts →
//! plan → apply on a SQL store → a device with snmpd's MACs and system description, and a
//! history row per object with the fields, all under the apply's one correlation id.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use chrono::Utc;
use ralph_core::history::{Action, Actor, HistoryStore};
use ralph_core::reconcile::{
    IdentityConfig, MacBlacklist, ReconcileConfig, ReconcileStore, Reconciler, Scan, Source, plan_and_store,
};
use ralph_core::{ComponentKind, Device, DeviceModel, InventoryStore, Repository, Secret};
use ralph_discovery::{ProbeContext, ProbeTimeouts, SnmpError, SnmpProbe};
use ralph_store::SqliteStore;

fn ctx() -> ProbeContext {
    let mut ctx = ProbeContext::standalone(16);
    // Long enough for snmpd to answer on a loaded machine; a wrong community costs a whole
    // wait, the price of not mistaking a slow answer for none.
    ctx.timeouts = ProbeTimeouts { read: Duration::from_secs(5), retries: 1, ..ProbeTimeouts::default() };
    ctx
}

#[tokio::test]
async fn snmpd_facts_become_a_device_with_history() {
    let addr: SocketAddr = ralph_testkit::require!("RALPH_TEST_SNMP_ADDR").parse().expect("addr");
    let community = ralph_testkit::require!("RALPH_TEST_SNMP_COMMUNITY");
    let descr = ralph_testkit::require!("RALPH_TEST_SNMP_SYSDESCR");
    let probe =
        SnmpProbe { communities: vec![Secret::new("not-this-one"), Secret::new(community.clone())], port: addr.port() };
    let system = probe.read_system(addr.ip(), &ctx()).await.expect("snmpd answers");
    assert_eq!(system.description.as_deref(), Some(descr.as_str()));
    assert!(system.object_id.as_deref().is_some_and(|o| o.starts_with("1.3.6.1.4.1.")), "{system:?}");
    assert!(!system.macs.is_empty(), "snmpd lists this host's interfaces: {system:?}");
    // Interfaces of other tests' namespaces come and go; every MAC read is one this host had.
    let host: BTreeSet<String> = std::fs::read_dir("/sys/class/net")
        .expect("interfaces")
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("address")).ok())
        .map(|a| a.trim().to_uppercase())
        .collect();
    assert!(system.macs.iter().any(|m| host.contains(&m.to_string())), "{:?} vs {host:?}", system.macs);

    let facts = system.to_facts(addr.ip(), Source::new("snmp", 10).expect("source"), Utc::now());
    // Lab interfaces have locally administered MACs (veths, cloud NICs): accept them here.
    let reconciler = Reconciler::new(
        ReconcileConfig::default().with_identity(IdentityConfig::default().with_macs(MacBlacklist::minimal())),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let store =
        SqliteStore::connect(&format!("sqlite://{}", dir.path().join("ralph.sqlite3").display())).await.expect("store");
    let (plan_id, plan) =
        plan_and_store(&store, &reconciler, &Scan::new("snmpd"), std::slice::from_ref(&facts)).await.expect("plan");
    assert_eq!(plan.counts().create, 1 + system.macs.len(), "{:?}", plan.items);
    let report = store.apply_plan(plan_id, &Actor::source("snmp")).await.expect("apply");
    assert_eq!((report.failed, report.skipped), (0, 0), "{report:?}");

    let device_id = report.created[&0];
    let device = Repository::<Device>::get(&store, device_id).await.expect("device");
    let model = Repository::<DeviceModel>::get(&store, device.model).await.expect("model");
    assert_eq!(model.name, descr.lines().next().unwrap_or_default().trim());
    assert_eq!(device.management_ip, Some(addr.ip()));
    let macs: BTreeSet<String> = store
        .device_components(device_id)
        .await
        .expect("components")
        .into_iter()
        .filter_map(|c| match c.value.kind {
            ComponentKind::Ethernet { mac, .. } => Some(mac.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(macs, system.macs.iter().map(ToString::to_string).collect(), "the device has snmpd's MACs");

    // History: one row per object, every field of the device on it, one correlation id.
    let rows = store.correlated(&report.correlation).await.expect("history");
    assert_eq!(rows.len(), 1 + system.macs.len());
    assert!(rows.iter().all(|r| r.correlation == report.correlation && r.record.action == Action::Create));
    let device_row = rows.iter().find(|r| r.record.object_type == "device").expect("device row");
    assert_eq!(device_row.record.object_id, device_id.get());
    let fields: BTreeSet<&str> = device_row.record.changes.iter().map(|c| c.field.as_str()).collect();
    assert!(fields.is_superset(&BTreeSet::from(["model", "manufacturer", "management_ip"])), "{fields:?}");
    let ports: Vec<_> = rows.iter().filter(|r| r.record.object_type == "component").collect();
    assert!(ports.iter().all(|r| r.record.related == Some(("device".to_owned(), device_id.get()))));
    let model_history = store.field_history("device", device_id.get(), "model", 5).await.expect("field history");
    assert_eq!(model_history[0].record.changes[0].after.as_deref(), Some(model.name.as_str()));

    // The same facts again change nothing.
    let (_, again) =
        plan_and_store(&store, &reconciler, &Scan::new("snmpd-2"), std::slice::from_ref(&facts)).await.expect("plan");
    assert!(!again.writes(), "{:?}", again.items);
}

#[tokio::test]
async fn wrong_communities_read_nothing_and_say_so_without_the_community() {
    let addr: SocketAddr = ralph_testkit::require!("RALPH_TEST_SNMP_ADDR").parse().expect("addr");
    let probe = SnmpProbe { communities: vec![Secret::new("s3cret-guess")], port: addr.port() };
    let mut ctx = ctx();
    ctx.timeouts.retries = 0;
    let err = probe.read_system(addr.ip(), &ctx).await.expect_err("no answer");
    assert_eq!(err, SnmpError::NoAnswer(addr));
    assert!(!err.to_string().contains("s3cret-guess"));
}

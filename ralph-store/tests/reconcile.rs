//! Reconciliation and change history on SQLite, PostgreSQL and MariaDB: plans stored as item
//! rows and paged, applied with provenance, locks, stale-plan detection and conflicts, a
//! history row per changed object with one correlation id per apply, inventory writes on
//! record, history reads and pruning; overlapping plans applied from many tasks and from
//! several processes at once (no duplicate device, no lost history row).
//!
//! The processes are this test binary run again with `--ignored --exact reconcile_child_process`
//! and the job in `RALPH_RECONCILE_CHILD` (`backend|url|worker`).

mod queue_common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead as _, BufReader, Read as _};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ralph_core::history::{Action, Actor, ActorKind, HistoryStore, Retention};
use ralph_core::reconcile::{
    Change, Facts, Field, ItemStatus, ReconcileStore, Reconciler, Scan, Source, facts_checksum, plan_and_store,
};
use ralph_core::{ComponentKind, Device, DeviceModel, DeviceType, InventoryStore, MacAddress, Repository};

const CHILD_VAR: &str = "RALPH_RECONCILE_CHILD";

fn at() -> DateTime<Utc> {
    DateTime::from_timestamp(1_790_000_000, 0).expect("time")
}

fn mac(i: u32, port: u32) -> MacAddress {
    MacAddress::parse(&format!("a0:36:9f:{:02x}:{:02x}:{:02x}", i >> 8, i & 0xff, port)).expect("mac")
}

/// What a source learnt about machine `i`: two ports, a model, and (for even `i`) a serial.
fn facts(i: u32, source: &str, priority: u32) -> Facts {
    let ip = format!("10.9.{}.{}", i / 250, i % 250 + 1).parse().expect("ip");
    let mut f = Facts::new(ip, Source::new(source, priority).expect("source"), at());
    if i.is_multiple_of(2) {
        f.serial_number = Some(format!("SN{i:05}"));
    }
    f.model = Some(format!("{source} model"));
    f.device_type = Some(DeviceType::RackServer);
    f.is_management = true;
    f.components = (0..2).map(|p| ComponentKind::Ethernet { mac: mac(i, p), label: None, speed_mbps: None }).collect();
    f
}

async fn device_count<S: InventoryStore>(store: &S) -> usize {
    Repository::<Device>::list(store).await.expect("devices").len()
}

/// Plan, store, page, apply; history per object with one correlation id; the same facts
/// again change nothing; checksums say what changed.
async fn plan_apply_and_history<S: ReconcileStore + HistoryStore + InventoryStore>(store: &S) {
    let reconciler = Reconciler::default();
    let scan = Scan::new("scan-1");
    let all: Vec<Facts> = (0..30).flat_map(|i| [facts(i, "snmp", 10), facts(i, "redfish", 50)]).collect();
    let (id, plan) = plan_and_store(store, &reconciler, &scan, &all).await.expect("plan");
    assert_eq!(plan.counts().create, 30 + 60, "30 devices with two ports each");

    // Paged review: pages in order, together the whole plan, statuses pending.
    let mut paged = Vec::new();
    let mut after = None;
    loop {
        let page = store.plan_items(id, after, 7).await.expect("page");
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 7);
        after = page.last().map(|i| i.seq);
        paged.extend(page);
    }
    assert_eq!(paged, plan.items, "stored items round-trip");
    let loaded = store.load_plan(id).await.expect("load");
    assert_eq!(loaded, plan, "the whole plan round-trips (bookkeeping, suppressed, checksums)");
    assert!(!plan.suppressed.is_empty(), "snmp's model lost to redfish's and is on record");

    let actor = Actor::source("discovery");
    let report = store.apply_plan(id, &actor).await.expect("apply");
    assert_eq!((report.applied, report.failed, report.skipped), (90, 0, 0), "{report:?}");
    assert_eq!(device_count(store).await, 30);
    let stored = store.load_plan(id).await.expect("reload");
    assert!(stored.items.iter().all(|i| i.status == ItemStatus::Applied));

    // One device: fields from the winning source, ports with their MACs.
    let first = report.created[&0];
    let device = Repository::<Device>::get(store, first).await.expect("device");
    let model = Repository::<DeviceModel>::get(store, device.model).await.expect("model");
    assert_eq!(model.name, "redfish model");
    let ports = store.device_components(first).await.expect("components");
    assert_eq!(ports.len(), 2);

    // History: the device's create row names every field; its ports point at it; one
    // correlation id for everything the apply wrote.
    let history = store.object_history("device", first.get(), 10).await.expect("history");
    assert_eq!(history.len(), 1);
    let created = &history[0];
    assert_eq!(created.record.action, Action::Create);
    assert_eq!(created.record.actor, actor);
    assert_eq!(created.correlation, report.correlation);
    let fields: BTreeSet<&str> = created.record.changes.iter().map(|c| c.field.as_str()).collect();
    assert!(fields.contains("model") && fields.contains("device_type") && fields.contains("management_ip"));
    let port_history = store.object_history("component", ports[0].id.get(), 10).await.expect("port history");
    assert_eq!(port_history[0].record.related, Some(("device".to_owned(), first.get())));
    let all_rows = store.correlated(&report.correlation).await.expect("correlated");
    assert_eq!(all_rows.len(), 90, "one row per applied item, none lost");

    // The same facts again: nothing to do, and nothing changed since the scan.
    let (_, again) = plan_and_store(store, &reconciler, &Scan::new("scan-2"), &all).await.expect("replan");
    assert!(!again.writes(), "second plan writes nothing: {:?}", again.counts());
    let checksums: BTreeMap<_, _> = plan.checksums.clone();
    assert!(store.changed_addresses(&checksums).await.expect("changed").is_empty());
    let mut moved = facts(3, "redfish", 50);
    moved.hostname = Some("s3.dc1.example.com".parse().expect("hostname"));
    let mut changed = checksums.clone();
    changed.insert(moved.address, facts_checksum(moved.address, &[moved.clone(), facts(3, "snmp", 10)]));
    assert_eq!(store.changed_addresses(&changed).await.expect("changed"), vec![moved.address]);

    // A serial change, then "when did this serial change".
    let mut reserial = facts(2, "redfish", 50);
    reserial.observed_at += chrono::Duration::hours(1);
    reserial.serial_number = Some("SN-NEW".into());
    reserial.inventory_id = Some(report.created[&2]);
    let (id2, plan2) = plan_and_store(store, &reconciler, &Scan::new("scan-3"), &[reserial]).await.expect("plan");
    assert!(plan2.items.iter().any(|i| matches!(&i.change, Change::UpdateDevice { .. })), "{:?}", plan2.items);
    let report2 = store.apply_plan(id2, &actor).await.expect("apply");
    assert_eq!(report2.failed, 0, "{report2:?}");
    let serials = store.field_history("device", report.created[&2].get(), "serial_number", 10).await.expect("field");
    assert_eq!(serials.len(), 2, "created with SN00002, changed to SN-NEW");
    assert_eq!(serials[0].record.changes.len(), 1, "only the asked field");
    assert_eq!(serials[0].record.changes[0].before.as_deref(), Some("SN00002"));
    assert_eq!(serials[0].record.changes[0].after.as_deref(), Some("SN-NEW"));
}

/// A person's locked field survives a higher-priority fact (recorded as suppressed); a plan
/// gone stale fails only its own item; ambiguous identity is a stored conflict.
async fn locks_stale_plans_and_conflicts<S: ReconcileStore + HistoryStore + InventoryStore>(store: &S) {
    let reconciler = Reconciler::default();
    let (id, _) =
        plan_and_store(store, &reconciler, &Scan::new("s1"), &[facts(100, "snmp", 10), facts(102, "snmp", 10)])
            .await
            .expect("plan");
    let report = store.apply_plan(id, &Actor::source("snmp")).await.expect("apply");
    let (a, b) = (report.created[&0], report.created[&1]);

    let alice = Actor::user("alice");
    store.set_field(a, Field::Model, Some("Hand-typed model"), &alice, true).await.expect("lock");
    let mut better = facts(100, "redfish", 90);
    better.model = Some("Redfish model".into());
    let (_, plan) = plan_and_store(store, &reconciler, &Scan::new("s2"), &[better]).await.expect("plan");
    assert!(!plan.items.iter().any(|i| matches!(i.change, Change::UpdateDevice { .. })), "{:?}", plan.items);
    assert!(plan.suppressed.iter().any(|s| s.field == Field::Model && s.value == "Redfish model"));
    let model_history = store.field_history("device", a.get(), "model", 10).await.expect("history");
    assert_eq!(model_history[0].record.actor.kind, ActorKind::User);
    assert_eq!(model_history[0].record.changes[0].after.as_deref(), Some("Hand-typed model"));

    // Plan a hostname for both, then a person edits one before the apply: that item fails
    // as stale, the other applies.
    let mut ha = facts(100, "redfish", 90);
    ha.hostname = Some("a.example.com".parse().expect("hostname"));
    let mut hb = facts(102, "redfish", 90);
    hb.hostname = Some("b.example.com".parse().expect("hostname"));
    let (id, plan) = plan_and_store(store, &reconciler, &Scan::new("s3"), &[ha, hb]).await.expect("plan");
    let updates = plan.items.iter().filter(|i| matches!(i.change, Change::UpdateDevice { .. })).count();
    assert_eq!(updates, 2, "{:?}", plan.items);
    store.set_field(b, Field::Hostname, Some("typed.example.com"), &alice, false).await.expect("edit");
    let report = store.apply_plan(id, &Actor::source("redfish")).await.expect("apply");
    assert_eq!(report.failed, 1, "{report:?}");
    let stored = store.load_plan(id).await.expect("plan");
    let failed: Vec<&String> = stored
        .items
        .iter()
        .filter_map(|i| match &i.status {
            ItemStatus::Failed(r) => Some(r),
            _ => None,
        })
        .collect();
    assert!(failed[0].contains("stale"), "{failed:?}");
    assert_eq!(Repository::<Device>::get(store, a).await.expect("a").hostname.as_deref(), Some("a.example.com"));
    assert_eq!(Repository::<Device>::get(store, b).await.expect("b").hostname.as_deref(), Some("typed.example.com"));
    // Applying again does nothing more: the items are settled.
    let again = store.apply_plan(id, &Actor::source("redfish")).await.expect("apply again");
    assert_eq!((again.applied, again.failed), (0, 0));

    // Facts naming b's inventory id and a's serial: ambiguous, stored, nothing written.
    let mut both = facts(100, "agent", 5);
    both.inventory_id = Some(b);
    let before = device_count(store).await;
    let (id, plan) = plan_and_store(store, &reconciler, &Scan::new("s4"), &[both]).await.expect("plan");
    assert_eq!(plan.counts().conflict, 1, "{:?}", plan.items);
    store.apply_plan(id, &Actor::source("agent")).await.expect("apply");
    assert_eq!(device_count(store).await, before);
    let open = store.open_conflicts(10).await.expect("conflicts");
    assert_eq!(open.len(), 1);
    assert!(store.resolve_conflict(open[0].id, &alice, Some("a's NIC was moved")).await.expect("resolve"));
    assert!(!store.resolve_conflict(open[0].id, &alice, None).await.expect("twice"));
    assert!(store.open_conflicts(10).await.expect("conflicts").is_empty());
}

/// Everything a store holds about its devices that an apply writes: each device, its
/// components, and their history records. Batches side by side take ids in another order
/// than one device at a time, so devices are named by their management address, components
/// by their device and facts, and ids are left out.
async fn applied_state<S: HistoryStore + InventoryStore>(store: &S) -> Vec<String> {
    let devices = Repository::<Device>::list(store).await.expect("devices");
    let name: BTreeMap<i64, String> =
        devices.iter().map(|d| (d.id.get(), format!("{:?}", d.value.management_ip))).collect();
    let rename = |mut r: ralph_core::history::HistoryRecord| {
        r.object_id = 0;
        // "scan S, plan P item N": item numbers follow device ids too.
        if let Some(m) = &mut r.message
            && let Some(at) = m.find(" item ")
        {
            m.truncate(at);
        }
        if let Some((_, id)) = &mut r.related {
            *id = 0;
        }
        for c in &mut r.changes {
            if c.field == "device_id" {
                for v in [&mut c.before, &mut c.after] {
                    if let Some(id) = v.as_ref().and_then(|v| v.parse::<i64>().ok()) {
                        *v = name.get(&id).cloned();
                    }
                }
            }
        }
        format!("{r:?}")
    };
    let mut out = Vec::new();
    for d in &devices {
        let mut value = d.value.clone();
        value.model = ralph_core::Id::new(0);
        let mut lines = vec![format!("{} {value:?}", name[&d.id.get()])];
        for e in store.object_history("device", d.id.get(), 100).await.expect("history") {
            lines.push(format!("  {}", rename(e.record)));
        }
        let mut components = Vec::new();
        for c in store.device_components(d.id).await.expect("components") {
            let mut part = vec![format!("  {:?}", c.value.kind)];
            for e in store.object_history("component", c.id.get(), 100).await.expect("history") {
                part.push(format!("    {}", rename(e.record)));
            }
            components.push(part);
        }
        components.sort();
        lines.extend(components.into_iter().flatten());
        out.push(lines);
    }
    out.sort();
    out.into_iter().flatten().collect()
}

/// The batched fast path and the one-device path give the same outcome: the same plans
/// applied on two fresh stores, one without batching, leave the same devices, components,
/// history, item statuses and provenance (the next plan of the same facts is a no-op on both).
/// Covered: devices created with their ports, host names changed (some with a new model),
/// ports added to stored devices, a batch that falls back because one device was edited after planning, and (on
/// PostgreSQL and MariaDB) batches applied side by side; the callers check that the fast path
/// was taken.
async fn batched_and_one_by_one_applies_agree<S>(fast: &S, slow: &S)
where
    S: ReconcileStore + HistoryStore + InventoryStore,
{
    let reconciler = Reconciler::default();
    let alice = Actor::user("alice");
    // More than two batches' worth of devices (a batch holds 500), so PostgreSQL and MariaDB
    // run batches side by side.
    const MACHINES: u32 = 1_100;
    let cold: Vec<Facts> = (0..MACHINES).flat_map(|i| [facts(i, "snmp", 10), facts(i, "redfish", 50)]).collect();
    let warm = |tag: &str, every: u32| -> Vec<Facts> {
        (0..MACHINES)
            .map(|i| {
                let mut f = facts(i, "redfish", 50);
                f.hostname = Some(format!("{tag}{i}.example.com").parse().expect("hostname"));
                if i % 13 == 0 {
                    // A new model: this device's columns are written apart from the others'.
                    f.model = Some(format!("{tag} model"));
                }
                if i % every == 0 {
                    f.components.push(ComponentKind::Ethernet { mac: mac(i, every), label: None, speed_mbps: None });
                }
                f
            })
            .collect()
    };
    let (warm, warmer) = (warm("host", 5), warm("node", 7));
    let mut outcomes = Vec::new();
    for store in [fast, slow] {
        let mut seen = Vec::new();
        for (n, facts) in [&cold, &warm, &warmer].into_iter().enumerate() {
            let (id, plan) =
                plan_and_store(store, &reconciler, &Scan::new(&format!("agree-{n}")), facts).await.expect("plan");
            assert!(plan.writes());
            if n == 1 {
                // A person edits one device (machine 0) after the plan: its update is stale.
                let machine0: std::net::IpAddr = "10.9.0.1".parse().expect("ip");
                let device = Repository::<Device>::list(store)
                    .await
                    .expect("devices")
                    .into_iter()
                    .find(|d| d.value.management_ip == Some(machine0))
                    .expect("machine 0")
                    .id;
                assert!(
                    plan.items
                        .iter()
                        .any(|i| matches!(&i.change, Change::UpdateDevice { device: d, .. } if *d == device))
                );
                store.set_field(device, Field::Hostname, Some("typed.example.com"), &alice, false).await.expect("edit");
            }
            let report = store.apply_plan(id, &Actor::source("redfish")).await.expect("apply");
            let statuses: Vec<(u32, ItemStatus)> =
                store.load_plan(id).await.expect("plan").items.into_iter().map(|i| (i.seq, i.status)).collect();
            // Statuses by kind, counted (a failure's reason names a device id, and a plan's
            // items follow device ids, which batches side by side take in another order).
            let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
            for kind in statuses.iter().map(|(_, st)| match st {
                ItemStatus::Applied => "applied",
                ItemStatus::Failed(r) if r.contains("stale") => "failed: stale",
                ItemStatus::Failed(_) => "failed",
                ItemStatus::Skipped(_) => "skipped",
                ItemStatus::Pending => "pending",
            }) {
                *kinds.entry(kind).or_default() += 1;
            }
            seen.push(format!(
                "{} {} {} {:?} {kinds:?}",
                report.applied,
                report.failed,
                report.skipped,
                report.created.keys().collect::<Vec<_>>()
            ));
        }
        assert!(seen[1].contains("stale"), "the edited device's update fails as stale: {}", seen[1]);
        let (_, again) = plan_and_store(store, &reconciler, &Scan::new("agree-3"), &warmer).await.expect("plan");
        let again: Vec<String> =
            again.items.iter().map(|i| format!("{:?}", i.change)).chain([format!("{:?}", again.bookkeeping)]).collect();
        outcomes.push((seen, applied_state(store).await, again));
    }
    let (fast, slow) = (&outcomes[0], &outcomes[1]);
    for (n, (a, b)) in fast.0.iter().zip(&slow.0).enumerate() {
        if a != b {
            let at = a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count();
            let around = |t: &str| t.get(at.saturating_sub(120)..(at + 120).min(t.len())).unwrap_or(t).to_owned();
            panic!("plan {n}: reports and item statuses differ at byte {at}: {} | {}", around(a), around(b));
        }
    }
    assert_eq!(fast.1.len(), slow.1.len(), "devices, components and history rows");
    for (a, b) in fast.1.iter().zip(&slow.1) {
        assert_eq!(a, b);
    }
    assert_eq!(fast.2, slow.2, "the next plan of the same facts (provenance)");
    assert!(fast.1.iter().filter(|l| l.contains("Create")).count() >= MACHINES as usize * 3, "{:?}", &fast.1[..10]);
}

/// Inventory writes through the store are on record (actor, diffs, deletions), empty changes
/// are not; pruning by count and by age.
/// One field's history walks past rows of other fields, page after page, and past rows whose
/// text names the field only as a value; a name JSON escapes is answered too.
async fn field_history_pages_past_other_fields<S>(store: &S)
where
    S: HistoryStore + InventoryStore,
{
    let model = store
        .create(&DeviceModel::new("R650", Some("Dell"), DeviceType::RackServer, 1).expect("model"))
        .await
        .expect("model");
    let mut device = Device::new(model, None, Some("FH-0"), None);
    let id = store.create(&device).await.expect("create");
    // Every third update changes the host name; the others change the serial number, half of
    // them to the text "hostname" (a row a text search for the field finds, but about another).
    for n in 1..=450_u32 {
        if n % 3 == 0 {
            device.hostname = Some(format!("fh{n}.example.com"));
        } else if n % 3 == 1 {
            device.serial_number = Some("hostname".into());
        } else {
            device.serial_number = Some(format!("FH-{n}"));
        }
        store.update(id, &device).await.expect("update");
    }
    let hostnames = store.field_history("device", id.get(), "hostname", 1_000).await.expect("field history");
    let after: Vec<String> = hostnames
        .iter()
        .map(|e| {
            assert_eq!(e.record.changes.len(), 1, "{e:?}");
            assert_eq!(e.record.changes[0].field, "hostname");
            e.record.changes[0].after.clone().expect("a host name")
        })
        .collect();
    let expected: Vec<String> = (1..=150).rev().map(|k| format!("fh{}.example.com", 3 * k)).collect();
    assert_eq!(after, expected, "every host name change, newest first");
    let newest = store.field_history("device", id.get(), "hostname", 7).await.expect("field history");
    assert_eq!(
        newest.iter().map(|e| e.id).collect::<Vec<_>>(),
        hostnames[..7].iter().map(|e| e.id).collect::<Vec<_>>()
    );
    let serials = store.field_history("device", id.get(), "serial_number", 1_000).await.expect("serials");
    assert_eq!(serials.len(), 301, "300 changes and the creation");
    assert!(store.field_history("device", id.get(), "we\"ird\\", 10).await.expect("escaped name").is_empty());
}

async fn inventory_history_and_pruning<S>(store: &S, as_bob: &S)
where
    S: ReconcileStore + HistoryStore + InventoryStore,
{
    let model = store
        .create(&DeviceModel::new("R640", Some("Dell"), DeviceType::RackServer, 1).expect("model"))
        .await
        .expect("model");
    let mut device = Device::new(model, None, Some("INV-1"), None);
    let id = as_bob.create(&device).await.expect("create");
    as_bob.update(id, &device).await.expect("no-op update");
    device.hostname = Some("inv1.example.com".into());
    as_bob.update(id, &device).await.expect("update");
    let rows = store.object_history("device", id.get(), 10).await.expect("history");
    assert_eq!(rows.len(), 2, "create and one update; the no-op wrote nothing: {rows:?}");
    assert_eq!(rows[0].record.actor, Actor::user("bob"));
    assert_eq!(rows[0].record.changes.len(), 1);
    assert_eq!(rows[0].record.changes[0].field, "hostname");
    Repository::<Device>::delete(as_bob, id).await.expect("delete");
    let gone = store.deleted_objects("device", 10).await.expect("deleted");
    assert_eq!(gone[0].record.object_id, id.get());
    assert!(gone[0].record.changes.iter().any(|c| c.field == "serial_number" && c.before.as_deref() == Some("INV-1")));

    device.serial_number = Some("INV-2".into());
    let id2 = as_bob.create(&device).await.expect("create");
    for n in 0..25 {
        device.hostname = Some(format!("h{n}-b.example.com"));
        as_bob.update(id2, &device).await.expect("update");
    }
    assert_eq!(store.object_history("device", id2.get(), 100).await.expect("history").len(), 26);
    let pruned = store.prune_history(&Retention::default().with_max_per_object(5).with_chunk(4)).await.expect("prune");
    assert!(pruned >= 21, "{pruned}");
    let kept = store.object_history("device", id2.get(), 100).await.expect("history");
    assert_eq!(kept.len(), 5);
    assert_eq!(kept[0].record.changes[0].after.as_deref(), Some("h24-b.example.com"), "the newest are kept");
    store.prune_history(&Retention::default().with_max_age(Duration::ZERO).with_chunk(3)).await.expect("prune all");
    assert!(store.object_history("device", id2.get(), 100).await.expect("history").is_empty());
}

/// Overlapping plans (the same facts, planned from the same empty snapshot) applied by many
/// tasks at once: one device per machine, one create row per device, no lost history row.
async fn overlapping_applies<S>(store: Arc<S>, tasks: u32, machines: u32)
where
    S: ReconcileStore + HistoryStore + InventoryStore + 'static,
{
    let reconciler = Reconciler::default();
    let all: Vec<Facts> = (0..machines).flat_map(|i| [facts(i, "snmp", 10), facts(i, "redfish", 50)]).collect();
    // Every plan is made before any apply, so they all propose the same creates.
    let mut plans = Vec::new();
    for t in 0..tasks {
        plans.push(plan_and_store(&*store, &reconciler, &Scan::new(&format!("race-{t}")), &all).await.expect("plan").0);
    }
    let handles: Vec<_> = plans
        .into_iter()
        .map(|id| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.apply_plan(id, &Actor::source("race")).await.expect("apply") })
        })
        .collect();
    let mut reports = Vec::new();
    for h in handles {
        reports.push(h.await.expect("task"));
    }
    check_no_duplicates(
        &*store,
        machines,
        &reports.iter().map(|r| (r.applied, r.correlation.clone())).collect::<Vec<_>>(),
    )
    .await;
}

/// One device per machine; every applied item has exactly its history row.
async fn check_no_duplicates<S: HistoryStore + InventoryStore>(store: &S, machines: u32, applies: &[(usize, String)]) {
    assert_eq!(device_count(store).await, machines as usize, "one device per machine");
    let mut creates = 0;
    for (applied, correlation) in applies {
        let rows = store.correlated(correlation).await.expect("rows");
        assert_eq!(rows.len(), *applied, "one history row per applied item");
        creates +=
            rows.iter().filter(|r| r.record.object_type == "device" && r.record.action == Action::Create).count();
    }
    assert_eq!(creates, machines as usize, "exactly one create row per device");
    for i in (0..machines).step_by(2) {
        assert!(store.find_device_by_serial(&format!("SN{i:05}")).await.expect("find").is_some(), "machine {i}");
    }
}

/// The child process: plans the shared facts, waits for the start file, applies, prints
/// `APPLIED <n> <correlation>`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by the multi-process tests as a child process"]
async fn reconcile_child_process() {
    let spec = std::env::var(CHILD_VAR).expect("child spec");
    let parts: Vec<&str> = spec.split('|').collect();
    let (backend, url, worker, machines) = (parts[0], parts[1], parts[2], parts[3].parse::<u32>().expect("machines"));
    let store = ralph_store::AnyStore::connect(url).await.expect("connect");
    assert!(store.backend().to_ascii_lowercase().starts_with(&backend[..2]), "{backend}");
    let all: Vec<Facts> = (0..machines).flat_map(|i| [facts(i, "snmp", 10), facts(i, "redfish", 50)]).collect();
    let (id, _) = plan_and_store(&store, &Reconciler::default(), &Scan::new(worker), &all).await.expect("plan");
    // Start together: the parent removes the gate once every child has planned.
    let gate = std::path::PathBuf::from(parts[4]);
    println!("PLANNED");
    while gate.exists() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let report = store.apply_plan(id, &Actor::source(worker)).await.expect("apply");
    println!("APPLIED {} {}", report.applied, report.correlation);
}

/// Several processes plan the same facts against an empty store, then apply at once.
async fn overlapping_processes<S: HistoryStore + InventoryStore>(store: &S, backend: &str, url: &str) {
    const MACHINES: u32 = 40;
    let dir = tempfile::tempdir().expect("tempdir");
    let gate = dir.path().join("gate");
    std::fs::write(&gate, b"wait").expect("gate");
    let mut children: Vec<(Child, BufReader<ChildStdout>)> = (0..3)
        .map(|w| {
            let mut child = Command::new(std::env::current_exe().expect("test binary"))
                .args(["--ignored", "--exact", "reconcile_child_process", "--nocapture", "--test-threads=1"])
                .env(CHILD_VAR, format!("{backend}|{url}|proc-{w}|{MACHINES}|{}", gate.display()))
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawn child");
            let out = BufReader::new(child.stdout.take().expect("stdout"));
            (child, out)
        })
        .collect();
    // Every child plans before any applies (plans of an empty store all propose creates):
    // the gate opens once each has said so, however long a loaded machine takes.
    for (_, out) in &mut children {
        let mut line = String::new();
        loop {
            line.clear();
            assert!(out.read_line(&mut line).expect("read child output") > 0, "a child exited before planning");
            // libtest may have printed `test name ... ` on the same line.
            if line.contains("PLANNED") {
                break;
            }
        }
    }
    std::fs::remove_file(&gate).expect("open the gate");
    let mut applies = Vec::new();
    for (mut child, mut out) in children {
        let mut text = String::new();
        out.read_to_string(&mut text).expect("child output");
        let status = child.wait().expect("child");
        assert!(status.success(), "a child failed: {status}");
        let line = text.lines().find(|l| l.starts_with("APPLIED ")).expect("child reported");
        let mut parts = line.split_whitespace().skip(1);
        let applied: usize = parts.next().expect("count").parse().expect("count");
        applies.push((applied, parts.next().expect("correlation").to_owned()));
    }
    check_no_duplicates(store, MACHINES, &applies).await;
}

#[cfg(feature = "sqlite")]
mod sqlite {
    use super::*;
    use ralph_store::SqliteStore;

    async fn store() -> (SqliteStore, String, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("ralph.sqlite3").display());
        (SqliteStore::connect(&url).await.expect("store"), url, dir)
    }

    #[tokio::test]
    async fn sqlite_plan_apply_and_history() {
        let (s, _, _dir) = store().await;
        plan_apply_and_history(&s).await;
    }
    #[tokio::test]
    async fn sqlite_locks_stale_plans_and_conflicts() {
        let (s, _, _dir) = store().await;
        locks_stale_plans_and_conflicts(&s).await;
    }
    #[tokio::test]
    async fn sqlite_inventory_history_and_pruning() {
        let (s, _, _dir) = store().await;
        inventory_history_and_pruning(&s, &s.acting_as(Actor::user("bob"))).await;
    }
    #[tokio::test]
    async fn sqlite_field_history_pages_past_other_fields() {
        let (s, _, _dir) = store().await;
        field_history_pages_past_other_fields(&s).await;
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sqlite_overlapping_applies() {
        let (s, _, _dir) = store().await;
        overlapping_applies(Arc::new(s), 6, 25).await;
    }
    #[tokio::test]
    async fn sqlite_batched_and_one_by_one_applies_agree() {
        let (fast, _, _a) = store().await;
        let (slow, _, _b) = store().await;
        batched_and_one_by_one_applies_agree(&fast, &slow.clone().without_batched_apply()).await;
        assert!(fast.batched_devices() >= 1_000, "{}", fast.batched_devices());
        assert_eq!(slow.batched_devices(), 0);
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_overlapping_processes() {
        let (s, url, _dir) = store().await;
        overlapping_processes(&s, "sqlite", &url).await;
    }
}

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;
    use queue_common::pg;
    use ralph_store::PgStore;

    macro_rules! pg_test {
        ($name:ident, $tag:literal, |$s:ident, $url:ident| $body:expr) => {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let Some(db) = pg::fresh($tag).await else { return };
                let $url = db.url.clone();
                let $s = PgStore::connect(&$url).await.expect("store");
                $body.await;
                $s.close().await;
                pg::drop_db(db).await;
            }
        };
    }

    pg_test!(pg_plan_apply_and_history, "rplan", |s, _u| plan_apply_and_history(&s));
    pg_test!(pg_locks_stale_plans_and_conflicts, "rlock", |s, _u| locks_stale_plans_and_conflicts(&s));
    pg_test!(pg_inventory_history_and_pruning, "rhist", |s, _u| inventory_history_and_pruning(
        &s,
        &s.acting_as(Actor::user("bob"))
    ));
    pg_test!(pg_field_history_pages_past_other_fields, "rfield", |s, _u| field_history_pages_past_other_fields(&s));
    pg_test!(pg_overlapping_applies, "rrace", |s, _u| overlapping_applies(Arc::new(s.clone()), 6, 25));
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pg_batched_and_one_by_one_applies_agree() {
        let Some(a) = pg::fresh("ragree_a").await else { return };
        let Some(b) = pg::fresh("ragree_b").await else { return };
        let fast = PgStore::connect(&a.url).await.expect("store");
        let slow = PgStore::connect(&b.url).await.expect("store");
        batched_and_one_by_one_applies_agree(&fast, &slow.clone().without_batched_apply()).await;
        assert!(fast.batched_devices() >= 1_000, "{}", fast.batched_devices());
        assert_eq!(slow.batched_devices(), 0);
        fast.close().await;
        slow.close().await;
        pg::drop_db(a).await;
        pg::drop_db(b).await;
    }
    pg_test!(pg_overlapping_processes, "rproc", |s, u| overlapping_processes(&s, "postgres", &u));
}

#[cfg(feature = "mysql")]
mod mysql {
    use super::*;
    use queue_common::my;
    use ralph_store::MySqlStore;

    macro_rules! my_test {
        ($name:ident, $tag:literal, |$s:ident, $url:ident| $body:expr) => {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let Some(db) = my::fresh($tag).await else { return };
                let $url = db.url.clone();
                let $s = MySqlStore::connect(&$url).await.expect("store");
                $body.await;
                $s.close().await;
                my::drop_db(db).await;
            }
        };
    }

    my_test!(my_plan_apply_and_history, "rplan", |s, _u| plan_apply_and_history(&s));
    my_test!(my_locks_stale_plans_and_conflicts, "rlock", |s, _u| locks_stale_plans_and_conflicts(&s));
    my_test!(my_inventory_history_and_pruning, "rhist", |s, _u| inventory_history_and_pruning(
        &s,
        &s.acting_as(Actor::user("bob"))
    ));
    my_test!(my_field_history_pages_past_other_fields, "rfield", |s, _u| field_history_pages_past_other_fields(&s));
    my_test!(my_overlapping_applies, "rrace", |s, _u| overlapping_applies(Arc::new(s.clone()), 6, 25));
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn my_batched_and_one_by_one_applies_agree() {
        let Some(a) = my::fresh("ragree_a").await else { return };
        let Some(b) = my::fresh("ragree_b").await else { return };
        let fast = MySqlStore::connect(&a.url).await.expect("store");
        let slow = MySqlStore::connect(&b.url).await.expect("store");
        batched_and_one_by_one_applies_agree(&fast, &slow.clone().without_batched_apply()).await;
        assert!(fast.batched_devices() >= 1_000, "{}", fast.batched_devices());
        assert_eq!(slow.batched_devices(), 0);
        fast.close().await;
        slow.close().await;
        my::drop_db(a).await;
        my::drop_db(b).await;
    }
    my_test!(my_overlapping_processes, "rproc", |s, u| overlapping_processes(&s, "mysql", &u));
}

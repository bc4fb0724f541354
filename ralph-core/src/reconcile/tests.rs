//! Property tests and scenarios of the reconciler: idempotence, order independence, locks,
//! ambiguity, moves, misses and plan order.

use std::collections::BTreeSet;
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use proptest::prelude::*;

use super::*;
use crate::{ComponentKind, DeviceType, Hostname, Id, MacAddress};

fn at(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap_or_default()
}

fn mac(last: u8) -> MacAddress {
    MacAddress::from_octets([0xa0, 0x36, 0x9f, 0, 0, last])
}

fn ip(last: u8) -> IpAddr {
    IpAddr::from([10, 0, 0, last])
}

fn ids() -> SequentialIds {
    SequentialIds { next_device: 100, next_component: 1000 }
}

const SOURCES: [(&str, u32); 4] = [("agent", 10), ("redfish", 20), ("snmp", 20), ("puppet", 30)];
const SERIALS: [&str; 3] = ["S1", "S2", "S3"];
const DISKS: [(&str, Option<&str>); 3] = [("/dev/sda", Some("D1")), ("/dev/sdb", Some("D2")), ("/dev/sdc", None)];

fn source_strategy() -> impl Strategy<Value = Source> {
    (0..SOURCES.len()).prop_map(|i| Source { name: SOURCES[i].0.to_owned(), priority: SOURCES[i].1 })
}

fn component_strategy() -> impl Strategy<Value = Vec<ComponentKind>> {
    let eth = prop::collection::btree_map(0u8..5, prop::option::of("eth[0-2]"), 0..3).prop_map(|m| {
        m.into_iter()
            .map(|(i, label)| ComponentKind::Ethernet { mac: mac(i), label, speed_mbps: None })
            .collect::<Vec<_>>()
    });
    let disks = prop::collection::btree_map(0usize..DISKS.len(), 100u64..102, 0..3).prop_map(|m| {
        m.into_iter()
            .map(|(i, size_gib)| ComponentKind::Disk {
                mount_point: DISKS[i].0.to_owned(),
                size_gib,
                serial_number: DISKS[i].1.map(str::to_owned),
            })
            .collect::<Vec<_>>()
    });
    let cpus = prop::collection::btree_map(0u32..2, prop::option::of("Xeon [AB]"), 0..2).prop_map(|m| {
        m.into_iter().map(|(index, model)| ComponentKind::Processor { index, model, cores: None }).collect::<Vec<_>>()
    });
    (eth, disks, cpus).prop_map(|(mut a, b, c)| {
        a.extend(b);
        a.extend(c);
        a
    })
}

fn covers_strategy() -> impl Strategy<Value = BTreeSet<ComponentClass>> {
    prop::collection::btree_set(
        prop_oneof![Just(ComponentClass::Ethernet), Just(ComponentClass::Disk), Just(ComponentClass::Processor)],
        0..3,
    )
}

prop_compose! {
    fn facts_strategy(addresses: u8)(
        address in 1..=addresses,
        source in source_strategy(),
        time in 0i64..3,
        serial in prop::option::of(prop_oneof![Just("To Be Filled By O.E.M."), (0..SERIALS.len()).prop_map(|i| SERIALS[i])]),
        macs in prop::collection::vec(0u8..5, 0..2),
        model in prop::option::of(prop_oneof![Just("m1"), Just("m2")]),
        device_type in prop::option::of(Just(DeviceType::RackServer)),
        hostname in prop::option::of(prop_oneof![Just("h1"), Just("h2.example.com")]),
        is_management in any::<bool>(),
        components in component_strategy(),
        covers in covers_strategy(),
        software in prop::collection::vec(("ssh|nginx", prop::option::of("1|2")), 0..2),
    ) -> Facts {
        let mut f = Facts::new(ip(address), source, at(time));
        f.serial_number = serial.map(str::to_owned);
        f.macs = macs.into_iter().map(mac).collect();
        f.model = model.map(str::to_owned);
        f.device_type = device_type;
        f.hostname = hostname.and_then(|h| Hostname::parse(h).ok());
        f.is_management = is_management;
        f.components = components;
        f.covers = covers;
        f.software = software.into_iter().map(|(name, version)| Software { name, version }).collect();
        f
    }
}

/// A snapshot built by applying random facts of an earlier scan, then some person edits.
fn snapshot_strategy() -> impl Strategy<Value = Snapshot> {
    (prop::collection::vec(facts_strategy(3), 0..4), any::<bool>()).prop_map(|(facts, lock)| {
        let mut snapshot = Snapshot::default();
        let mut plan = Reconciler::default().plan(&snapshot, &Scan::new("scan-0"), &facts);
        // Ids apart from those the tests allocate later.
        snapshot.apply(&mut plan, &mut SequentialIds { next_device: 500, next_component: 5000 });
        if let (true, Some(d)) = (lock, snapshot.devices.first_mut()) {
            d.set_by_person(Field::Hostname, "pinned", Provenance::person("alice", 5, at(0)), true);
        }
        snapshot
    })
}

fn scope() -> Scan {
    Scan::new("scan-1").with_network("10.0.0.0/24".parse().expect("network"))
}

fn device_with(id: i64, serial: &str, components: Vec<(i64, ComponentKind)>) -> DeviceState {
    let mut d = DeviceState::new(Id::new(id));
    d.fields.insert(
        Field::SerialNumber,
        FieldState {
            value: serial.to_owned(),
            provenance: Provenance { source: "agent".into(), priority: 10, at: at(0), by_person: false },
            locked: false,
        },
    );
    d.components = components
        .into_iter()
        .map(|(cid, kind)| ComponentState {
            id: Id::new(cid),
            kind,
            provenance: Provenance { source: "agent".into(), priority: 10, at: at(0), by_person: false },
            misses: Misses::default(),
        })
        .collect();
    d
}

fn eth(m: u8) -> ComponentKind {
    ComponentKind::Ethernet { mac: mac(m), label: None, speed_mbps: None }
}

/// Device fields and components without ids, for comparing outcomes reached in two orders.
type Shape = (Vec<(Field, String, Provenance)>, Vec<(ComponentKind, Provenance)>);

fn shape(snapshot: &Snapshot) -> Vec<Shape> {
    let mut out: Vec<_> = snapshot
        .devices
        .iter()
        .map(|d| {
            let fields = d.fields.iter().map(|(f, s)| (*f, s.value.clone(), s.provenance.clone())).collect();
            let mut comps: Vec<_> = d.components.iter().map(|c| (c.kind.clone(), c.provenance.clone())).collect();
            comps.sort_by(|a, b| a.0.cmp(&b.0));
            (fields, comps)
        })
        .collect();
    out.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn the_same_facts_twice_are_a_noop_the_second_time(
        snapshot in snapshot_strategy(),
        facts in prop::collection::vec(facts_strategy(4), 0..6),
        eager in any::<bool>(),
    ) {
        // Eager: delete on the first miss, devices included.
        let reconciler = if eager {
            Reconciler::new(ReconcileConfig::default().with_merge(
                MergeConfig::default().with_component_misses_before_delete(1).with_device_misses_before_delete(Some(1)),
            ))
        } else {
            Reconciler::default()
        };
        let mut snapshot = snapshot;
        let mut first = reconciler.plan(&snapshot, &scope(), &facts);
        snapshot.apply(&mut first, &mut ids());
        prop_assert!(first.items.iter().all(|i| i.status == ItemStatus::Applied), "{:#?}", first.items);
        let second = reconciler.plan(&snapshot, &scope(), &facts);
        prop_assert!(second.is_noop(), "second plan: {:#?}", second);
        prop_assert_eq!(first.checksums, second.checksums);
    }

    #[test]
    fn the_plan_does_not_depend_on_the_order_facts_arrive_in(
        snapshot in snapshot_strategy(),
        facts in prop::collection::vec(facts_strategy(4), 0..6),
        swaps in prop::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>()), 0..8),
    ) {
        let reconciler = Reconciler::default();
        let mut shuffled = facts.clone();
        if !shuffled.is_empty() {
            for (i, j) in swaps {
                let len = shuffled.len();
                shuffled.swap(i.index(len), j.index(len));
            }
        }
        let a = reconciler.plan(&snapshot, &scope(), &facts);
        let b = reconciler.plan(&snapshot, &scope(), &shuffled);
        prop_assert_eq!(&a, &b);
    }

    #[test]
    fn sources_arriving_in_separate_scans_in_either_order_agree(
        facts in prop::collection::vec(facts_strategy(1), 1..4),
    ) {
        // Every fact names the stored device, so all of them resolve to it.
        let start = Snapshot { devices: vec![device_with(1, "S1", vec![])] };
        let facts: Vec<Facts> = facts
            .into_iter()
            .map(|mut f| {
                f.inventory_id = Some(Id::new(1));
                f.serial_number = None; // disagreeing serials in one scan are a conflict by design
                f.covers.clear(); // misses count scans, not sources: keep them out of this one
                f.macs.clear();
                f.components.retain(|c| !matches!(c, ComponentKind::Ethernet { .. }));
                f
            })
            .collect();
        let reconciler = Reconciler::default();
        let run = |order: &[Facts]| {
            let mut snapshot = start.clone();
            let mut alloc = ids();
            for (n, f) in order.iter().enumerate() {
                let mut plan = reconciler.plan(&snapshot, &Scan::new(&format!("scan-{n}")), std::slice::from_ref(f));
                snapshot.apply(&mut plan, &mut alloc);
            }
            snapshot
        };
        let mut reversed = facts.clone();
        reversed.reverse();
        prop_assert_eq!(shape(&run(&facts)), shape(&run(&reversed)));
        let mut together = start.clone();
        let mut plan = reconciler.plan(&together, &Scan::new("all"), &facts);
        together.apply(&mut plan, &mut ids());
        prop_assert_eq!(shape(&run(&facts)), shape(&together));
    }

    #[test]
    fn a_locked_field_survives_any_fact(
        facts in prop::collection::vec(facts_strategy(1), 1..5),
        priorities in prop::collection::vec(any::<u32>(), 5),
        lock_priority in any::<u32>(),
    ) {
        let mut device = device_with(1, "S1", vec![]);
        device.set_by_person(Field::Model, "locked model", Provenance::person("alice", lock_priority, at(0)), true);
        let mut snapshot = Snapshot { devices: vec![device] };
        let facts: Vec<Facts> = facts
            .into_iter()
            .zip(priorities)
            .map(|(mut f, p)| {
                f.inventory_id = Some(Id::new(1));
                f.serial_number = None;
                f.source.priority = p;
                f.model = Some("scanned model".into());
                f
            })
            .collect();
        let mut plan = Reconciler::default().plan(&snapshot, &scope(), &facts);
        snapshot.apply(&mut plan, &mut ids());
        prop_assert_eq!(snapshot.devices[0].value(Field::Model), Some("locked model"));
        prop_assert!(plan.suppressed.iter().any(|s| s.field == Field::Model
            && s.value == "scanned model" && s.reason == SuppressedReason::Locked));
    }

    #[test]
    fn a_persons_value_survives_lower_priority_facts(
        facts in prop::collection::vec(facts_strategy(1), 1..5),
        person in 1u32..,
    ) {
        let mut device = device_with(1, "S1", vec![]);
        device.set_by_person(Field::Hostname, "set-by-hand", Provenance::person("alice", person, at(0)), false);
        let mut snapshot = Snapshot { devices: vec![device] };
        let facts: Vec<Facts> = facts
            .into_iter()
            .map(|mut f| {
                f.inventory_id = Some(Id::new(1));
                f.serial_number = None;
                f.source.priority = f.source.priority.min(person - 1);
                f.hostname = Hostname::parse("from-scan").ok();
                f
            })
            .collect();
        let mut plan = Reconciler::default().plan(&snapshot, &scope(), &facts);
        snapshot.apply(&mut plan, &mut ids());
        prop_assert_eq!(snapshot.devices[0].value(Field::Hostname), Some("set-by-hand"));
        prop_assert!(plan.suppressed.iter().any(|s| s.value == "from-scan" && s.reason == SuppressedReason::Outranked));
    }

    #[test]
    fn ambiguous_identity_never_writes(
        extra in facts_strategy(1),
        inventory_id in prop::option::of(prop_oneof![Just(1i64), Just(2), Just(99)]),
    ) {
        // The serial says device 1, a MAC says device 2 (or the id names a third).
        let mut serial_less = device_with(2, "unused", vec![(20, eth(4))]);
        serial_less.fields.clear();
        let snapshot = Snapshot { devices: vec![device_with(1, "S1", vec![(10, eth(0))]), serial_less] };
        let mut facts = extra;
        facts.serial_number = Some("S1".into());
        facts.macs = vec![mac(4)];
        facts.components.retain(|c| !matches!(c, ComponentKind::Ethernet { .. }));
        facts.inventory_id = inventory_id.map(Id::new);
        let plan = Reconciler::default().plan(&snapshot, &scope(), &[facts]);
        prop_assert!(!plan.writes(), "{:#?}", plan.items);
        prop_assert!(plan.bookkeeping.is_empty(), "{:#?}", plan.bookkeeping);
        prop_assert_eq!(plan.counts().conflict, 1);
    }

    #[test]
    fn a_moved_component_keeps_its_id(
        target_exists in any::<bool>(),
        label in prop::option::of("eth[0-9]"),
        source in source_strategy(),
        move_disk in any::<bool>(),
    ) {
        let disk = ComponentKind::Disk { mount_point: "/dev/sda".into(), size_gib: 100, serial_number: Some("D1".into()) };
        let mut devices = vec![device_with(1, "S1", vec![(10, eth(1)), (11, disk)])];
        if target_exists {
            devices.push(device_with(2, "S2", vec![]));
        }
        let mut snapshot = Snapshot { devices };
        let mut facts = Facts::new(ip(2), source, at(5));
        facts.serial_number = Some("S2".into());
        facts.device_type = Some(DeviceType::RackServer);
        facts.components.push(ComponentKind::Ethernet { mac: mac(1), label, speed_mbps: None });
        if move_disk {
            facts.components.push(ComponentKind::Disk { mount_point: "/dev/sdb".into(), size_gib: 100, serial_number: Some("d1".into()) });
        }
        facts.covers = [ComponentClass::Ethernet, ComponentClass::Disk].into_iter().collect();
        let mut plan = Reconciler::default().plan(&snapshot, &scope(), &[facts]);
        prop_assert_eq!(plan.counts().moved, if move_disk { 2 } else { 1 });
        let churn = plan.items.iter().any(|i| matches!(i.change, Change::DeleteComponent { .. } | Change::CreateComponent { .. }));
        prop_assert!(!churn, "a move is not a delete and a create");
        let created = snapshot.apply(&mut plan, &mut ids());
        let to = if target_exists { Id::new(2) } else { created[&0] };
        let holder = snapshot.device(to).map(|d| d.components.iter().map(|c| c.id.get()).collect::<BTreeSet<_>>()).unwrap_or_default();
        prop_assert!(holder.contains(&10));
        prop_assert_eq!(holder.contains(&11), move_disk);
        let left = snapshot.device(Id::new(1)).map(|d| d.components.len()).unwrap_or_default();
        prop_assert_eq!(left, usize::from(!move_disk));
    }
}

#[test]
fn components_are_deleted_after_n_distinct_scans_and_only_if_covered() {
    let disk = ComponentKind::Disk { mount_point: "/dev/sdb".into(), size_gib: 1, serial_number: None };
    let mut snapshot = Snapshot { devices: vec![device_with(1, "S1", vec![(10, eth(1)), (11, disk)])] };
    let reconciler = Reconciler::new(
        ReconcileConfig::default().with_merge(MergeConfig::default().with_component_misses_before_delete(2)),
    );
    let mut facts = Facts::new(ip(1), Source::new("agent", 10).expect("source"), at(0));
    facts.serial_number = Some("S1".into());
    facts.macs = vec![mac(1)];
    facts.covers = [ComponentClass::Ethernet].into_iter().collect();

    // Ethernet covered and seen, the disk not covered: nothing is missed.
    assert!(reconciler.plan(&snapshot, &Scan::new("a"), std::slice::from_ref(&facts)).is_noop());

    facts.covers.insert(ComponentClass::Disk);
    let mut plan = reconciler.plan(&snapshot, &Scan::new("a"), std::slice::from_ref(&facts));
    assert!(!plan.writes());
    assert!(matches!(&plan.bookkeeping[..], [Bookkeeping::ComponentMisses { misses, .. }] if misses.count == 1));
    snapshot.apply(&mut plan, &mut ids());
    // Replaying scan "a" counts nothing more.
    assert!(reconciler.plan(&snapshot, &Scan::new("a"), std::slice::from_ref(&facts)).is_noop());
    let mut plan = reconciler.plan(&snapshot, &Scan::new("b"), std::slice::from_ref(&facts));
    assert!(matches!(
        &plan.items[..],
        [PlanItem { change: Change::DeleteComponent { component, misses: 2, .. }, .. }] if component.get() == 11
    ));
    snapshot.apply(&mut plan, &mut ids());
    assert_eq!(snapshot.devices[0].components.len(), 1);
}

#[test]
fn a_component_seen_again_resets_its_misses() {
    let mut device = device_with(1, "S1", vec![(10, eth(1))]);
    device.components[0].misses = Misses { count: 2, last_scan: Some(ScanId("old".into())) };
    let snapshot = Snapshot { devices: vec![device] };
    let mut facts = Facts::new(ip(1), Source::new("agent", 10).expect("source"), at(0));
    facts.serial_number = Some("S1".into());
    facts.macs = vec![mac(1)];
    let plan = Reconciler::default().plan(&snapshot, &Scan::new("new"), &[facts]);
    assert_eq!(
        plan.bookkeeping,
        vec![Bookkeeping::ComponentMisses { component: Id::new(10), misses: Misses::default() }]
    );
}

#[test]
fn devices_are_missed_only_inside_the_scan_scope_and_deleted_children_first() {
    let mut inside = device_with(1, "S1", vec![(10, eth(1)), (11, eth(2))]);
    inside.set_by_person(Field::ManagementIp, "10.0.0.7", Provenance::person("alice", 1, at(0)), false);
    let mut outside = device_with(2, "S2", vec![]);
    outside.set_by_person(Field::ManagementIp, "192.168.0.7", Provenance::person("alice", 1, at(0)), false);
    let mut snapshot = Snapshot { devices: vec![inside, outside] };

    let counting = Reconciler::default();
    let plan = counting.plan(&snapshot, &scope(), &[]);
    assert!(!plan.writes(), "devices are never deleted by default");
    assert_eq!(plan.bookkeeping.len(), 1, "only the device inside the scope is missed");

    let deleting = Reconciler::new(
        ReconcileConfig::default().with_merge(MergeConfig::default().with_device_misses_before_delete(Some(1))),
    );
    let mut plan = deleting.plan(&snapshot, &scope(), &[]);
    let phases: Vec<&str> = plan
        .items
        .iter()
        .map(|i| match i.change {
            Change::DeleteComponent { .. } => "component",
            Change::DeleteDevice { .. } => "device",
            _ => "other",
        })
        .collect();
    assert_eq!(phases, ["component", "component", "device"]);
    assert_eq!(plan.items[2].depends_on, vec![0, 1]);
    snapshot.apply(&mut plan, &mut ids());
    assert_eq!(snapshot.devices.len(), 1);
    assert_eq!(snapshot.devices[0].id, Id::new(2));
}

#[test]
fn a_failed_item_skips_only_its_dependents() {
    let mut facts = Facts::new(ip(1), Source::new("agent", 10).expect("source"), at(0));
    facts.serial_number = Some("S9".into());
    facts.model = Some("R640".into());
    facts.macs = vec![mac(3)];
    let mut other = Facts::new(ip(2), Source::new("agent", 10).expect("source"), at(0));
    other.serial_number = Some("S1".into());
    other.hostname = Hostname::parse("renamed").ok();
    let snapshot = Snapshot { devices: vec![device_with(1, "S1", vec![])] };
    let mut plan = Reconciler::default().plan(&snapshot, &scope(), &[facts, other]);
    let kinds: Vec<u8> = plan.items.iter().map(|i| i.change.phase()).collect();
    assert_eq!(kinds, [1, 2, 3], "create device, update device, create its port");
    assert_eq!(plan.items[2].depends_on, vec![0]);
    plan.items[0].status = ItemStatus::Failed("insert refused".into());
    let mut applied = snapshot;
    applied.apply(&mut plan, &mut ids());
    assert_eq!(plan.items[1].status, ItemStatus::Applied);
    assert!(matches!(plan.items[2].status, ItemStatus::Skipped(_)));
    assert_eq!(applied.devices[0].value(Field::Hostname), Some("renamed"));
}

#[test]
fn two_addresses_of_one_new_machine_make_one_device() {
    let mut bmc = Facts::new(ip(1), Source::new("redfish", 20).expect("source"), at(0));
    bmc.serial_number = Some("S9".into());
    bmc.device_type = Some(DeviceType::RackServer);
    bmc.is_management = true;
    let mut host = Facts::new(ip(2), Source::new("agent", 10).expect("source"), at(0));
    host.serial_number = Some("s9".into());
    host.model = Some("R640".into());
    host.hostname = Hostname::parse("web-1").ok();
    let plan = Reconciler::default().plan(&Snapshot::default(), &scope(), &[bmc, host]);
    assert_eq!(plan.counts().create, 1);
    assert!(matches!(&plan.items[0].change, Change::CreateDevice { fields, .. } if fields.len() == 5));
}

#[test]
fn two_devices_claiming_one_port_is_a_conflict_not_a_duplicate() {
    let snapshot = Snapshot { devices: vec![device_with(1, "S1", vec![]), device_with(2, "S2", vec![])] };
    let facts: Vec<Facts> = [("S1", 1), ("S2", 2)]
        .into_iter()
        .map(|(serial, n)| {
            let mut f = Facts::new(ip(n), Source::new("agent", 10).expect("source"), at(0));
            f.serial_number = Some(serial.into());
            f.components = vec![eth(3)];
            f
        })
        .collect();
    let plan = Reconciler::default().plan(&snapshot, &scope(), &facts);
    assert!(!plan.writes());
    assert_eq!(plan.counts().conflict, 1);
}

#[test]
fn ignored_and_invalid_facts_are_listed_not_planned() {
    let mut facts = Facts::new(ip(1), Source::new("agent", 10).expect("source"), at(0));
    facts.serial_number = Some("S9".into());
    facts.model = Some("R640".into());
    let checksum = facts_checksum(ip(1), std::slice::from_ref(&facts));
    let mut bad = Facts::new(ip(2), Source::new("agent", 10).expect("source"), at(0));
    bad.components = vec![eth(1), eth(1)];
    let plan = Reconciler::default().plan(&Snapshot::default(), &scope().with_ignored(ip(1), checksum), &[facts, bad]);
    assert!(plan.items.is_empty());
    assert_eq!(plan.unresolved.len(), 2);
    assert_eq!(plan.unresolved[0].reason, UnresolvedReason::Ignored);
    assert!(matches!(plan.unresolved[1].reason, UnresolvedReason::Invalid(_)));
}

#[test]
fn plans_and_state_round_trip_through_json() {
    let mut facts = Facts::new(ip(1), Source::new("agent", 10).expect("source"), at(0));
    facts.serial_number = Some("S9".into());
    facts.model = Some("R640".into());
    facts.components = vec![eth(1)];
    let mut snapshot = Snapshot::default();
    let mut plan = Reconciler::default().plan(&snapshot, &scope(), &[facts]);
    let text = serde_json::to_string(&plan).expect("serialize");
    assert_eq!(serde_json::from_str::<Plan>(&text).expect("deserialize"), plan);
    snapshot.apply(&mut plan, &mut ids());
    let text = serde_json::to_string(&snapshot).expect("serialize");
    assert_eq!(serde_json::from_str::<Snapshot>(&text).expect("deserialize"), snapshot);
}

/// Scale check: 10,000 devices planned and applied in memory, every one an update. Its timing
/// is printed only; the speed goal lives in `benches/benches/reconcile.rs`.
#[test]
fn plan_scales_to_ten_thousand_devices() {
    let n: u32 = 10_000;
    let serial = |i: u32| format!("SER{i:06}");
    let port = |i: u32| {
        let [_, a, b, c] = i.to_be_bytes();
        MacAddress::from_octets([0x3c, 0xec, 0xef, a, b, c])
    };
    let snapshot = Snapshot {
        devices: (0..n)
            .map(|i| {
                device_with(
                    i64::from(i) + 1,
                    &serial(i),
                    vec![(
                        i64::from(i) + 1_000_000,
                        ComponentKind::Ethernet { mac: port(i), label: None, speed_mbps: None },
                    )],
                )
            })
            .collect(),
    };
    let facts: Vec<Facts> = (0..n)
        .map(|i| {
            let [_, a, b, c] = i.to_be_bytes();
            let mut f = Facts::new(IpAddr::from([10, a, b, c]), Source::new("snmp", 20).expect("source"), at(9));
            f.serial_number = Some(serial(i));
            f.model = Some("R640".into());
            f.macs = vec![port(i)];
            f.covers = [ComponentClass::Ethernet].into_iter().collect();
            f
        })
        .collect();
    let started = std::time::Instant::now();
    let mut plan = Reconciler::default().plan(&snapshot, &scope(), &facts);
    let planned = started.elapsed();
    let mut snapshot = snapshot;
    let started = std::time::Instant::now();
    snapshot.apply(&mut plan, &mut ids());
    let applied = started.elapsed();
    println!("plan {n} against {n}: {planned:?}; apply {} items: {applied:?}", plan.items.len());
    assert_eq!(plan.counts().update, usize::try_from(n).expect("n"));
}

#[test]
fn a_device_whose_address_answered_is_not_missed_even_unidentified() {
    let mut device = device_with(1, "S1", vec![]);
    device.set_by_person(Field::ManagementIp, "10.0.0.7", Provenance::person("alice", 1, at(0)), false);
    let snapshot = Snapshot { devices: vec![device] };
    // Only a host name: not enough to identify anything, but the address is alive.
    let mut facts = Facts::new(ip(7), Source::new("snmp", 10).expect("source"), at(0));
    facts.hostname = Hostname::parse("sw-1").ok();
    let reconciler = Reconciler::new(
        ReconcileConfig::default().with_merge(MergeConfig::default().with_device_misses_before_delete(Some(1))),
    );
    let plan = reconciler.plan(&snapshot, &scope(), &[facts]);
    assert!(plan.is_noop(), "{plan:#?}");
    assert_eq!(plan.unresolved[0].reason, UnresolvedReason::Insufficient(Missing::Identity));
}

#[test]
fn the_snapshot_query_names_every_key_the_plan_looks_up() {
    let mut facts = Facts::new(ip(1), Source::new("agent", 10).expect("source"), at(0));
    facts.serial_number = Some(" s1 ".into());
    facts.inventory_id = Some(Id::new(4));
    facts.macs = vec![mac(1)];
    facts.components = vec![
        eth(2),
        ComponentKind::Disk { mount_point: "/dev/sda".into(), size_gib: 1, serial_number: Some("d1".into()) },
    ];
    let query = Reconciler::default().snapshot_query(&[facts]);
    assert_eq!(query.serials.iter().collect::<Vec<_>>(), ["S1"]);
    assert_eq!(query.disk_serials.iter().collect::<Vec<_>>(), ["D1"]);
    assert_eq!(query.macs, [mac(1), mac(2)].into_iter().collect());
    assert_eq!(query.inventory_ids, [Id::new(4)].into_iter().collect());
    assert_eq!(query.addresses, [ip(1)].into_iter().collect());
}

prop_compose! {
    /// Facts with arbitrary text and MACs: placeholders, blanks, odd Unicode, multicast and
    /// locally administered addresses, duplicates.
    fn wild_facts_strategy()(
        address in 1u8..4,
        source in "\\PC{0,8}",
        priority in any::<u32>(),
        serial in prop::option::of(prop_oneof!["\\PC{0,12}", Just("0000000000".to_owned()), Just(" none ".to_owned())]),
        macs in prop::collection::vec(any::<[u8; 6]>(), 0..3),
        model in prop::option::of("\\PC{0,10}"),
        ports in prop::collection::vec((any::<[u8; 6]>(), prop::option::of("\\PC{0,6}")), 0..3),
        disks in prop::collection::vec(("\\PC{0,6}", prop::option::of("\\PC{0,6}")), 0..3),
        covers in covers_strategy(),
    ) -> Facts {
        let mut f = Facts::new(ip(address), Source { name: source, priority }, at(0));
        f.serial_number = serial;
        f.macs = macs.into_iter().map(MacAddress::from_octets).collect();
        f.model = model;
        f.components = ports
            .into_iter()
            .map(|(m, label)| ComponentKind::Ethernet { mac: MacAddress::from_octets(m), label, speed_mbps: None })
            .chain(disks.into_iter().map(|(mount_point, serial_number)| ComponentKind::Disk { mount_point, size_gib: 1, serial_number }))
            .collect();
        f.covers = covers;
        f
    }
}

proptest! {
    #[test]
    fn wild_input_never_panics_and_replays_as_a_noop(facts in prop::collection::vec(wild_facts_strategy(), 0..5)) {
        let reconciler = Reconciler::default();
        let mut snapshot = Snapshot::default();
        let mut plan = reconciler.plan(&snapshot, &scope(), &facts);
        snapshot.apply(&mut plan, &mut ids());
        prop_assert!(plan.items.iter().all(|i| i.status == ItemStatus::Applied), "{:#?}", plan.items);
        let again = reconciler.plan(&snapshot, &scope(), &facts);
        prop_assert!(again.is_noop(), "{:#?}", again);
    }
}

//! The conformance suite (feature `conformance`): what any implementation of ralph-core's
//! storage traits must do, as public async functions a host application can run on its own
//! store.
//!
//! Each function takes a store that is empty (a fresh database), runs a scenario through the
//! traits and panics on the first deviation, so it is meant to be called from a test:
//!
//! ```
//! # #[cfg(feature = "sqlite")]
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(async {
//! let dir = tempfile::tempdir()?;
//! let url = format!("sqlite://{}", dir.path().join("ralph.sqlite3").display());
//! let store = ralph_store::SqliteStore::connect(&url).await?;
//! ralph_store::conformance::mirror_keeps_local_accounts(&store).await;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The functions generic over [`UserStore`] apply to any user store (the in-memory
//! `ralph_core::testing::MemoryStore` passes them); those over [`InventoryStore`] need the whole
//! inventory. The `racing_*` functions spawn tokio tasks, so they need a tokio runtime, and a
//! multi-threaded one to race for real. `ralph-store`'s own `tests/conformance.rs` runs every
//! function here on SQLite, PostgreSQL and MariaDB.

use std::collections::BTreeMap;
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use ralph_core::{
    AssetStatus, Component, ComponentKind, DataCenter, Device, DeviceModel, DeviceType, Group, GroupScope,
    HostnameTemplate, Id, InventoryStore, IpAddress, IpStatus, MacAddress, MirrorChange, Network, NetworkEnvironment,
    Observation, Orientation, Placement, Profile, Rack, Repository, ScanResultStore, Secret, ServerRoom, SnmpVersion,
    StoreError, TransitionGraph, User, UserMirror, UserSource, UserStore, ValidationError,
};

type Counts = [usize; 9];

/// Rows of every model type: a failed write must leave these unchanged.
async fn counts<S: InventoryStore>(s: &S) -> Counts {
    async fn n<T: ralph_core::Entity, S: Repository<T>>(s: &S) -> usize {
        s.list().await.expect("list").len()
    }
    [
        n::<DataCenter, _>(s).await,
        n::<ServerRoom, _>(s).await,
        n::<Rack, _>(s).await,
        n::<NetworkEnvironment, _>(s).await,
        n::<Network, _>(s).await,
        n::<IpAddress, _>(s).await,
        n::<DeviceModel, _>(s).await,
        n::<Device, _>(s).await,
        n::<Component, _>(s).await,
    ]
}

/// The validation error behind a refused write.
fn invalid<T: std::fmt::Debug>(result: Result<T, StoreError>) -> ValidationError {
    match result {
        Err(StoreError::Invalid { source, .. }) => source,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test address")
}

fn micros_now() -> DateTime<Utc> {
    DateTime::from_timestamp_micros(Utc::now().timestamp_micros()).expect("now")
}

/// A data centre with a room, a 48U rack, a 10U rack, an environment and the usual models.
struct Site {
    dc: Id<DataCenter>,
    room: Id<ServerRoom>,
    rack: Id<Rack>,
    small_rack: Id<Rack>,
    env: Id<NetworkEnvironment>,
    server_1u: Id<DeviceModel>,
    server_2u: Id<DeviceModel>,
    half_depth: Id<DeviceModel>,
    chassis: Id<DeviceModel>,
    blade: Id<DeviceModel>,
}

async fn site<S: InventoryStore>(s: &S, tag: &str) -> Site {
    let dc = s.create(&DataCenter::new(&format!("dc-{tag}"), Some("pl")).expect("dc")).await.expect("create dc");
    let room = s.create(&ServerRoom::new("room-a", dc).expect("room")).await.expect("create room");
    let rack = s.create(&Rack::new("rack-1", room).expect("rack")).await.expect("create rack");
    let small = Rack::new("rack-small", room).expect("rack").with_height(10).expect("height");
    let small_rack = s.create(&small).await.expect("create small rack");
    let env = s.create(&NetworkEnvironment::new(&format!("env-{tag}"), dc).expect("env")).await.expect("env");
    let model = |name: &str, kind, height| DeviceModel::new(name, Some("Acme"), kind, height).expect("model");
    let server_1u = s.create(&model("S1", DeviceType::RackServer, 1)).await.expect("model");
    let server_2u = s.create(&model("S2", DeviceType::RackServer, 2)).await.expect("model");
    let mut half = model("SW", DeviceType::Switch, 1);
    half.full_depth = false;
    let half_depth = s.create(&half).await.expect("model");
    let chassis = s.create(&model("C7000", DeviceType::BladeSystem, 10)).await.expect("model");
    let blade = s.create(&model("BL460", DeviceType::BladeServer, 0)).await.expect("model");
    Site { dc, room, rack, small_rack, env, server_1u, server_2u, half_depth, chassis, blade }
}

/// Every model type round-trips field for field through `create`/`get`, the look-ups
/// (`find_data_center`, `find_device_by_serial`, `find_ip`, `rack_devices` ordered by position,
/// `device_components`, `environment_networks`) find what was written, `update` replaces and
/// `delete` refuses referenced rows ([`StoreError::Reference`]) and reports missing ones
/// ([`StoreError::NotFound`]).
pub async fn round_trip_every_model<S: InventoryStore>(s: &S) {
    let dc = DataCenter::new("dc1", Some("pl")).expect("dc").with_address("Warszawa", "ul. Prosta 1");
    let dc_id = s.create(&dc).await.expect("create dc");
    assert_eq!(s.get(dc_id).await.expect("get dc").value, dc);
    assert_eq!(s.find_data_center("dc1").await.expect("find").map(|r| r.id), Some(dc_id));
    assert!(s.find_data_center("nope").await.expect("find").is_none());

    let room = ServerRoom::new("room-1", dc_id).expect("room");
    let room_id = s.create(&room).await.expect("create room");
    assert_eq!(s.get(room_id).await.expect("get room").value, room);

    let mut rack = Rack::new("r1", room_id).expect("rack").with_height(42).expect("height");
    rack.orientation = Orientation::Back;
    rack.reverse_ordering = true;
    let rack_id = s.create(&rack).await.expect("create rack");
    assert_eq!(s.get(rack_id).await.expect("get rack").value, rack);

    let mut env = NetworkEnvironment::new("prod", dc_id).expect("env");
    env.hostname_template =
        Some(HostnameTemplate { prefix: "s1".into(), counter_length: 4, postfix: ".dc1.local".into() });
    let env_id = s.create(&env).await.expect("create env");
    assert_eq!(s.get(env_id).await.expect("get env").value, env);

    let net4 = Network::new("servers", "10.20.0.0/24")
        .and_then(|n| n.with_gateway("10.20.0.1"))
        .and_then(|n| n.with_vlan(120))
        .expect("net4")
        .in_environment(env_id);
    let net4_id = s.create(&net4).await.expect("create net4");
    assert_eq!(s.get(net4_id).await.expect("get net4").value, net4);
    let net6 = Network::new("v6", "2001:db8:10::/48").and_then(|n| n.with_reserved(0, 0)).expect("net6");
    let net6_id = s.create(&net6).await.expect("create net6");
    assert_eq!(s.get(net6_id).await.expect("get net6").value, net6);
    assert_eq!(s.environment_networks(env_id).await.expect("env nets").len(), 1);

    let mut model = DeviceModel::new("PowerEdge R640", Some("Dell"), DeviceType::RackServer, 1).expect("model");
    model.full_depth = false;
    let model_id = s.create(&model).await.expect("create model");
    assert_eq!(s.get(model_id).await.expect("get model").value, model);

    let mut device =
        Device::new(model_id, Some("srv1.dc1"), Some("SN-1"), Some("BC-1")).in_rack(rack_id, 10, Orientation::Back);
    device.service_env = Some("backup/prod".into());
    device.management_ip = Some(ip("10.20.0.5"));
    let device_id = s.create(&device).await.expect("create device");
    assert_eq!(s.get(device_id).await.expect("get device").value, device);
    assert_eq!(s.find_device_by_serial("SN-1").await.expect("by serial").map(|r| r.id), Some(device_id));

    let chassis_model =
        s.create(&DeviceModel::new("C7000", Some("HP"), DeviceType::BladeSystem, 10).expect("m")).await.expect("m");
    let blade_model =
        s.create(&DeviceModel::new("BL460c", Some("HP"), DeviceType::BladeServer, 0).expect("m")).await.expect("m");
    let chassis = Device::new(chassis_model, Some("chassis1"), None, None).in_rack(rack_id, 20, Orientation::Front);
    let chassis_id = s.create(&chassis).await.expect("create chassis");
    let blade = Device::new(blade_model, Some("blade1"), None, None).in_blade_slot(chassis_id, "3");
    let blade_id = s.create(&blade).await.expect("create blade");
    assert_eq!(s.get(blade_id).await.expect("get blade").value, blade);

    let pdu_model = s.create(&DeviceModel::new("PDU", None, DeviceType::Pdu, 0).expect("m")).await.expect("m");
    let mut pdu = Device::new(pdu_model, Some("pdu1"), None, None);
    pdu.placement = Placement::Rack { rack: rack_id, position: None, orientation: Orientation::Front };
    let pdu_id = s.create(&pdu).await.expect("create zero-U pdu");
    assert_eq!(s.get(pdu_id).await.expect("get pdu").value, pdu);
    let in_rack: Vec<_> = s.rack_devices(rack_id).await.expect("rack devices").into_iter().map(|r| r.id).collect();
    assert_eq!(in_rack, vec![device_id, chassis_id, pdu_id], "ordered by position, unpositioned last");

    let mut addr = IpAddress::parse("10.20.0.5", Some("srv1.dc1.local")).expect("ip");
    addr.is_management = true;
    addr.status = IpStatus::Reserved;
    addr.last_seen = Some(micros_now());
    addr.dead_ping_count = 1;
    addr.snmp_name = Some("srv1".into());
    addr.snmp_community = Some(Secret::new("s3cret-community"));
    addr.snmp_version = Some(SnmpVersion::V2c);
    addr.http_family = Some("Apache".into());
    addr.device = Some(device_id);
    addr.scan_checksum = Some("abc123".into());
    let addr_id = s.create(&addr).await.expect("create ip");
    assert_eq!(s.get(addr_id).await.expect("get ip").value, addr);
    assert_eq!(s.find_ip(ip("10.20.0.5")).await.expect("find ip").map(|r| r.id), Some(addr_id));
    let v6 = IpAddress::new(ip("2001:db8:10::1"));
    let v6_id = s.create(&v6).await.expect("create v6 ip");
    assert_eq!(s.get(v6_id).await.expect("get v6").value, v6);

    let kinds = [
        ComponentKind::Ethernet {
            mac: MacAddress::parse("aa:bb:cc:00:11:22").expect("mac"),
            label: Some("eth0".into()),
            speed_mbps: Some(10_000),
        },
        ComponentKind::Processor { index: 0, model: Some("Xeon Gold 6130".into()), cores: Some(16) },
        ComponentKind::Memory { index: 0, size_mib: 32_768 },
        ComponentKind::Disk { mount_point: "/dev/sda".into(), size_gib: 960, serial_number: Some("D-1".into()) },
    ];
    for kind in kinds {
        let component = Component { device: device_id, kind };
        let id = s.create(&component).await.expect("create component");
        assert_eq!(s.get(id).await.expect("get component").value, component);
    }
    assert_eq!(s.device_components(device_id).await.expect("components").len(), 4);

    // Update: rename the rack, move the device, change the data centre's city.
    let mut renamed = rack.clone();
    renamed.name = "r1-renamed".into();
    s.update(rack_id, &renamed).await.expect("update rack");
    assert_eq!(s.get(rack_id).await.expect("get").value, renamed);
    let moved = device.clone().in_rack(rack_id, 30, Orientation::Front);
    s.update(device_id, &moved).await.expect("move device");
    assert_eq!(s.get(device_id).await.expect("get").value, moved);
    let dc2 = dc.clone().with_address("Kraków", "Rynek 1");
    s.update(dc_id, &dc2).await.expect("update dc");
    assert_eq!(s.get(dc_id).await.expect("get").value, dc2);
    assert!(s.update(Id::<DataCenter>::new(9_999), &dc2).await.expect_err("missing").is_not_found());

    // Delete: a referenced row is refused, a leaf goes, a missing one is NotFound.
    assert!(matches!(s.delete(dc_id).await, Err(StoreError::Reference { .. })));
    let component = s.device_components(device_id).await.expect("components")[0].id;
    s.delete(component).await.expect("delete component");
    assert!(s.get(component).await.expect_err("gone").is_not_found());
    assert!(Repository::<Component>::delete(s, component).await.expect_err("gone").is_not_found());
    assert!(Repository::<Rack>::get(s, Id::new(9_999)).await.expect_err("missing").is_not_found());
}

/// Bad writes are refused with the right class and leave every table as it was: out-of-rack
/// positions and rack overlaps ([`StoreError::Invalid`] with the [`ValidationError`]),
/// duplicate serials, MACs, rack names and blade slots ([`StoreError::Conflict`]), references to
/// missing rows ([`StoreError::Reference`]), a rack shrunk below its devices, a move into an
/// overlap, transitions not allowed from the current status; deleting a device frees its units.
pub async fn bad_input_is_refused_and_writes_nothing<S: InventoryStore>(s: &S) {
    let site = site(s, "bad").await;
    let occupant = Device::new(site.server_2u, None, Some("SN-A"), None).in_rack(site.rack, 10, Orientation::Front);
    let occupant_id = s.create(&occupant).await.expect("first device");
    let nic = ComponentKind::Ethernet {
        mac: MacAddress::parse("02:00:00:00:00:01").expect("mac"),
        label: None,
        speed_mbps: None,
    };
    s.create(&Component { device: occupant_id, kind: nic.clone() }).await.expect("nic");
    let chassis = Device::new(site.chassis, None, None, None).in_rack(site.rack, 30, Orientation::Front);
    let chassis_id = s.create(&chassis).await.expect("chassis");
    s.create(&Device::new(site.blade, None, None, None).in_blade_slot(chassis_id, "1")).await.expect("blade");
    let before = counts(s).await;

    // Position out of the rack: a 2U device at U10 of a 10U rack.
    let out = Device::new(site.server_2u, None, None, None).in_rack(site.small_rack, 10, Orientation::Front);
    assert!(matches!(invalid(s.create(&out).await), ValidationError::OutOfRack { rack_height: 10, .. }));
    // Overlap: U11 is taken by the 2U device at U10.
    let overlap = Device::new(site.server_1u, None, None, None).in_rack(site.rack, 11, Orientation::Back);
    assert_eq!(
        invalid(s.create(&overlap).await),
        ValidationError::RackOverlap { from: 11, to: 11, face: "front", other: occupant_id.get() }
    );
    // Duplicate serial number.
    let dup_serial = Device::new(site.server_1u, None, Some("SN-A"), None);
    assert!(matches!(s.create(&dup_serial).await, Err(StoreError::Conflict { .. })));
    // Duplicate MAC, on another device.
    let other = s.create(&Device::new(site.server_1u, None, None, None)).await.expect("other device");
    let before_mac = counts(s).await;
    assert!(matches!(s.create(&Component { device: other, kind: nic }).await, Err(StoreError::Conflict { .. })));
    assert_eq!(counts(s).await, before_mac);
    s.delete(other).await.expect("delete other");
    // Duplicate rack name in the same room.
    assert!(matches!(s.create(&Rack::new("rack-1", site.room).expect("rack")).await, Err(StoreError::Conflict { .. })));
    // A gateway outside its network, in a hand-built value that skipped the constructor.
    let mut net = Network::new("n", "10.30.0.0/24").expect("net");
    net.gateway = Some(ip("10.99.0.1"));
    assert!(matches!(invalid(s.create(&net).await), ValidationError::GatewayOutsideNetwork { .. }));
    // A blade slot that is taken, and a blade in something that is not a blade system.
    let dup_slot = Device::new(site.blade, None, None, None).in_blade_slot(chassis_id, "1");
    assert!(matches!(s.create(&dup_slot).await, Err(StoreError::Conflict { .. })));
    let wrong_parent = Device::new(site.blade, None, None, None).in_blade_slot(occupant_id, "1");
    assert!(matches!(invalid(s.create(&wrong_parent).await), ValidationError::Placement(_)));
    // References to rows that do not exist.
    let ghost_model = Device::new(Id::new(9_999), None, None, None);
    assert!(matches!(s.create(&ghost_model).await, Err(StoreError::Reference { .. })));
    let ghost_rack = Device::new(site.server_1u, None, None, None).in_rack(Id::new(9_999), 1, Orientation::Front);
    assert!(matches!(s.create(&ghost_rack).await, Err(StoreError::Reference { .. })));
    let ghost_room = Rack::new("ghost", Id::new(9_999)).expect("rack");
    assert!(matches!(s.create(&ghost_room).await, Err(StoreError::Reference { .. })));
    // A rack may not shrink below a device in it.
    let mut shrunk = Rack::new("rack-1", site.room).expect("rack");
    shrunk.max_u_height = 5;
    assert!(matches!(invalid(s.update(site.rack, &shrunk).await), ValidationError::OutOfRack { .. }));
    // A move into an overlap fails and leaves the device where it was.
    let chassis_onto_occupant = chassis.clone().in_rack(site.rack, 5, Orientation::Front);
    assert!(matches!(invalid(s.update(chassis_id, &chassis_onto_occupant).await), ValidationError::RackOverlap { .. }));
    assert_eq!(s.get(chassis_id).await.expect("chassis").value, chassis);
    // A status transition from the wrong status, and one that does not exist.
    let graph = TransitionGraph::data_center_assets();
    assert!(matches!(
        invalid(s.transition_device(occupant_id, &graph, "liquidate").await),
        ValidationError::Transition { .. }
    ));
    assert!(matches!(
        invalid(s.transition_device(occupant_id, &graph, "teleport").await),
        ValidationError::UnknownTransition(_)
    ));
    assert_eq!(s.get(occupant_id).await.expect("occupant").status, AssetStatus::New);
    assert_eq!(s.get(site.rack).await.expect("rack").max_u_height, 48);

    assert_eq!(counts(s).await, before, "a refused write left rows behind");

    // The right transition works and is stored.
    assert_eq!(s.transition_device(occupant_id, &graph, "deploy").await.expect("deploy"), AssetStatus::InUse);
    assert_eq!(s.get(occupant_id).await.expect("occupant").status, AssetStatus::InUse);
    // Deleting a device frees its units.
    s.delete(occupant_id).await.expect("delete occupant");
    let reuse = Device::new(site.server_1u, None, None, None).in_rack(site.rack, 11, Orientation::Back);
    s.create(&reuse).await.expect("freed units are usable");
}

/// Blank serial numbers and barcodes are stored as none and never collide; a hand-built blank is
/// refused; half-depth devices on opposite faces share rack units.
pub async fn blank_serials_do_not_collide<S: InventoryStore>(s: &S) {
    let site = site(s, "blank").await;
    for serial in ["", "  ", ""] {
        let device = Device::new(site.server_1u, None, Some(serial), Some(serial));
        assert_eq!(device.serial_number, None);
        s.create(&device).await.expect("blank serials are none and never collide");
    }
    // A hand-built blank that skipped the constructor is refused rather than stored.
    let mut blank = Device::new(site.server_1u, None, None, None);
    blank.serial_number = Some("  ".into());
    assert!(s.create(&blank).await.expect_err("blank").is_invalid());
    assert_eq!(Repository::<Device>::list(s).await.expect("list").len(), 3);
    // Half-depth devices on opposite faces share units.
    let front = Device::new(site.half_depth, None, None, None).in_rack(site.rack, 5, Orientation::Front);
    let back = Device::new(site.half_depth, None, None, None).in_rack(site.rack, 5, Orientation::Back);
    s.create(&front).await.expect("front");
    s.create(&back).await.expect("back");
    assert_eq!(s.rack_devices(site.rack).await.expect("rack").len(), 2);
    let _ = (site.dc, site.env);
}

/// [`InventoryStore::network_containing`] picks the smallest network containing an address, for
/// IPv4 and IPv6, and never matches IPv4 addresses with IPv6 networks.
pub async fn smallest_containing_network<S: InventoryStore>(s: &S) {
    for (name, cidr) in [
        ("all", "10.0.0.0/8"),
        ("dc", "10.1.0.0/16"),
        ("rack", "10.1.2.0/24"),
        ("v6-wide", "2001:db8::/32"),
        ("v6-site", "2001:db8:1::/48"),
        ("v6-everything", "::/0"),
    ] {
        let net = Network::new(name, cidr).and_then(|n| n.with_reserved(0, 0)).expect("net");
        s.create(&net).await.expect("create net");
    }
    let find = async |addr: &str| s.network_containing(ip(addr)).await.expect("lookup").map(|r| r.value.name);
    assert_eq!(find("10.1.2.3").await.as_deref(), Some("rack"));
    assert_eq!(find("10.1.3.3").await.as_deref(), Some("dc"));
    assert_eq!(find("10.9.0.1").await.as_deref(), Some("all"));
    assert_eq!(find("10.255.255.255").await.as_deref(), Some("all"));
    assert_eq!(find("192.0.2.1").await, None, "an IPv6 ::/0 does not contain IPv4 addresses");
    assert_eq!(find("2001:db8:1::5").await.as_deref(), Some("v6-site"));
    assert_eq!(find("2001:db8:2::5").await.as_deref(), Some("v6-wide"));
    assert_eq!(find("2001:db9::1").await.as_deref(), Some("v6-everything"));
    assert_eq!(find("::ffff:10.1.2.3").await.as_deref(), Some("v6-everything"));
}

/// [`InventoryStore::ip_addresses_in`] returns a range in address order, leaves buried addresses
/// out unless asked, keeps IPv4 and IPv6 apart; a duplicate address is a conflict.
pub async fn address_ranges_skip_buried<S: InventoryStore>(s: &S) {
    for (addr, buried) in [
        ("10.0.0.1", false),
        ("10.0.0.2", true),
        ("10.0.0.3", false),
        ("10.0.0.255", false),
        ("10.0.1.5", false),
        ("9.255.255.255", false),
        ("2001:db8::1", false),
        ("2001:db8::2", true),
        ("2001:db9::1", false),
    ] {
        let mut record = IpAddress::new(ip(addr));
        record.is_buried = buried;
        s.create(&record).await.expect("create ip");
    }
    let range = async |cidr: &str, buried: bool| -> Vec<String> {
        let net = ralph_core::parse_cidr(cidr).expect("cidr");
        s.ip_addresses_in(net, buried).await.expect("range").into_iter().map(|r| r.address.to_string()).collect()
    };
    assert_eq!(range("10.0.0.0/24", false).await, ["10.0.0.1", "10.0.0.3", "10.0.0.255"]);
    assert_eq!(range("10.0.0.0/24", true).await, ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.255"]);
    assert_eq!(range("2001:db8::/32", false).await, ["2001:db8::1"]);
    assert_eq!(range("::/0", true).await, ["2001:db8::1", "2001:db8::2", "2001:db9::1"], "no IPv4 in an IPv6 range");
    assert_eq!(range("0.0.0.0/0", false).await.len(), 5);
    // A duplicate address is a conflict.
    assert!(s.create(&IpAddress::new(ip("10.0.0.1"))).await.expect_err("dup").is_conflict());
}

/// [`ScanResultStore::record_batch`] records a batch once per key: a second call with the key
/// writes nothing (no second dead ping), even from 8 tasks at once; another key records; a bad
/// key is a typed error; pruned keys are forgotten.
pub async fn batches_are_recorded_once<S: ScanResultStore + Clone + 'static>(s: &S) {
    let now = Utc::now();
    let silent: Vec<Observation> = (1..=4).map(|i| Observation::new(ip(&format!("10.9.0.{i}")), false, now)).collect();
    let alive: Vec<Observation> = (1..=4).map(|i| Observation::new(ip(&format!("10.9.0.{i}")), true, now)).collect();
    let first = s.record_batch("job:1:attempt:1:0", &alive, 2).await.expect("record");
    assert_eq!(first.map(|r| r.inserted), Some(4));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (store, batch) = (s.clone(), silent.clone());
        tasks.spawn(async move { store.record_batch("job:1:attempt:1:1", &batch, 2).await.expect("record") });
    }
    let mut recorded = 0;
    while let Some(done) = tasks.join_next().await {
        if let Some(summary) = done.expect("task") {
            assert_eq!(summary.updated, 4);
            recorded += 1;
        }
    }
    assert_eq!(recorded, 1, "one of the racing retries records the batch");
    assert_eq!(s.record_batch("job:1:attempt:1:0", &silent, 2).await.expect("again"), None, "an old key");
    let summary = s.record_batch("job:1:attempt:1:2", &alive, 2).await.expect("next batch").expect("recorded");
    assert_eq!((summary.inserted, summary.updated), (0, 4), "a new key records");
    for bad in ["", "x\n", &"k".repeat(ralph_core::MAX_BATCH_KEY + 1)] {
        assert!(s.record_batch(bad, &alive, 2).await.is_err_and(|e| e.is_invalid()), "{bad:?}");
    }
    assert_eq!(s.prune_batches(std::time::Duration::from_secs(3600)).await.expect("prune"), 0, "all recent");
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    assert_eq!(s.prune_batches(std::time::Duration::from_millis(10)).await.expect("prune"), 3);
    assert!(s.record_batch("job:1:attempt:1:0", &alive, 2).await.expect("record").is_some(), "forgotten key");
}

/// [`ScanResultStore::buried_between`] returns the buried addresses of a range, both ends
/// included, in address order, one family only; `plant` stores an address row as given (the
/// trait itself cannot bury an address).
pub async fn buried_between_ranges<S: ScanResultStore + ?Sized>(s: &S, plant: impl AsyncFn(IpAddress)) {
    for (addr, buried) in [
        ("10.0.0.1", true),
        ("10.0.0.2", false),
        ("10.0.0.3", true),
        ("10.0.0.255", true),
        ("10.0.1.0", true),
        ("9.255.255.255", true),
        ("2001:db8::1", true),
        ("2001:db8::2", false),
        ("10.0.0.9", true),
    ] {
        let mut record = IpAddress::new(ip(addr));
        record.is_buried = buried;
        plant(record).await;
    }
    let between = async |a: &str, b: &str| -> Vec<String> {
        s.buried_between(ip(a), ip(b)).await.expect("buried").into_iter().map(|a| a.to_string()).collect()
    };
    assert_eq!(
        between("10.0.0.1", "10.0.0.255").await,
        ["10.0.0.1", "10.0.0.3", "10.0.0.9", "10.0.0.255"],
        "ends included, numeric order"
    );
    assert_eq!(between("10.0.0.2", "10.0.0.254").await, ["10.0.0.3", "10.0.0.9"]);
    assert_eq!(between("10.0.0.2", "10.0.0.2").await, Vec::<String>::new(), "not buried");
    assert_eq!(between("10.0.0.3", "10.0.0.1").await, Vec::<String>::new(), "an empty range");
    assert_eq!(between("0.0.0.0", "255.255.255.255").await.len(), 6, "every IPv4 one");
    assert_eq!(between("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff").await, ["2001:db8::1"], "no IPv4 in IPv6");
}

/// The whole [`UserStore`]: create (duplicate → conflict, invalid → invalid), update, password
/// hashes (none for LDAP users, refused for them), normalised profiles, group replacement,
/// `mirror_user` writing user, profile and groups together (or nothing for a bad profile),
/// listing by source, deactivation counts, deletion with profile and memberships.
pub async fn users_profiles_groups<S: UserStore>(s: &S) {
    let mut alice = User::new("alice").expect("user");
    alice.first_name = "Alice".into();
    alice.email = Some("alice@example.com".into());
    let alice_id = s.create_user(&alice).await.expect("create");
    assert_eq!(s.get_user("alice").await.expect("get").map(|r| (r.id, r.value)), Some((alice_id, alice.clone())));
    assert!(s.create_user(&alice).await.expect_err("dup").is_conflict());
    assert!(s.create_user(&User { username: "bad name".into(), ..alice.clone() }).await.expect_err("bad").is_invalid());
    alice.is_staff = true;
    s.update_user(&alice).await.expect("update");
    assert!(s.get_user("alice").await.expect("get").expect("alice").is_staff);
    assert!(s.update_user(&User::new("nobody").expect("u")).await.expect_err("missing").is_not_found());

    // Password hashes: stored, read, removed.
    s.set_password_hash("alice", Some("$argon2id$fake")).await.expect("set hash");
    assert_eq!(s.password_hash("alice").await.expect("hash").as_deref(), Some("$argon2id$fake"));
    s.set_password_hash("alice", None).await.expect("clear hash");
    assert_eq!(s.password_hash("alice").await.expect("hash"), None);
    assert!(s.set_password_hash("nobody", None).await.expect_err("missing").is_not_found());

    // Profile and groups.
    let profile = Profile {
        company: Some("Allegro".into()),
        department: Some(" IT ".into()),
        country: ralph_core::CountryCode::parse_lenient("pl"),
        ..Profile::default()
    };
    s.set_profile("alice", &profile).await.expect("profile");
    let stored = s.get_profile("alice").await.expect("get profile").expect("profile");
    assert_eq!(stored.department.as_deref(), Some("IT"), "normalised");
    assert_eq!(stored.company.as_deref(), Some("Allegro"));
    s.set_profile("alice", &Profile { company: Some("Other".into()), ..Profile::default() }).await.expect("again");
    assert_eq!(s.get_profile("alice").await.expect("get").expect("p").company.as_deref(), Some("Other"));
    let groups = |names: &[&str]| names.iter().map(|n| Group::new(n).expect("group")).collect::<Vec<_>>();
    s.set_user_groups("alice", &groups(&["staff", "active", "staff"])).await.expect("groups");
    assert_eq!(s.user_groups("alice").await.expect("groups"), groups(&["active", "staff"]));
    s.set_user_groups("alice", &groups(&["assets-buyer"])).await.expect("replace");
    assert_eq!(s.user_groups("alice").await.expect("groups"), groups(&["assets-buyer"]));

    // Mirroring an LDAP user: user, profile and groups in one call.
    let mut bob = User::new("bob").expect("user");
    bob.source = UserSource::Ldap;
    bob.last_name = "Builder".into();
    let mirror = UserMirror {
        user: bob.clone(),
        profile: Some(Profile { manager: Some("Alice".into()), ..Profile::default() }),
        groups: Some(groups(&["active", "ldap-admins"])),
        group_scope: Default::default(),
    };
    let bob_id = s.mirror_user(&mirror).await.expect("mirror").id;
    assert_eq!(s.get_user("bob").await.expect("get").map(|r| (r.id, r.value)), Some((bob_id, bob.clone())));
    assert_eq!(s.password_hash("bob").await.expect("hash"), None, "LDAP users hold no local password");
    assert!(s.set_password_hash("bob", Some("$argon2id$x")).await.expect_err("ldap").is_invalid());
    assert_eq!(s.user_groups("bob").await.expect("groups"), groups(&["active", "ldap-admins"]));
    assert_eq!(s.get_profile("bob").await.expect("p").expect("p").manager.as_deref(), Some("Alice"));
    // A second mirror replaces the groups; `None` leaves profile and groups alone.
    let again = UserMirror { groups: Some(groups(&["staff"])), profile: None, ..mirror.clone() };
    assert_eq!(s.mirror_user(&again).await.expect("mirror again").id, bob_id);
    assert_eq!(s.user_groups("bob").await.expect("groups"), groups(&["staff"]));
    assert!(s.get_profile("bob").await.expect("p").is_some());
    // A new user appears with everything, or (bad profile) not at all.
    let carol = UserMirror { user: User { username: "carol".into(), ..bob.clone() }, ..mirror.clone() };
    s.mirror_user(&carol).await.expect("mirror new");
    assert_eq!(s.user_groups("carol").await.expect("groups").len(), 2);
    let bad = UserMirror {
        user: User::new("dave").expect("u"),
        profile: Some(Profile { company: Some("x".repeat(300)), ..Profile::default() }),
        groups: None,
        group_scope: Default::default(),
    };
    assert!(s.mirror_user(&bad).await.expect_err("too long").is_invalid());
    assert!(s.get_user("dave").await.expect("get").is_none(), "nothing written");

    let ldap: Vec<_> =
        s.list_users(Some(UserSource::Ldap)).await.expect("list").into_iter().map(|r| r.value.username).collect();
    assert_eq!(ldap, ["bob", "carol"]);
    assert_eq!(s.list_users(None).await.expect("list").len(), 3);
    let names = ["bob".to_owned(), "carol".to_owned(), "nobody".to_owned()];
    assert_eq!(s.deactivate_users(&names).await.expect("deactivate"), 2);
    assert_eq!(s.deactivate_users(&names).await.expect("again"), 0);
    assert!(!s.get_user("bob").await.expect("get").expect("bob").is_active);

    s.delete_user("bob").await.expect("delete");
    assert!(s.get_user("bob").await.expect("get").is_none());
    assert!(s.get_profile("bob").await.expect("profile").is_none());
    assert!(s.user_groups("bob").await.expect("groups").is_empty());
    assert!(s.delete_user("bob").await.expect_err("gone").is_not_found());
}

/// Usernames and group names match byte for byte: no case or accent folding, so `admin`,
/// `Admin` and `Ádmin` are three accounts and an LDAP mirror of one never touches another.
pub async fn usernames_match_exactly<S: UserStore>(s: &S) {
    let admin = User::new("admin").expect("user");
    let admin_id = s.create_user(&admin).await.expect("admin");
    s.set_password_hash("admin", Some("$argon2id$admin")).await.expect("hash");
    for other in ["ADMIN", "Admin", "Ádmin", "admín"] {
        assert!(s.get_user(other).await.expect("get").is_none(), "{other} is not admin");
        assert_eq!(s.password_hash(other).await.expect("hash"), None, "{other} has no hash");
        assert!(s.set_profile(other, &Profile::default()).await.expect_err("missing").is_not_found());
    }
    let capital = s.create_user(&User::new("Admin").expect("user")).await.expect("Admin is another user");
    assert_ne!(capital, admin_id);
    s.delete_user("ADMIN").await.expect_err("no such user");
    assert_eq!(s.list_users(None).await.expect("list").len(), 2);

    // An LDAP user whose name differs only by accent or case is a new account: the local admin
    // keeps its source and password.
    let ldap = User { source: UserSource::Ldap, ..User::new("Ádmin").expect("user") };
    let ldap_id = s
        .mirror_user(&UserMirror { user: ldap, profile: None, groups: None, group_scope: Default::default() })
        .await
        .expect("mirror")
        .id;
    assert!(ldap_id != admin_id && ldap_id != capital);
    let stored = s.get_user("admin").await.expect("get").expect("admin");
    assert_eq!((stored.id, stored.value), (admin_id, admin));
    assert_eq!(s.password_hash("admin").await.expect("hash").as_deref(), Some("$argon2id$admin"));
    assert_eq!(s.get_user("Ádmin").await.expect("get").expect("ldap").value.source, UserSource::Ldap);

    // Group names too: "Staff" and "staff" are two groups.
    let groups = ["staff", "Staff", "stáff"].map(|n| Group::new(n).expect("group"));
    s.set_user_groups("admin", &groups).await.expect("groups");
    let mut expected = groups.to_vec();
    expected.sort();
    assert_eq!(s.user_groups("admin").await.expect("groups"), expected);
    s.set_user_groups("Admin", &groups[..1]).await.expect("groups");
    assert_eq!(s.user_groups("Admin").await.expect("groups"), groups[..1]);
}

/// An LDAP mirror never takes over a local account of the same name: it is refused with
/// [`StoreError::Conflict`] and writes nothing (user, password hash, groups, profile stay); a
/// local mirror of a local account still updates it and keeps its password.
pub async fn mirror_keeps_local_accounts<S: UserStore>(s: &S) {
    let root = User { first_name: "Local".into(), ..User::new("root").expect("user") };
    let root_id = s.create_user(&root).await.expect("root");
    s.set_password_hash("root", Some("$argon2id$root")).await.expect("hash");
    s.set_user_groups("root", &[Group::new("superusers").expect("group")]).await.expect("groups");
    let mirror = UserMirror {
        user: User { source: UserSource::Ldap, first_name: "Directory".into(), ..User::new("root").expect("user") },
        profile: Some(Profile { company: Some("Evil".into()), ..Profile::default() }),
        groups: Some(vec![Group::new("ldap").expect("group")]),
        group_scope: Default::default(),
    };
    let error = s.mirror_user(&mirror).await.expect_err("local account");
    assert!(error.is_conflict(), "{error:?}");
    // Nothing written.
    let stored = s.get_user("root").await.expect("get").expect("root");
    assert_eq!((stored.id, stored.value), (root_id, root.clone()));
    assert_eq!(s.password_hash("root").await.expect("hash").as_deref(), Some("$argon2id$root"));
    assert_eq!(s.user_groups("root").await.expect("groups"), [Group::new("superusers").expect("group")]);
    assert!(s.get_profile("root").await.expect("profile").is_none());
    // A local mirror of a local account still updates it.
    let local = UserMirror {
        user: User { is_staff: true, ..root.clone() },
        profile: None,
        groups: None,
        group_scope: Default::default(),
    };
    assert_eq!(s.mirror_user(&local).await.expect("local mirror").id, root_id);
    assert!(s.get_user("root").await.expect("get").expect("root").value.is_staff);
    assert_eq!(s.password_hash("root").await.expect("hash").as_deref(), Some("$argon2id$root"));
}

fn groups(names: &[&str]) -> Vec<Group> {
    names.iter().map(|n| Group::new(n).expect("group")).collect()
}

fn ldap_mirror(username: &str, groups: &[Group]) -> UserMirror {
    UserMirror {
        user: User { source: UserSource::Ldap, last_name: "Mirror".into(), ..User::new(username).expect("user") },
        profile: Some(Profile { company: Some("Allegro".into()), country: None, ..Profile::default() }),
        groups: Some(groups.to_vec()),
        group_scope: Default::default(),
    }
}

/// `mirror_user` reports [`MirrorChange::Created`], then [`MirrorChange::Updated`] for each kind of
/// difference (a field, the profile, a group more or less), and [`MirrorChange::Unchanged`] for
/// a mirror equal to the stored state (including `None` profile and groups, and a profile that
/// only differs before normalisation).
pub async fn mirror_reports_what_changed<S: UserStore>(s: &S) {
    let first = ldap_mirror("erin", &groups(&["active", "staff"]));
    let created = s.mirror_user(&first).await.expect("create");
    assert_eq!(created.change, MirrorChange::Created);
    let again = s.mirror_user(&first).await.expect("again");
    assert_eq!((again.id, again.change), (created.id, MirrorChange::Unchanged));
    // Each part on its own is a change: a field, the profile, one group more or less.
    let renamed = UserMirror { user: User { first_name: "Erin".into(), ..first.user.clone() }, ..first.clone() };
    let moved = UserMirror {
        profile: Some(Profile { location: Some("Poznań".into()), ..Profile::default() }),
        ..renamed.clone()
    };
    let promoted = UserMirror { groups: Some(groups(&["active", "staff", "superuser"])), ..moved.clone() };
    let demoted = UserMirror { groups: Some(groups(&["staff"])), ..promoted.clone() };
    for (step, mirror) in
        [("field", &renamed), ("profile", &moved), ("group added", &promoted), ("group removed", &demoted)]
    {
        let done = s.mirror_user(mirror).await.expect(step);
        assert_eq!((done.id, done.change), (created.id, MirrorChange::Updated), "{step}");
        assert_eq!(s.mirror_user(mirror).await.expect(step).change, MirrorChange::Unchanged, "{step} again");
    }
    assert_eq!(s.get_user("erin").await.expect("get").expect("erin").value, renamed.user);
    assert_eq!(s.get_profile("erin").await.expect("profile").and_then(|p| p.location).as_deref(), Some("Poznań"));
    assert_eq!(s.user_groups("erin").await.expect("groups"), groups(&["staff"]));
    // `None` leaves profile and groups alone, and is unchanged when the user is.
    let bare = UserMirror { profile: None, groups: None, ..demoted.clone() };
    assert_eq!(s.mirror_user(&bare).await.expect("bare").change, MirrorChange::Unchanged);
    assert_eq!(s.user_groups("erin").await.expect("groups"), groups(&["staff"]));
    // A profile given in another spelling of the same value (normalised) is not a change.
    let spelled =
        UserMirror { profile: Some(Profile { country: None, ..moved.profile.clone().expect("p") }), ..demoted };
    assert_eq!(s.mirror_user(&spelled).await.expect("spelled").change, MirrorChange::Unchanged);
}

fn names(groups: &[Group]) -> Vec<&str> {
    groups.iter().map(Group::as_str).collect()
}

/// A mirror with a group scope (django-auth-ldap `MIRROR_GROUPS` / `MIRROR_GROUPS_EXCEPT`)
/// changes memberships inside the scope only: roles given by hand outside it survive every
/// login, and a mirror that matches inside the scope writes nothing.
pub async fn mirror_group_scope_keeps_other_groups<S: UserStore>(s: &S) {
    let first = ldap_mirror("scoped", &groups(&["active", "staff"]));
    s.mirror_user(&first).await.expect("first login");
    // A role given by hand in the inventory.
    s.set_user_groups("scoped", &groups(&["active", "assets-buyer", "staff"])).await.expect("hand role");

    let except = GroupScope::Except(["assets-buyer".to_owned()].into());
    let again = UserMirror { group_scope: except.clone(), ..first.clone() };
    let m = s.mirror_user(&again).await.expect("mirror within the exception list");
    assert_eq!(m.change, MirrorChange::Unchanged, "the hand role is outside the scope: nothing to write");
    assert_eq!(names(&s.user_groups("scoped").await.expect("groups")), ["active", "assets-buyer", "staff"]);

    let demoted = UserMirror { groups: Some(groups(&["active"])), group_scope: except, ..first.clone() };
    assert_eq!(s.mirror_user(&demoted).await.expect("demote").change, MirrorChange::Updated);
    assert_eq!(names(&s.user_groups("scoped").await.expect("groups")), ["active", "assets-buyer"]);

    // Only "staff" is mirrored: "active" and the hand role stay, "staff" comes and goes.
    let only = GroupScope::Only(["staff".to_owned()].into());
    let promoted =
        UserMirror { groups: Some(groups(&["staff", "superuser"])), group_scope: only.clone(), ..first.clone() };
    assert_eq!(s.mirror_user(&promoted).await.expect("promote").change, MirrorChange::Updated);
    assert_eq!(
        names(&s.user_groups("scoped").await.expect("groups")),
        ["active", "assets-buyer", "staff"],
        "superuser is outside the scope and not added"
    );
    let none = UserMirror { groups: Some(Vec::new()), group_scope: only, ..first };
    s.mirror_user(&none).await.expect("remove staff");
    assert_eq!(names(&s.user_groups("scoped").await.expect("groups")), ["active", "assets-buyer"]);
}

/// With several directories, the account records which one owns it: a mirror of the same
/// username from another directory is refused and writes nothing, the owner's mirror goes on.
pub async fn mirror_keeps_directories_apart<S: UserStore>(s: &S) {
    let mut corp = ldap_mirror("shared-name", &groups(&["active"]));
    corp.user.directory = Some("corp".into());
    let created = s.mirror_user(&corp).await.expect("corp creates the account");
    assert_eq!(created.change, MirrorChange::Created);
    let stored = s.get_user("shared-name").await.expect("read").expect("exists");
    assert_eq!(stored.value.directory.as_deref(), Some("corp"), "the owner is stored");

    let mut lab = ldap_mirror("shared-name", &groups(&["active", "superuser"]));
    lab.user.directory = Some("lab".into());
    lab.user.first_name = "Intruder".into();
    let refused = s.mirror_user(&lab).await;
    assert!(matches!(refused, Err(StoreError::Conflict { .. })), "{refused:?}");
    let unnamed = UserMirror { user: User { directory: None, ..lab.user.clone() }, ..lab.clone() };
    assert!(s.mirror_user(&unnamed).await.is_err_and(|e| e.is_conflict()), "no directory is another directory");
    let after = s.get_user("shared-name").await.expect("read").expect("exists");
    assert_eq!(after.value, stored.value, "nothing of the other directory's entry was written");
    assert_eq!(names(&s.user_groups("shared-name").await.expect("groups")), ["active"]);

    let renamed = UserMirror { user: User { first_name: "Corp".into(), ..corp.user.clone() }, ..corp };
    assert_eq!(s.mirror_user(&renamed).await.expect("owner").change, MirrorChange::Updated);
    let empty = User { directory: Some(" ".into()), ..renamed.user };
    assert!(s.mirror_user(&UserMirror::new(empty)).await.is_err_and(|e| e.is_invalid()));
}

/// A page of mirrors (bulk sync) gives one result per mirror, in order: unchanged users are
/// reported unchanged, changed ones written, and a refused one does not stop the others.
pub async fn mirror_users_reports_each<S: UserStore>(s: &S) {
    let page: Vec<UserMirror> = (0..7).map(|i| ldap_mirror(&format!("page-{i}"), &groups(&["active"]))).collect();
    s.mirror_user(&page[0]).await.expect("page-0 exists");
    s.mirror_user(&page[1]).await.expect("page-1 exists");
    s.create_user(&User::new("page-2").expect("local")).await.expect("a local account of the same name");
    let mut next = page.clone();
    next[1].user.last_name = "Changed".into();
    let results = s.mirror_users(&next).await.expect("page");
    let changes: Vec<Result<MirrorChange, bool>> =
        results.iter().map(|r| r.as_ref().map(|m| m.change).map_err(StoreError::is_conflict)).collect();
    assert_eq!(
        changes,
        [
            Ok(MirrorChange::Unchanged),
            Ok(MirrorChange::Updated),
            Err(true),
            Ok(MirrorChange::Created),
            Ok(MirrorChange::Created),
            Ok(MirrorChange::Created),
            Ok(MirrorChange::Created),
        ]
    );
    for (i, r) in results.iter().enumerate() {
        if let Ok(m) = r {
            let stored = s.get_user(&format!("page-{i}")).await.expect("read").expect("stored");
            assert_eq!(stored.id, m.id, "page-{i}");
        }
    }
    assert_eq!(s.get_user("page-1").await.expect("read").expect("stored").value.last_name, "Changed");
    let again = s.mirror_users(&next).await.expect("same page again");
    assert!(
        again.iter().enumerate().all(|(i, r)| i == 2 || r.as_ref().is_ok_and(|m| m.change == MirrorChange::Unchanged)),
        "{again:?}"
    );
    assert!(s.mirror_users(&[]).await.expect("empty page").is_empty());
}

/// A first import: pages of new users (profiles, groups, a name twice in a page) synced by 6
/// tasks over overlapping pages while 14 logins of some of the same users race them. Every
/// mirror succeeds, each user is created exactly once (by a page or by a login), and every
/// user ends with its profile and exactly its groups. Needs a multi-threaded runtime.
pub async fn racing_bulk_imports<S: UserStore + Clone + 'static>(s: &S) {
    let mirror = |i: usize| {
        let mut m = ldap_mirror(&format!("bulk-{i:03}"), &groups(&["active", &format!("team-{}", i % 7)]));
        m.profile = Some(Profile { department: Some(format!("dept {i}")), ..m.profile.expect("profile") });
        m
    };
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..6 {
        // Pages of 40 starting 20 apart over 140 users: most are in two pages; page 0 names one
        // twice.
        let mut page: Vec<UserMirror> = (t * 20..t * 20 + 40).map(mirror).collect();
        if t == 0 {
            page.push(mirror(5));
        }
        let store = s.clone();
        tasks.spawn(async move { store.mirror_users(&page).await.expect("page") });
    }
    for i in (0..140).step_by(10) {
        let store = s.clone();
        let login = mirror(i);
        tasks.spawn(async move { vec![store.mirror_user(&login).await] });
    }
    let mut created: BTreeMap<String, usize> = BTreeMap::new();
    while let Some(results) = tasks.join_next().await {
        for result in results.expect("task") {
            let done = result.unwrap_or_else(|e| panic!("a racing mirror failed: {e:?}"));
            assert_ne!(done.change, MirrorChange::Updated, "nothing differs between the racers");
            if done.change == MirrorChange::Created {
                let user = s.list_users(Some(UserSource::Ldap)).await.expect("list");
                let name = user.iter().find(|u| u.id == done.id).expect("the created user").value.username.clone();
                *created.entry(name).or_default() += 1;
            }
        }
    }
    assert_eq!(created.len(), 140, "every user created");
    assert!(created.values().all(|n| *n == 1), "each exactly once: {created:?}");
    for i in 0..140 {
        let m = mirror(i);
        let name = &m.user.username;
        assert_eq!(s.get_user(name).await.expect("read").expect("stored").value, m.user, "{name}");
        assert_eq!(s.get_profile(name).await.expect("profile"), m.profile, "{name}");
        let mut want = m.groups.clone().expect("groups");
        want.sort();
        assert_eq!(s.user_groups(name).await.expect("groups"), want, "{name}");
    }
}

/// 48 concurrent first logins (16 of one user, 32 of users of their own, all sharing groups) on
/// the caller's tokio runtime: every mirror succeeds, exactly one creation per user, every user
/// ends with all the groups. Needs a multi-threaded runtime to race for real.
pub async fn racing_first_mirrors<S: UserStore + Clone + 'static>(s: &S) {
    let shared = groups(&["active", "staff", "assets-buyer"]);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..48 {
        let store = s.clone();
        // 16 tasks on one new user, 32 on users of their own, all with the same groups.
        let name = if i % 3 == 0 { "frank".to_owned() } else { format!("user{i}") };
        let mirror = ldap_mirror(&name, &shared);
        tasks.spawn(async move { store.mirror_user(&mirror).await });
    }
    let mut created = 0;
    while let Some(result) = tasks.join_next().await {
        match result.expect("task") {
            Ok(done) if done.change == MirrorChange::Created => created += 1,
            Ok(done) => assert_eq!(done.change, MirrorChange::Unchanged, "nothing differs between the racers"),
            Err(e) => panic!("a racing mirror failed: {e:?}"),
        }
    }
    assert_eq!(created, 33, "one creation per user");
    let users = s.list_users(Some(UserSource::Ldap)).await.expect("list");
    assert_eq!(users.len(), 33);
    let mut expected = shared.clone();
    expected.sort();
    for user in users {
        assert_eq!(s.user_groups(&user.value.username).await.expect("groups"), expected, "{}", user.value.username);
    }
}

/// A device model's height, depth and kind cannot change while devices use it
/// ([`ValidationError::Invalid`] naming the field, nothing written); its name can, and an
/// unused model may change shape.
pub async fn model_shape_is_fixed_while_in_use<S: InventoryStore>(s: &S) {
    let site = site(s, "shape").await;
    let original: DeviceModel = s.get(site.server_2u).await.expect("model").value;
    let unused: DeviceModel = s.get(site.server_1u).await.expect("model").value;
    s.create(&Device::new(site.server_2u, Some("host-2u"), None, None).in_rack(site.rack, 10, Orientation::Front))
        .await
        .expect("device");
    let changes: [(&str, DeviceModel); 3] = [
        ("height_u", DeviceModel { height_u: 4, ..original.clone() }),
        ("full_depth", DeviceModel { full_depth: false, ..original.clone() }),
        ("kind", DeviceModel { kind: DeviceType::Storage, ..original.clone() }),
    ];
    for (field, changed) in changes {
        match invalid(s.update(site.server_2u, &changed).await) {
            ValidationError::Invalid { field: f, .. } => assert_eq!(f, field),
            other => panic!("{field}: unexpected {other:?}"),
        }
        assert_eq!(s.get(site.server_2u).await.expect("model").value, original, "nothing written");
    }
    // The name may change; an unused model may change shape.
    let renamed = DeviceModel { name: "S2-renamed".into(), ..original.clone() };
    s.update(site.server_2u, &renamed).await.expect("rename");
    assert_eq!(s.get(site.server_2u).await.expect("model").value, renamed);
    let taller = DeviceModel { height_u: 3, full_depth: false, ..unused };
    s.update(site.server_1u, &taller).await.expect("unused model");
    assert_eq!(s.get(site.server_1u).await.expect("model").value, taller);
    assert_eq!(s.rack_devices(site.rack).await.expect("rack").len(), 1);
}

const UTF8: [&str; 3] = ["Zażółć gęślą jaźń", "🚀 rakieta 🔥 💾", "数据中心 東京 데이터"];

/// Non-ASCII text (Polish, emoji, CJK) round-trips byte for byte in inventory names, and in
/// users, profiles and groups ([`utf8_users_round_trip`]); emoji are told apart.
pub async fn utf8_round_trips_byte_for_byte<S: InventoryStore + UserStore>(s: &S) {
    let model = s.create(&DeviceModel::new("m", None, DeviceType::RackServer, 1).expect("m")).await.expect("m");
    for (i, text) in UTF8.iter().enumerate() {
        let dc = DataCenter::new(text, None).expect("dc").with_address(text, text);
        let dc_id = s.create(&dc).await.expect("dc");
        let got = s.get(dc_id).await.expect("get").value;
        assert_eq!((got.name.as_bytes(), got.city.as_deref()), (text.as_bytes(), Some(*text)));
        assert_eq!(s.find_data_center(text).await.expect("find").map(|r| r.id), Some(dc_id));
        let room = s.create(&ServerRoom::new(text, dc_id).expect("room")).await.expect("room");
        let rack = s.create(&Rack::new(text, room).expect("rack")).await.expect("rack");
        assert_eq!(s.get(rack).await.expect("rack").value.name.as_bytes(), text.as_bytes());
        let device = Device::new(model, Some(text), Some(&format!("{text}-{i}")), None);
        let device_id = s.create(&device).await.expect("device");
        let got = s.get(device_id).await.expect("device").value;
        assert_eq!(got.hostname.as_deref().map(str::as_bytes), Some(text.as_bytes()));
        assert_eq!(got, device);
    }
    // Emoji are told apart (a collation that weighs them all the same would call this a duplicate).
    let dc = s.find_data_center(UTF8[0]).await.expect("find").expect("dc").id;
    let room = s.create(&ServerRoom::new("emoji", dc).expect("room")).await.expect("room");
    s.create(&Rack::new("🚀", room).expect("rack")).await.expect("rocket");
    s.create(&Rack::new("🔥", room).expect("rack")).await.expect("fire is another name");
    utf8_users_round_trip(s).await;
}

/// Non-ASCII text (Polish, emoji, CJK) round-trips byte for byte in user names, profiles and
/// group names.
pub async fn utf8_users_round_trip<S: UserStore>(s: &S) {
    for (i, text) in UTF8.iter().enumerate() {
        let username = format!("user{i}");
        let mut user = User::new(&username).expect("user");
        user.first_name = (*text).to_owned();
        user.last_name = text.chars().rev().collect();
        s.create_user(&user).await.expect("user");
        assert_eq!(s.get_user(&username).await.expect("get").map(|r| r.value), Some(user));
        let profile = Profile {
            company: Some((*text).to_owned()),
            manager: Some((*text).to_owned()),
            department: Some((*text).to_owned()),
            employee_id: Some((*text).to_owned()),
            location: Some((*text).to_owned()),
            country: None,
        };
        s.set_profile(&username, &profile).await.expect("profile");
        assert_eq!(s.get_profile(&username).await.expect("get"), Some(profile));
        let group = Group::new(&format!("zespół {text}")).expect("group");
        s.set_user_groups(&username, std::slice::from_ref(&group)).await.expect("groups");
        assert_eq!(s.user_groups(&username).await.expect("groups"), [group]);
    }
}

/// Eight concurrent `deploy` transitions of one device (on the caller's tokio runtime): the
/// compare-and-set lets exactly one through; the others get a conflict or a refused transition.
pub async fn racing_transitions_apply_once<S: InventoryStore + Clone + 'static>(s: &S) {
    let site = site(s, "cas").await;
    let device = s.create(&Device::new(site.server_1u, Some("cas"), None, None)).await.expect("device");
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let store = s.clone();
        tasks.spawn(
            async move { store.transition_device(device, &TransitionGraph::data_center_assets(), "deploy").await },
        );
    }
    let mut won = 0;
    while let Some(result) = tasks.join_next().await {
        match result.expect("task") {
            Ok(status) => {
                assert_eq!(status, AssetStatus::InUse);
                won += 1;
            }
            // Lost the race at the compare-and-set, or read the new status and was refused.
            Err(
                StoreError::Conflict { .. } | StoreError::Invalid { source: ValidationError::Transition { .. }, .. },
            ) => {}
            Err(other) => panic!("unexpected error {other:?}"),
        }
    }
    assert_eq!(won, 1, "one deploy, not {won}");
    assert_eq!(s.get(device).await.expect("device").status, AssetStatus::InUse);
}

/// Eight concurrent writers racing for the same rack units (on the caller's tokio runtime):
/// exactly one device is placed.
pub async fn racing_placements_never_overlap<S: InventoryStore + Clone + 'static>(s: &S) {
    let site = site(s, "race").await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..8u32 {
        let store = s.clone();
        let model = if i % 2 == 0 { site.server_1u } else { site.server_2u };
        let device = Device::new(model, Some(&format!("racer{i}")), None, None).in_rack(
            site.rack,
            40 - (i % 2),
            Orientation::Front,
        );
        tasks.spawn(async move { store.create(&device).await });
    }
    let mut won = 0;
    while let Some(result) = tasks.join_next().await {
        match result.expect("task") {
            Ok(_) => won += 1,
            Err(
                StoreError::Invalid { source: ValidationError::RackOverlap { .. }, .. } | StoreError::Conflict { .. },
            ) => {}
            Err(other) => panic!("unexpected error {other:?}"),
        }
    }
    assert_eq!(won, 1, "exactly one device may take U39-U40");
    assert_eq!(s.rack_devices(site.rack).await.expect("rack").len(), 1);
}

//! Properties of the SQLite store checked against ralph-core's pure functions: rack placements
//! (accepted exactly when the pure check accepts, refused with the same error), the smallest
//! containing network, and the addresses of a range.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use ipnetwork::IpNetwork;
use proptest::prelude::*;
use ralph_core::{
    DataCenter, Device, DeviceModel, DeviceType, Id, InventoryStore, IpAddress, Network, Orientation, Rack, RackSlot,
    Repository, ServerRoom, check_rack_slot, smallest_containing,
};
use ralph_store::SqliteStore;

/// Model heights and depths the placements draw from.
const MODELS: [(u32, bool); 6] = [(1, true), (2, true), (3, true), (1, false), (2, false), (4, false)];

#[derive(Debug, Clone)]
struct Placement {
    model: usize,
    position: u32,
    orientation: Orientation,
}

fn placement() -> impl Strategy<Value = Placement> {
    (0..MODELS.len(), 1..=14u32, prop_oneof![Just(Orientation::Front), Just(Orientation::Back)])
        .prop_map(|(model, position, orientation)| Placement { model, position, orientation })
}

async fn check(rack_height: u32, placements: Vec<Placement>) -> Result<(), TestCaseError> {
    let store = SqliteStore::connect("sqlite::memory:").await.expect("store");
    let dc = store.create(&DataCenter::new("dc", None).expect("dc")).await.expect("dc");
    let room = store.create(&ServerRoom::new("room", dc).expect("room")).await.expect("room");
    let rack = Rack::new("rack", room).expect("rack").with_height(rack_height).expect("height");
    let rack = store.create(&rack).await.expect("rack");
    let mut models: Vec<Id<DeviceModel>> = Vec::new();
    for (i, (height, full_depth)) in MODELS.iter().enumerate() {
        let mut model = DeviceModel::new(&format!("m{i}"), None, DeviceType::Storage, *height).expect("model");
        model.full_depth = *full_depth;
        models.push(store.create(&model).await.expect("model"));
    }

    let mut accepted: Vec<(i64, RackSlot)> = Vec::new();
    for p in placements {
        let (height, full_depth) = MODELS[p.model];
        let slot = RackSlot { position: p.position, height, orientation: p.orientation, full_depth };
        let pure = check_rack_slot(rack_height, &slot, &accepted);
        let device = Device::new(models[p.model], None, None, None).in_rack(rack, p.position, p.orientation);
        match (pure, store.create(&device).await) {
            (Ok(()), Ok(id)) => accepted.push((id.get(), slot)),
            (Err(expected), Err(error)) => prop_assert_eq!(error.validation(), Some(&expected)),
            (pure, stored) => prop_assert!(false, "pure check {:?} but store {:?} for {:?}", pure, stored, slot),
        }
    }
    prop_assert_eq!(store.rack_devices(rack).await.expect("rack").len(), accepted.len());
    prop_assert_eq!(Repository::<Device>::list(&store).await.expect("list").len(), accepted.len());
    Ok(())
}

/// Networks and addresses inside 10.0.0.0/16, so they nest and overlap often.
fn v4_network() -> impl Strategy<Value = IpNetwork> {
    (any::<u16>(), 16u8..=30).prop_map(|(low, prefix)| {
        let addr = Ipv4Addr::from(0x0a00_0000 | u32::from(low));
        let net = IpNetwork::new(IpAddr::V4(addr), prefix).expect("prefix");
        IpNetwork::new(net.network(), prefix).expect("canonical")
    })
}

fn v4_address() -> impl Strategy<Value = IpAddr> {
    any::<u16>().prop_map(|low| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | u32::from(low))))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

async fn lookups(networks: Vec<IpNetwork>, probes: Vec<IpAddr>) -> Result<(), TestCaseError> {
    let store = SqliteStore::connect("sqlite::memory:").await.expect("store");
    let mut stored = Vec::new();
    for (i, cidr) in networks.into_iter().collect::<BTreeSet<_>>().into_iter().enumerate() {
        // Built by hand: /30s cannot hold Network::new's default 10 reserved addresses.
        let net = Network {
            name: format!("n{i}"),
            cidr,
            gateway: None,
            reserved_from_beginning: 0,
            reserved_from_end: 0,
            vlan: None,
            environment: None,
        };
        store.create(&net).await.expect("create");
        stored.push(net);
    }
    for ip in probes {
        let expected = smallest_containing(&stored, ip).map(|n| n.cidr);
        let found = store.network_containing(ip).await.expect("lookup").map(|r| r.value.cidr);
        prop_assert_eq!(found, expected, "address {}", ip);
    }
    Ok(())
}

async fn ranges(addresses: Vec<(IpAddr, bool)>, range: IpNetwork) -> Result<(), TestCaseError> {
    let store = SqliteStore::connect("sqlite::memory:").await.expect("store");
    let mut known = std::collections::BTreeMap::new();
    for (ip, buried) in addresses {
        if known.insert(ip, buried).is_none() {
            let mut record = IpAddress::new(ip);
            record.is_buried = buried;
            store.create(&record).await.expect("create");
        }
    }
    for include_buried in [false, true] {
        let expected: Vec<IpAddr> = known
            .iter()
            .filter(|(ip, buried)| range.contains(**ip) && (include_buried || !**buried))
            .map(|(ip, _)| *ip)
            .collect();
        let found: Vec<IpAddr> =
            store.ip_addresses_in(range, include_buried).await.expect("range").into_iter().map(|r| r.address).collect();
        prop_assert_eq!(found, expected);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn network_lookup_agrees_with_the_pure_smallest_containing(
        networks in proptest::collection::vec(v4_network(), 1..12),
        probes in proptest::collection::vec(v4_address(), 1..20),
    ) {
        runtime().block_on(lookups(networks, probes))?;
    }

    #[test]
    fn address_ranges_agree_with_a_filter(
        addresses in proptest::collection::vec((v4_address(), any::<bool>()), 0..40),
        range in v4_network(),
    ) {
        runtime().block_on(ranges(addresses, range))?;
    }

    #[test]
    fn store_accepts_exactly_what_the_pure_check_accepts(
        rack_height in 4..=12u32,
        placements in proptest::collection::vec(placement(), 1..10),
    ) {
        runtime().block_on(check(rack_height, placements))?;
    }
}

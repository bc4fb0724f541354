//! Property: for random sequences of rack placements, the SQLite store accepts exactly the
//! placements the pure check accepts, and refuses the others with the same error.

use proptest::prelude::*;
use ralph_core::{
    DataCenter, Device, DeviceModel, DeviceType, Id, InventoryStore, Orientation, Rack, RackSlot, Repository,
    ServerRoom, check_rack_slot,
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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn store_accepts_exactly_what_the_pure_check_accepts(
        rack_height in 4..=12u32,
        placements in proptest::collection::vec(placement(), 1..10),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(check(rack_height, placements))?;
    }
}

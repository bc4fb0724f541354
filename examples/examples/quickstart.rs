//! Quickstart: a small data centre in a SQLite file, a local admin logging in through the auth
//! chain, and the store refusing what it must refuse.
//!
//! ```text
//! cargo run --example quickstart                  # ./ralph-quickstart.sqlite3
//! cargo run --example quickstart -- /tmp/demo.db  # any other file
//! ```
//!
//! Running it again reopens the file and finds everything in place: each step creates only what
//! is missing. `RUST_LOG=ralph=debug` shows the library's events; no password is ever in them.

use std::error::Error;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;

use ralph_core::auth::LoginError;
use ralph_core::{
    AuthChain, Credentials, DataCenter, Device, DeviceModel, DeviceType, Entity, Group, Id, InventoryStore, IpAddress,
    LocalBackend, Network, NetworkEnvironment, Orientation, Placement, Rack, Record, Repository, Secret, ServerRoom,
    StoreError, TransitionGraph, User, UserStore,
};
use ralph_store::SqliteStore;
use tracing_subscriber::EnvFilter;

/// The demo admin's password. A constant only because this is a demo: a real application reads
/// it from its operator and never stores or logs it in clear.
const DEMO_PASSWORD: &str = "quickstart-demo-only-Pa55";

type Result<T, E = Box<dyn Error>> = std::result::Result<T, E>;

/// Build a small data centre in a SQLite file, log its admin in through the auth chain, and
/// show the store refusing what it must refuse. Safe to run repeatedly: each step creates only
/// what is missing.
#[derive(Parser)]
#[command(name = "quickstart", after_help = "Environment:\n  RUST_LOG  e.g. ralph=debug for the library's events")]
struct Args {
    /// The SQLite file to create, or to reopen when it exists
    #[arg(value_name = "PATH", default_value = "ralph-quickstart.sqlite3")]
    path: PathBuf,
}

/// Returns the id of the first row `same` picks, creating `value` when there is none.
async fn ensure<T, S>(store: &S, value: T, same: impl Fn(&T) -> bool) -> Result<(Id<T>, bool)>
where
    T: Entity,
    S: Repository<T>,
{
    if let Some(found) = store.list().await?.into_iter().find(|r| same(&r.value)) {
        return Ok((found.id, false));
    }
    Ok((store.create(&value).await?, true))
}

/// A device identified by its serial number, created once.
async fn ensure_device(store: &SqliteStore, device: Device) -> Result<Id<Device>> {
    let serial = device.serial_number.clone().unwrap_or_default();
    match store.find_device_by_serial(&serial).await? {
        Some(found) => Ok(found.id),
        None => Ok(store.create(&device).await?),
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")))
        .init();

    let path = Args::parse().path;
    let reopened = path.exists();
    let store = Arc::new(SqliteStore::connect(&format!("sqlite://{}", path.display())).await?);
    println!("{} {}\n", if reopened { "Reopened" } else { "Created" }, path.display());

    // Locations.
    let s = store.as_ref();
    let dc = DataCenter::new("dc1", Some("pl"))?.with_address("Warszawa", "ul. Kolejowa 5/7");
    let (dc, _) = ensure(s, dc, |d| d.name == "dc1").await?;
    let (room, _) = ensure(s, ServerRoom::new("room-a", dc)?, |r| r.name == "room-a" && r.data_center == dc).await?;
    let (rack_a, _) = ensure(s, Rack::new("a01", room)?, |r| r.name == "a01" && r.server_room == room).await?;
    let (rack_b, _) =
        ensure(s, Rack::new("a02", room)?.with_height(42)?, |r| r.name == "a02" && r.server_room == room).await?;

    // Networks.
    let (env, _) = ensure(s, NetworkEnvironment::new("prod-dc1", dc)?, |e| e.name == "prod-dc1").await?;
    let v4 = Network::new("servers", "10.10.0.0/24")?.with_gateway("10.10.0.1")?.with_vlan(110)?.in_environment(env);
    let v6 = Network::new("servers-v6", "2001:db8:10::/64")?.with_gateway("2001:db8:10::1")?.in_environment(env);
    let mgmt = Network::new("management", "10.10.1.0/26")?.with_reserved(2, 1)?.in_environment(env);
    for net in [v4, v6, mgmt] {
        let cidr = net.cidr;
        ensure(s, net, |n| n.cidr == cidr).await?;
    }

    // Hardware.
    let model = |name: &str, vendor: &str, kind, height| DeviceModel::new(name, Some(vendor), kind, height);
    let (r640, _) =
        ensure(s, model("PowerEdge R640", "Dell", DeviceType::RackServer, 1)?, |m| m.name == "PowerEdge R640").await?;
    let (r740, _) =
        ensure(s, model("PowerEdge R740", "Dell", DeviceType::RackServer, 2)?, |m| m.name == "PowerEdge R740").await?;
    let mut switch = model("Nexus 93180", "Cisco", DeviceType::Switch, 1)?;
    switch.full_depth = false;
    let (nexus, _) = ensure(s, switch, |m| m.name == "Nexus 93180").await?;
    let (pdu, _) = ensure(s, model("AP8941", "APC", DeviceType::Pdu, 0)?, |m| m.name == "AP8941").await?;

    let placed = [
        (r640, "web-01", "SN-Q-0001", rack_a, 1),
        (r640, "web-02", "SN-Q-0002", rack_a, 2),
        (r740, "db-01", "SN-Q-0003", rack_a, 10),
        (nexus, "tor-a01", "SN-Q-0004", rack_a, 42),
        (r740, "backup-01", "SN-Q-0005", rack_b, 5),
    ];
    let mut web01 = None;
    for (i, (model, host, serial, rack, position)) in placed.into_iter().enumerate() {
        let mut device = Device::new(model, Some(host), Some(serial), None).in_rack(rack, position, Orientation::Front);
        device.management_ip = Some(format!("10.10.1.{}", 10 + i).parse()?);
        let id = ensure_device(&store, device).await?;
        web01.get_or_insert(id);
        let mgmt_ip: IpAddr = format!("10.10.1.{}", 10 + i).parse()?;
        if store.find_ip(mgmt_ip).await?.is_none() {
            let mut ip = IpAddress::parse(&mgmt_ip.to_string(), Some(&format!("{host}-mgmt.dc1.local")))?;
            ip.is_management = true;
            ip.device = Some(id);
            store.create(&ip).await?;
        }
    }
    let mut zero_u = Device::new(pdu, Some("pdu-a01"), Some("SN-Q-PDU1"), None);
    zero_u.placement = Placement::Rack { rack: rack_a, position: None, orientation: Orientation::Back };
    ensure_device(&store, zero_u).await?;
    if let Some(id) = web01 {
        let graph = TransitionGraph::data_center_assets();
        if store.get(id).await?.status.as_str() == "new" {
            store.transition_device(id, &graph, "deploy").await?;
        }
    }

    // A local administrator. Each step is safe to repeat, and the password comes last: a run
    // that stopped half way (user created, no password yet) is finished by the next one.
    let local = LocalBackend::new(store.clone());
    if store.password_hash("admin").await?.is_none() {
        if store.get_user("admin").await?.is_none() {
            let mut admin = User::new("admin")?;
            admin.first_name = "Ada".into();
            admin.last_name = "Admin".into();
            admin.is_staff = true;
            admin.is_superuser = true;
            match store.create_user(&admin).await {
                // Another run created it in the meantime: fine.
                Ok(_) => {}
                Err(e) if e.is_conflict() => {}
                Err(e) => return Err(e.into()),
            }
        }
        store.set_user_groups("admin", &[Group::new(Group::SUPERUSER)?, Group::new(Group::STAFF)?]).await?;
        local.set_password("admin", &Secret::new(DEMO_PASSWORD)).await?;
    }

    // Logins through the chain.
    let chain = AuthChain::new().with(Arc::new(local));
    let login = chain.authenticate(&Credentials::new("admin", DEMO_PASSWORD)).await?;
    let groups: Vec<&str> = login.identity.groups.iter().map(Group::as_str).collect();
    println!(
        "Login: {} ({}) accepted by the {} backend; groups: {}",
        login.identity.user.username,
        login.identity.user.display_name(),
        login.backend,
        groups.join(", ")
    );
    match chain.authenticate(&Credentials::new("admin", "not-the-password")).await {
        Err(e @ LoginError::InvalidCredentials) => println!("Login: admin with a wrong password refused: {e}"),
        other => return Err(format!("a wrong password was not refused: {other:?}").into()),
    }

    // A device on top of web-01 is refused, and nothing is written.
    let before = Repository::<Device>::list(s).await?.len();
    let intruder = Device::new(r740, Some("intruder"), Some("SN-Q-9999"), None).in_rack(rack_a, 1, Orientation::Front);
    match store.create(&intruder).await {
        Err(e @ StoreError::Invalid { .. }) => {
            let why = e.validation().map(ToString::to_string).unwrap_or_default();
            println!("Placement: refused as expected: {e}: {why}");
        }
        other => return Err(format!("an overlapping device was not refused: {other:?}").into()),
    }
    assert_eq!(Repository::<Device>::list(s).await?.len(), before, "a refused write wrote nothing");

    print!("{}", summary(&store).await?);
    // Closing checkpoints the write-ahead log back into the file.
    store.close().await;
    Ok(())
}

/// A readable picture of what the store holds.
async fn summary(store: &SqliteStore) -> Result<String> {
    let mut out = String::from("\n== Summary ==\n");
    let models = Repository::<DeviceModel>::list(store).await?;
    let model_name =
        |id: Id<DeviceModel>| models.iter().find(|m| m.id == id).map_or_else(|| "?".to_owned(), |m| m.name.clone());
    for dc in Repository::<DataCenter>::list(store).await? {
        let country = dc.country.map_or("-", |c| c.name());
        writeln!(out, "Data centre {} ({}, {})", dc.name, dc.city.as_deref().unwrap_or("-"), country)?;
        let rooms: Vec<Record<ServerRoom>> = Repository::<ServerRoom>::list(store).await?;
        for room in rooms.iter().filter(|r| r.data_center == dc.id) {
            writeln!(out, "  Server room {}", room.name)?;
            for rack in Repository::<Rack>::list(store).await?.into_iter().filter(|r| r.server_room == room.id) {
                writeln!(out, "    Rack {} ({}U)", rack.name, rack.max_u_height)?;
                for d in store.rack_devices(rack.id).await? {
                    let at = match d.placement {
                        Placement::Rack { position: Some(p), .. } => format!("U{p:02}"),
                        _ => "0U ".to_owned(),
                    };
                    writeln!(
                        out,
                        "      {at}  {:<10} {:<16} {:<10} {}",
                        d.hostname.as_deref().unwrap_or("-"),
                        model_name(d.model),
                        d.status.as_str(),
                        d.management_ip.map(|ip| ip.to_string()).unwrap_or_default()
                    )?;
                }
            }
        }
    }
    for env in Repository::<NetworkEnvironment>::list(store).await? {
        writeln!(out, "Network environment {} (queue {})", env.name, env.queue)?;
        for net in store.environment_networks(env.id).await? {
            let vlan = net.vlan.map(|v| format!(", VLAN {}", v.get())).unwrap_or_default();
            let gw = net.gateway.map(|g| format!(", gateway {g}")).unwrap_or_default();
            writeln!(out, "  {:<12} {}{gw}{vlan}", net.name, net.cidr)?;
        }
    }
    let probe: IpAddr = "10.10.1.12".parse()?;
    if let Some(net) = store.network_containing(probe).await? {
        writeln!(out, "Lookup: {probe} is in {} ({})", net.name, net.cidr)?;
    }
    let users: Vec<String> =
        store.list_users(None).await?.into_iter().map(|u| format!("{} ({})", u.username, u.source.as_str())).collect();
    writeln!(
        out,
        "Totals: {} devices, {} IP addresses, {} device models; users: {}",
        Repository::<Device>::list(store).await?.len(),
        Repository::<IpAddress>::list(store).await?.len(),
        models.len(),
        users.join(", ")
    )?;
    Ok(out)
}

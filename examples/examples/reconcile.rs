//! Reconcile: scan facts become inventory, explainably. Reads an SNMP agent (or a facts file),
//! prints the plan (a dry run: nothing is written to the inventory), applies it with
//! `--apply`, and prints one device's history.
//!
//! ```text
//! cargo run --example reconcile -- --snmp 127.0.0.1:161 --community public [--apply] [--store URL]
//! cargo run --example reconcile -- --facts facts.json [--apply] [--store URL]
//! ```
//!
//! A facts file is a JSON array of `Facts` (see `ralph_core::reconcile::Facts`). The community
//! is read from `--community` or `RALPH_SNMP_COMMUNITY` and is never printed. The store
//! defaults to `sqlite://ralph-reconcile.sqlite3`; running twice shows the second plan empty.
//! SNMP facts accept locally administered MACs as identity (lab and cloud interfaces have them).

use std::error::Error;
use std::net::SocketAddr;

use chrono::Utc;
use ralph_core::Secret;
use ralph_core::history::{Actor, HistoryStore};
use ralph_core::reconcile::{
    Change, Facts, IdentityConfig, ItemStatus, MacBlacklist, ReconcileConfig, ReconcileStore, Reconciler, Scan, Source,
    plan_and_store,
};
use ralph_discovery::{ProbeContext, SnmpProbe};
use ralph_store::AnyStore;

type Result<T, E = Box<dyn Error>> = std::result::Result<T, E>;

struct Args {
    snmp: Option<SocketAddr>,
    community: Option<String>,
    facts: Option<String>,
    store: String,
    apply: bool,
}

fn args() -> Result<Args> {
    let mut out = Args {
        snmp: None,
        community: std::env::var("RALPH_SNMP_COMMUNITY").ok(),
        facts: None,
        store: "sqlite://ralph-reconcile.sqlite3".to_owned(),
        apply: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--snmp" => out.snmp = Some(value()?.parse()?),
            "--community" => out.community = Some(value()?),
            "--facts" => out.facts = Some(value()?),
            "--store" => out.store = value()?,
            "--apply" => out.apply = true,
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    if out.snmp.is_none() == out.facts.is_none() {
        return Err("give one of --snmp ADDR:PORT or --facts FILE".into());
    }
    Ok(out)
}

fn describe(change: &Change) -> String {
    match change {
        Change::CreateDevice { device, address, fields } => {
            let fields: Vec<String> = fields.iter().map(|f| format!("{}={:?}", f.field, f.after)).collect();
            format!("create device #{device} (from {address}): {}", fields.join(", "))
        }
        Change::UpdateDevice { device, fields } => {
            let fields: Vec<String> =
                fields.iter().map(|f| format!("{}: {:?} -> {:?}", f.field, f.before, f.after)).collect();
            format!("update device {device}: {}", fields.join(", "))
        }
        Change::DeleteDevice { device, misses } => format!("delete device {device} (missed {misses} times)"),
        Change::CreateComponent { device, kind, .. } => format!("create {kind:?} on {device:?}"),
        Change::UpdateComponent { component, after, .. } => format!("update component {component}: {after:?}"),
        Change::MoveComponent { component, from, to, .. } => format!("move component {component}: {from} -> {to:?}"),
        Change::DeleteComponent { component, misses, .. } => {
            format!("delete component {component} (missed {misses} times)")
        }
        Change::Conflict { addresses, devices, evidence } => {
            format!("CONFLICT {addresses:?}: devices {devices:?}, evidence {evidence:?}")
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt().with_env_filter("warn").init();
    let args = args()?;
    let facts: Vec<Facts> = match (&args.snmp, &args.facts) {
        (Some(addr), _) => {
            let community = args.community.clone().ok_or("--community or RALPH_SNMP_COMMUNITY is required")?;
            let probe = SnmpProbe { communities: vec![Secret::new(community)], port: addr.port() };
            let system = probe.read_system(addr.ip(), &ProbeContext::standalone(4)).await?;
            println!(
                "snmp {addr}: {} ({} MACs, sysObjectID {})",
                system.description.as_deref().unwrap_or("-"),
                system.macs.len(),
                system.object_id.as_deref().unwrap_or("-")
            );
            vec![system.to_facts(addr.ip(), Source::new("snmp", 10)?, Utc::now())]
        }
        (None, Some(path)) => serde_json::from_str(&std::fs::read_to_string(path)?)?,
        (None, None) => unreachable!("checked by args()"),
    };
    let reconciler = Reconciler::new(
        ReconcileConfig::default().with_identity(IdentityConfig::default().with_macs(MacBlacklist::minimal())),
    );
    let store = AnyStore::connect(&args.store).await?;
    let scan = Scan::new(&format!("reconcile-{}", Utc::now().format("%Y%m%dT%H%M%S")));
    let (plan_id, plan) = plan_and_store(&store, &reconciler, &scan, &facts).await?;
    let counts = plan.counts();
    println!(
        "plan {plan_id}: {} create, {} update, {} move, {} delete, {} conflict, {} unresolved, {} suppressed",
        counts.create,
        counts.update,
        counts.moved,
        counts.delete,
        counts.conflict,
        counts.unresolved,
        counts.suppressed
    );
    for item in &plan.items {
        println!("  {:>4}  {}", item.seq, describe(&item.change));
    }
    for s in &plan.suppressed {
        println!(
            "  kept {:?}'s {} ({:?}): not {:?} from {}",
            s.device, s.field, s.reason, s.value, s.offered_by.source
        );
    }
    for u in &plan.unresolved {
        println!("  unresolved {}: {:?}", u.address, u.reason);
    }
    if !args.apply {
        println!("dry run: nothing applied (add --apply)");
        return Ok(());
    }
    let report = store.apply_plan(plan_id, &Actor::source("reconcile-example")).await?;
    println!(
        "applied {}, failed {}, skipped {} (correlation {})",
        report.applied, report.failed, report.skipped, report.correlation
    );
    for item in store.load_plan(plan_id).await?.items {
        if let ItemStatus::Failed(reason) = &item.status {
            println!("  item {} failed: {reason}", item.seq);
        }
    }
    let device = report.created.values().next().copied().or_else(|| {
        plan.items.iter().find_map(|i| match i.change {
            Change::UpdateDevice { device, .. } => Some(device),
            _ => None,
        })
    });
    if let Some(device) = device {
        println!("history of device {device}:");
        for entry in store.object_history("device", device.get(), 20).await? {
            println!(
                "  {} {} by {} ({})",
                entry.at,
                entry.record.action.as_str(),
                entry.record.actor,
                entry.correlation
            );
            for c in &entry.record.changes {
                println!("      {}: {:?} -> {:?}", c.field, c.before, c.after);
            }
        }
    }
    Ok(())
}

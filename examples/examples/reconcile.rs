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
//! defaults to `sqlite://ralph-reconcile.sqlite3` (PostgreSQL and MySQL URLs work too); running
//! twice shows the second plan empty. `--help` lists the options.
//! SNMP facts accept locally administered MACs as identity (lab and cloud interfaces have them).

use std::convert::Infallible;
use std::error::Error;
use std::net::SocketAddr;
use std::path::PathBuf;

use chrono::Utc;
use clap::{ArgGroup, Parser};
use ralph_core::Secret;
use ralph_core::history::{Actor, HistoryStore};
use ralph_core::reconcile::{
    Change, Facts, IdentityConfig, ItemStatus, MacBlacklist, ReconcileConfig, ReconcileStore, Reconciler, Scan, Source,
    plan_and_store,
};
use ralph_discovery::{ProbeContext, SnmpProbe};
use ralph_store::AnyStore;

type Result<T, E = Box<dyn Error>> = std::result::Result<T, E>;

/// Reconcile scan facts with the inventory: read an SNMP agent's system group and interface MACs
/// (or a facts file), print the plan (creates, updates, moves, deletes, conflicts, suppressed
/// values) as a dry run, apply it with --apply and print the device's change history.
#[derive(Parser)]
#[command(
    name = "reconcile",
    // A repeated option replaces the earlier value, as the hand-written parser did.
    args_override_self = true,
    group(ArgGroup::new("source").required(true).args(["snmp", "facts"])),
)]
struct Args {
    /// Read the system group and interface MACs of the SNMP v2c agent at ADDR:PORT
    #[arg(long, value_name = "ADDR:PORT", requires = "community")]
    snmp: Option<SocketAddr>,

    /// The SNMP community (a secret: prefer RALPH_SNMP_COMMUNITY, ps shows the command line)
    #[arg(long, value_name = "COMMUNITY", env = "RALPH_SNMP_COMMUNITY", hide_env_values = true, value_parser = secret)]
    community: Option<Secret>,

    /// Read the facts from a JSON file (an array of ralph_core::reconcile::Facts) instead of SNMP
    #[arg(long, value_name = "FILE")]
    facts: Option<PathBuf>,

    /// The inventory store (sqlite:, postgres: or mysql: URL)
    #[arg(long, value_name = "URL", default_value = "sqlite://ralph-reconcile.sqlite3")]
    store: String,

    /// Apply the plan (without it, nothing is written to the inventory)
    #[arg(long)]
    apply: bool,
}

fn secret(s: &str) -> Result<Secret, Infallible> {
    Ok(Secret::new(s))
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
    let args = Args::parse();
    let facts: Vec<Facts> = match (&args.snmp, &args.facts) {
        (Some(addr), _) => {
            let community = args.community.clone().ok_or("--community or RALPH_SNMP_COMMUNITY is required")?;
            let probe = SnmpProbe { communities: vec![community], port: addr.port() };
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
        (None, None) => unreachable!("one of them is required by the argument group"),
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

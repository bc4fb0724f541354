//! Ralph's `ldap_sync`: imports every user the configuration admits, with paged searches,
//! and deactivates LDAP users the directory no longer lists.
//!
//! ```text
//! RALPH_STORE_URL=sqlite://ralph.sqlite3 cargo run --example ldap_sync -- ldap.toml
//! ```
//!
//! Prints the report (seen, created, updated, skipped, deactivated...) as JSON; exits 1 when
//! the sync fails (nothing is deactivated then), 2 for usage or configuration errors. The store
//! is `--store URL` or `RALPH_STORE_URL` (default `sqlite://ralph-ldap.sqlite3`; PostgreSQL and
//! MySQL URLs work too); `--help` lists the options.

use ralph_examples::causes;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use ralph_ldap::{LdapBackend, LdapConfig};
use ralph_store::AnyStore;

/// Ralph's ldap_sync: import every user the configuration admits (paged search), create and
/// update users, profiles and groups, deactivate LDAP users the directory no longer lists, and
/// print the counts as JSON. Exits 1 when the sync fails, 2 for usage or configuration errors.
#[derive(Parser)]
#[command(name = "ldap_sync", after_help = "Environment:\n  RUST_LOG  e.g. ralph=debug for the sync's steps")]
struct Args {
    /// The LDAP configuration (TOML, see ralph-ldap's README)
    #[arg(value_name = "CONFIG.toml")]
    config: PathBuf,

    /// The store users are synced into (sqlite:, postgres: or mysql: URL)
    #[arg(
        long,
        value_name = "URL",
        env = "RALPH_STORE_URL",
        hide_env_values = true,
        default_value = "sqlite://ralph-ldap.sqlite3"
    )]
    store: String,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let config = match LdapConfig::from_toml_file(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let store = match AnyStore::connect(&args.store).await {
        Ok(s) => s,
        Err(e) => {
            // The URL is not repeated: it may hold a password.
            eprintln!("cannot open the store: {}", causes(&e));
            return ExitCode::from(2);
        }
    };
    let backend = match LdapBackend::new(config, store) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match backend.sync().await {
        Ok(report) => {
            println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sync failed: {}", causes(&e));
            ExitCode::FAILURE
        }
    }
}

//! Ralph's `ldap_sync`: imports every user the configuration admits, with paged searches,
//! and deactivates LDAP users the directory no longer lists.
//!
//! ```text
//! RALPH_STORE_URL=sqlite://ralph.sqlite3 cargo run --example ldap_sync -- ldap.toml
//! ```
//!
//! Prints the report (seen, created, updated, skipped, deactivated...) as JSON; exits 1 when
//! the sync fails (nothing is deactivated then), 2 for usage or configuration errors.

use std::process::ExitCode;

use ralph_ldap::{LdapBackend, LdapConfig};
use ralph_store::SqliteStore;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let Some(config_path) = std::env::args().nth(1) else {
        eprintln!("usage: ldap_sync CONFIG.toml   (store in RALPH_STORE_URL, default sqlite://ralph-ldap.sqlite3)");
        return ExitCode::from(2);
    };
    let config = match LdapConfig::from_toml_file(&config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let store_url = std::env::var("RALPH_STORE_URL").unwrap_or_else(|_| "sqlite://ralph-ldap.sqlite3".to_owned());
    let store = match SqliteStore::connect(&store_url).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot open the store {store_url}: {e}");
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
            let mut msg = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                msg.push_str(&format!(": {s}"));
                source = s.source();
            }
            eprintln!("sync failed: {msg}");
            ExitCode::FAILURE
        }
    }
}

//! Logs a user in through LDAP (then local accounts) and prints who they are.
//!
//! ```text
//! RALPH_LDAP_PASSWORD=alice-pw cargo run --example ldap_login -- ldap.toml alice
//! echo alice-pw | cargo run --example ldap_login -- ldap.toml alice
//! ```
//!
//! The password comes from `RALPH_LDAP_PASSWORD` or, when that is unset, the first line of
//! stdin. Users are mirrored into `RALPH_STORE_URL` (default: an in-memory SQLite database).
//! Prints the identity, flags, groups and profile as JSON and exits 0, or prints the refusal
//! and exits 1 (2 for usage or configuration errors). `RUST_LOG=ralph=debug` shows the steps.

use std::io::BufRead;
use std::process::ExitCode;
use std::sync::Arc;

use ralph_core::auth::LoginError;
use ralph_core::{AuthChain, Credentials, LocalBackend, Secret};
use ralph_ldap::{LdapBackend, LdapConfig};
use ralph_store::SqliteStore;
use serde_json::json;

fn usage(msg: &str) -> ExitCode {
    eprintln!("{msg}\nusage: ldap_login CONFIG.toml USERNAME   (password in RALPH_LDAP_PASSWORD or on stdin)");
    ExitCode::from(2)
}

fn password() -> std::io::Result<Secret> {
    if let Ok(pw) = std::env::var("RALPH_LDAP_PASSWORD") {
        return Ok(Secret::new(pw));
    }
    // One allocation, large enough that read_line never reallocates (and frees an unzeroed
    // copy) for a normal password; the newline is cut in place and the buffer itself is moved
    // into the Secret, which zeroizes it (its whole capacity) on drop. No copy is left behind.
    let mut line = String::with_capacity(1024);
    let read = std::io::stdin().lock().read_line(&mut line);
    let kept = line.trim_end_matches(['\r', '\n']).len();
    line.truncate(kept);
    let pw = Secret::new(line);
    read?;
    Ok(pw)
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [config_path, username] = args.as_slice() else { return usage("expected two arguments") };
    let config = match LdapConfig::from_toml_file(config_path) {
        Ok(c) => c,
        Err(e) => return usage(&e.to_string()),
    };
    let password = match password() {
        Ok(p) => p,
        Err(e) => return usage(&format!("cannot read the password: {e}")),
    };
    let store_url = std::env::var("RALPH_STORE_URL").unwrap_or_else(|_| "sqlite::memory:".to_owned());
    let store = match SqliteStore::connect(&store_url).await {
        Ok(s) => s,
        Err(e) => return usage(&format!("cannot open the store {store_url}: {e}")),
    };
    let ldap = match LdapBackend::new(config, store.clone()) {
        Ok(b) => b,
        Err(e) => return usage(&e.to_string()),
    };
    let chain = AuthChain::new().with(Arc::new(ldap)).with(Arc::new(LocalBackend::new(store)));

    match chain.authenticate(&Credentials::new(username.as_str(), password)).await {
        Ok(login) => {
            let out = json!({ "ok": true, "backend": login.backend, "identity": login.identity });
            println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(error) => {
            let (kind, detail) = match &error {
                LoginError::InvalidCredentials => ("invalid_credentials", None),
                LoginError::Denied { reason, .. } => ("denied", serde_json::to_value(reason).ok()),
                LoginError::Unavailable { source, .. } => ("unavailable", Some(json!(source.to_string()))),
                _ => ("error", None),
            };
            let out = json!({ "ok": false, "refused": kind, "reason": error.to_string(), "detail": detail });
            println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
            ExitCode::FAILURE
        }
    }
}

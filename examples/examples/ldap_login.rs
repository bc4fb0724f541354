//! Logs a user in through LDAP (then local accounts) and prints who they are.
//!
//! ```text
//! RALPH_LDAP_PASSWORD=alice-pw cargo run --example ldap_login -- ldap.toml alice
//! echo alice-pw | cargo run --example ldap_login -- ldap.toml alice
//! ```
//!
//! The password comes from `RALPH_LDAP_PASSWORD` or, when that is unset, the first line of
//! stdin (never from the command line, which `ps` shows to everyone). Users are mirrored into
//! `--store URL` or `RALPH_STORE_URL` (default: an in-memory SQLite database; PostgreSQL and
//! MySQL URLs work too). `--help` lists the options.
//! Prints the identity, flags, groups and profile as JSON and exits 0, or prints the refusal
//! and exits 1 (2 for usage or configuration errors). `RUST_LOG=ralph=debug` shows the steps.

use ralph_examples::causes;
use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use ralph_core::auth::LoginError;
use ralph_core::{AuthChain, Credentials, LocalBackend, Secret};
use ralph_ldap::{LdapBackend, LdapConfig};
use ralph_store::AnyStore;
use serde_json::json;

/// The variable holding the password (read here, never taken from the command line).
const PASSWORD_ENV: &str = "RALPH_LDAP_PASSWORD";

/// Log a user in through the chain "LDAP first, then local accounts", mirror them into a store
/// and print who they are as JSON. Exits 0 on success, 1 when the login is refused, 2 for
/// usage or configuration errors.
#[derive(Parser)]
#[command(
    name = "ldap_login",
    after_help = "Environment:\n  RALPH_LDAP_PASSWORD  the password; when unset, the first line of stdin is read\n  \
                  RUST_LOG             e.g. ralph=debug for the login's steps"
)]
struct Args {
    /// The LDAP configuration (TOML, see ralph-ldap's README)
    #[arg(value_name = "CONFIG.toml")]
    config: PathBuf,

    /// The login name (`alice`, `alice@realm`, `REALM\alice`)
    #[arg(value_name = "USERNAME")]
    username: String,

    /// The store users are mirrored into (sqlite:, postgres: or mysql: URL)
    #[arg(
        long,
        value_name = "URL",
        env = "RALPH_STORE_URL",
        hide_env_values = true,
        default_value = "sqlite::memory:"
    )]
    store: String,
}

fn usage(msg: &str) -> ExitCode {
    eprintln!(
        "ldap_login: {msg}\n(ldap_login --help lists the options; the password is read from {PASSWORD_ENV} or stdin)"
    );
    ExitCode::from(2)
}

fn password() -> std::io::Result<Secret> {
    if let Ok(pw) = std::env::var(PASSWORD_ENV) {
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
    let Args { config: config_path, username, store: store_url } = Args::parse();
    let config = match LdapConfig::from_toml_file(&config_path) {
        Ok(c) => c,
        Err(e) => return usage(&e.to_string()),
    };
    let password = match password() {
        Ok(p) => p,
        Err(e) => return usage(&format!("cannot read the password: {e}")),
    };
    let store = match AnyStore::connect(&store_url).await {
        Ok(s) => s,
        // The URL is not repeated: it may hold a password.
        Err(e) => return usage(&format!("cannot open the store: {}", causes(&e))),
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

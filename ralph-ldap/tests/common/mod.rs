//! Shared helpers for the integration tests: the fixture's addresses, a standard
//! configuration, a fresh in-memory store, and admin access for tests that add entries.
#![allow(dead_code, unreachable_pub)]

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::process::Command;
use std::sync::{Arc, Mutex};

use ldap3::{LdapConnAsync, Mod};
use ralph_core::testing::MemoryStore;
use ralph_ldap::LdapConfig;

/// Where the fixture slapd is (from the `RALPH_TEST_LDAP_*` variables up.sh exports).
#[derive(Debug, Clone)]
pub struct Fixture {
    pub url: String,
    pub ldaps_url: String,
    pub ca: String,
    pub other_ca: String,
    pub base: String,
    pub bind_dn: String,
    pub bind_password: String,
    pub admin_dn: String,
    pub admin_password: String,
    pub bulk_users: usize,
    pub pid_file: String,
    pub restart: String,
}

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_default()
}

/// The fixture, or `None` (a printed skip; a failure under CI=true) when slapd is not running.
pub fn fixture() -> Option<Fixture> {
    let url = ralph_testkit::service("RALPH_TEST_LDAP_URL")?;
    Some(Fixture {
        url,
        ldaps_url: var("RALPH_TEST_LDAPS_URL"),
        ca: var("RALPH_TEST_LDAP_CA"),
        other_ca: var("RALPH_TEST_LDAP_OTHER_CA"),
        base: var("RALPH_TEST_LDAP_BASE"),
        bind_dn: var("RALPH_TEST_LDAP_BIND_DN"),
        bind_password: var("RALPH_TEST_LDAP_BIND_PASSWORD"),
        admin_dn: var("RALPH_TEST_LDAP_ADMIN_DN"),
        admin_password: var("RALPH_TEST_LDAP_ADMIN_PASSWORD"),
        bulk_users: var("RALPH_TEST_LDAP_BULK_USERS").parse().unwrap_or(5000),
        pid_file: var("RALPH_TEST_LDAP_PID_FILE"),
        restart: var("RALPH_TEST_LDAP_RESTART"),
    })
}

/// The second, independent directory (`RALPH_TEST_LDAP2_*`, from
/// scripts/services/slapd2/up.sh): the same people under the same base, other passwords for
/// the service and admin accounts, no bulk users. `None` (a printed skip; a failure under
/// CI=true) when it is not running.
pub fn fixture2() -> Option<Fixture> {
    let url = ralph_testkit::service("RALPH_TEST_LDAP2_URL")?;
    Some(Fixture {
        url,
        ldaps_url: var("RALPH_TEST_LDAP2_LDAPS_URL"),
        ca: var("RALPH_TEST_LDAP2_CA"),
        other_ca: var("RALPH_TEST_LDAP2_OTHER_CA"),
        base: var("RALPH_TEST_LDAP2_BASE"),
        bind_dn: var("RALPH_TEST_LDAP2_BIND_DN"),
        bind_password: var("RALPH_TEST_LDAP2_BIND_PASSWORD"),
        admin_dn: var("RALPH_TEST_LDAP2_ADMIN_DN"),
        admin_password: var("RALPH_TEST_LDAP2_ADMIN_PASSWORD"),
        bulk_users: var("RALPH_TEST_LDAP2_BULK_USERS").parse().unwrap_or(0),
        pid_file: var("RALPH_TEST_LDAP2_PID_FILE"),
        restart: var("RALPH_TEST_LDAP2_RESTART"),
    })
}

/// Ralph's settings from the issue, pointed at the fixture (memberOf groups, mapping,
/// nested groups by recursion, the ralph-users user filter).
pub fn ralph_toml(fx: &Fixture) -> String {
    let b = &fx.base;
    format!(
        r#"
server_uris = ["{url}"]
bind_dn = "{bind_dn}"
bind_password = "{bind_pw}"
protocol_version = 3
username_attr = "sAMAccountName"
user_filter = "(memberOf=cn=ralph-users,ou=groups,{b})"
group_type = "member_of"
group_name_attr = "cn"
nested_groups = "recursive"
mirror_groups = true
deny_group = "cn=_gr_ralph_banned,ou=groups,{b}"
# Generous: the suite runs on a loaded 2-core machine. Tests of the timeouts set their own.
connect_timeout_ms = 10000
operation_timeout_ms = 30000

[user_search]
base = "{b}"
scope = "subtree"
filter = "(&(objectClass=*)(sAMAccountName=%(user)s))"

[user_attr_map]
first_name = "givenName"
last_name = "sn"
email = "mail"

[profile_attr_map]
company = "company"
manager = "manager"
department = "department"
employee_id = "employeeID"
location = "officeName"
country = "ISO-country-code"

[group_mapping]
"CN=_gr_ralph,OU=groups,{B}" = "active"
"CN=_gr_ralph_admin,OU=groups,{B}" = "superuser"
"CN=_gr_ralph_staff,OU=groups,{B}" = "staff"
"CN=_gr_ralph_assets_buyer,OU=groups,{B}" = "assets-buyer"
"CN=_gr_ralph_assets_staff,OU=groups,{B}" = "assets-staff"
"#,
        url = fx.url,
        bind_dn = fx.bind_dn,
        bind_pw = fx.bind_password,
        B = b.to_uppercase(),
    )
}

pub fn ralph_config(fx: &Fixture) -> LdapConfig {
    LdapConfig::from_toml_str(&ralph_toml(fx)).expect("fixture config is valid")
}

/// A fresh, empty in-memory store (the SQL stores' semantics, no database; clones share it).
pub fn store() -> MemoryStore {
    MemoryStore::new()
}

/// An admin connection for tests that add and remove their own entries.
pub async fn admin(fx: &Fixture) -> ldap3::Ldap {
    let (conn, mut ldap) = LdapConnAsync::new(&fx.url).await.expect("admin connect");
    ldap3::drive!(conn);
    ldap.simple_bind(&fx.admin_dn, &fx.admin_password).await.expect("admin bind").success().expect("admin bind ok");
    ldap
}

/// Adds an entry (attribute name → values).
pub async fn add(ldap: &mut ldap3::Ldap, dn: &str, attrs: &[(&str, &[&str])]) {
    let attrs: Vec<(&str, HashSet<&str>)> = attrs.iter().map(|(a, v)| (*a, v.iter().copied().collect())).collect();
    ldap.add(dn, attrs).await.expect("add").success().unwrap_or_else(|e| panic!("adding {dn}: {e}"));
}

/// Removes one value of an attribute.
pub async fn remove_value(ldap: &mut ldap3::Ldap, dn: &str, attr: &str, value: &str) {
    let m = vec![Mod::Delete(attr, HashSet::from([value]))];
    ldap.modify(dn, m).await.expect("modify").success().unwrap_or_else(|e| panic!("modifying {dn}: {e}"));
}

/// Deletes entries (referral objects included: ManageDsaIT), ignoring those already gone.
pub async fn delete(ldap: &mut ldap3::Ldap, dns: &[&str]) {
    use ldap3::controls::{MakeCritical, ManageDsaIt};
    for dn in dns {
        let _ = ldap.with_controls(ManageDsaIt.critical()).delete(dn).await;
    }
}

/// A slapd of this test's own, from scripts/services/slapd/up.sh with a private run directory
/// and no bulk users: for tests that kill it, or that need the fixture exactly as the scripts
/// now make it. Stopped (down.sh) when dropped.
pub struct PrivateSlapd {
    run_dir: tempfile::TempDir,
    env: HashMap<String, String>,
}

fn script(name: &str) -> String {
    format!("{}/../scripts/services/slapd/{name}", env!("CARGO_MANIFEST_DIR"))
}

impl PrivateSlapd {
    pub fn start() -> Self {
        // The guard exists before anything can fail: a failed assert below drops it, and its
        // Drop runs down.sh on the run directory, so no slapd is orphaned.
        let mut slapd = Self { run_dir: tempfile::tempdir().expect("run dir"), env: HashMap::new() };
        let out = Command::new("bash")
            .arg(script("up.sh"))
            .env("RALPH_TEST_RUN_DIR", slapd.run_dir.path())
            .env("RALPH_TEST_LDAP_BULK_USERS", "0")
            .output()
            .expect("run up.sh");
        slapd.env = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
            .collect();
        assert!(out.status.success(), "up.sh failed: {}", String::from_utf8_lossy(&out.stderr));
        slapd
    }

    pub fn var(&self, name: &str) -> String {
        self.env.get(name).cloned().unwrap_or_default()
    }

    /// This slapd as a [`Fixture`].
    pub fn fixture(&self) -> Fixture {
        Fixture {
            url: self.var("RALPH_TEST_LDAP_URL"),
            ldaps_url: self.var("RALPH_TEST_LDAPS_URL"),
            ca: self.var("RALPH_TEST_LDAP_CA"),
            other_ca: self.var("RALPH_TEST_LDAP_OTHER_CA"),
            base: self.var("RALPH_TEST_LDAP_BASE"),
            bind_dn: self.var("RALPH_TEST_LDAP_BIND_DN"),
            bind_password: self.var("RALPH_TEST_LDAP_BIND_PASSWORD"),
            admin_dn: self.var("RALPH_TEST_LDAP_ADMIN_DN"),
            admin_password: self.var("RALPH_TEST_LDAP_ADMIN_PASSWORD"),
            bulk_users: 0,
            pid_file: self.var("RALPH_TEST_LDAP_PID_FILE"),
            restart: self.var("RALPH_TEST_LDAP_RESTART"),
        }
    }
}

impl Drop for PrivateSlapd {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(script("down.sh")).env("RALPH_TEST_RUN_DIR", self.run_dir.path()).status();
    }
}

/// Everything the `tracing` events of this thread write, for tests that look for a warning
/// (or for a secret that must not be there).
#[derive(Clone, Default)]
pub struct Captured(pub Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().map_err(|_| std::io::Error::other("poisoned"))?.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// Starts capturing this thread's events (all levels) until the guard is dropped.
    pub fn start() -> (Self, tracing::subscriber::DefaultGuard) {
        let captured = Self::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        (captured, tracing::subscriber::set_default(subscriber))
    }

    /// What was written so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("lock")).into_owned()
    }
}

/// A unique suffix for entries a test creates.
pub fn unique(prefix: &str) -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{prefix}-{}-{nanos}", std::process::id())
}

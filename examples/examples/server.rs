//! The reference host application: one process composing every crate.
//!
//! ```text
//! cargo run --example server -- server.toml
//! ```
//!
//! - **Login over HTTP**: `POST /login` with a form (`username`, `password`) or JSON
//!   (`{"username": …, "password": …}`), through the chain "LDAP first, then local accounts"
//!   (LDAP only when the config has an `[ldap]` table). A success sets an `HttpOnly`,
//!   `SameSite=Strict` session cookie; `POST /logout` ends the session. JSON answers: 200
//!   `{"ok": true, "username", "staff"}`, 401 wrong credentials, 403 refused (inactive, a
//!   missing group…), 503 directory or store unavailable.
//! - **Status page** (ralph-web) under `/admin/queues` for staff users (others get 403).
//! - **Discovery workers** for the queues in the config's `[[workers]]`.
//! - **Change-history retention** (when `[history]` sets one): every `prune_every_secs` the
//!   server queues a prune job (`ralph.history.prune`, shown on the status page) unless one is
//!   waiting, and runs the waiting ones. Several servers on one database share the jobs (two
//!   may queue one each in the same period; a second prune deletes nothing more).
//! - **SIGTERM / SIGINT: graceful drain**. No new connection is accepted; requests in flight
//!   (logins) finish; workers stop their scans, record what they found and hand the unscanned
//!   rest back to the queue; then the process exits 0. Connections that stay open (live updates) are
//!   cut after `drain_timeout_secs`.
//! - **SIGHUP: reload** (Ralph's Gunicorn `HUP`). The config file is read again: the login
//!   chain is rebuilt from the new `[ldap]` table and takes effect for the next login (logins in
//!   flight finish on the chain they started with); workers whose settings changed are drained
//!   and restarted, removed ones drained, new ones started (a SIGTERM during that drain is
//!   heard at once and drains everything). A config that does not load is
//!   logged and the running one kept.
//!
//! With an empty config it runs on SQLite (`ralph-server.sqlite3` in the working directory) on
//! 127.0.0.1:8080; `RALPH_ADMIN_PASSWORD` set on start creates (or resets) the local staff
//! account `admin`, so a first login needs nothing else. The config:
//!
//! ```toml
//! listen = "127.0.0.1:8080"
//! store = "postgres://ralph@db/ralph"     # or sqlite://…, mysql://…
//! session_ttl_secs = 28800
//! drain_timeout_secs = 10
//!
//! [ldap]                                  # ralph_ldap::LdapConfig, as in ldap.toml
//! server_uris = ["ldaps://dc1.corp.example"]
//! # …
//!
//! [history]                               # change-history retention; by default none:
//! max_age_days = 365                      # rows older than this go (omitted: any age)
//! # max_per_object = 1000                 # at most this many rows per object (omitted: any)
//! prune_every_secs = 3600                 # the default
//!
//! [[workers]]
//! name = "dc1-scanner"                    # unique per worker (heartbeat rows)
//! queues = ["discovery.dc1"]
//! concurrency = 2                         # job slots
//! ports = [22, 80, 443]
//! icmp = false
//! # lease_secs = 60, heartbeat_ms = 10000, rate = 300.0 (probe starts/s), pace_loopback = false
//! ```
//!
//! Prints one line `LISTENING <address>` on stdout once it accepts connections (tests and
//! scripts wait for it); logs go to stderr (`RUST_LOG=ralph=debug,server=debug`).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use clap::Parser;
use ralph_core::auth::LoginError;
use ralph_core::history::{PRUNE_QUEUE, Retention, enqueue_prune, run_prune_jobs};
use ralph_core::{AuthChain, Credentials, LocalBackend, QueueAdmin, Secret, User, UserStore};
use ralph_discovery::{CancellationToken, RateConfig, ScanConfig, Scanner, Worker, WorkerConfig};
use ralph_ldap::{LdapBackend, LdapConfig};
use ralph_store::AnyStore;
use ralph_web::{Access, AccessHook, StatusPage};
use serde::Deserialize;
use serde_json::json;
use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinHandle;

/// Tracing target of the server's own events.
const TRACE: &str = "server";
/// The session cookie's name.
const COOKIE: &str = "ralph_session";

#[derive(Parser)]
#[command(name = "server", about = "The ralph-rs reference service: HTTP login, status page, discovery workers")]
struct Args {
    /// The TOML config file (read again on SIGHUP); an empty file runs on SQLite
    #[arg(value_name = "CONFIG")]
    config: PathBuf,
}

/// The config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Address to listen on.
    #[serde(default = "default_listen")]
    listen: SocketAddr,
    /// Store URL (`sqlite://`, `postgres://`, `mysql://`); read at start only.
    #[serde(default = "default_store")]
    store: String,
    /// How long a session lasts.
    #[serde(default = "default_session_ttl")]
    session_ttl_secs: u64,
    /// How long a drain waits for connections that stay open.
    #[serde(default = "default_drain_timeout")]
    drain_timeout_secs: u64,
    /// The directory; none: local accounts only.
    #[serde(default)]
    ldap: Option<LdapConfig>,
    /// Discovery workers.
    #[serde(default)]
    workers: Vec<WorkerSpec>,
    /// Change-history retention.
    #[serde(default)]
    history: HistoryConfig,
}

/// `[history]`: how long change history is kept, pruned by a queued job.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryConfig {
    /// Rows older than this many days are pruned (none, the default: any age is kept).
    #[serde(default)]
    max_age_days: Option<u64>,
    /// At most this many rows are kept per object (none: any number).
    #[serde(default)]
    max_per_object: Option<u32>,
    /// How often a prune job is queued.
    #[serde(default = "default_prune_every")]
    prune_every_secs: u64,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self { max_age_days: None, max_per_object: None, prune_every_secs: default_prune_every() }
    }
}

const fn default_prune_every() -> u64 {
    3600
}

impl HistoryConfig {
    fn retention(&self) -> Retention {
        let mut retention = Retention::default();
        if let Some(days) = self.max_age_days {
            retention = retention.with_max_age(Duration::from_secs(days.saturating_mul(86_400)));
        }
        if let Some(n) = self.max_per_object {
            retention = retention.with_max_per_object(n);
        }
        retention
    }
}

/// Queues a prune job every `prune_every_secs` (unless one is waiting) and runs the waiting
/// ones, until `stop`. The retention is read at start (a reload does not change it).
async fn prune_history(store: AnyStore, config: HistoryConfig, stop: CancellationToken) {
    if config.max_age_days.is_none() && config.max_per_object.is_none() {
        return; // no retention set: the history is kept whole
    }
    let retention = config.retention();
    let worker = format!("server-{}", std::process::id());
    let mut tick = tokio::time::interval(Duration::from_secs(config.prune_every_secs.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let waiting = store.stats(PRUNE_QUEUE).await.map(|s| s.pending + s.running);
        if matches!(waiting, Ok(0))
            && let Err(e) = enqueue_prune(&store, PRUNE_QUEUE, &retention).await
        {
            tracing::warn!(target: TRACE, error = %e, "could not queue a history prune");
        }
        let run = tokio::select! {
            () = stop.cancelled() => return,
            run = run_prune_jobs(&store, PRUNE_QUEUE, &worker, Duration::from_secs(600)) => run,
        };
        match run {
            Ok(run) if run.jobs + run.rejected + run.lease_lost > 0 => {
                tracing::info!(target: TRACE, jobs = run.jobs, rows = run.rows, "change history pruned");
                println!("PRUNED {} {}", run.jobs, run.rows);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(target: TRACE, error = %e, "history prune failed; tried again next period"),
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_store() -> String {
    "sqlite://ralph-server.sqlite3?mode=rwc".to_owned()
}
const fn default_session_ttl() -> u64 {
    8 * 3600
}
const fn default_drain_timeout() -> u64 {
    10
}

/// One discovery worker.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkerSpec {
    name: String,
    queues: Vec<String>,
    #[serde(default = "default_concurrency")]
    concurrency: usize,
    #[serde(default = "default_ports")]
    ports: Vec<u16>,
    #[serde(default)]
    icmp: bool,
    /// Lease per job, seconds.
    #[serde(default = "default_lease")]
    lease_secs: u64,
    /// Probe starts per second at the start (the pacer adapts from there); none: the default.
    #[serde(default)]
    rate: Option<f64>,
    /// Pace loopback targets too (tests and labs; off by default, as in `ScanConfig`).
    #[serde(default)]
    pace_loopback: bool,
    /// How often the worker writes its heartbeat (with its scans' progress), milliseconds.
    #[serde(default = "default_heartbeat")]
    heartbeat_ms: u64,
}

const fn default_concurrency() -> usize {
    2
}
fn default_ports() -> Vec<u16> {
    vec![22, 80, 443]
}
const fn default_lease() -> u64 {
    60
}
const fn default_heartbeat() -> u64 {
    10_000
}

impl Config {
    fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let config: Self = toml::from_str(&text).map_err(|e| format!("{}: {}", path.display(), e.message()))?;
        if let Some(ldap) = &config.ldap {
            ldap.validate().map_err(|e| format!("{}: [ldap]: {e}", path.display()))?;
        }
        let mut names = std::collections::BTreeSet::new();
        for w in &config.workers {
            if !names.insert(w.name.as_str()) {
                return Err(format!("{}: two workers are named {:?}", path.display(), w.name));
            }
            w.worker_config().validate().map_err(|e| format!("{}: worker {:?}: {e}", path.display(), w.name))?;
        }
        Ok(config)
    }
}

impl WorkerSpec {
    fn worker_config(&self) -> WorkerConfig {
        let mut queues = self.queues.iter();
        let mut config = WorkerConfig::new(queues.next().map_or("", String::as_str));
        for q in queues {
            config = config.queue(q.as_str());
        }
        config
            .name(self.name.as_str())
            .concurrency(self.concurrency)
            .lease(Duration::from_secs(self.lease_secs))
            .heartbeat_interval(Duration::from_millis(self.heartbeat_ms))
    }
}

/// A logged-in user's session.
#[derive(Debug, Clone)]
struct Session {
    username: String,
    staff: bool,
    expires: Instant,
}

/// Sessions by token, in memory (a restart logs everyone out).
#[derive(Default)]
struct Sessions {
    by_token: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    fn open(&self, username: &str, staff: bool, ttl: Duration) -> String {
        let token = format!("{:032x}{:032x}", rand::random::<u128>(), rand::random::<u128>());
        let now = Instant::now();
        let mut map = self.by_token.lock().unwrap_or_else(PoisonError::into_inner);
        map.retain(|_, s| s.expires > now);
        map.insert(token.clone(), Session { username: username.to_owned(), staff, expires: now + ttl });
        token
    }

    fn get(&self, headers: &HeaderMap) -> Option<Session> {
        let token = cookie(headers, COOKIE)?;
        let map = self.by_token.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(token).filter(|s| s.expires > Instant::now()).cloned()
    }

    fn close(&self, headers: &HeaderMap) {
        if let Some(token) = cookie(headers, COOKIE) {
            self.by_token.lock().unwrap_or_else(PoisonError::into_inner).remove(token);
        }
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(name)?.strip_prefix('='))
}

/// The status page's access: staff sessions may act, everyone else nothing.
struct StaffOnly(Arc<Sessions>);

#[async_trait::async_trait]
impl AccessHook for StaffOnly {
    async fn access(&self, request: &Parts) -> Access {
        match self.0.get(&request.headers) {
            Some(s) if s.staff => Access::act(s.username),
            _ => Access::none(),
        }
    }
}

/// What the handlers share.
struct App {
    /// The login chain; replaced on reload, each login holds the one it started with.
    chain: RwLock<Arc<AuthChain>>,
    sessions: Arc<Sessions>,
    session_ttl: RwLock<Duration>,
}

impl App {
    fn chain(&self) -> Arc<AuthChain> {
        Arc::clone(&self.chain.read().unwrap_or_else(PoisonError::into_inner))
    }
}

fn build_chain(store: &AnyStore, ldap: Option<&LdapConfig>) -> Result<AuthChain, String> {
    let local = Arc::new(LocalBackend::new(store.clone()));
    Ok(match ldap {
        Some(config) => {
            let backend = LdapBackend::new(config.clone(), store.clone()).map_err(|e| format!("[ldap]: {e}"))?;
            AuthChain::new().with(Arc::new(backend)).with(local)
        }
        None => AuthChain::new().with(local),
    })
}

#[derive(Deserialize)]
struct LoginForm {
    username: String,
    password: String,
}

/// Whether the client asked for JSON (by `Content-Type` or `Accept`).
fn wants_json(headers: &HeaderMap) -> bool {
    let has = |name: header::HeaderName| {
        headers.get(name).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("application/json"))
    };
    has(header::CONTENT_TYPE) || has(header::ACCEPT)
}

fn parse_login(headers: &HeaderMap, body: &Bytes) -> Result<LoginForm, String> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if json {
        return serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"));
    }
    let mut username = None;
    let mut password = None;
    for (k, v) in form_urlencoded::parse(body) {
        match k.as_ref() {
            "username" => username = Some(v.into_owned()),
            "password" => password = Some(v.into_owned()),
            _ => {}
        }
    }
    match (username, password) {
        (Some(username), Some(password)) => Ok(LoginForm { username, password }),
        _ => Err("username and password are required".to_owned()),
    }
}

async fn login(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    let json = wants_json(&headers);
    let form = match parse_login(&headers, &body) {
        Ok(f) => f,
        Err(e) => return refuse(json, StatusCode::BAD_REQUEST, "bad_request", &e),
    };
    let chain = app.chain();
    let credentials = Credentials::new(form.username.as_str(), Secret::new(form.password));
    match chain.authenticate(&credentials).await {
        Ok(login) => {
            let user = &login.identity.user;
            let ttl = *app.session_ttl.read().unwrap_or_else(PoisonError::into_inner);
            let token = app.sessions.open(&user.username, user.is_staff, ttl);
            tracing::info!(target: TRACE, username = %user.username, backend = %login.backend, "login");
            let set_cookie = format!("{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}", ttl.as_secs());
            let mut response = if json {
                axum::Json(
                    json!({ "ok": true, "username": user.username, "staff": user.is_staff, "backend": login.backend }),
                )
                .into_response()
            } else {
                Redirect::to(if user.is_staff { "admin/queues" } else { "./" }).into_response()
            };
            if let Ok(value) = HeaderValue::from_str(&set_cookie) {
                response.headers_mut().insert(header::SET_COOKIE, value);
            }
            response
        }
        Err(error) => {
            let (status, kind) = match &error {
                LoginError::InvalidCredentials => (StatusCode::UNAUTHORIZED, "invalid_credentials"),
                LoginError::Denied { .. } => (StatusCode::FORBIDDEN, "denied"),
                LoginError::Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
                _ => (StatusCode::INTERNAL_SERVER_ERROR, "error"),
            };
            tracing::info!(target: TRACE, username = %form.username, refused = kind, error = %error, "login refused");
            refuse(json, status, kind, &error.to_string())
        }
    }
}

fn refuse(json: bool, status: StatusCode, kind: &str, reason: &str) -> Response {
    if json {
        (status, axum::Json(json!({ "ok": false, "refused": kind, "reason": reason }))).into_response()
    } else {
        (status, Html(page("Login refused", &format!("<p>{}</p><p><a href=\"./\">Back</a></p>", escape(reason)))))
            .into_response()
    }
}

async fn logout(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    app.sessions.close(&headers);
    let mut response = Redirect::to("./").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("ralph_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"),
    );
    response
}

async fn index(State(app): State<Arc<App>>, headers: HeaderMap) -> Html<String> {
    let body = match app.sessions.get(&headers) {
        Some(s) => format!(
            "<p>Logged in as <b>{}</b>.</p>{}<form method=\"post\" action=\"logout\"><button>Log out</button></form>",
            escape(&s.username),
            if s.staff { "<p><a href=\"admin/queues\">Status page</a></p>" } else { "" }
        ),
        None => "<form method=\"post\" action=\"login\">\
                 <label>Username <input name=\"username\" autocomplete=\"username\" required></label> \
                 <label>Password <input name=\"password\" type=\"password\" autocomplete=\"current-password\" required></label> \
                 <button type=\"submit\">Log in</button></form>"
            .to_owned(),
    };
    Html(page("ralph-rs", &body))
}

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title></head><body><h1>{}</h1>{body}</body></html>",
        escape(title),
        escape(title)
    )
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A running discovery worker.
struct RunningWorker {
    spec: WorkerSpec,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// Starts, keeps, drains and restarts workers to match the config.
struct Workers {
    store: AnyStore,
    running: BTreeMap<String, RunningWorker>,
    /// Stopped by a reload, their jobs still finishing: a SIGTERM that comes meanwhile drains
    /// them with the rest.
    draining: Vec<RunningWorker>,
}

impl Workers {
    /// Matches the running workers to `specs`: unchanged ones keep running.
    async fn apply(&mut self, specs: &[WorkerSpec]) {
        let wanted: BTreeMap<&str, &WorkerSpec> = specs.iter().map(|s| (s.name.as_str(), s)).collect();
        let stale: Vec<String> = self
            .running
            .iter()
            .filter(|(name, w)| wanted.get(name.as_str()).is_none_or(|s| **s != w.spec))
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            if let Some(w) = self.running.remove(&name) {
                tracing::info!(target: TRACE, worker = %name, "draining worker (config changed or removed)");
                w.stop.cancel();
                self.draining.push(w);
            }
        }
        // Cancel-safe (the caller races this with SIGTERM): a worker leaves `draining` only
        // once its task has ended, so a drain interrupted here is finished by `drain_all`.
        while let Some(w) = self.draining.last_mut() {
            let _ = (&mut w.task).await;
            self.draining.pop();
        }
        for spec in specs {
            if self.running.contains_key(&spec.name) {
                continue;
            }
            match self.start(spec) {
                Ok(w) => {
                    self.running.insert(spec.name.clone(), w);
                }
                Err(e) => tracing::error!(target: TRACE, worker = %spec.name, error = %e, "worker not started"),
            }
        }
    }

    fn start(&self, spec: &WorkerSpec) -> Result<RunningWorker, String> {
        let mut scan = ScanConfig::default()
            .ports(spec.ports.clone())
            .icmp(spec.icmp)
            .http(None)
            .pace_loopback(spec.pace_loopback);
        if let Some(rate) = spec.rate {
            scan = scan.rate(RateConfig::default().initial(rate).max(rate).min(rate.min(1.0)));
        }
        let scanner = Scanner::new(scan).map_err(|e| e.to_string())?;
        let store = Arc::new(self.store.clone());
        let worker = Worker::new(Arc::clone(&store), store, scanner, spec.worker_config());
        let stop = CancellationToken::new();
        let token = stop.clone();
        let name = spec.name.clone();
        let task = tokio::spawn(async move {
            match worker.run(token).await {
                Ok(stats) => tracing::info!(target: TRACE, worker = %name, ?stats, "worker stopped"),
                Err(e) => tracing::error!(target: TRACE, worker = %name, error = %e, "worker ended with an error"),
            }
        });
        tracing::info!(target: TRACE, worker = %spec.name, queues = ?spec.queues, "worker started");
        Ok(RunningWorker { spec: spec.clone(), stop, task })
    }

    /// Stops every worker, those a reload was draining included, and waits for them.
    async fn drain_all(&mut self) {
        let all = std::mem::take(&mut self.running).into_values().chain(std::mem::take(&mut self.draining));
        futures::future::join_all(all.map(|w| {
            w.stop.cancel();
            w.task
        }))
        .await;
    }
}

/// Creates or resets the local staff account `admin` when `RALPH_ADMIN_PASSWORD` is set.
async fn bootstrap_admin(store: &AnyStore) -> Result<(), String> {
    let Ok(password) = std::env::var("RALPH_ADMIN_PASSWORD") else { return Ok(()) };
    let password = Secret::new(password);
    if store.get_user("admin").await.map_err(|e| e.to_string())?.is_none() {
        let mut user = User::new("admin").map_err(|e| e.to_string())?;
        user.is_staff = true;
        user.is_superuser = true;
        match store.create_user(&user).await {
            // Another server process on the same database created it first.
            Ok(_) | Err(ralph_core::StoreError::Conflict { .. }) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    LocalBackend::new(store.clone()).set_password("admin", &password).await.map_err(|e| e.to_string())?;
    tracing::info!(target: TRACE, "local staff account `admin` ready");
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("server=info,ralph=info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match run(&args.config, config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(path: &Path, config: Config) -> Result<(), String> {
    let store = AnyStore::connect(&config.store).await.map_err(|e| format!("store: {e}"))?;
    bootstrap_admin(&store).await?;
    let sessions = Arc::new(Sessions::default());
    let app = Arc::new(App {
        chain: RwLock::new(Arc::new(build_chain(&store, config.ldap.as_ref())?)),
        sessions: Arc::clone(&sessions),
        session_ttl: RwLock::new(Duration::from_secs(config.session_ttl_secs)),
    });
    let status = StatusPage::new(Arc::new(store.clone())).access(StaffOnly(sessions));
    let router = Router::new()
        .route("/", get(index))
        .route("/login", post(login))
        .route("/logout", post(logout))
        .route("/healthz", get(|| async { "ok" }))
        .nest("/admin", status.router())
        .with_state(Arc::clone(&app));

    let mut workers = Workers { store: store.clone(), running: BTreeMap::new(), draining: Vec::new() };
    workers.apply(&config.workers).await;
    let pruner_stop = CancellationToken::new();
    let pruner = tokio::spawn(prune_history(store.clone(), config.history.clone(), pruner_stop.clone()));

    let listener = tokio::net::TcpListener::bind(config.listen).await.map_err(|e| format!("{}: {e}", config.listen))?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    let stop = CancellationToken::new();
    let serve = tokio::spawn({
        let stop = stop.clone();
        async move { axum::serve(listener, router).with_graceful_shutdown(async move { stop.cancelled().await }).await }
    });
    println!("LISTENING {address}");
    tracing::info!(target: TRACE, %address, store = store.backend(), "serving");

    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let mut hup = signal(SignalKind::hangup()).map_err(|e| e.to_string())?;
    let mut drain_timeout = Duration::from_secs(config.drain_timeout_secs);
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                match Config::load(path) {
                    Ok(new) => {
                        match build_chain(&store, new.ldap.as_ref()) {
                            Ok(chain) => {
                                *app.chain.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(chain);
                                *app.session_ttl.write().unwrap_or_else(PoisonError::into_inner) =
                                    Duration::from_secs(new.session_ttl_secs);
                                drain_timeout = Duration::from_secs(new.drain_timeout_secs);
                                // Changed workers drain before they restart, which may take a
                                // scan job's length: SIGTERM is still heard meanwhile.
                                tokio::select! {
                                    () = workers.apply(&new.workers) => {
                                        tracing::info!(target: TRACE, "config reloaded");
                                        println!("RELOADED");
                                    }
                                    _ = term.recv() => break,
                                    _ = int.recv() => break,
                                }
                            }
                            Err(e) => tracing::error!(target: TRACE, error = %e, "reload refused; the running config stays"),
                        }
                    }
                    Err(e) => tracing::error!(target: TRACE, error = %e, "reload refused; the running config stays"),
                }
            }
        }
    }

    tracing::info!(target: TRACE, "draining");
    stop.cancel();
    let (served, ()) = tokio::join!(tokio::time::timeout(drain_timeout, serve), workers.drain_all());
    match served {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::error!(target: TRACE, error = %e, "server error"),
        Ok(Err(e)) => tracing::error!(target: TRACE, error = %e, "server task failed"),
        Err(_) => tracing::warn!(target: TRACE, "connections still open after the drain timeout were cut"),
    }
    pruner_stop.cancel();
    if let Err(e) = pruner.await {
        tracing::error!(target: TRACE, error = %e, "history pruner failed");
    }
    store.close().await;
    println!("DRAINED");
    Ok(())
}

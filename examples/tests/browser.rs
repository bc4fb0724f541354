//! The reference service's status page in a real browser: Debian's chromium, headless, driven
//! over WebDriver (fantoccini talking to a chromedriver this test starts on a free loopback
//! port). `examples/server` runs on a SQLite store with the fixture slapd's `[ldap]` table and
//! one discovery worker; the test logs in through the form as the LDAP staff user alice, opens
//! the queue's page, enqueues scan jobs (and one whose payload is not a scan job), watches the
//! counts change in place from the live updates until the worker has consumed them — the page
//! never reloads — and checks every number shown against the store's own
//! [`QueueAdmin::overview`]. Then it pauses the queue, retries the dead job from the dead tab
//! (the store shows it pending), resumes the queue (the worker dead-letters it again), and
//! checks the numbers again. Screenshots of each step go to
//! `$RALPH_TEST_RUN_DIR/screenshots/` (`CARGO_TARGET_TMPDIR/screenshots/` without it).
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (scripts/services/browser/packages;
//! scripts/test installs them): without them the test fails under `CI=true` and is skipped
//! otherwise. Scan targets are loopback addresses (127.78.x.y) whose port 9 resets.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use ralph_core::{JobQueue, JobState, QueueAdmin, QueueOverview};
use ralph_discovery::ScanJob;
use ralph_store::AnyStore;
use serde_json::json;

use common::{Server, ldap_table};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const QUEUE: &str = "browser.scan";
/// Good scan jobs enqueued (each 16 loopback hosts at 10 probe starts a second: ~1.6 s).
const GOOD_JOBS: u64 = 5;
/// How long any condition may take on a loaded machine.
const WAIT: Duration = Duration::from_secs(60);
/// The count cells of a queue row, by `data-field`.
const COUNTS: [&str; 7] = ["pending", "scheduled", "retrying", "running", "expired", "dead", "done_last_hour"];
/// A value the page itself never sets: gone if the page reloads.
const MARKER: &str = "ralph-browser-test-no-reload";

// ---------------------------------------------------------------------------------------------
// chromedriver and the browser

/// Where this run keeps what it leaves behind (screenshots, the chromedriver log).
fn run_dir() -> PathBuf {
    std::env::var_os("RALPH_TEST_RUN_DIR")
        .filter(|d| !d.is_empty())
        .map_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")), PathBuf::from)
}

/// A chromedriver process in its own process group; the group (chromedriver and the browsers
/// it started) is killed when this is dropped, whatever happened to the test.
struct ChromeDriver {
    child: std::process::Child,
    url: String,
}

impl ChromeDriver {
    async fn start(log: &Path) -> Self {
        use std::os::unix::process::CommandExt;
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("port").port();
        let child = std::process::Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .process_group(0)
            .spawn()
            .expect("start chromedriver");
        let mut driver = Self { child, url: format!("http://127.0.0.1:{port}") };
        let deadline = Instant::now() + WAIT;
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            if let Some(status) = driver.child.try_wait().expect("chromedriver") {
                panic!("chromedriver exited before listening: {status} (log: {})", log.display());
            }
            assert!(Instant::now() < deadline, "chromedriver does not listen on {port} after {WAIT:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        driver
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = std::process::Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.wait();
    }
}

/// The WebDriver session and where its screenshots go.
struct Browser {
    client: Client,
    base: String,
    shots: PathBuf,
    taken: u32,
}

impl Browser {
    async fn open(driver: &ChromeDriver, profile: &Path, base: String, shots: PathBuf) -> Self {
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    format!("--user-data-dir={}", profile.display()),
                    "--window-size=1280,900",
                    "--no-first-run",
                    "--no-default-browser-check",
                ],
            },
        });
        let capabilities = capabilities.as_object().expect("an object").clone();
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client =
            tokio::time::timeout(WAIT, ClientBuilder::new(connector).capabilities(capabilities).connect(&driver.url))
                .await
                .expect("a browser session within the wait")
                .expect("a browser session");
        std::fs::create_dir_all(&shots).expect("screenshot dir");
        Self { client, base, shots, taken: 0 }
    }

    async fn goto(&self, path: &str) {
        self.client.goto(&format!("{}{path}", self.base)).await.expect("goto");
    }

    /// Saves a screenshot of the page as `browser-NN-name.png`.
    async fn shot(&mut self, name: &str) {
        self.taken += 1;
        let path = self.shots.join(format!("browser-{:02}-{name}.png", self.taken));
        match self.client.screenshot().await {
            Ok(png) => {
                std::fs::write(&path, png).expect("write screenshot");
                eprintln!("screenshot {}", path.display());
            }
            Err(e) => eprintln!("no screenshot {}: {e}", path.display()),
        }
    }

    /// Fails the test after saving what the page looked like.
    async fn fail(&mut self, message: &str) -> ! {
        self.shot("FAILED").await;
        panic!("{message}");
    }

    async fn find(&mut self, locator: Locator<'_>) -> fantoccini::elements::Element {
        match self.client.wait().at_most(WAIT).for_element(locator).await {
            Ok(element) => element,
            Err(e) => self.fail(&format!("no element {locator:?} within {WAIT:?}: {e}")).await,
        }
    }

    async fn click(&mut self, locator: Locator<'_>) {
        let element = self.find(locator).await;
        element.click().await.expect("click");
    }

    /// The current URL's path.
    async fn path(&self) -> String {
        self.client.current_url().await.expect("url").path().to_owned()
    }

    /// The page's text. Read by one script run: a page that navigates between finding `body`
    /// and reading it (after a form post) would leave a stale element; a read that fails that
    /// way is tried again.
    async fn text(&self) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let read = self.client.execute("return document.body ? document.body.innerText : null;", vec![]).await;
            match read {
                Ok(serde_json::Value::String(text)) => return text,
                _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
                other => panic!("cannot read the page's text within {WAIT:?}: {other:?}"),
            }
        }
    }

    /// Waits until the page's text contains `text`.
    async fn wait_text(&mut self, text: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            if self.text().await.contains(text) {
                return;
            }
            if Instant::now() >= deadline {
                let page = self.text().await;
                self.fail(&format!("the page does not show {text:?} within {WAIT:?}:\n{page}")).await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// What the page shows now: the text of the cells of `queue` by `data-field`, the live
    /// badge (`live` once server-sent events arrive) and the no-reload marker, read in one
    /// script run (the page's own script updates all cells at once, so this is one update's
    /// numbers).
    async fn shown(&self, queue: &str) -> Shown {
        let script = "var q = arguments[0], cells = {};\
            document.querySelectorAll('[data-queue][data-field]').forEach(function (c) {\
              if (c.getAttribute('data-queue') === q) { cells[c.getAttribute('data-field')] = c.textContent.trim(); }\
            });\
            var live = document.getElementById('live');\
            return { cells: cells, live: live ? live.textContent : null, marker: window.ralphTestMarker || null };";
        let value = self.client.execute(script, vec![json!(queue)]).await.expect("read the cells");
        let cells = value["cells"]
            .as_object()
            .expect("cells")
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
            .collect();
        Shown {
            cells,
            live: value["live"].as_str().map(str::to_owned),
            marker: value["marker"].as_str().map(str::to_owned),
        }
    }

    /// Marks the page: [`Shown::marker`] stays until the page is reloaded or left.
    async fn mark(&self) {
        self.client.execute(&format!("window.ralphTestMarker = '{MARKER}'; return null;"), vec![]).await.expect("mark");
    }

    /// Waits until the page's numbers for [`QUEUE`] are the store's (read again each time):
    /// a number shown that differs from the store's for the whole wait fails the test.
    async fn wait_numbers_match(&mut self, store: &AnyStore, keep_marker: bool) -> BTreeMap<String, String> {
        let deadline = Instant::now() + WAIT;
        loop {
            let shown = self.shown(QUEUE).await;
            if keep_marker && shown.marker.as_deref() != Some(MARKER) {
                self.fail("the page was reloaded: the marker is gone").await;
            }
            let expected = expected_cells(store).await;
            let differ = differences(&shown.cells, &expected);
            if differ.is_empty() {
                return shown.cells;
            }
            if Instant::now() >= deadline {
                self.fail(&format!(
                    "the page's numbers are not the store's after {WAIT:?}: {differ:?}\nshown {:?}\nstore {expected:?}",
                    shown.cells
                ))
                .await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// One reading of the page.
#[derive(Debug)]
struct Shown {
    cells: BTreeMap<String, String>,
    live: Option<String>,
    marker: Option<String>,
}

impl Shown {
    /// The count in cell `field`: a number, exact (the page's counts here are far below the
    /// cap), or the test fails.
    fn count(&self, field: &str) -> u64 {
        let text = self.cells.get(field).unwrap_or_else(|| panic!("no {field} cell: {self:?}"));
        text.parse().unwrap_or_else(|_| panic!("the {field} cell shows {text:?}, not a number: {self:?}"))
    }
}

/// What the page must show for [`QUEUE`] given the store's overview, by `data-field`. A queue
/// the overview does not list shows zeros. `oldest_pending_age` is a moving text while jobs are
/// pending: only its presence is expected then (`*`).
fn cells_for(overview: Option<&QueueOverview>) -> BTreeMap<String, String> {
    let o = overview.cloned().unwrap_or_default();
    let counts = [o.pending, o.scheduled, o.retrying, o.running, o.expired, o.dead, o.done_last_hour];
    let mut cells: BTreeMap<String, String> = COUNTS
        .iter()
        .zip(counts)
        .map(|(field, c)| {
            assert!(!c.capped, "{field} is capped: {o:?}");
            ((*field).to_owned(), c.count.to_string())
        })
        .collect();
    let age = if o.oldest_pending_age.is_some() { "*" } else { "\u{2013}" };
    cells.insert("oldest_pending_age".to_owned(), age.to_owned());
    cells.insert("paused".to_owned(), if o.paused { "paused" } else { "active" }.to_owned());
    cells
}

async fn expected_cells(store: &AnyStore) -> BTreeMap<String, String> {
    let overview = store.overview(ralph_web::DEFAULT_COUNT_CAP).await.expect("overview");
    cells_for(overview.iter().find(|o| o.queue == QUEUE))
}

/// The fields whose shown text is not the expected one: (field, shown, expected).
fn differences(shown: &BTreeMap<String, String>, expected: &BTreeMap<String, String>) -> Vec<(String, String, String)> {
    expected
        .iter()
        .filter_map(|(field, want)| {
            let got = shown.get(field).map_or("<missing>", String::as_str);
            let same = if want == "*" { got != "\u{2013}" && !got.is_empty() } else { got == want };
            (!same).then(|| (field.clone(), got.to_owned(), want.clone()))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The test

/// Whether chromium and chromedriver are installed; a failure under CI, a skip elsewhere.
fn browser_installed() -> bool {
    let missing: Vec<&str> = [CHROMIUM, CHROMEDRIVER].into_iter().filter(|p| !Path::new(p).exists()).collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        !ralph_testkit::in_ci(),
        "{missing:?} missing but CI=true: scripts/test installs them (scripts/services/browser/packages)"
    );
    eprintln!("SKIPPED: {missing:?} missing; `apt-get install chromium chromium-driver` or run scripts/test");
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_in_a_browser_follows_the_queue_live() {
    if !browser_installed() {
        return;
    }
    let Some(ldap) = ldap_table("_gr_ralph_staff") else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let store_url = format!("sqlite://{}?mode=rwc", dir.path().join("browser.sqlite3").display());
    let config = format!(
        "listen = \"127.0.0.1:0\"\nstore = \"{store_url}\"\ndrain_timeout_secs = 5\n\n\
         [[workers]]\nname = \"browser-worker\"\nqueues = [\"{QUEUE}\"]\nconcurrency = 1\nports = [9]\n\
         rate = 10.0\npace_loopback = true\nheartbeat_ms = 200\n{ldap}"
    );
    let server = Server::start(dir.path(), &config).await;
    let store = AnyStore::connect(&store_url).await.expect("store");
    std::fs::create_dir_all(run_dir()).expect("run dir");
    let driver = ChromeDriver::start(&run_dir().join("chromedriver-browser-test.log")).await;
    let profile = tempfile::tempdir().expect("profile dir");
    let mut b =
        Browser::open(&driver, profile.path(), format!("http://{}", server.address), run_dir().join("screenshots"))
            .await;
    let started = Instant::now();

    // 1. Log in through the form as alice (LDAP, staff through _gr_ralph_staff): the redirect
    //    lands on the status page.
    b.goto("/").await;
    let username = b.find(Locator::Css("input[name=username]")).await;
    b.shot("login-form").await;
    username.send_keys("alice").await.expect("type");
    b.find(Locator::Css("input[name=password]")).await.send_keys("alice-pw").await.expect("type");
    b.click(Locator::Css("button[type=submit]")).await;
    let deadline = Instant::now() + WAIT;
    while b.path().await != "/admin/queues" {
        if Instant::now() >= deadline {
            let (path, page) = (b.path().await, b.text().await);
            b.fail(&format!("the login did not land on the status page: {path}\n{page}")).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    b.wait_text("Signed in as alice").await;
    b.shot("status-page").await;

    // 2. The queue's page, before any job: zeros, and live updates arriving.
    b.goto(&format!("/admin/queues/{QUEUE}")).await;
    b.find(Locator::Css(&format!("td[data-queue='{QUEUE}'][data-field='pending']"))).await;
    let deadline = Instant::now() + WAIT;
    while b.shown(QUEUE).await.live.as_deref() != Some("live") {
        if Instant::now() >= deadline {
            let shown = b.shown(QUEUE).await;
            b.fail(&format!("no live update within {WAIT:?}: {shown:?}")).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    b.wait_numbers_match(&store, false).await;
    b.mark().await;
    b.shot("queue-empty").await;

    // 3. Jobs: good scans of loopback ranges, and one whose payload is not a scan job (the
    //    worker dead-letters it at once).
    let mut payloads: Vec<String> = (1..=GOOD_JOBS)
        .map(|i| ScanJob::new([format!("127.78.{i}.1-127.78.{i}.16")]).to_payload().expect("payload"))
        .collect();
    payloads.insert(2, "this is not a scan job".to_owned());
    let total = payloads.len() as u64;
    let ids = store.enqueue(QUEUE, &payloads).await.expect("enqueue");
    let bad = ids[2];
    let enqueued = Instant::now();

    // 4. Without a reload, the cells follow the worker: pending rises, then falls to zero as
    //    done rises to the good jobs; every number shown stays possible on the way.
    let deadline = Instant::now() + WAIT;
    let mut seen: Vec<BTreeMap<String, String>> = Vec::new();
    let mut max_pending = 0;
    loop {
        let shown = b.shown(QUEUE).await;
        if shown.marker.as_deref() != Some(MARKER) {
            b.fail("the page was reloaded: the marker is gone").await;
        }
        let c = |f: &str| shown.count(f);
        let impossible = COUNTS.iter().any(|f| c(f) > total)
            || c("done_last_hour") > GOOD_JOBS
            || c("dead") > 1
            || c("scheduled") > 0
            || c("running") > 1;
        if impossible {
            b.fail(&format!("an impossible number is shown: {shown:?}")).await;
        }
        max_pending = max_pending.max(c("pending"));
        if seen.last() != Some(&shown.cells) {
            eprintln!("{:>6} ms {:?}", enqueued.elapsed().as_millis(), shown.cells);
            seen.push(shown.cells.clone());
        }
        if c("pending") == 0 && c("running") == 0 && c("done_last_hour") == GOOD_JOBS && c("dead") == 1 {
            break;
        }
        if Instant::now() >= deadline {
            let stats = store.overview(100).await.expect("overview");
            b.fail(&format!("the page did not show the jobs consumed within {WAIT:?}: {shown:?}\nstore {stats:?}"))
                .await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(max_pending > 0, "the page never showed jobs waiting: {seen:?}");
    eprintln!(
        "consumed after {:?}; {} distinct readings, at most {max_pending} pending",
        enqueued.elapsed(),
        seen.len()
    );
    // Every number shown is the store's.
    b.wait_numbers_match(&store, true).await;
    b.shot("queue-consumed").await;

    // 5. Pause the queue (so the retried job stays where the retry put it), open the dead tab:
    //    the one dead job is the bad payload; retry it through the form.
    b.click(Locator::XPath("//button[normalize-space()='Pause']")).await;
    b.wait_text("pause: 1 of 1 changed.").await;
    let cells = b.wait_numbers_match(&store, false).await;
    assert_eq!(cells.get("paused").map(String::as_str), Some("paused"));
    b.click(Locator::XPath("//nav[contains(@class, 'tabs')]/a[normalize-space()='dead']")).await;
    let checkbox = b.find(Locator::Css(&format!("input[type=checkbox][name=id][value='{bad}']"))).await;
    let rows = b.client.find_all(Locator::Css("table.jobs tbody tr")).await.expect("rows");
    let page = b.text().await;
    assert_eq!(rows.len(), 1, "one dead job: {page}");
    assert!(page.contains("this is not a scan job"), "{page}");
    let dead_before = store.list_jobs(QUEUE, JobState::Dead, 10).await.expect("dead");
    assert_eq!(dead_before.iter().map(|j| j.id).collect::<Vec<_>>(), vec![bad]);
    b.shot("dead-tab").await;
    checkbox.click().await.expect("select");
    b.click(Locator::XPath("//button[normalize-space()='Retry selected']")).await;
    b.wait_text("retry: 1 of 1 changed.").await;
    let pending = store.list_jobs(QUEUE, JobState::Pending, 10).await.expect("pending");
    assert_eq!(pending.iter().map(|j| (j.id, j.attempts)).collect::<Vec<_>>(), vec![(bad, 0)], "retried");
    assert!(store.list_jobs(QUEUE, JobState::Dead, 10).await.expect("dead").is_empty());
    b.mark().await;
    let cells = b.wait_numbers_match(&store, true).await;
    assert_eq!((cells["pending"].as_str(), cells["dead"].as_str()), ("1", "0"), "{cells:?}");
    b.shot("retried-paused").await;

    // 6. Resume: the worker claims the retried job and dead-letters it again; the page follows.
    b.click(Locator::XPath("//button[normalize-space()='Resume']")).await;
    b.wait_text("resume: 1 of 1 changed.").await;
    b.mark().await;
    let deadline = Instant::now() + WAIT;
    let again = loop {
        let dead = store.list_jobs(QUEUE, JobState::Dead, 10).await.expect("dead");
        if let Some(job) = dead.into_iter().find(|j| j.id == bad) {
            break job;
        }
        assert!(Instant::now() < deadline, "the retried job was not dead-lettered again within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(again.attempts, 1, "{again:?}");
    assert!(again.finished_at > dead_before[0].finished_at, "dead-lettered anew: {again:?} / {dead_before:?}");
    let cells = b.wait_numbers_match(&store, true).await;
    let want = [("pending", "0"), ("running", "0"), ("dead", "1"), ("paused", "active")];
    for (field, value) in want {
        assert_eq!(cells[field], value, "{field}: {cells:?}");
    }
    assert_eq!(cells["done_last_hour"], GOOD_JOBS.to_string(), "{cells:?}");
    b.shot("dead-again").await;
    eprintln!("browser steps took {:?}", started.elapsed());

    // The page's live stream ends with the session, before the server drains.
    b.client.close().await.expect("close the browser");
    drop(driver);
    server.stop().await;
    store.close().await;
}

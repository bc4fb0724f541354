//! The local backend: argon2id password hashes kept through a [`UserStore`].

use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};
use async_trait::async_trait;
use tracing::debug;

use super::{AuthBackend, AuthError, AuthOutcome, Credentials, DenyReason, Identity, TRACE_TARGET};
use crate::{Secret, StoreError, UserSource, UserStore, ValidationError};

fn hasher() -> Argon2<'static> {
    // OWASP's argon2id baseline (19 MiB, 2 passes, 1 lane): the argon2 crate's defaults.
    Argon2::new(Algorithm::Argon2id, Version::V0x13, Params::default())
}

/// Hashes a password with argon2id and a random salt into a PHC string.
///
/// This is tens of milliseconds of CPU and 19 MiB of memory on the calling thread: from async
/// code, go through [`LocalBackend::set_password`], which moves the work off the runtime, or
/// wrap the call in your runtime's `spawn_blocking`.
///
/// # Errors
/// [`AuthError::Backend`] when the hasher fails (it does not for passwords of sane length).
pub fn hash_password(password: &Secret) -> Result<String, AuthError> {
    // A 16-byte salt from the system's secure RNG.
    hasher()
        .hash_password(password.expose().as_bytes())
        .map(|hash| hash.to_string())
        .map_err(|e| AuthError::Backend(format!("password hashing failed: {e}")))
}

/// Checks a password against a PHC hash in constant time. A malformed hash never matches.
///
/// Blocks the calling thread for as long as [`hash_password`] does; the same advice applies.
#[must_use]
pub fn verify_password(phc: &str, password: &Secret) -> bool {
    hasher().verify_password(password.expose().as_bytes(), phc).is_ok()
}

/// A hash verified against for unknown users so that the time a login takes does not tell
/// whether the account exists. Its outcome is thrown away, so it need not be secret; it must
/// only cost what a stored hash costs: the same algorithm and parameters as [`hasher`] (a test
/// holds them equal). A constant, not made at run time: a failed random source cannot leave
/// a decoy that fails fast.
const DECOY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$ZGVjb3ktc2FsdC1yYWxwaA$WjgxRQ3ixq/aZeFMMPHHRAqZc6OvzP3iPT1RzwDZVGM";

/// How many argon2 computations may run at once by default: one per CPU the process may use.
/// Argon2 is pure CPU, so more would not finish sooner, only hold more memory.
#[cfg(feature = "tokio")]
fn default_max_concurrent_hashes() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

/// Where the argon2 work of a [`LocalBackend`] runs.
///
/// With the `tokio` feature, on tokio's blocking pool behind a semaphore; without it (or when
/// called outside a tokio runtime, from another executor), inline on the calling task.
#[derive(Debug, Clone)]
struct Hashing {
    /// Shared by clones of the backend, so the bound holds for all of them together.
    #[cfg(feature = "tokio")]
    permits: std::sync::Arc<tokio::sync::Semaphore>,
}

impl Hashing {
    #[cfg(feature = "tokio")]
    fn new(max_concurrent: usize) -> Self {
        let permits = max_concurrent.clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
        Self { permits: std::sync::Arc::new(tokio::sync::Semaphore::new(permits)) }
    }

    #[cfg(not(feature = "tokio"))]
    fn new() -> Self {
        Self {}
    }

    /// Runs `work`, which owns everything it touches (a cloned [`Secret`] included, zeroized
    /// when the closure is dropped after running).
    async fn run<T, F>(&self, work: F) -> Result<T, AuthError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        #[cfg(feature = "tokio")]
        if tokio::runtime::Handle::try_current().is_ok() {
            // Wait for a permit here, as a cheap parked future, not on a blocking thread: a
            // queued login then costs neither a thread nor an argon2 buffer.
            let permit = std::sync::Arc::clone(&self.permits)
                .acquire_owned()
                .await
                .map_err(|_| AuthError::Backend("password hashing limiter closed".to_owned()))?;
            // The permit moves into the closure: if the login future is dropped (client gone,
            // timeout) the hash still runs to the end, and keeps counting against the bound.
            return tokio::task::spawn_blocking(move || {
                let _permit = permit;
                work()
            })
            .await
            // The panic payload is not copied into the error: nothing from inside the hashing
            // closure, where the password lives, reaches a message.
            .map_err(|e| {
                let what = if e.is_panic() { "panicked" } else { "was cancelled" };
                AuthError::Backend(format!("password hashing task {what}"))
            });
        }
        Ok(work())
    }
}

/// Authenticates accounts whose password is stored locally.
///
/// Unknown users, users without a local password (LDAP-owned ones) and wrong passwords are
/// all [`AuthOutcome::NotHandled`], after the same amount of hashing work. A right password on
/// an inactive account is [`DenyReason::Inactive`].
///
/// # Where the hashing runs
///
/// One argon2 verification is tens of milliseconds of CPU. With the `tokio` cargo feature (on
/// by default) every hash and verification of this backend — including the dummy one for
/// unknown users and the hash in [`set_password`](Self::set_password) — runs on tokio's
/// blocking pool through `spawn_blocking`, so a burst of logins does not stall the host's async
/// runtime: its timers, sockets and other requests keep running, even on a current-thread
/// runtime. The password is cloned into the blocking closure and zeroized when it is dropped.
/// A hashing task that panics or is cancelled is an [`AuthError::Backend`], not a panic.
///
/// Without the feature this crate stays free of any runtime and the hashing runs inline, on the
/// task that awaits [`authenticate`](AuthBackend::authenticate): give it its own thread if
/// logins may come in bursts. The same inline path is taken when the feature is on but the
/// call does not come from within a tokio runtime (another executor).
///
/// # How many hashes at once
///
/// Each argon2 computation holds a 19 MiB buffer for its whole duration. Unbounded, 1,000
/// simultaneous logins would fill tokio's blocking pool (512 threads by default), each thread
/// holding its own buffer: about 9.5 GiB, for no gain in throughput, since argon2 is pure CPU
/// and the machine only computes as many at once as it has cores. So, with the `tokio`
/// feature, the backend lets at most `with_max_concurrent_hashes(n)` hashes run at a time, by
/// default the available parallelism (8 cores: 152 MiB); the others wait as parked futures
/// that hold no thread and no buffer. Clones of a backend share the bound. (Inline, the bound
/// is the number of threads polling logins.)
#[derive(Debug, Clone)]
pub struct LocalBackend<S> {
    store: S,
    hashing: Hashing,
}

impl<S: UserStore> LocalBackend<S> {
    /// A backend over `store`.
    pub fn new(store: S) -> Self {
        #[cfg(feature = "tokio")]
        let hashing = Hashing::new(default_max_concurrent_hashes());
        #[cfg(not(feature = "tokio"))]
        let hashing = Hashing::new();
        Self { store, hashing }
    }

    /// Lets at most `max` password hashes or verifications of this backend (and its clones)
    /// run at once; the others wait their turn. The default is the number of CPUs the process
    /// may use ([`std::thread::available_parallelism`]); `0` counts as `1`.
    ///
    /// Peak memory for hashing is about `max` × 19 MiB. Lower it on a small machine, or to
    /// leave CPU for other work; raising it above the core count only adds memory and latency.
    #[cfg(feature = "tokio")]
    #[must_use]
    pub fn with_max_concurrent_hashes(mut self, max: usize) -> Self {
        self.hashing = Hashing::new(max);
        self
    }

    /// The store this backend reads.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Sets a local user's password.
    ///
    /// # Errors
    /// [`AuthError::Store`] wrapping [`StoreError::Invalid`] for an empty password or
    /// [`StoreError::NotFound`] for a missing user; [`AuthError::Config`] for an LDAP-owned user
    /// (their password lives in the directory); [`AuthError::Backend`] when hashing failed.
    pub async fn set_password(&self, username: &str, password: &Secret) -> Result<(), AuthError> {
        if password.is_empty() {
            return Err(AuthError::Store(StoreError::invalid("user", ValidationError::Empty { field: "password" })));
        }
        let user = self
            .store
            .get_user(username)
            .await?
            .ok_or_else(|| StoreError::NotFound { entity: "user", key: username.to_owned() })?;
        if user.source == UserSource::Ldap {
            return Err(AuthError::Config(format!("user {username} is owned by LDAP and has no local password")));
        }
        let password = password.clone();
        let hash = self.hashing.run(move || hash_password(&password)).await??;
        self.store.set_password_hash(username, Some(&hash)).await?;
        Ok(())
    }
}

#[async_trait]
impl<S: UserStore> AuthBackend for LocalBackend<S> {
    fn name(&self) -> &str {
        "local"
    }

    async fn authenticate(&self, credentials: &Credentials) -> Result<AuthOutcome, AuthError> {
        let username = credentials.username.as_str();
        let user = self.store.get_user(username).await?;
        let hash = match &user {
            Some(u) if u.source == UserSource::Local => self.store.password_hash(username).await?,
            _ => None,
        };
        let password = credentials.password.clone();
        let (Some(user), Some(hash)) = (user, hash) else {
            // Same path as a real check (permit, blocking pool, one verification of a hash of
            // the same costs), so the time taken does not tell whether the account exists.
            let _ = self.hashing.run(move || verify_password(DECOY_HASH, &password)).await?;
            debug!(target: TRACE_TARGET, backend = "local", "no local password for this user");
            return Ok(AuthOutcome::NotHandled);
        };
        // Verify even an empty password so the time taken does not depend on it.
        let empty = password.is_empty();
        let matches = self.hashing.run(move || verify_password(&hash, &password)).await?;
        if empty || !matches {
            debug!(target: TRACE_TARGET, backend = "local", "wrong password");
            return Ok(AuthOutcome::NotHandled);
        }
        if !user.is_active {
            return Ok(AuthOutcome::Denied(DenyReason::Inactive));
        }
        let groups = self.store.user_groups(username).await?;
        let profile = self.store.get_profile(username).await?;
        Ok(AuthOutcome::Authenticated(Identity { user: user.value, profile, groups }))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::future::Future;
    use std::pin::pin;
    use std::sync::Mutex;
    use std::task::{Context, Poll, Waker};

    use super::*;
    use crate::store::{Mirrored, UserMirror};
    use crate::{Group, Id, Profile, Record, User};

    /// One poll with a waker that does nothing: `Some` when the future finished without ever
    /// waiting, which is what inline hashing over an always-ready store does.
    fn poll_once<F: Future>(future: F) -> Option<F::Output> {
        match pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(output) => Some(output),
            Poll::Pending => None,
        }
    }

    /// Just enough of a user store for the local backend: users and hashes in a map.
    #[derive(Default)]
    struct MemStore(Mutex<HashMap<String, (User, Option<String>)>>);

    impl MemStore {
        fn with(users: &[User]) -> Self {
            let map = users.iter().map(|u| (u.username.clone(), (u.clone(), None))).collect();
            Self(Mutex::new(map))
        }
    }

    fn unsupported() -> StoreError {
        StoreError::Backend("not in this test store".into())
    }

    #[async_trait]
    impl UserStore for MemStore {
        async fn create_user(&self, _: &User) -> Result<Id<User>, StoreError> {
            Err(unsupported())
        }
        async fn get_user(&self, username: &str) -> Result<Option<Record<User>>, StoreError> {
            let users = self.0.lock().expect("lock");
            Ok(users.get(username).map(|(user, _)| Record { id: Id::new(1), value: user.clone() }))
        }
        async fn update_user(&self, _: &User) -> Result<(), StoreError> {
            Err(unsupported())
        }
        async fn delete_user(&self, _: &str) -> Result<(), StoreError> {
            Err(unsupported())
        }
        async fn list_users(&self, _: Option<UserSource>) -> Result<Vec<Record<User>>, StoreError> {
            Err(unsupported())
        }
        async fn password_hash(&self, username: &str) -> Result<Option<String>, StoreError> {
            Ok(self.0.lock().expect("lock").get(username).and_then(|(_, hash)| hash.clone()))
        }
        async fn set_password_hash(&self, username: &str, hash: Option<&str>) -> Result<(), StoreError> {
            let mut users = self.0.lock().expect("lock");
            let entry = users.get_mut(username).ok_or_else(unsupported)?;
            entry.1 = hash.map(str::to_owned);
            Ok(())
        }
        async fn get_profile(&self, _: &str) -> Result<Option<Profile>, StoreError> {
            Ok(None)
        }
        async fn set_profile(&self, _: &str, _: &Profile) -> Result<(), StoreError> {
            Err(unsupported())
        }
        async fn user_groups(&self, _: &str) -> Result<Vec<Group>, StoreError> {
            Ok(Vec::new())
        }
        async fn set_user_groups(&self, _: &str, _: &[Group]) -> Result<(), StoreError> {
            Err(unsupported())
        }
        async fn mirror_user(&self, _: &UserMirror) -> Result<Mirrored, StoreError> {
            Err(unsupported())
        }
        async fn deactivate_users(&self, _: &[String]) -> Result<u64, StoreError> {
            Err(unsupported())
        }
    }

    fn backend() -> LocalBackend<MemStore> {
        let mut inactive = User::new("inactive").expect("user");
        inactive.is_active = false;
        let ldap = User { source: UserSource::Ldap, ..User::new("ldapuser").expect("user") };
        LocalBackend::new(MemStore::with(&[User::new("alice").expect("user"), inactive, ldap]))
    }

    fn login(backend: &LocalBackend<MemStore>, user: &str, password: &str) -> Option<AuthOutcome> {
        poll_once(backend.authenticate(&Credentials::new(user, password))).map(|r| r.expect("no backend error"))
    }

    /// Outside any tokio runtime — the only way without the `tokio` feature, the fallback with
    /// it — hashing runs inline: every call finishes in its first poll, no executor involved.
    #[test]
    fn without_a_tokio_runtime_hashing_runs_inline() {
        let backend = backend();
        for (user, password) in [("alice", "alice-Password-1"), ("inactive", "inactive-Password-2")] {
            let set = poll_once(backend.set_password(user, &Secret::new(password)));
            assert!(matches!(set, Some(Ok(()))), "{user}: {set:?}");
        }
        let ok = login(&backend, "alice", "alice-Password-1");
        assert!(matches!(&ok, Some(AuthOutcome::Authenticated(id)) if id.user.username == "alice"), "{ok:?}");
        assert_eq!(login(&backend, "alice", "wrong-Password-1"), Some(AuthOutcome::NotHandled));
        assert_eq!(login(&backend, "alice", ""), Some(AuthOutcome::NotHandled));
        assert_eq!(login(&backend, "nobody", "alice-Password-1"), Some(AuthOutcome::NotHandled));
        assert_eq!(login(&backend, "ldapuser", "alice-Password-1"), Some(AuthOutcome::NotHandled));
        assert_eq!(login(&backend, "inactive", "inactive-Password-2"), Some(AuthOutcome::Denied(DenyReason::Inactive)));
        let set = poll_once(backend.set_password("ldapuser", &Secret::new("x")));
        assert!(matches!(set, Some(Err(AuthError::Config(_)))), "{set:?}");
    }

    /// Hashes stored by earlier releases (argon2 0.5, this one made by it) still verify: the
    /// PHC string is the stored format, whatever crate version reads it.
    #[test]
    fn hashes_from_earlier_releases_still_verify() {
        const OLD: &str =
            "$argon2id$v=19$m=19456,t=2,p=1$cmFscGgtcnMtb2xkLXNhbHQ$PiHVyZOj3nQe/F2ilFYaHDSXYZ8QhOK7ZKsRlRYM2RY";
        assert!(verify_password(OLD, &Secret::new("correct horse battery")));
        assert!(!verify_password(OLD, &Secret::new("correct horse battery ")));
        assert!(!verify_password("$argon2id$v=19$m=19456,t=2,p=1$not-a-hash", &Secret::new("correct horse battery")));
        let new = hash_password(&Secret::new("correct horse battery")).expect("hash");
        assert!(new.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{new}");
        assert_ne!(new, hash_password(&Secret::new("correct horse battery")).expect("hash"), "salts are random");
        assert!(verify_password(&new, &Secret::new("correct horse battery")));
    }

    /// The decoy costs what a stored hash costs: a well-formed hash (a malformed one would
    /// fail at parsing, fast) with the hasher's algorithm, version and parameters.
    #[test]
    fn the_decoy_hash_costs_what_a_stored_hash_costs() {
        use argon2::password_hash::phc::PasswordHash;
        let decoy = PasswordHash::new(DECOY_HASH).expect("well-formed");
        assert_eq!(decoy.algorithm.as_str(), "argon2id");
        assert_eq!(decoy.version, Some(u32::from(Version::V0x13)));
        let costs =
            |p: &Params| (p.m_cost(), p.t_cost(), p.p_cost(), p.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN));
        assert_eq!(costs(&Params::try_from(&decoy).expect("params")), costs(hasher().params()));
        assert!(verify_password(DECOY_HASH, &Secret::new("not a password of anyone")));
        let fresh = PasswordHash::new(&hash_password(&Secret::new("x")).expect("hash")).expect("parse");
        assert_eq!(costs(&Params::try_from(&fresh).expect("params")), costs(hasher().params()));
    }

    #[cfg(feature = "tokio")]
    mod on_tokio {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::thread;
        use std::time::Duration;

        use super::*;

        /// On a current-thread runtime the login's hashing happens on another thread, and the
        /// outcome is the same as inline.
        #[tokio::test(flavor = "current_thread")]
        async fn hashing_leaves_the_runtime_thread() {
            let runtime_thread = thread::current().id();
            let hashing = Hashing::new(2);
            let worker = hashing.run(|| thread::current().id()).await.expect("runs");
            assert_ne!(worker, runtime_thread);

            let backend = backend();
            backend.set_password("alice", &Secret::new("alice-Password-1")).await.expect("set");
            let ok = backend.authenticate(&Credentials::new("alice", "alice-Password-1")).await.expect("login");
            assert!(matches!(ok, AuthOutcome::Authenticated(_)), "{ok:?}");
            let unknown = backend.authenticate(&Credentials::new("nobody", "alice-Password-1")).await.expect("login");
            assert_eq!(unknown, AuthOutcome::NotHandled);
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn at_most_max_hashes_run_at_once() {
            let hashing = Hashing::new(2);
            let running = Arc::new(AtomicUsize::new(0));
            let most = Arc::new(AtomicUsize::new(0));
            let jobs: Vec<_> = (0..8)
                .map(|_| {
                    let (hashing, running, most) = (hashing.clone(), running.clone(), most.clone());
                    tokio::spawn(async move {
                        hashing
                            .run(move || {
                                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                                most.fetch_max(now, Ordering::SeqCst);
                                thread::sleep(Duration::from_millis(200));
                                running.fetch_sub(1, Ordering::SeqCst);
                            })
                            .await
                    })
                })
                .collect();
            for job in jobs {
                job.await.expect("join").expect("runs");
            }
            // Eight jobs of 200 ms each on a pool of up to 512 threads: without the bound they
            // would overlap far beyond two. Jobs that long overlap in pairs even when a loaded
            // machine is slow to start the second thread.
            assert_eq!(most.load(Ordering::SeqCst), 2);
        }

        /// A login dropped mid-hash (client gone, timeout) cannot start the blocking work's
        /// cancellation; its permit stays taken until the hash really ends.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_dropped_login_keeps_its_permit_until_its_hash_ends() {
            let hashing = Hashing::new(1);
            let (started_tx, started_rx) = std::sync::mpsc::channel();
            let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
            let first = tokio::spawn({
                let hashing = hashing.clone();
                async move {
                    hashing
                        .run(move || {
                            let _ = started_tx.send(());
                            let _ = release_rx.recv();
                        })
                        .await
                }
            });
            tokio::task::spawn_blocking(move || started_rx.recv()).await.expect("join").expect("started");
            first.abort();
            assert!(first.await.expect_err("aborted").is_cancelled());
            assert_eq!(hashing.permits.available_permits(), 0, "the running hash still holds its permit");

            release_tx.send(()).expect("release");
            assert_eq!(hashing.run(|| 7).await.expect("runs after the first ends"), 7);
            assert_eq!(hashing.permits.available_permits(), 1);
        }

        #[tokio::test(flavor = "current_thread")]
        async fn a_panicking_hash_is_a_backend_error() {
            let hashing = Hashing::new(1);
            let result: Result<(), _> = hashing.run(|| panic!("argon2 exploded")).await;
            let Err(AuthError::Backend(message)) = result else { panic!("expected a backend error: {result:?}") };
            assert_eq!(message, "password hashing task panicked");
            // The permit came back: the next hash runs.
            assert!(hashing.run(|| ()).await.is_ok());
        }

        #[test]
        fn zero_concurrent_hashes_means_one() {
            assert_eq!(Hashing::new(0).permits.available_permits(), 1);
            let backend = LocalBackend::new(MemStore::default()).with_max_concurrent_hashes(3);
            assert_eq!(backend.hashing.permits.available_permits(), 3);
            assert!(LocalBackend::new(MemStore::default()).hashing.permits.available_permits() >= 1);
        }
    }
}

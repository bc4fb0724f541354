//! AIMD rate control: probe starts are paced at a rate that halves on congestion signals
//! (ENOBUFS/EAGAIN, rising kernel drop counters, timeout spikes) and grows otherwise: by a
//! factor per second until the first signal (slow start, as TCP's), additively after it. It
//! grows only while probes use it, so an idle pacer does not come back at its ceiling.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// Rate-control settings. Build it by value from the defaults:
///
/// ```
/// use std::time::Duration;
/// use ralph_discovery::RateConfig;
///
/// let rate = RateConfig::default().initial(1_000.0).min(10.0).max(5_000.0).cooldown(Duration::from_millis(50));
/// assert_eq!(rate.max, 5_000.0);
/// ```
///
/// The rates are probe starts per second and must be finite; `min` must be positive and not
/// above `max`, `initial` positive, `increase_per_sec` not negative and `growth_per_sec` at
/// least 1: [`RateConfig::validate`]
/// (called by [`Pacer::new`] and [`crate::Scanner::new`]) returns [`crate::Error::Setting`]
/// otherwise.
///
/// ```
/// use ralph_discovery::RateConfig;
///
/// assert!(RateConfig::default().min(100.0).max(10.0).validate().is_err());
/// assert!(RateConfig::default().initial(0.0).validate().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct RateConfig {
    /// Starting rate, probe starts per second.
    pub initial: f64,
    /// Floor of the rate.
    pub min: f64,
    /// Ceiling of the rate.
    pub max: f64,
    /// Added to the rate per second without congestion, once a congestion signal has ended
    /// slow start.
    pub increase_per_sec: f64,
    /// Slow start: until the pacer's first congestion signal the rate is multiplied by this per
    /// second of use (default 2, doubling; 1 turns slow start off, leaving the additive increase
    /// only). Slow start happens once per pacer: a [`crate::ScanResources`] shared by a worker's
    /// jobs grows additively after its first signal. The rate never exceeds `max`; lower `max`
    /// (or set `growth_per_sec` to 1) to keep scans gentle.
    pub growth_per_sec: f64,
    /// After a halving, further signals within this period are ignored (one halving per
    /// burst, like TCP's once-per-RTT).
    pub cooldown: Duration,
}

impl Default for RateConfig {
    fn default() -> Self {
        Self {
            initial: 20_000.0,
            min: 50.0,
            max: 500_000.0,
            increase_per_sec: 5_000.0,
            growth_per_sec: 2.0,
            cooldown: Duration::from_millis(200),
        }
    }
}

impl RateConfig {
    /// Sets [`RateConfig::initial`], the starting rate (clamped into `min..=max`).
    #[must_use]
    pub fn initial(mut self, rate: f64) -> Self {
        self.initial = rate;
        self
    }

    /// Sets [`RateConfig::min`], the floor: positive, finite and not above `max`.
    #[must_use]
    pub fn min(mut self, rate: f64) -> Self {
        self.min = rate;
        self
    }

    /// Sets [`RateConfig::max`], the ceiling: finite and not below `min`.
    #[must_use]
    pub fn max(mut self, rate: f64) -> Self {
        self.max = rate;
        self
    }

    /// Sets [`RateConfig::increase_per_sec`] (0 keeps the rate from growing).
    #[must_use]
    pub fn increase_per_sec(mut self, increase: f64) -> Self {
        self.increase_per_sec = increase;
        self
    }

    /// Sets [`RateConfig::growth_per_sec`], slow start's factor per second (1 turns it off).
    #[must_use]
    pub fn growth_per_sec(mut self, growth: f64) -> Self {
        self.growth_per_sec = growth;
        self
    }

    /// Sets [`RateConfig::cooldown`].
    #[must_use]
    pub fn cooldown(mut self, cooldown: Duration) -> Self {
        self.cooldown = cooldown;
        self
    }

    /// Checks the ranges: every rate finite, `initial` and `min` positive, `min <= max`,
    /// `increase_per_sec >= 0`, `growth_per_sec >= 1`.
    ///
    /// # Errors
    /// [`Error::Setting`] naming the first bad value.
    pub fn validate(&self) -> Result<()> {
        let positive = |setting, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(Error::setting(setting, v, "must be finite and positive"))
            }
        };
        positive("rate.initial", self.initial)?;
        positive("rate.min", self.min)?;
        positive("rate.max", self.max)?;
        if self.min > self.max {
            return Err(Error::setting("rate.min", self.min, "must not be above rate.max"));
        }
        if !(self.increase_per_sec.is_finite() && self.increase_per_sec >= 0.0) {
            return Err(Error::setting(
                "rate.increase_per_sec",
                self.increase_per_sec,
                "must be finite and not negative",
            ));
        }
        if !(self.growth_per_sec.is_finite() && self.growth_per_sec >= 1.0) {
            return Err(Error::setting("rate.growth_per_sec", self.growth_per_sec, "must be finite and at least 1"));
        }
        Ok(())
    }
}

/// A token-bucket pacer whose rate follows AIMD.
///
/// Starts are handed out in arrival order, and scans sharing one pacer share it fairly: each
/// scan queues its probes in its own lane and holds at most one place in the pacer's queue,
/// so a one-host scan started beside a sweep of a /16 waits for about one start per scan
/// in flight, not behind the sweep's whole window.
#[derive(Debug)]
pub struct Pacer {
    config: RateConfig,
    state: Mutex<PacerState>,
    /// The queue for starts: tokio's mutex wakes waiters first come, first served.
    turn: tokio::sync::Mutex<()>,
}

/// One scan's place in a shared [`Pacer`]'s queue: its probes wait here, one at a time, for
/// the pacer (see [`Pacer::ready_in`]).
#[derive(Debug, Default)]
pub(crate) struct Lane(tokio::sync::Mutex<()>);

#[derive(Debug)]
struct PacerState {
    rate: f64,
    tokens: f64,
    last: Instant,
    last_decrease: Option<Instant>,
    decreases: u64,
    min_seen: f64,
    /// Times a waiter looked for a token (a start costs one look, or two after a sleep, when
    /// waiters queue instead of all waking for each token).
    looks: u64,
}

impl Pacer {
    /// A pacer starting at `config.initial` (clamped into `min..=max`).
    ///
    /// # Errors
    /// [`Error::Setting`] when the configuration is out of range ([`RateConfig::validate`]).
    pub fn new(config: RateConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self::from_valid(config))
    }

    /// A pacer from a configuration already validated.
    pub(crate) fn from_valid(config: RateConfig) -> Self {
        let rate = config.initial.clamp(config.min, config.max);
        Self {
            config,
            state: Mutex::new(PacerState {
                rate,
                tokens: 1.0,
                last: Instant::now(),
                last_decrease: None,
                decreases: 0,
                min_seen: rate,
                looks: 0,
            }),
            turn: tokio::sync::Mutex::new(()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PacerState> {
        // A poisoned lock only means another task panicked mid-update of plain numbers.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits until one more probe may start; callers are served in arrival order.
    pub async fn ready(&self) {
        let _turn = self.turn.lock().await;
        self.take().await;
    }

    /// [`Pacer::ready`] for a probe of the scan that owns `lane`: the scan's probes queue in
    /// their lane first, so each scan holds at most one place in the pacer's queue and scans
    /// sharing the pacer get its starts in turn.
    pub(crate) async fn ready_in(&self, lane: &Lane) {
        {
            let _lane = lane.0.lock().await;
            self.ready().await;
        }
        // Releasing the lane woke its next probe into this worker's LIFO slot, which no other
        // worker may take: had this probe gone on to send (tens of microseconds of kernel
        // work), every send would have followed the lane's hand-offs on one thread. On a
        // multi-thread runtime, yielding parks this probe's waker in the worker's defer list
        // (woken when the worker parks or at its periodic maintenance) while the next probe
        // takes its token; the deferred probes then go to the worker's run queue, from which
        // the other workers steal, so sends spread over the workers, in bunches. A
        // current-thread runtime has one thread to spread over: no yield there.
        if tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
        {
            tokio::task::yield_now().await;
        }
    }

    /// Takes one token, sleeping until there is one (called with the turn held).
    async fn take(&self) {
        loop {
            let wait = {
                let mut s = self.lock();
                s.looks += 1;
                let now = Instant::now();
                let elapsed = now.duration_since(s.last).as_secs_f64();
                s.last = now;
                // Allow a burst of 10 ms worth of starts so high rates need no sub-ms sleeps.
                let burst = (s.rate / 100.0).max(1.0);
                // Growth only for the time the bucket was refilling: probes were using the
                // rate. A pacer left idle fills its bucket within 10 ms and then stays put.
                let busy = elapsed.min((burst - s.tokens).max(0.0) / s.rate);
                s.tokens = (s.tokens + elapsed * s.rate).min(burst);
                let grown = if s.decreases == 0 {
                    s.rate * self.config.growth_per_sec.powf(busy)
                } else {
                    s.rate + self.config.increase_per_sec * busy
                };
                s.rate = grown.min(self.config.max).max(s.rate);
                if s.tokens >= 1.0 {
                    s.tokens -= 1.0;
                    return;
                }
                Duration::from_secs_f64((1.0 - s.tokens) / s.rate)
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// A congestion signal: halves the rate unless it was halved within the cooldown.
    /// Returns whether it halved.
    pub fn congestion(&self, reason: &'static str) -> bool {
        let mut s = self.lock();
        let now = Instant::now();
        if s.last_decrease.is_some_and(|t| now.duration_since(t) < self.config.cooldown) {
            return false;
        }
        let old = s.rate;
        s.rate = (s.rate / 2.0).max(self.config.min);
        s.tokens = s.tokens.min(1.0);
        s.last_decrease = Some(now);
        s.decreases += 1;
        s.min_seen = s.min_seen.min(s.rate);
        drop(s);
        tracing::info!(target: "ralph::discovery", reason, old_rate = old, new_rate = old / 2.0, "rate halved");
        true
    }

    /// The current rate, probe starts per second.
    #[must_use]
    pub fn rate(&self) -> f64 {
        self.lock().rate
    }

    /// The lowest rate reached so far.
    #[must_use]
    pub fn min_rate_seen(&self) -> f64 {
        self.lock().min_seen
    }

    /// How many times the rate was halved.
    #[must_use]
    pub fn decreases(&self) -> u64 {
        self.lock().decreases
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aimd_halves_once_per_cooldown_and_respects_the_floor() {
        let p = Pacer::new(RateConfig {
            initial: 1000.0,
            min: 100.0,
            cooldown: Duration::from_secs(60),
            ..RateConfig::default()
        })
        .expect("valid");
        assert!(p.congestion("test"));
        assert!(!p.congestion("test"), "second signal inside the cooldown is ignored");
        assert!((p.rate() - 500.0).abs() < 1.0);
        let p =
            Pacer::new(RateConfig { initial: 150.0, min: 100.0, cooldown: Duration::ZERO, ..RateConfig::default() })
                .expect("valid");
        p.congestion("a");
        p.congestion("b");
        assert!((p.rate() - 100.0).abs() < 1e-9);
        assert_eq!(p.decreases(), 2);
    }

    #[test]
    fn bad_rates_are_typed_errors_not_panics() {
        let d = RateConfig::default();
        for (bad, setting) in [
            (d.min(100.0).max(10.0), "rate.min"),
            (d.min(0.0), "rate.min"),
            (d.min(f64::NAN), "rate.min"),
            (d.max(0.0).min(0.0), "rate.min"),
            (d.max(f64::INFINITY), "rate.max"),
            (d.initial(0.0), "rate.initial"),
            (d.initial(-5.0), "rate.initial"),
            (d.increase_per_sec(-1.0), "rate.increase_per_sec"),
            (d.increase_per_sec(f64::NAN), "rate.increase_per_sec"),
            (d.growth_per_sec(0.5), "rate.growth_per_sec"),
            (d.growth_per_sec(f64::INFINITY), "rate.growth_per_sec"),
        ] {
            match Pacer::new(bad) {
                Err(Error::Setting { setting: s, .. }) => assert_eq!(s, setting, "{bad:?}"),
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
        assert!(Pacer::new(d.min(10.0).max(10.0).initial(1e9)).is_ok(), "initial is clamped, min == max is fine");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn scans_sharing_a_pacer_take_turns() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

        let pacer = Arc::new(
            Pacer::new(RateConfig::default().initial(10.0).min(1.0).max(10.0).increase_per_sec(0.0)).expect("valid"),
        );
        let (sweep, quick) = (Arc::new(Lane::default()), Arc::new(Lane::default()));
        let started = Arc::new(AtomicUsize::new(0));
        let quick_done = Arc::new(AtomicBool::new(false));
        // A sweep as the engine runs one: a window of probes waiting for the pacer, refilled as
        // they start, until the other scan's probe has started.
        let producer = {
            let (pacer, sweep, started, quick_done) =
                (Arc::clone(&pacer), Arc::clone(&sweep), Arc::clone(&started), Arc::clone(&quick_done));
            tokio::spawn(async move {
                let mut probes = tokio::task::JoinSet::new();
                let mut spawned = 0usize;
                while !quick_done.load(Ordering::SeqCst) && spawned < 600 {
                    if spawned - started.load(Ordering::SeqCst) < 8 {
                        let (pacer, lane, started) = (Arc::clone(&pacer), Arc::clone(&sweep), Arc::clone(&started));
                        probes.spawn(async move {
                            pacer.ready_in(&lane).await;
                            started.fetch_add(1, Ordering::SeqCst);
                        });
                        spawned += 1;
                    } else {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
                while probes.join_next().await.is_some() {}
                spawned
            })
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        // The other scan's one probe arrives while the sweep has eight waiting (a start every
        // 100 ms: the order, not the timing, is what is checked).
        let before = started.load(Ordering::SeqCst);
        pacer.ready_in(&quick).await;
        let after = started.load(Ordering::SeqCst);
        quick_done.store(true, Ordering::SeqCst);
        let spawned = producer.await.expect("sweep");
        assert_eq!(started.load(Ordering::SeqCst), spawned, "every probe of the sweep started");
        // One sweep start may land between reading `before` and queueing, one is at the head
        // of the queue, and one may come while this task waits to run after its start (100 ms
        // on a loaded machine). In arrival order alone it would wait for all eight.
        assert!(after - before <= 3, "the quick scan waited for {} of the sweep's starts", after - before);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waiters_queue_instead_of_all_waking_for_each_token() {
        use std::sync::Arc;

        let pacer = Arc::new(
            Pacer::new(RateConfig::default().initial(200.0).min(1.0).max(200.0).increase_per_sec(0.0)).expect("valid"),
        );
        let lanes: Vec<Arc<Lane>> = (0..4).map(|_| Arc::default()).collect();
        let mut probes = tokio::task::JoinSet::new();
        for i in 0..200 {
            let (pacer, lane) = (Arc::clone(&pacer), Arc::clone(&lanes[i % 4]));
            probes.spawn(async move { pacer.ready_in(&lane).await });
        }
        while probes.join_next().await.is_some() {}
        // 200 starts of 200 waiters: a herd that all wakes for each token looks ~100 times per
        // start; a queue looks at most twice.
        let looks = pacer.lock().looks;
        assert!(looks <= 2 * 200 + 10, "{looks} looks for 200 starts");
    }

    #[tokio::test]
    async fn slow_start_doubles_while_held_back_then_grows_additively_and_not_while_idle() {
        let p = Pacer::new(RateConfig::default().initial(100.0).min(1.0).increase_per_sec(0.0)).expect("valid");
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(1) {
            p.ready().await;
        }
        // About one second held back by the pacer: close to doubled; at least well above the
        // additive increase (0 here) however late a loaded machine wakes the waiter.
        let after_slow_start = p.rate();
        assert!((120.0..=260.0).contains(&after_slow_start), "slow start reached {after_slow_start}");
        // Idle: growth for the 10 ms the bucket takes to fill at most, however long it lasts
        // (2^0.3 = 1.23 if the idle time counted).
        tokio::time::sleep(Duration::from_millis(300)).await;
        p.ready().await;
        assert!(p.rate() <= after_slow_start * 1.02, "idle grew {after_slow_start} to {}", p.rate());
        // A congestion signal ends slow start: with no additive increase configured it stays.
        assert!(p.congestion("test"));
        let halved = p.rate();
        let again = Instant::now();
        while again.elapsed() < Duration::from_millis(300) {
            p.ready().await;
        }
        assert!(p.rate() <= halved * 1.001, "after a signal {halved} grew to {}", p.rate());
        // With one, after a signal the rate grows by it per second of use, not by a factor.
        let p =
            Pacer::new(RateConfig::default().initial(100.0).min(1.0).increase_per_sec(50.0).cooldown(Duration::ZERO))
                .expect("valid");
        assert!(p.congestion("test"));
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(500) {
            p.ready().await;
        }
        let grown = p.rate() - 50.0;
        assert!((5.0..=26.0).contains(&grown), "additive growth over 0.5 s at 50/s: {grown}");
    }

    #[tokio::test]
    async fn pacing_bounds_the_start_rate() {
        let p = Pacer::new(RateConfig {
            initial: 200.0,
            min: 10.0,
            max: 200.0,
            increase_per_sec: 0.0,
            ..RateConfig::default()
        })
        .expect("valid");
        let start = Instant::now();
        for _ in 0..41 {
            p.ready().await;
        }
        // 41 starts at 200/s with a burst of 2 take at least ~195 ms.
        assert!(start.elapsed() >= Duration::from_millis(150), "{:?}", start.elapsed());
    }
}

//! The dynamic batcher's pure state: priority queues, queue policies and the decision of which
//! requests form the next batch. No I/O and no clock of its own (callers pass `now`), so every
//! rule is unit-tested synchronously; `scheduler` drives it from an actor task.
//!
//! Rules (Triton's `dynamic_batching` semantics):
//! - Requests wait in one FIFO per priority level (1 is highest); requests that timed out with
//!   `timeout_action: DELAY` wait behind every level.
//! - A batch is a prefix of that order whose requests share their non-batch shape and whose
//!   batch sizes sum to at most `max_batch_size`; the first request of another shape ends it.
//! - Sent at once: a full batch (`max_batch_size` reached, or the next request cannot join);
//!   else the largest preferred size that a prefix adds up to exactly; a first request as large
//!   as the largest preferred size runs alone. Otherwise the batch waits until its oldest request
//!   has waited `max_queue_delay_microseconds`, then goes with whatever has gathered.
//! - Without `dynamic_batching`, every request is its own batch.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use nereid_protocol::inference::{
    model_queue_policy::TimeoutAction, ModelConfig, ModelQueuePolicy,
};

/// Largest queue when the config sets no `max_queue_size`: backpressure instead of unbounded
/// growth.
pub const DEFAULT_QUEUE_LIMIT: usize = 65_536;

#[derive(Debug, Clone, PartialEq)]
pub struct QueuePolicy {
    /// 0 means the default limit ([`DEFAULT_QUEUE_LIMIT`]).
    pub max_queue_size: usize,
    pub default_timeout: Option<Duration>,
    pub allow_timeout_override: bool,
    pub delay_on_timeout: bool,
}

impl QueuePolicy {
    fn from_config(p: &ModelQueuePolicy) -> Self {
        QueuePolicy {
            max_queue_size: p.max_queue_size as usize,
            default_timeout: (p.default_timeout_microseconds > 0)
                .then(|| Duration::from_micros(p.default_timeout_microseconds)),
            allow_timeout_override: p.allow_timeout_override,
            delay_on_timeout: p.timeout_action == TimeoutAction::Delay as i32,
        }
    }

    fn limit(&self) -> usize {
        if self.max_queue_size == 0 {
            DEFAULT_QUEUE_LIMIT
        } else {
            self.max_queue_size
        }
    }
}

impl Default for QueuePolicy {
    fn default() -> Self {
        QueuePolicy::from_config(&ModelQueuePolicy::default())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// False without a `dynamic_batching` block: one request per execution.
    pub batching: bool,
    /// Largest batch; 1 when the model does not batch.
    pub max_batch_size: usize,
    /// Ascending.
    pub preferred: Vec<usize>,
    pub max_delay: Duration,
    pub preserve_ordering: bool,
    /// Level `i` (0-based) holds priority `i + 1`.
    pub levels: Vec<QueuePolicy>,
    /// 0-based level for requests without a priority.
    pub default_level: usize,
}

impl Policy {
    /// Reads `dynamic_batching` and `max_batch_size`; messages follow Triton's validation.
    pub fn from_config(config: &ModelConfig) -> Result<Self, String> {
        let m = &config.name;
        let max_batch_size = config.max_batch_size.max(1) as usize;
        if let Some(sb) = crate::sequence::sequence_batching(config) {
            // Requests of different sequences batch together under the strategy's delay.
            use nereid_protocol::inference::model_sequence_batching::StrategyChoice;
            let (delay, preferred) = match &sb.strategy_choice {
                Some(StrategyChoice::Oldest(o)) => (
                    o.max_queue_delay_microseconds,
                    o.preferred_batch_size
                        .iter()
                        .filter(|p| **p >= 1 && **p as usize <= max_batch_size)
                        .map(|p| *p as usize)
                        .collect(),
                ),
                Some(StrategyChoice::Direct(d)) => (d.max_queue_delay_microseconds, Vec::new()),
                None => (0, Vec::new()),
            };
            return Ok(Policy {
                batching: config.max_batch_size > 0,
                max_batch_size,
                preferred,
                max_delay: Duration::from_micros(delay),
                preserve_ordering: false,
                levels: vec![QueuePolicy::default()],
                default_level: 0,
            });
        }
        let Some(db) = config.dynamic_batching() else {
            return Ok(Policy {
                batching: false,
                max_batch_size,
                preferred: Vec::new(),
                max_delay: Duration::ZERO,
                preserve_ordering: false,
                levels: vec![QueuePolicy::default()],
                default_level: 0,
            });
        };
        let mut preferred = Vec::with_capacity(db.preferred_batch_size.len());
        for &p in &db.preferred_batch_size {
            if p < 1 || p as usize > max_batch_size {
                return Err(format!(
                    "dynamic batching preferred size must be positive and <= max_batch_size {max_batch_size} for {m}"
                ));
            }
            preferred.push(p as usize);
        }
        preferred.sort_unstable();
        preferred.dedup();
        let level_count = db.priority_levels.max(1) as usize;
        let default_level = if db.priority_levels == 0 {
            0
        } else {
            if db.default_priority_level < 1 || db.default_priority_level > db.priority_levels {
                return Err(format!(
                    "default priority level must be in range [1, {}] for {m}",
                    db.priority_levels
                ));
            }
            db.default_priority_level as usize - 1
        };
        if db.preserve_ordering && level_count > 1 {
            return Err(format!(
                "Only one priority level is allowed when 'preserve_ordering' is true for {m}"
            ));
        }
        let default_policy = db
            .default_queue_policy
            .as_ref()
            .map(QueuePolicy::from_config)
            .unwrap_or_default();
        let mut levels = vec![default_policy; level_count];
        for (&level, policy) in &db.priority_queue_policy {
            if level < 1 || level > level_count as u64 || db.priority_levels == 0 {
                return Err(format!(
                    "priority queue policy must have priority level in range [1, {}] for {m}",
                    db.priority_levels
                ));
            }
            levels[level as usize - 1] = QueuePolicy::from_config(policy);
        }
        Ok(Policy {
            batching: true,
            max_batch_size,
            preferred,
            max_delay: Duration::from_micros(db.max_queue_delay_microseconds),
            preserve_ordering: db.preserve_ordering,
            levels,
            default_level,
        })
    }

    /// The 0-based level of a request's `priority` parameter (0 or out of range: the default).
    pub fn level_of(&self, priority: u64) -> usize {
        match priority {
            p if p >= 1 && p as usize <= self.levels.len() => p as usize - 1,
            _ => self.default_level,
        }
    }

    /// A request's timeout: the level's default, lowered by the request when allowed.
    pub fn timeout_of(&self, level: usize, requested: Option<Duration>) -> Option<Duration> {
        let policy = &self.levels[level];
        match (
            policy.default_timeout,
            requested.filter(|_| policy.allow_timeout_override),
        ) {
            (Some(default), Some(requested)) => Some(default.min(requested)),
            (None, Some(requested)) => Some(requested),
            (default, None) => default,
        }
    }
}

/// One queued request; `payload` is whatever the caller needs to finish it.
#[derive(Debug)]
pub struct Entry<R> {
    pub batch_size: usize,
    /// Non-batch dimensions of every input: requests batch together only when these match.
    pub shape_key: Vec<Vec<i64>>,
    pub enqueued: Instant,
    pub deadline: Option<Instant>,
    pub payload: R,
}

/// Why a batch was sent (recorded, as TGI does, to explain batch sizes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// No dynamic batcher: one request per execution.
    Single,
    /// `max_batch_size` reached, or the next request cannot join.
    Full,
    /// A preferred batch size.
    Preferred,
    /// The first request alone is at least the largest preferred size.
    Oversized,
    /// The oldest request waited `max_queue_delay`.
    Delay,
}

#[derive(Debug)]
pub enum Decision<R> {
    Send(Vec<Entry<R>>, Reason),
    /// Nothing to send before this instant (unless more requests arrive).
    WaitUntil(Instant),
    Empty,
}

enum Plan {
    Take(usize, Reason),
    WaitUntil(Instant),
    Empty,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Rejection {
    QueueFull,
}

pub struct State<R> {
    policy: Policy,
    levels: Vec<VecDeque<Entry<R>>>,
    /// Timed-out requests of DELAY levels: served after every other request.
    delayed: VecDeque<Entry<R>>,
}

impl<R> State<R> {
    pub fn new(policy: Policy) -> Self {
        let levels = (0..policy.levels.len()).map(|_| VecDeque::new()).collect();
        State {
            policy,
            levels,
            delayed: VecDeque::new(),
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn len(&self) -> usize {
        self.levels.iter().map(VecDeque::len).sum::<usize>() + self.delayed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queues a request at `level`, unless that level's queue is full.
    pub fn admit(&mut self, level: usize, entry: Entry<R>) -> Result<(), (Rejection, Entry<R>)> {
        let level = level.min(self.levels.len() - 1);
        if self.levels[level].len() >= self.policy.levels[level].limit() {
            return Err((Rejection::QueueFull, entry));
        }
        self.levels[level].push_back(entry);
        Ok(())
    }

    /// Removes requests whose timeout passed: REJECT levels return them (to fail), DELAY levels
    /// move them behind everything else.
    pub fn expire(&mut self, now: Instant) -> Vec<Entry<R>> {
        let mut rejected = Vec::new();
        for (queue, policy) in self.levels.iter_mut().zip(&self.policy.levels) {
            if !queue.iter().any(|e| e.deadline.is_some_and(|d| d <= now)) {
                continue;
            }
            let mut kept = VecDeque::with_capacity(queue.len());
            for mut entry in queue.drain(..) {
                if entry.deadline.is_some_and(|d| d <= now) {
                    if policy.delay_on_timeout {
                        entry.deadline = None;
                        self.delayed.push_back(entry);
                    } else {
                        rejected.push(entry);
                    }
                } else {
                    kept.push_back(entry);
                }
            }
            *queue = kept;
        }
        rejected
    }

    /// The earliest timeout of a queued request.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.levels
            .iter()
            .flatten()
            .filter_map(|e| e.deadline)
            .min()
    }

    /// Removes every queued request for which `gone` holds (its caller disconnected).
    pub fn remove_where(&mut self, gone: impl Fn(&R) -> bool) -> Vec<Entry<R>> {
        let mut removed = Vec::new();
        for queue in self
            .levels
            .iter_mut()
            .chain(std::iter::once(&mut self.delayed))
        {
            if !queue.iter().any(|e| gone(&e.payload)) {
                continue;
            }
            let mut kept = VecDeque::with_capacity(queue.len());
            for entry in queue.drain(..) {
                if gone(&entry.payload) {
                    removed.push(entry);
                } else {
                    kept.push_back(entry);
                }
            }
            *queue = kept;
        }
        removed
    }

    fn ordered(&self) -> impl Iterator<Item = &Entry<R>> {
        self.levels.iter().flatten().chain(&self.delayed)
    }

    /// Decides what, if anything, to execute now.
    pub fn next_batch(&mut self, now: Instant) -> Decision<R> {
        match self.plan(now) {
            Plan::Take(n, reason) => Decision::Send(self.take(n), reason),
            Plan::WaitUntil(at) => Decision::WaitUntil(at),
            Plan::Empty => Decision::Empty,
        }
    }

    fn plan(&self, now: Instant) -> Plan {
        let mut order = self.ordered();
        let Some(first) = order.next() else {
            return Plan::Empty;
        };
        if !self.policy.batching {
            return Plan::Take(1, Reason::Single);
        }
        let max = self.policy.max_batch_size;
        let largest_preferred = self.policy.preferred.last().copied();
        if first.batch_size >= max || largest_preferred.is_some_and(|p| first.batch_size >= p) {
            return Plan::Take(1, Reason::Oversized);
        }

        // The longest prefix that can form one batch, and whether something is left behind.
        let mut total = first.batch_size;
        let mut oldest = first.enqueued;
        let mut sums = vec![total];
        let mut blocked = false;
        for entry in order {
            if entry.shape_key != first.shape_key || total + entry.batch_size > max {
                blocked = true;
                break;
            }
            total += entry.batch_size;
            oldest = oldest.min(entry.enqueued);
            sums.push(total);
        }
        let count = sums.len();
        if total == max || blocked {
            return Plan::Take(count, Reason::Full);
        }
        for &preferred in self.policy.preferred.iter().rev() {
            if let Some(index) = sums.iter().position(|&s| s == preferred) {
                return Plan::Take(index + 1, Reason::Preferred);
            }
        }
        let due = oldest + self.policy.max_delay;
        if now >= due {
            return Plan::Take(count, Reason::Delay);
        }
        Plan::WaitUntil(due)
    }

    /// Removes the first `n` requests in priority order.
    fn take(&mut self, mut n: usize) -> Vec<Entry<R>> {
        let mut taken = Vec::with_capacity(n);
        for queue in self
            .levels
            .iter_mut()
            .chain(std::iter::once(&mut self.delayed))
        {
            while n > 0 {
                match queue.pop_front() {
                    Some(entry) => {
                        taken.push(entry);
                        n -= 1;
                    }
                    None => break,
                }
            }
        }
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nereid_protocol::config::parse_pbtxt;

    fn policy(batching: &str) -> Policy {
        let text = format!("name: \"m\" backend: \"identity\" max_batch_size: 8 {batching}");
        Policy::from_config(&parse_pbtxt(&text, "test").unwrap()).unwrap()
    }

    fn default_entry(batch_size: usize, at: Instant) -> Entry<u32> {
        Entry {
            batch_size,
            shape_key: vec![vec![16]],
            enqueued: at,
            deadline: None,
            payload: 0,
        }
    }

    fn sizes<R>(d: &Decision<R>) -> Option<(Vec<usize>, Reason)> {
        match d {
            Decision::Send(entries, reason) => {
                Some((entries.iter().map(|e| e.batch_size).collect(), *reason))
            }
            _ => None,
        }
    }

    #[test]
    fn without_dynamic_batching_every_request_runs_alone() {
        let now = Instant::now();
        let mut state = State::new(policy(""));
        state.admit(0, default_entry(2, now)).unwrap();
        state.admit(0, default_entry(3, now)).unwrap();
        assert_eq!(
            sizes(&state.next_batch(now)),
            Some((vec![2], Reason::Single))
        );
        assert_eq!(
            sizes(&state.next_batch(now)),
            Some((vec![3], Reason::Single))
        );
        assert!(matches!(state.next_batch(now), Decision::Empty));
    }

    #[test]
    fn largest_preferred_size_goes_at_once() {
        let now = Instant::now();
        let mut state = State::new(policy("dynamic_batching { preferred_batch_size: [2, 4] max_queue_delay_microseconds: 1000000 }"));
        for _ in 0..5 {
            state.admit(0, default_entry(1, now)).unwrap();
        }
        assert_eq!(
            sizes(&state.next_batch(now)),
            Some((vec![1, 1, 1, 1], Reason::Preferred))
        );
        // One left: waits for the delay.
        assert!(
            matches!(state.next_batch(now), Decision::WaitUntil(t) if t == now + Duration::from_secs(1))
        );
        assert_eq!(
            sizes(&state.next_batch(now + Duration::from_secs(1))),
            Some((vec![1], Reason::Delay))
        );
    }

    #[test]
    fn two_small_requests_make_a_preferred_batch() {
        let now = Instant::now();
        let mut state = State::new(policy(
            "dynamic_batching { preferred_batch_size: [4] max_queue_delay_microseconds: 1000000 }",
        ));
        state.admit(0, default_entry(1, now)).unwrap();
        assert!(matches!(state.next_batch(now), Decision::WaitUntil(_)));
        state.admit(0, default_entry(3, now)).unwrap();
        assert_eq!(
            sizes(&state.next_batch(now)),
            Some((vec![1, 3], Reason::Preferred))
        );
    }

    #[test]
    fn delay_sends_what_has_gathered() {
        let start = Instant::now();
        let mut state = State::new(policy(
            "dynamic_batching { max_queue_delay_microseconds: 500 }",
        ));
        state.admit(0, default_entry(2, start)).unwrap();
        state
            .admit(0, default_entry(1, start + Duration::from_micros(100)))
            .unwrap();
        assert!(
            matches!(state.next_batch(start), Decision::WaitUntil(t) if t == start + Duration::from_micros(500))
        );
        assert_eq!(
            sizes(&state.next_batch(start + Duration::from_micros(500))),
            Some((vec![2, 1], Reason::Delay))
        );
    }

    #[test]
    fn zero_delay_sends_immediately_and_full_batches_go_at_once() {
        let now = Instant::now();
        let mut state = State::new(policy("dynamic_batching { }"));
        state.admit(0, default_entry(1, now)).unwrap();
        assert_eq!(
            sizes(&state.next_batch(now)),
            Some((vec![1], Reason::Delay))
        );
        let mut state = State::new(policy(
            "dynamic_batching { max_queue_delay_microseconds: 1000000 }",
        ));
        for size in [3, 5, 2] {
            state.admit(0, default_entry(size, now)).unwrap();
        }
        assert_eq!(
            sizes(&state.next_batch(now)),
            Some((vec![3, 5], Reason::Full))
        );
        assert!(matches!(state.next_batch(now), Decision::WaitUntil(_)));
    }

    #[test]
    fn oversized_request_runs_alone_at_once() {
        let now = Instant::now();
        let mut state = State::new(policy(
            "dynamic_batching { preferred_batch_size: [4] max_queue_delay_microseconds: 1000000 }",
        ));
        state.admit(0, default_entry(6, now)).unwrap();
        state.admit(0, default_entry(1, now)).unwrap();
        assert_eq!(
            sizes(&state.next_batch(now)),
            Some((vec![6], Reason::Oversized))
        );
    }

    #[test]
    fn different_shapes_never_merge() {
        let now = Instant::now();
        let mut state = State::new(policy(
            "dynamic_batching { max_queue_delay_microseconds: 1000000 }",
        ));
        state.admit(0, default_entry(1, now)).unwrap();
        let mut other = default_entry(1, now);
        other.shape_key = vec![vec![15]];
        state.admit(0, other).unwrap();
        state.admit(0, default_entry(1, now)).unwrap();
        // The first request cannot be joined by the second: it goes alone, in order.
        assert_eq!(sizes(&state.next_batch(now)), Some((vec![1], Reason::Full)));
        let next = state.next_batch(now);
        match &next {
            Decision::Send(e, Reason::Full) => assert_eq!(e[0].shape_key, vec![vec![15]]),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn priorities_order_the_queue() {
        let now = Instant::now();
        let mut state = State::new(policy(
            "dynamic_batching { priority_levels: 2 default_priority_level: 2 }",
        ));
        let mut low = default_entry(1, now);
        low.payload = 2;
        state.admit(state.policy().level_of(0), low).unwrap();
        let mut high = default_entry(1, now);
        high.payload = 1;
        state.admit(state.policy().level_of(1), high).unwrap();
        match state.next_batch(now) {
            Decision::Send(e, _) => {
                assert_eq!(e.iter().map(|e| e.payload).collect::<Vec<_>>(), vec![1, 2])
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            state.policy().level_of(7),
            1,
            "out-of-range priorities use the default"
        );
    }

    #[test]
    fn queue_full_rejects_exactly_the_excess() {
        let now = Instant::now();
        let mut state = State::new(policy(
            "dynamic_batching { default_queue_policy { max_queue_size: 2 } }",
        ));
        assert!(state.admit(0, default_entry(1, now)).is_ok());
        assert!(state.admit(0, default_entry(1, now)).is_ok());
        assert_eq!(
            state.admit(0, default_entry(1, now)).unwrap_err().0,
            Rejection::QueueFull
        );
        assert_eq!(state.len(), 2);
    }

    #[test]
    fn timeouts_reject_or_delay() {
        let now = Instant::now();
        let reject = policy(
            "dynamic_batching { default_queue_policy { default_timeout_microseconds: 100 } }",
        );
        assert_eq!(
            reject.timeout_of(0, Some(Duration::from_micros(5))),
            Some(Duration::from_micros(100)),
            "no override allowed"
        );
        let mut state = State::new(reject);
        let mut e = default_entry(1, now);
        e.deadline = Some(now + Duration::from_micros(100));
        state.admit(0, e).unwrap();
        assert_eq!(
            state.next_deadline(),
            Some(now + Duration::from_micros(100))
        );
        assert!(state.expire(now).is_empty());
        assert_eq!(state.expire(now + Duration::from_micros(100)).len(), 1);
        assert!(state.is_empty());

        let delay = policy("dynamic_batching { priority_levels: 2 default_priority_level: 1 priority_queue_policy { key: 1 value: { timeout_action: DELAY default_timeout_microseconds: 100 allow_timeout_override: true } } }");
        assert_eq!(
            delay.timeout_of(0, Some(Duration::from_micros(5))),
            Some(Duration::from_micros(5))
        );
        assert_eq!(
            delay.timeout_of(0, Some(Duration::from_secs(5))),
            Some(Duration::from_micros(100)),
            "may only lower"
        );
        let mut state = State::new(delay);
        let mut late = default_entry(1, now);
        late.payload = 1;
        late.deadline = Some(now);
        state.admit(0, late).unwrap();
        let mut low = default_entry(1, now);
        low.payload = 2;
        state.admit(1, low).unwrap();
        assert!(state.expire(now).is_empty());
        match state.next_batch(now) {
            Decision::Send(e, _) => assert_eq!(
                e.iter().map(|e| e.payload).collect::<Vec<_>>(),
                vec![2, 1],
                "delayed goes last"
            ),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn dropped_callers_are_removed() {
        let now = Instant::now();
        let mut state = State::new(policy("dynamic_batching { }"));
        for payload in 0..4 {
            let mut e = default_entry(1, now);
            e.payload = payload;
            state.admit(0, e).unwrap();
        }
        let gone = state.remove_where(|p| p % 2 == 1);
        assert_eq!(gone.len(), 2);
        assert_eq!(state.len(), 2);
    }

    #[test]
    fn config_validation_messages() {
        let parse = |t: &str| {
            Policy::from_config(
                &parse_pbtxt(
                    &format!("name: \"m\" backend: \"identity\" max_batch_size: 8 {t}"),
                    "c",
                )
                .unwrap(),
            )
        };
        assert_eq!(
            parse("dynamic_batching { priority_levels: 3 default_priority_level: 4 }").unwrap_err(),
            "default priority level must be in range [1, 3] for m"
        );
        assert_eq!(parse("dynamic_batching { priority_levels: 3 default_priority_level: 1 priority_queue_policy { key: 5 value: {} } }").unwrap_err(), "priority queue policy must have priority level in range [1, 3] for m");
        assert_eq!(parse("dynamic_batching { priority_levels: 2 default_priority_level: 1 preserve_ordering: true }").unwrap_err(), "Only one priority level is allowed when 'preserve_ordering' is true for m");
        assert!(parse("dynamic_batching { preferred_batch_size: [16] }").is_err());
    }
}

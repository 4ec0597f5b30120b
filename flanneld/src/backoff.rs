//! # backoff — the daemon's one retry-delay rule
//!
//! Every retry loop of the daemon (connecting to etcd, waiting for the network config,
//! acquiring, keeping and watching the lease) waits the same way: the first delay after a
//! failure is the minimum, each further failure doubles it up to the maximum, and a success
//! starts over at the minimum. [`Backoff`] holds that state; [`Backoff::grow`] is the
//! doubling step for loops that carry the delay themselves.

use std::time::Duration;

/// Exponential backoff between `min` and `max` (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Starts at `min`; never waits longer than `max` (or `min`, if that is longer).
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            next: min,
        }
    }

    /// The delay after `current`: doubled, at most `max`.
    pub fn grow(current: Duration, max: Duration) -> Duration {
        (current * 2).min(max)
    }

    /// The delay to wait now; the next one is twice as long (at most `max`).
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = Self::grow(self.next, self.max);
        d
    }

    /// After a success: the next delay is `min` again.
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_max_and_resets_to_min() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), ms(500));
        let got: Vec<_> = (0..5).map(|_| b.next_delay()).collect();
        assert_eq!(got, [ms(100), ms(200), ms(400), ms(500), ms(500)]);
        b.reset();
        assert_eq!(b.next_delay(), ms(100));
        // A max below min is lifted to min.
        let mut b = Backoff::new(ms(300), ms(100));
        assert_eq!((b.next_delay(), b.next_delay()), (ms(300), ms(300)));
        assert_eq!(Backoff::grow(ms(200), Duration::from_secs(5)), ms(400));
        assert_eq!(Backoff::grow(ms(4000), Duration::from_secs(5)), ms(5000));
    }
}

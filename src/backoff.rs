//! One exponential backoff for every retry loop: the delay starts at a
//! minimum, doubles after each failure up to a maximum, and goes back to
//! the minimum on success. Workers take it with ±25 % jitter, so threads
//! retrying after one outage do not move in lockstep.

use std::time::Duration;

use rand::Rng as _;

/// A delay that doubles on each failure, within `[min, max]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    delay: Duration,
}

impl Backoff {
    /// Starting at `min`.
    pub const fn new(min: Duration, max: Duration) -> Self {
        Self { min, max, delay: min }
    }

    /// The delay to wait now; the next one is twice it, up to the maximum.
    pub fn step(&mut self) -> Duration {
        let now = self.delay;
        self.delay = (self.delay * 2).min(self.max);
        now
    }

    /// [`Backoff::step`] with ±25 % jitter.
    pub fn step_jittered(&mut self) -> Duration {
        self.step().mul_f64(rand::rng().random_range(0.75..1.25))
    }

    /// The delay [`Backoff::step`] would give, without moving on.
    pub fn current(&self) -> Duration {
        self.delay
    }

    /// Back to the minimum (after a success).
    pub fn reset(&mut self) {
        self.delay = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_doubles_to_its_maximum_and_resets() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), ms(500));
        let seen: Vec<Duration> = (0..5).map(|_| b.step()).collect();
        assert_eq!(seen, [ms(100), ms(200), ms(400), ms(500), ms(500)]);
        b.reset();
        assert_eq!(b.step(), ms(100));
        for _ in 0..100 {
            let j = b.step_jittered();
            assert!(j >= ms(150) && j <= ms(250), "{j:?}");
            b.reset();
            b.step();
        }
    }
}

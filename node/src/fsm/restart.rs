//! The maxloop policy: at most `maxloop` checker-requested restarts within
//! `loop_interval`; the failure after that stops the module.
//!
//! SafeKit counts the same way: with its default `maxloop = 3` over 24 h, the
//! fourth detection stops the module, so that an application that cannot
//! stay up does not restart forever and hide the problem.

use std::collections::VecDeque;
use std::time::Duration;

use super::Instant;

/// The configured restart budget of a module.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Restarts allowed within `loop_interval`; 0 stops the module on the first failure.
    pub maxloop: u32,
    /// The sliding window over which restarts are counted.
    pub loop_interval: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            // SafeKit's defaults.
            maxloop: 3,
            loop_interval: Duration::from_secs(24 * 3600),
        }
    }
}

/// Restarts recently granted, to apply a [`RestartPolicy`].
#[derive(Clone, Debug)]
pub struct RestartBudget {
    policy: RestartPolicy,
    granted: VecDeque<Instant>,
}

impl RestartBudget {
    /// A budget with no restart used.
    pub fn new(policy: RestartPolicy) -> Self {
        RestartBudget {
            policy,
            granted: VecDeque::new(),
        }
    }

    /// The policy applied.
    pub fn policy(&self) -> RestartPolicy {
        self.policy
    }

    /// Asks for one restart at `now`: `Some(count)` (this restart's number within the
    /// window) if the budget allows it, `None` if the module must stop instead.
    pub fn try_restart(&mut self, now: Instant) -> Option<u32> {
        while let Some(&oldest) = self.granted.front() {
            if now.saturating_duration_since(oldest) >= self.policy.loop_interval {
                self.granted.pop_front();
            } else {
                break;
            }
        }
        if self.granted.len() >= self.policy.maxloop as usize {
            return None;
        }
        self.granted.push_back(now);
        Some(self.granted.len() as u32)
    }

    /// Forgets past restarts (an administrator started the module again).
    pub fn reset(&mut self) {
        self.granted.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> Instant {
        Instant::from_start(Duration::from_secs(secs))
    }

    #[test]
    fn allows_maxloop_restarts_then_refuses_within_the_interval() {
        let mut budget = RestartBudget::new(RestartPolicy {
            maxloop: 3,
            loop_interval: Duration::from_secs(100),
        });
        for (i, t) in [0, 10, 20].into_iter().enumerate() {
            let granted = budget.try_restart(at(t));
            assert_eq!(
                granted,
                Some(i as u32 + 1),
                "expected restart {} at {}s to be granted, saw {granted:?}",
                i + 1,
                t
            );
        }
        let fourth = budget.try_restart(at(30));
        assert_eq!(
            fourth, None,
            "expected the 4th failure within 100s to stop, saw {fourth:?}"
        );
    }

    #[test]
    fn old_restarts_leave_the_window() {
        let mut budget = RestartBudget::new(RestartPolicy {
            maxloop: 2,
            loop_interval: Duration::from_secs(100),
        });
        assert!(budget.try_restart(at(0)).is_some());
        assert!(budget.try_restart(at(50)).is_some());
        let at_100 = budget.try_restart(at(100));
        assert_eq!(
            at_100,
            Some(2),
            "expected the restart at 0s to have left the 100s window, saw {at_100:?}"
        );
        assert_eq!(budget.try_restart(at(120)), None);
    }

    #[test]
    fn maxloop_zero_never_restarts() {
        let mut budget = RestartBudget::new(RestartPolicy {
            maxloop: 0,
            loop_interval: Duration::from_secs(1),
        });
        let first = budget.try_restart(at(0));
        assert_eq!(
            first, None,
            "expected maxloop 0 to refuse every restart, saw {first:?}"
        );
    }

    #[test]
    fn reset_forgets_restarts() {
        let mut budget = RestartBudget::new(RestartPolicy {
            maxloop: 1,
            loop_interval: Duration::from_secs(100),
        });
        assert!(budget.try_restart(at(0)).is_some());
        budget.reset();
        let again = budget.try_restart(at(1));
        assert_eq!(
            again,
            Some(1),
            "expected a fresh budget after reset, saw {again:?}"
        );
    }
}

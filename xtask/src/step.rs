//! Named, timed steps: each prints one line saying what it did and how long it
//! took, and a failed one ends the run with its error and a hint.

use std::fmt::{self, Display};
use std::time::{Duration, Instant};

/// Advice for the operator, attached to an error as context and printed on
/// its own line under it.
#[derive(Debug)]
pub struct Hint(pub String);

impl Display for Hint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Attaches a [`Hint`] to the error of a `Result`.
pub trait HintExt<T> {
    /// Adds `hint` to the error, if any.
    fn hint(self, hint: impl Into<String>) -> anyhow::Result<T>;
}

impl<T, E: Into<anyhow::Error>> HintExt<T> for Result<T, E> {
    fn hint(self, hint: impl Into<String>) -> anyhow::Result<T> {
        self.map_err(|error| error.into().context(Hint(hint.into())))
    }
}

/// Prints `error` with its causes on one line and its hint, if it has one,
/// on the next.
pub fn report(error: &anyhow::Error) {
    let hint = error.downcast_ref::<Hint>().map(ToString::to_string);
    // The hint is one layer of the chain; print it apart, not as a cause.
    let causes: Vec<String> = error
        .chain()
        .map(ToString::to_string)
        .filter(|cause| Some(cause) != hint.as_ref())
        .collect();
    eprintln!("error: {}", causes.join(": "));
    if let Some(hint) = hint {
        eprintln!("hint: {hint}");
    }
}

/// One finished step, kept for the summary.
struct Outcome {
    name: String,
    elapsed: Duration,
    passed: bool,
}

/// A sequence of steps that stops at the first failure.
pub struct Steps {
    started: Instant,
    outcomes: Vec<Outcome>,
}

impl Steps {
    /// Starts the clock for a new sequence.
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            outcomes: Vec::new(),
        }
    }

    /// Runs `step`, then prints `✓ name: <what it did> (time)` from its
    /// result's `Display`, or `✗ name` and returns the error naming the step.
    pub fn run<T: Display>(
        &mut self,
        name: impl Into<String>,
        step: impl FnOnce() -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let name = name.into();
        let started = Instant::now();
        let result = step();
        let elapsed = started.elapsed();
        self.outcomes.push(Outcome {
            name: name.clone(),
            elapsed,
            passed: result.is_ok(),
        });
        match result {
            Ok(done) => {
                println!("✓ {name}: {done} ({})", seconds(elapsed));
                Ok(done)
            }
            Err(error) => {
                println!("✗ {name}: failed after {}", seconds(elapsed));
                Err(error.context(format!("step `{name}` failed")))
            }
        }
    }

    /// Time since [`Steps::new`].
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Prints every step run so far with its duration, and the total.
    pub fn print_summary(&self) {
        let width = self
            .outcomes
            .iter()
            .map(|o| o.name.len())
            .max()
            .unwrap_or(0);
        println!("\nsummary:");
        for outcome in &self.outcomes {
            let mark = if outcome.passed { '✓' } else { '✗' };
            println!(
                "  {mark} {:<width$}  {:>8}",
                outcome.name,
                seconds(outcome.elapsed)
            );
        }
        println!("    {:<width$}  {:>8}", "total", seconds(self.elapsed()));
    }
}

/// A duration as seconds, precise enough to tell a skipped step (`0.00s`)
/// from one that did work.
pub fn seconds(duration: Duration) -> String {
    let secs = duration.as_secs_f64();
    if secs < 10.0 {
        format!("{secs:.2}s")
    } else {
        format!("{secs:.1}s")
    }
}

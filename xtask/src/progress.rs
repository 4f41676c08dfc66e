//! Progress lines for long steps, on stderr so that stdout keeps only results.

use std::time::Instant;

/// A step in progress: announced when started, timed when done.
pub struct Step {
    label: String,
    started: Instant,
}

/// Announces `label` (`==> label`).
pub fn step(label: impl Into<String>) -> Step {
    let label = label.into();
    eprintln!("==> {label}");
    Step {
        label,
        started: Instant::now(),
    }
}

impl Step {
    /// Reports the step as finished, with its duration.
    pub fn done(self) {
        eprintln!(
            "    {} done in {:.1} s",
            self.label,
            self.started.elapsed().as_secs_f64()
        );
    }
}

/// A plain progress note.
pub fn note(text: impl AsRef<str>) {
    eprintln!("    {}", text.as_ref());
}

//! The live view of a bulk run: an indicatif bar when stdout is a terminal, plain lines every
//! few seconds otherwise (logs, CI, tests).

use std::collections::VecDeque;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often a plain progress line is printed.
const PLAIN_EVERY: Duration = Duration::from_secs(5);
/// The outcome rate is measured over this window.
const RATE_WINDOW: Duration = Duration::from_secs(10);

/// The numbers the view shows.
#[derive(Clone, Copy, Debug, Default)]
pub struct Snapshot {
    /// Valid rows: the bar's length.
    pub valid: u64,
    /// Rows to publish in this run, and how many are published.
    pub to_publish: u64,
    pub published: u64,
    /// Outcomes, including those recorded before this run.
    pub provisioned: u64,
    pub failed: u64,
    /// Time the open rows need at the targets' configured rate limits.
    pub eta: Option<Duration>,
}

pub struct Progress {
    bar: Option<ProgressBar>,
    last_line: Option<Instant>,
    samples: VecDeque<(Instant, u64)>,
}

impl Progress {
    pub fn new(valid: u64) -> Progress {
        let bar = std::io::stdout().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(valid), ProgressDrawTarget::stdout());
            let style = ProgressStyle::with_template("{bar:30.cyan/blue} {pos}/{len} done  {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style.progress_chars("=> "));
            bar
        });
        Progress { bar, last_line: None, samples: VecDeque::new() }
    }

    /// Shows `s`: the bar at once, a plain line when the last is old enough (or `force`).
    pub fn show(&mut self, s: &Snapshot, force: bool) {
        let now = Instant::now();
        let done = s.provisioned + s.failed;
        self.samples.push_back((now, done));
        while self.samples.len() > 2 && now.duration_since(self.samples[0].0) > RATE_WINDOW {
            self.samples.pop_front();
        }
        let rate = match (self.samples.front(), self.samples.back()) {
            (Some((t0, d0)), Some((t1, d1))) if t1 > t0 => (d1 - d0) as f64 / t1.duration_since(*t0).as_secs_f64(),
            _ => 0.0,
        };
        let line = describe(s, rate);
        match &self.bar {
            Some(bar) => {
                bar.set_message(line);
                bar.set_position(done);
            }
            None => {
                if force || self.last_line.is_none_or(|t| now.duration_since(t) >= PLAIN_EVERY) {
                    println!("  {done:>7}/{} done  {line}", s.valid);
                    self.last_line = Some(now);
                }
            }
        }
    }

    /// Prints a line without breaking the bar.
    pub fn note(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => println!("{line}"),
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}

/// The ETA: the time the targets' configured rate limits need for the open rows, or longer
/// when outcomes come in slower than that (then both are shown).
fn describe(s: &Snapshot, rate: f64) -> String {
    let open = s.valid.saturating_sub(s.provisioned + s.failed);
    let observed = (rate > 0.0).then(|| Duration::from_secs_f64(open as f64 / rate));
    let eta = match (s.eta.filter(|e| open > 0 && *e > Duration::ZERO), observed.filter(|_| open > 0)) {
        (Some(limit), Some(seen)) if seen > limit * 2 => {
            format!("ETA {} (the rate limit allows {})", clock(seen), clock(limit))
        }
        (Some(limit), _) => format!("ETA {} at the rate limit", clock(limit)),
        (None, Some(seen)) => format!("ETA {}", clock(seen)),
        (None, None) => "ETA -".to_owned(),
    };
    format!(
        "published {}/{}  provisioned {}  failed {}  {rate:.1}/s  {eta}",
        s.published, s.to_publish, s.provisioned, s.failed
    )
}

/// `1h02m`, `3m07s`, `42s`.
pub fn clock(d: Duration) -> String {
    let secs = d.as_secs_f64().ceil() as u64;
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_a_clock() {
        assert_eq!(clock(Duration::from_millis(41_200)), "42s");
        assert_eq!(clock(Duration::from_secs(187)), "3m07s");
        assert_eq!(clock(Duration::from_secs(3720)), "1h02m");
        let s = Snapshot { valid: 10, to_publish: 8, published: 4, provisioned: 3, failed: 1, eta: None };
        assert_eq!(describe(&s, 2.0), "published 4/8  provisioned 3  failed 1  2.0/s  ETA 3s");
        let limited = Snapshot { eta: Some(Duration::from_secs(2)), ..s };
        assert_eq!(describe(&limited, 3.0), "published 4/8  provisioned 3  failed 1  3.0/s  ETA 2s at the rate limit");
        assert_eq!(
            describe(&limited, 0.5),
            "published 4/8  provisioned 3  failed 1  0.5/s  ETA 12s (the rate limit allows 2s)"
        );
        let done = Snapshot { provisioned: 9, ..limited };
        assert!(describe(&done, 1.0).ends_with("ETA -"));
    }
}

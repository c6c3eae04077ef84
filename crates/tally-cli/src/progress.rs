//! A progress bar on standard error for the commands that walk the whole log (export,
//! replay, verify), drawn only when standard error is a terminal: piped or captured output
//! (scripts, CI, tests) sees nothing extra.

use std::io::IsTerminal;
use std::path::Path;

use indicatif::{ProgressBar, ProgressStyle};

/// Updates the bar once per this many sequence numbers: a per-event update would cost the
/// export's hot loop an atomic and a clock read each time.
const EVERY: u64 = 1 << 12;

#[derive(Debug)]
pub struct Progress {
    bar: Option<ProgressBar>,
    total: u64,
    /// The sequence before the first one seen: a replay from a snapshot or an export with
    /// --from starts mid-log, and counting from 0 would make the rate and the ETA lie.
    base: Option<u64>,
    /// The sequence last shown; verify reports batch ends, which skip most multiples.
    drawn: u64,
}

impl Progress {
    /// A bar up to the last sequence of the log in `data_dir`, or a silent one when standard
    /// error is not a terminal or the log cannot be read (the command itself reports that).
    pub fn for_log(data_dir: &Path, label: &'static str) -> Progress {
        let total = if std::io::stderr().is_terminal() {
            tally_log::LogReader::open_secondary(data_dir).ok().and_then(|r| r.last_seq().ok().flatten())
        } else {
            None
        };
        let bar = total.map(|total| {
            let bar = ProgressBar::new(total);
            let style = ProgressStyle::with_template(
                "{prefix} [{bar:30}] {human_pos}/{human_len} events, {per_sec}, ETA {eta}",
            )
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.set_prefix(label);
            bar
        });
        Progress { bar, total: total.unwrap_or(0), base: None, drawn: 0 }
    }

    /// The walk has reached `seq`.
    pub fn at(&mut self, seq: u64) {
        let Some(bar) = &self.bar else { return };
        let base = *self.base.get_or_insert_with(|| {
            let base = seq.saturating_sub(1);
            bar.set_length(self.total.saturating_sub(base));
            base
        });
        if seq >= self.drawn + EVERY {
            self.drawn = seq;
            bar.set_position(seq.saturating_sub(base));
        }
    }

    /// Removes the bar, so the result printed after it stands alone.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

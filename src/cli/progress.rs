//! Progress of long commands on stderr, in `rbd`'s words: a bar on a terminal,
//! then one closing line `Image flatten: 100% complete...done.` (or
//! `...failed.`). When stderr is not a terminal only the closing line is
//! printed; `--no-progress` prints nothing.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::command::Progress;
use crate::sync::Mutex;

struct State {
    bar: Option<ProgressBar>,
    /// Percent last reported.
    percent: u64,
    /// Whether any progress was reported (so a closing line makes sense).
    seen: bool,
}

/// Shows one command's progress.
pub struct Printer {
    label: Option<&'static str>,
    enabled: bool,
    tty: bool,
    state: Mutex<State>,
}

impl Printer {
    /// A printer for a command whose progress label is `label` (`None`: the
    /// command has no progress to show).
    pub fn new(label: Option<&'static str>, enabled: bool) -> Self {
        Self {
            label,
            enabled,
            tty: std::io::stderr().is_terminal(),
            state: Mutex::new(State {
                bar: None,
                percent: 0,
                seen: false,
            }),
        }
    }

    /// Close the progress display with `...done.` or `...failed.`.
    pub fn finish(&self, ok: bool) {
        let Some(label) = self.label else {
            return;
        };
        if !self.enabled {
            return;
        }
        let mut st = self.state.lock();
        if let Some(bar) = st.bar.take() {
            bar.finish_and_clear();
        }
        let pct = if ok { 100 } else { st.percent };
        eprintln!(
            "{label}: {pct}% complete...{}",
            if ok { "done." } else { "failed." }
        );
        st.seen = false;
    }
}

impl Progress for Printer {
    fn update(&self, what: &str, done: u64, total: u64) {
        if !self.enabled {
            return;
        }
        let mut st = self.state.lock();
        st.seen = true;
        st.percent = (done * 100).checked_div(total).unwrap_or(0);
        if !self.tty {
            return;
        }
        let bar = st.bar.get_or_insert_with(|| {
            let b = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            let style =
                ProgressStyle::with_template("{msg}: [{bar:40}] {percent:>3}% ({pos}/{len})")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> ");
            b.set_style(style);
            b.set_message(what.to_string());
            b
        });
        bar.set_length(total);
        bar.set_position(done);
    }
}

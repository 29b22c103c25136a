//! The progress bar of `rwkv-score` (bytes) and `rwkv-state feed` (tokens): on stderr, only
//! when it is a terminal and not `-q`, and only once the work has taken half a second (a
//! short input shows none); it moves with every chunk (done of the total, tokens a second,
//! time left), fits one row of the terminal (so the signal handler's erase of that row
//! removes it all), is erased before anything is written to the same terminal, and is gone
//! after Ctrl-C.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long work goes on before the bar appears.
const SHOW_AFTER: Duration = Duration::from_millis(500);

pub struct Progress {
    bar: Option<ProgressBar>,
    tokens: AtomicU64,
    start: Instant,
    shown: AtomicBool,
}

impl Progress {
    /// A bar over `total` bytes (0: unknown, as for stdin), shown only on a terminal.
    pub fn new(show: bool, total: u64) -> Progress {
        let template = if total > 0 {
            "{wide_bar} {bytes} of {total_bytes}, {msg}, {eta} left"
        } else {
            "{spinner} {bytes}, {msg}"
        };
        Progress::with(show, total, template)
    }

    /// A bar over `total` tokens (`rwkv-state feed`): `add(tokens, tokens)`.
    pub fn tokens(show: bool, total: u64) -> Progress {
        Progress::with(
            show,
            total,
            "{wide_bar} {pos} of {len} tokens, {msg}, {eta} left",
        )
    }

    fn with(show: bool, total: u64, template: &str) -> Progress {
        let bar = (show && std::io::stderr().is_terminal()).then(|| {
            let hidden = ProgressDrawTarget::hidden();
            let bar = ProgressBar::with_draw_target((total > 0).then_some(total), hidden);
            bar.set_style(ProgressStyle::with_template(template).expect("a valid template"));
            super::signal::set_progress(true);
            bar
        });
        Progress {
            bar,
            tokens: AtomicU64::new(0),
            start: Instant::now(),
            shown: AtomicBool::new(false),
        }
    }

    /// `bytes` and `tokens` more done.
    pub fn add(&self, bytes: u64, tokens: u64) {
        let Some(bar) = &self.bar else { return };
        let t = self.tokens.fetch_add(tokens, Ordering::Relaxed) + tokens;
        let elapsed = self.start.elapsed();
        let secs = elapsed.as_secs_f64().max(1e-6);
        bar.set_message(format!("{:.0} tokens/s", t as f64 / secs));
        bar.inc(bytes);
        if elapsed >= SHOW_AFTER && !self.shown.swap(true, Ordering::Relaxed) {
            bar.set_draw_target(ProgressDrawTarget::stderr());
        }
    }

    /// Run `f` (which writes to the terminal) with the bar erased, then draw it again.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        match &self.bar {
            Some(bar) => bar.suspend(f),
            None => f(),
        }
    }

    /// Erase the bar for good.
    pub fn clear(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
            super::signal::set_progress(false);
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.clear();
    }
}

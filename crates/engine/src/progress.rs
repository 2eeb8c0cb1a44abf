//! Progress bars for stages, drawn on stderr only when it is a terminal.

use std::io::IsTerminal;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Whether a run draws progress bars.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProgressMode {
    /// Draw on stderr when it is a terminal.
    #[default]
    Auto,
    Hidden,
}

/// Makes progress bars that share one region of the terminal.
#[derive(Debug, Clone)]
pub struct Progress {
    multi: Option<MultiProgress>,
}

impl Progress {
    #[must_use]
    pub fn new(mode: ProgressMode) -> Self {
        let visible = mode == ProgressMode::Auto && std::io::stderr().is_terminal();
        let multi = visible.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Self { multi }
    }

    /// Returns a bar for `total` items of `unit` (such as "prompts"), showing
    /// the rate and the estimated time left, prefixed with `label`.
    #[must_use]
    pub fn bar(&self, label: &str, total: u64, unit: &str) -> ProgressBar {
        let Some(multi) = &self.multi else {
            return ProgressBar::hidden();
        };
        let template = format!(
            "{{prefix:>24}} [{{bar:30}}] {{pos}}/{{len}} {unit} {{per_sec}} ETA {{eta}} {{msg}}"
        );
        let style = ProgressStyle::with_template(&template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        multi.add(
            ProgressBar::new(total)
                .with_style(style)
                .with_prefix(label.to_owned()),
        )
    }
}

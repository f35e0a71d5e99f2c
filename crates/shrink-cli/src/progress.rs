//! Progress bars on stderr, hidden with --quiet or when stderr is not a terminal.
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

pub fn bar(len: u64, unit: &str, quiet: bool) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::hidden());
    }
    let b = ProgressBar::new(len);
    b.set_style(
        ProgressStyle::with_template(&format!(
            "{{elapsed_precise}} [{{bar:40}}] {{pos}}/{{len}} {unit} (eta {{eta}})"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    b
}

/// The compress job's [`Ui`](shrink_recipe::job::Ui) on a terminal: indicatif bars, info unless
/// --quiet, notices always (all on stderr).
pub struct Term {
    pub quiet: bool,
}

struct TermBar(ProgressBar);

impl shrink_recipe::job::Bar for TermBar {
    fn set_position(&self, pos: u64) {
        self.0.set_position(pos)
    }
    fn finish_and_clear(&self) {
        self.0.finish_and_clear()
    }
}

impl shrink_recipe::job::Ui for Term {
    fn bar(&self, len: u64, unit: &str) -> Box<dyn shrink_recipe::job::Bar> {
        Box::new(TermBar(bar(len, unit, self.quiet)))
    }
    fn info(&self, msg: &str) {
        if !self.quiet {
            eprintln!("{msg}");
        }
    }
    fn notice(&self, msg: &str) {
        eprintln!("{msg}");
    }
}

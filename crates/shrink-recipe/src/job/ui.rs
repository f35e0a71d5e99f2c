//! What a running job tells its caller: progress of the long phases and messages.
//!
//! The job never writes to the terminal itself. `shrink compress` passes an implementation that
//! draws progress bars on stderr; a sweep runner or a test passes [`Silent`] or its own.

/// A progress counter of one phase (a layer loop, a tensor copy).
pub trait Bar {
    fn set_position(&self, pos: u64);
    /// The phase is over: remove the bar.
    fn finish_and_clear(&self);
}

/// The caller's side of a job.
pub trait Ui {
    /// A counter for a phase of `len` steps, labelled `unit` (e.g. "layers").
    fn bar(&self, len: u64, unit: &str) -> Box<dyn Bar>;
    /// What the job is doing (the command line prints it unless --quiet).
    fn info(&self, msg: &str);
    /// Warnings, notes and results that are shown even when quiet.
    fn notice(&self, msg: &str);
}

/// No bars, no info; notices go to stderr.
pub struct Silent;

struct NoBar;

impl Bar for NoBar {
    fn set_position(&self, _: u64) {}
    fn finish_and_clear(&self) {}
}

impl Ui for Silent {
    fn bar(&self, _: u64, _: &str) -> Box<dyn Bar> {
        Box::new(NoBar)
    }
    fn info(&self, _: &str) {}
    fn notice(&self, msg: &str) {
        eprintln!("{msg}");
    }
}

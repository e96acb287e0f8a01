//! Ctrl-C during training: the first press finishes the current step, saves a checkpoint and
//! exits with status 130; a second press exits at once (the last checkpoint is still intact,
//! since checkpoints are written under a temporary name and renamed).

use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Installs the handler (commands that can stop cleanly call this; others keep the default
/// behaviour of Ctrl-C).
pub fn install() {
    let result = ctrlc::set_handler(|| {
        if REQUESTED.swap(true, Ordering::SeqCst) {
            eprintln!("\ninterrupted again: exiting now");
            std::process::exit(130);
        }
        eprintln!(
            "\ninterrupt: finishing this step and saving a checkpoint (Ctrl-C again to quit now)"
        );
    });
    if let Err(e) = result {
        eprintln!("warning: Ctrl-C will stop without a checkpoint: {e}");
    }
}

/// Whether Ctrl-C was pressed.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

//! Ctrl-C. During generation SIGINT only raises a flag: the loop stops, flushes what it
//! produced and the binary exits 130. Elsewhere (loading, reading input) it exits at once
//! with 130, since nothing half-done is on stdout then and files are written atomically.

use std::sync::atomic::{AtomicBool, Ordering};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static DEFERRED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    if DEFERRED.load(Ordering::SeqCst) {
        INTERRUPTED.store(true, Ordering::SeqCst);
    } else {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(130) };
    }
}

/// Install the handler (once, at start).
pub fn install() {
    // SAFETY: installing a handler that only touches atomics or calls _exit.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_sigint as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
    }
}

/// While the returned guard lives, SIGINT sets [`interrupted`] instead of exiting.
pub fn defer() -> Deferred {
    DEFERRED.store(true, Ordering::SeqCst);
    Deferred
}

pub struct Deferred;

impl Drop for Deferred {
    fn drop(&mut self) {
        DEFERRED.store(false, Ordering::SeqCst);
    }
}

/// Whether Ctrl-C was pressed during a deferred section.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

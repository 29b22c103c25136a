//! Ctrl-C and SIGTERM. During generation SIGINT only raises a flag: the loop stops, writes
//! what it produced and the binary exits 130. Elsewhere (loading, reading input, scoring)
//! the process exits at once, after removing the temporary file of any write in progress
//! ([`crate::atomic`]) and the progress line: nothing half-done is left on disk or screen.

use std::sync::atomic::{AtomicBool, Ordering};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static DEFERRED: AtomicBool = AtomicBool::new(false);
/// A progress line is on stderr (erased on exit).
static PROGRESS: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(sig: libc::c_int) {
    if sig == libc::SIGINT && DEFERRED.load(Ordering::SeqCst) {
        INTERRUPTED.store(true, Ordering::SeqCst);
        return;
    }
    crate::atomic::remove_pending();
    if PROGRESS.load(Ordering::SeqCst) {
        const ERASE: &[u8] = b"\r\x1b[K";
        // SAFETY: write(2) is async-signal-safe; the buffer is static.
        unsafe { libc::write(2, ERASE.as_ptr() as *const libc::c_void, ERASE.len()) };
    }
    let code = if sig == libc::SIGINT {
        super::exit::INTERRUPTED
    } else {
        super::exit::TERMINATED
    };
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(code) };
}

/// Install the handler for SIGINT and SIGTERM (once, at start).
pub fn install() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only touches atomics and calls async-signal-safe functions.
        unsafe {
            libc::signal(
                sig,
                on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
            );
        }
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

/// Whether a progress line is drawn on stderr (for the handler to erase).
pub fn set_progress(on: bool) {
    PROGRESS.store(on, Ordering::SeqCst);
}

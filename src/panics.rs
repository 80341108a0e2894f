//! A panic ends doka at once, with its own exit code.
//!
//! A panic is a bug: the state it leaves behind (a lane that stopped with records of its keys, a
//! consumer loop gone) cannot be trusted to deliver or commit anything more. Unwinding into a
//! graceful shutdown would wait `pipeline.shutdown_timeout_ms` for records that will never be
//! acknowledged. So `doka run` installs [`install`]: the panic is logged, and the process exits
//! with [`crate::app::exit::PANIC`] before anything else is committed. Every offset committed
//! before was of delivered records, so nothing is lost: the restarted member (Kubernetes
//! restarts it) sends again what was not committed.
//!
//! Code that expects a panic from a library on hostile input, and handles it, runs inside
//! [`contained`]: such a panic unwinds to it as usual.

use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};

thread_local! {
    /// Set while [`contained`] runs on this thread.
    static CONTAINED: Cell<bool> = const { Cell::new(false) };
}

/// Makes every panic outside [`contained`] end the process with `code`, after logging it.
pub fn install(code: u8) {
    let default = panic::take_hook();
    panic::set_hook(Box::new(move |info| {
        if CONTAINED.with(Cell::get) {
            return;
        }
        let thread = std::thread::current();
        let thread = thread.name().unwrap_or("unnamed");
        tracing::error!(
            thread,
            "doka panicked (a bug; please report it): {info}. Exiting with code {code} at once: \
             nothing more is committed, and records not yet committed are sent again after the \
             restart"
        );
        // Also where a panic always goes, in case the log is what panicked.
        default(info);
        let _ = std::io::Write::flush(&mut std::io::stdout());
        // `_exit`, not `exit`: atexit handlers (OpenSSL's among them) must not run while
        // librdkafka's threads still use what they tear down.
        // SAFETY: ends the process; nothing runs after it.
        unsafe { libc::_exit(i32::from(code)) }
    }));
}

/// Runs `f`, turning a panic into `Err` (not logged as a crash: the caller handles it).
pub fn contained<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    let was = CONTAINED.with(|c| c.replace(true));
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    CONTAINED.with(|c| c.set(was));
    result.map_err(|panic| {
        panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into())
    })
}

/// A panic on purpose, for the tests of this module's promise: `TEST_PANIC_IN_DOKA=<place>` (not `DOKA_…`: those are
/// settings) makes
/// the named place panic the first time it runs. Debug builds only; release builds have none.
#[cfg(debug_assertions)]
pub fn test_panic(place: &str) {
    static WANTED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    static DONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let wanted = WANTED.get_or_init(|| std::env::var("TEST_PANIC_IN_DOKA").ok());
    if wanted.as_deref() == Some(place) && !DONE.swap(true, std::sync::atomic::Ordering::SeqCst) {
        panic!("TEST_PANIC_IN_DOKA={place}");
    }
}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn test_panic(_place: &str) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_contained_panic_is_an_error() {
        assert_eq!(contained(|| 7), Ok(7));
        let err = contained(|| -> u8 { panic!("hostile input") }).unwrap_err();
        assert_eq!(err, "hostile input");
        assert!(!CONTAINED.with(Cell::get), "reset afterwards");
    }
}

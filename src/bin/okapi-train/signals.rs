//! SIGINT / SIGTERM. The training commands stop at the next step boundary: the handler asks
//! okapi-rlhf to stop (`okapi_rlhf::stop`), the run writes a checkpoint and its metrics and
//! ends with one line, exit status 130. A second signal ends the process at once (the
//! checkpoint protocol keeps the last complete checkpoint on disk). The other commands write
//! their output at the end, through a temporary file: the first signal ends them at once.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// The exit status after an interrupt (128 + SIGINT, as shells report it).
pub const EXIT_INTERRUPTED: u8 = 130;

static SIGNALS: AtomicU32 = AtomicU32::new(0);
/// Whether the first signal ends the process (commands without step boundaries).
static IMMEDIATE: AtomicBool = AtomicBool::new(false);
/// Whether stderr is a terminal: the handler then acknowledges the first signal.
static TERMINAL: AtomicBool = AtomicBool::new(false);

/// Writes `msg` to stderr and ends the process with status 130. Only async-signal-safe calls.
#[cfg(unix)]
fn exit_now(msg: &[u8]) -> ! {
    // SAFETY: write(2) and _exit(2) are async-signal-safe; `msg` is a valid buffer.
    unsafe {
        libc::write(2, msg.as_ptr().cast(), msg.len());
        libc::_exit(EXIT_INTERRUPTED as libc::c_int)
    }
}

#[cfg(unix)]
extern "C" fn on_signal(_sig: libc::c_int) {
    if IMMEDIATE.load(Ordering::SeqCst) {
        exit_now(b"\nerror: interrupted\n");
    }
    if SIGNALS.fetch_add(1, Ordering::SeqCst) > 0 {
        exit_now(b"\nerror: interrupted again: stopped at once (the last complete checkpoint is kept)\n");
    }
    okapi_rlhf::stop::request();
    if TERMINAL.load(Ordering::SeqCst) {
        let msg = b"\nstopping after this step (a checkpoint is written); interrupt again to stop at once\n";
        // SAFETY: write(2) is async-signal-safe; `msg` is a valid buffer.
        unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
    }
}

/// Installs the handler for SIGINT and SIGTERM. `graceful`: the command checks for a stop at
/// its step boundaries; otherwise the first signal ends it.
pub fn install(graceful: bool) {
    IMMEDIATE.store(!graceful, Ordering::SeqCst);
    TERMINAL.store(std::io::IsTerminal::is_terminal(&std::io::stderr()), Ordering::SeqCst);
    #[cfg(unix)]
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: `on_signal` has the signature sigaction expects and only does
        // async-signal-safe work (atomics, write, _exit); the struct is zeroed then filled.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(sig, &action, std::ptr::null_mut());
        }
    }
}

/// Whether a signal asked the run to stop (the exit status is then 130).
pub fn interrupted() -> bool {
    SIGNALS.load(Ordering::SeqCst) > 0
}

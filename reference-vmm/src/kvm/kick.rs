//! Kicking a vCPU thread out of `KVM_RUN`: set `immediate_exit` in its
//! `kvm_run`, then send it a real-time signal.
//!
//! The flag covers the window between the thread's last check and its
//! `KVM_RUN` ioctl (KVM returns `EINTR` at once when it is set); the signal
//! takes a thread already in guest mode out of it. This is the scheme the
//! KVM API documentation describes for `immediate_exit`.
//!
//! The signal is blocked in the vCPU thread except while it is inside
//! `KVM_RUN` (`KVM_SET_SIGNAL_MASK` gives KVM the mask to run with, as
//! QEMU did before `immediate_exit`): KVM sees it pending and returns
//! `EINTR`, and back in userspace the thread's own mask blocks it again,
//! so it is never delivered to a handler. The thread discards it instead
//! ([`take_kicks`]). What that saves, on a host where signal delivery and
//! cross-CPU interrupts are expensive (one that itself runs virtualized):
//!
//! - no handler frame and no `rt_sigreturn` on the target after each kick
//!   (on the host these notes come from, the kicked thread's next system
//!   call came 30 us after the `EINTR` exit with the handler, 23 us
//!   without);
//! - a kick that reaches the thread outside `KVM_RUN` (it had just left
//!   guest mode when the sender looked) sends no cross-CPU interrupt:
//!   Linux does not wake or interrupt a thread for a signal it blocks;
//! - one signal per entry: a kicker that finds `immediate_exit` already
//!   set sends none, as the first one's signal is on its way.
//!
//! The signal is sent with `tgkill` to the thread's id rather than
//! `pthread_kill`, which adds three system calls (it blocks every signal
//! around its own `getpid` and `tgkill`).

use std::sync::Once;
use std::sync::atomic::{AtomicU8, Ordering};

use kvm_bindings::{kvm_run, kvm_signal_mask};
use kvm_ioctls::VcpuFd;
use vmm_sys_util::signal::{SIGRTMIN, clear_signal, register_signal_handler};

vmm_sys_util::ioctl_iow_nr!(
    KVM_SET_SIGNAL_MASK,
    kvm_bindings::KVMIO,
    0x8b,
    kvm_signal_mask
);

/// The kernel's `sigset_t` on x86-64: 64 signals, one bit each.
const KERNEL_SIGSET_BYTES: usize = 8;

/// Errors of kick setup and delivery.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kick signal handler could not be installed.
    #[error("installing the vCPU kick signal handler: {0}")]
    Handler(vmm_sys_util::errno::Error),
    /// The kick signal could not be sent.
    #[error("sending the kick signal: errno {0}")]
    Send(i32),
    /// The vCPU thread's signal masks could not be set.
    #[error("setting the vCPU thread's signal mask ({op}): {err}")]
    Mask {
        /// The call that failed.
        op: &'static str,
        /// Its error.
        err: std::io::Error,
    },
    /// A kick signal pending on the vCPU thread could not be discarded.
    #[error("discarding a kick signal: {0}")]
    Discard(vmm_sys_util::signal::Error),
}

/// The signal used for kicks.
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Nothing to do: a vCPU thread blocks the signal outside KVM_RUN, and
    // inside it the signal only makes KVM_RUN return EINTR. The handler
    // exists so that the signal never takes its default action (ending
    // the process) on a thread that has not blocked it.
}

/// Installs the (empty) kick handler once per process.
pub fn install_handler() -> Result<(), Error> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = register_signal_handler(kick_signal(), on_kick).map_err(Error::Handler);
    });
    result
}

/// On the vCPU thread, before its first `KVM_RUN`: KVM runs the vCPU with
/// the thread's signal mask minus the kick signal, and the thread blocks
/// the kick signal everywhere else.
pub fn block_outside_run(fd: &VcpuFd) -> Result<(), Error> {
    let mask_err = |op| move |err| Error::Mask { op, err };
    let kick = kick_signal();
    // SAFETY: an all-zero sigset_t is a valid (empty) set; it is filled
    // by pthread_sigmask below.
    let mut now: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: a null new set only reads the mask into `now`, which lives
    // for the call.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut now) };
    if r != 0 {
        return Err(mask_err("pthread_sigmask")(
            std::io::Error::from_raw_os_error(r),
        ));
    }
    // The mask inside KVM_RUN, in the kernel's layout: bit n-1 is signal n.
    let mut bits = 0u64;
    for sig in 1..=64 {
        // SAFETY: `now` is an initialized set and `sig` a signal number.
        if sig != kick && unsafe { libc::sigismember(&now, sig) } == 1 {
            bits |= 1 << (sig - 1);
        }
    }
    #[repr(C)]
    struct SignalMask {
        header: kvm_signal_mask,
        sigset: [u8; KERNEL_SIGSET_BYTES],
    }
    let mask = SignalMask {
        header: kvm_signal_mask {
            len: KERNEL_SIGSET_BYTES as u32,
            ..Default::default()
        },
        sigset: bits.to_le_bytes(),
    };
    // SAFETY: KVM_SET_SIGNAL_MASK reads a kvm_signal_mask header followed
    // by `len` bytes of set, which `mask` holds (repr(C), the set right
    // after the 4-byte header, as the kernel's flexible array); `fd` is a
    // vCPU fd.
    let r = unsafe { vmm_sys_util::ioctl::ioctl_with_ref(fd, KVM_SET_SIGNAL_MASK(), &mask.header) };
    if r < 0 {
        return Err(mask_err("KVM_SET_SIGNAL_MASK")(
            std::io::Error::last_os_error(),
        ));
    }
    block_in_this_thread()
}

/// Blocks the kick signal in the calling thread.
fn block_in_this_thread() -> Result<(), Error> {
    // SAFETY: `block` is initialized by sigemptyset before use and holds
    // only the kick signal; pthread_sigmask reads it for the call.
    let r = unsafe {
        let mut block: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut block);
        libc::sigaddset(&mut block, kick_signal());
        libc::pthread_sigmask(libc::SIG_BLOCK, &block, std::ptr::null_mut())
    };
    if r != 0 {
        return Err(Error::Mask {
            op: "pthread_sigmask",
            err: std::io::Error::from_raw_os_error(r),
        });
    }
    Ok(())
}

/// `immediate_exit` as an atomic byte.
fn flag(run: &mut kvm_run) -> &AtomicU8 {
    // SAFETY: the byte lives in the vCPU's kvm_run mapping, which outlives
    // the borrow of `run`; u8 has the alignment of AtomicU8, and every
    // access the VMM makes to it is atomic (kickers on other threads go
    // through [`KickTarget`]).
    unsafe { AtomicU8::from_ptr(&mut run.immediate_exit) }
}

/// Sets or clears `immediate_exit` on the vCPU's own thread.
pub fn set_immediate_exit(run: &mut kvm_run, value: bool) {
    flag(run).store(u8::from(value), Ordering::SeqCst);
}

/// On the vCPU thread, outside `KVM_RUN` and before the vCPU is published
/// as in guest mode: clears `immediate_exit` and discards the kick signals
/// pending on the thread. `after_eintr`: `KVM_RUN` just returned `EINTR`,
/// so a signal may be pending even with the flag clear (the thread itself
/// cleared it while a kicker's signal was on its way); otherwise the
/// signals are only looked for when the flag was set, so an entry nobody
/// kicked costs no system call. Returns whether the flag was set.
pub fn take_kicks(run: &mut kvm_run, after_eintr: bool) -> Result<bool, Error> {
    let kicked = flag(run).swap(0, Ordering::SeqCst) != 0;
    if kicked || after_eintr {
        clear_signal(kick_signal()).map_err(Error::Discard)?;
    }
    Ok(kicked)
}

/// Sends the kick signal to thread `tid` of process `pid` (this one).
///
/// # Safety
/// `tid` must be a live thread of this process (a thread id is reused
/// once its thread has exited).
pub unsafe fn signal_thread(pid: libc::pid_t, tid: libc::pid_t) -> Result<(), Error> {
    // SAFETY: tgkill takes plain values; the caller guarantees `tid`.
    let r = unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, kick_signal()) };
    if r != 0 {
        return Err(Error::Send(
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
        ));
    }
    Ok(())
}

/// The calling thread's id.
pub fn this_thread() -> libc::pid_t {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

/// What is needed to kick one vCPU thread. Only valid while that thread is
/// alive and owns its `VcpuFd`; the owner of a `KickTarget` must guarantee
/// that (the vCPU keeps it behind the lock that also guards "alive").
#[derive(Debug)]
pub struct KickTarget {
    pid: libc::pid_t,
    tid: libc::pid_t,
    immediate_exit: *mut u8,
}

// SAFETY: the raw pointer refers to the vCPU's kvm_run mapping, which is
// shared memory meant to be written from any thread; the thread id is a
// plain value. Validity is guaranteed by the owner (see the type docs).
unsafe impl Send for KickTarget {}
// SAFETY: as above; all access goes through an atomic byte.
unsafe impl Sync for KickTarget {}

impl KickTarget {
    /// Captures the calling thread and the `immediate_exit` byte of its
    /// `kvm_run`.
    pub fn current(run: &mut kvm_run) -> Self {
        Self {
            // SAFETY: getpid has no preconditions.
            pid: unsafe { libc::getpid() },
            tid: this_thread(),
            immediate_exit: &mut run.immediate_exit as *mut u8,
        }
    }

    /// Sets `immediate_exit` and, unless it was set already (a signal is
    /// then on its way, or the thread is outside `KVM_RUN` and clears the
    /// flag before it enters again), signals the thread. Returns whether
    /// a signal was sent.
    ///
    /// # Safety
    /// The thread captured by [`KickTarget::current`] must still be alive
    /// and must still own the `kvm_run` mapping.
    pub unsafe fn kick(&self) -> Result<bool, Error> {
        // SAFETY: the caller guarantees the kvm_run mapping is still mapped;
        // the byte is aligned and only ever accessed atomically by the VMM.
        let flag = unsafe { AtomicU8::from_ptr(self.immediate_exit) };
        if flag.swap(1, Ordering::SeqCst) != 0 {
            return Ok(false);
        }
        // SAFETY: the caller guarantees the thread is alive.
        unsafe { signal_thread(self.pid, self.tid) }?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::channel;

    use super::*;

    /// Whether the kick signal is pending on the calling thread.
    fn kick_pending() -> bool {
        // SAFETY: sigpending fills the zeroed set, which outlives the call.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            assert_eq!(libc::sigpending(&mut set), 0);
            libc::sigismember(&set, kick_signal()) == 1
        }
    }

    #[test]
    fn one_signal_per_entry_blocked_until_discarded() {
        install_handler().unwrap();
        let (to_main, from_thread) = channel();
        let (to_thread, from_main) = channel::<()>();
        let vcpu = std::thread::spawn(move || {
            // A vCPU thread outside KVM_RUN.
            block_in_this_thread().unwrap();
            // SAFETY: kvm_run is plain data, for which all zeroes is valid.
            let mut run: Box<kvm_run> = Box::new(unsafe { std::mem::zeroed() });
            to_main.send(KickTarget::current(&mut run)).unwrap();
            from_main.recv().unwrap();
            // Two kicks: the flag is set, one signal waits, blocked (the
            // thread is still running this code, not a handler).
            assert_eq!(run.immediate_exit, 1);
            assert!(kick_pending());
            assert!(take_kicks(&mut run, false).unwrap());
            assert_eq!(run.immediate_exit, 0);
            assert!(!kick_pending());
            // Nothing kicked since: nothing to discard.
            assert!(!take_kicks(&mut run, false).unwrap());
            assert!(!take_kicks(&mut run, true).unwrap());
            to_main.send(KickTarget::current(&mut run)).unwrap();
            from_main.recv().unwrap();
            assert!(kick_pending());
            // After EINTR the signal is discarded even with the flag clear
            // (the thread cleared it while the signal was on its way).
            set_immediate_exit(&mut run, false);
            assert!(!take_kicks(&mut run, true).unwrap());
            assert!(!kick_pending());
        });
        let target = from_thread.recv().unwrap();
        // SAFETY: the thread is alive and owns `run` until it has seen the
        // message sent after these kicks.
        unsafe {
            assert!(target.kick().unwrap());
            assert!(!target.kick().unwrap());
        }
        to_thread.send(()).unwrap();
        let target = from_thread.recv().unwrap();
        // SAFETY: as above.
        assert!(unsafe { target.kick() }.unwrap());
        to_thread.send(()).unwrap();
        vcpu.join().unwrap();
    }
}

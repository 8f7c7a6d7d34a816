//! Kicking a vCPU thread out of `KVM_RUN`: set `immediate_exit` in its
//! `kvm_run`, then send it a real-time signal whose handler does nothing.
//!
//! The flag covers the window between the thread's last check and its
//! `KVM_RUN` ioctl (KVM returns `EINTR` at once when it is set); the signal
//! interrupts a thread already in guest mode. This is the scheme the KVM
//! API documentation describes for `immediate_exit` and that
//! cloud-hypervisor and Firecracker use.

use std::sync::Once;
use std::sync::atomic::{AtomicU8, Ordering};

use vmm_sys_util::signal::{SIGRTMIN, register_signal_handler};

/// Errors of kick setup.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kick signal handler could not be installed.
    #[error("installing the vCPU kick signal handler: {0}")]
    Handler(vmm_sys_util::errno::Error),
    /// The kick signal could not be sent.
    #[error("sending the kick signal: errno {0}")]
    Send(i32),
}

/// The signal used for kicks.
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Nothing to do: delivery alone makes KVM_RUN return EINTR.
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

/// What is needed to kick one vCPU thread. Only valid while that thread is
/// alive and owns its `VcpuFd`; the owner of a `KickTarget` must guarantee
/// that (the vCPU keeps it behind the lock that also guards "alive").
#[derive(Debug)]
pub struct KickTarget {
    thread: libc::pthread_t,
    immediate_exit: *mut u8,
}

// SAFETY: the raw pointer refers to the vCPU's kvm_run mapping, which is
// shared memory meant to be written from any thread; the pthread id is a
// plain value. Validity is guaranteed by the owner (see the type docs).
unsafe impl Send for KickTarget {}
// SAFETY: as above; all access goes through an atomic byte.
unsafe impl Sync for KickTarget {}

impl KickTarget {
    /// Captures the calling thread and the `immediate_exit` byte of its
    /// `kvm_run`.
    pub fn current(immediate_exit: &mut u8) -> Self {
        // SAFETY: pthread_self has no preconditions.
        let thread = unsafe { libc::pthread_self() };
        Self {
            thread,
            immediate_exit: immediate_exit as *mut u8,
        }
    }

    /// Clears `immediate_exit`; called by the vCPU thread itself after
    /// KVM_RUN returned EINTR (it owns the mapping, so it is valid).
    pub fn clear(&self) {
        // SAFETY: only the vCPU thread that owns the kvm_run mapping calls
        // this, so the mapping is alive; the byte is accessed atomically.
        let flag = unsafe { AtomicU8::from_ptr(self.immediate_exit) };
        flag.store(0, Ordering::SeqCst);
    }

    /// Sets `immediate_exit` and signals the thread.
    ///
    /// # Safety
    /// The thread captured by [`KickTarget::current`] must still be alive
    /// and must still own the `kvm_run` mapping.
    pub unsafe fn kick(&self) -> Result<(), Error> {
        // SAFETY: the caller guarantees the kvm_run mapping is still mapped;
        // the byte is aligned and only ever accessed atomically by the VMM.
        let flag = unsafe { AtomicU8::from_ptr(self.immediate_exit) };
        flag.store(1, Ordering::SeqCst);
        // SAFETY: the caller guarantees the thread is alive, so its pthread
        // id is valid.
        let r = unsafe { libc::pthread_kill(self.thread, kick_signal()) };
        if r != 0 {
            return Err(Error::Send(r));
        }
        Ok(())
    }
}

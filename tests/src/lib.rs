//! Helpers for the workspace integration tests, and the multiboot test
//! kernels they boot ([`mbkernel`], [`conformance`]).

pub mod conformance;
pub mod mbkernel;

/// Whether tests that need `/dev/kvm` may run.
///
/// Returns `true` when `/dev/kvm` can be opened. Otherwise prints a loud
/// SKIPPED line and returns `false`, unless `REQUIRE_KVM=1` is set, in which
/// case it panics so that CI fails instead of silently skipping.
pub fn kvm_available(test: &str) -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) => {
            if std::env::var("REQUIRE_KVM").as_deref() == Ok("1") {
                panic!("{test}: /dev/kvm is required (REQUIRE_KVM=1) but cannot be opened: {e}");
            }
            eprintln!(
                "!!!!! SKIPPED {test}: /dev/kvm cannot be opened ({e}); set REQUIRE_KVM=1 to fail instead"
            );
            false
        }
    }
}

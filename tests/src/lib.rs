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

/// The Debian kernel the Linux boot tests use: runs
/// `scripts/fetch-guest-kernel` (which downloads it once with apt and
/// caches it) and returns the cached `vmlinux`.
///
/// When the kernel cannot be had (no apt, no root, no network) it prints a
/// loud SKIPPED line with the script's error and returns `None`, unless
/// `REQUIRE_GUEST_KERNEL=1` is set, in which case it panics so that CI
/// fails instead of silently skipping.
pub fn guest_kernel(test: &str) -> Option<std::path::PathBuf> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("scripts")
        .join("fetch-guest-kernel");
    let why = match std::process::Command::new(&script).output() {
        Ok(out) if out.status.success() => {
            let stdout = String::from_utf8_lossy(&out.stdout);
            let path = std::path::PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
            if path.is_file() {
                return Some(path);
            }
            format!("it printed no vmlinux path ({})", path.display())
        }
        Ok(out) => format!("it failed: {}", String::from_utf8_lossy(&out.stderr).trim()),
        Err(e) => format!("it cannot run: {e}"),
    };
    if std::env::var("REQUIRE_GUEST_KERNEL").as_deref() == Ok("1") {
        panic!(
            "{test}: the guest kernel is required (REQUIRE_GUEST_KERNEL=1) but {} could not provide it: {why}",
            script.display()
        );
    }
    eprintln!(
        "!!!!! SKIPPED {test}: no guest kernel: {} {why}; set REQUIRE_GUEST_KERNEL=1 to fail instead",
        script.display()
    );
    None
}

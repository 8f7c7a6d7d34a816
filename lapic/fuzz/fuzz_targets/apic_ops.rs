//! Random MMIO/MSR/deliver/acknowledge/EOI sequences on a small VM of
//! local APICs: no panic, and the invariants in `tests/support/ops.rs`
//! hold after every step.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/support/ops.rs"]
#[allow(dead_code)]
mod ops;

fuzz_target!(|data: &[u8]| {
    let _ = ops::run(data);
});

//! Failure codes reported by scenarios (the detail each carries in
//! parentheses).

/// A target received a different number of interrupts than sent
/// (detail: vCPU).
pub const WRONG_COUNT: u64 = 1;
/// A privileged operation failed (detail: bit 63 | vector).
pub const PRIV_FAULT: u64 = 2;
/// A hypercall returned an error status (detail: RAX).
pub const HC_STATUS: u64 = 3;
/// A stale translation was seen after a flush (detail: vCPU).
pub const STALE: u64 = 4;
/// A hostile-guest case got the wrong answer (detail: case << 32 |
/// low 32 bits of what it got).
pub const HOSTILE_CASE: u64 = 5;

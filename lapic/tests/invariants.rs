//! Property test: random MMIO/MSR/deliver/acknowledge/EOI sequences never
//! panic and keep the model's invariants (see `support/ops.rs`).

mod support {
    pub mod ops;
}

use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_operation_sequences_keep_invariants(
        data in proptest::collection::vec(any::<u8>(), 0..2048)
    ) {
        let _ = support::ops::run(&data);
    }
}

/// A fixed sequence that reaches acknowledge, EOI and the timer, so the
/// harness itself is known to exercise them.
#[test]
fn harness_reaches_the_hot_path() {
    let mut data = Vec::new();
    // Software-enable vCPU 0 via MMIO SVR (op 1, aligned offset 0xF0).
    data.extend_from_slice(&[1, 0, 0, 0x0F, 1, 0xFF, 0x01, 0, 0, 0, 0, 0, 0]);
    // Deliver fixed edge 0x40 to vCPU 0 (op 4).
    data.extend_from_slice(&[4, 0, 0x40, 0, 0, 0]);
    // Acknowledge pending (op 5), then EOI (op 6).
    data.extend_from_slice(&[5, 0, 0, 6, 0]);
    let stats = support::ops::run(&data);
    assert_eq!(stats.acknowledged, 1);
    assert_eq!(stats.eois, 1);
}

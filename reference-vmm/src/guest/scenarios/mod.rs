//! Named scenarios of the built-in guest. vCPU 0 drives; the others
//! respond from their interrupt handlers (halted most of the time, so that
//! hundreds of vCPUs cost little on a small host). Each scenario checks
//! its own result in guest memory and reports through the report address.

mod emit;
mod error_paths;
pub mod failure;
mod flush;
mod ipi;
mod loops;
mod mode;
mod synic;
mod timer;

pub use error_paths::{cpl0_cmpxchg16b, fault_ud2, rdmsr_program, spin_forever};
pub use flush::{MARKER_A, MARKER_B, tlb_shootdown};
pub use ipi::{broadcast_ipi, ipi_pingpong, wakeup_before_halt};
pub use loops::{
    NULL_MMIO, cpl3_loop, ex64_control, ex64_flush, ex64_input, ex64_probe, ex64_vps,
    mmio_exit_loop, null_hypercall, pio_exit_loop, syscall_loop,
};
pub use mode::{EoiMode, FlushMode, IpiMode};
pub use synic::{connections as synic_connections, synic_pingpong};
pub use timer::{stimer_eoi, stimer_message, timer_eoi};

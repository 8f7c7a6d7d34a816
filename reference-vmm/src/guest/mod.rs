//! Built-in guests, assembled at run time.

pub mod abi;
pub mod asm;
pub mod boot;
pub mod hostile;
pub mod kernel;
pub mod layout;
pub mod scenarios;
pub mod user;

/// A guest program for the built-in kernel: CPL3 code run by every vCPU
/// at [`layout::USER_CODE`] and initial values of shared variables.
#[derive(Debug, Clone, Default)]
pub struct Program {
    /// Machine code assembled for [`layout::USER_CODE`].
    pub user_code: Vec<u8>,
    /// `(address, value)` pairs written before start.
    pub shared: Vec<(u64, u64)>,
}

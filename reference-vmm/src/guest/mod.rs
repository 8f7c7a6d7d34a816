//! Built-in guests, assembled at run time.

pub mod abi;
pub mod asm;
pub mod hostile;
pub mod kernel;
pub mod scenarios;
pub mod user;

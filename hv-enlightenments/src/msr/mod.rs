//! Hyper-V synthetic MSRs.

pub mod index;

pub use index::*;

//! Atomics from `std`, or from loom when the crate is built with
//! `--cfg loom` to model-check the lock-free code.

#[cfg(loom)]
pub(crate) use loom::sync::atomic;
#[cfg(not(loom))]
pub(crate) use std::sync::atomic;

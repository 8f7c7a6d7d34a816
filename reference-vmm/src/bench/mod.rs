//! The `bench` command: each operation with the enlightenments off and
//! on, under the user and the kernel irqchip, at several vCPU counts, all
//! in one run, interleaved and repeated; the medians, minima and maxima of
//! the per-operation figures, the goals of [`crate::goal`], a markdown
//! report, a JSON file with every repetition and a scaling plot.

mod dispatch;
mod goals;
mod kick;
mod memory;
mod plan;
mod plot;
mod report;
mod run;
mod sample;
mod stats;
#[cfg(test)]
mod tests;

pub use crate::scenario::irqchip_name;
pub use dispatch::DecodeDispatch;
pub use goals::goals;
pub use kick::Notifications;
pub use memory::{Rss, VmmMemory};
pub use plan::{Config, Op, SCALING};
pub use report::{Host, Report};
pub use run::run;
pub use sample::{ClassService, Sample};
pub use stats::{Cell, ClassCell, Stat, summarize};

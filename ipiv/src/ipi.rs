//! The IPI fast path: post one vector to many targets through the
//! [`PidTable`] and say, per target, how to notify it.
//!
//! Nothing here blocks or allocates: results go into a caller-provided
//! buffer ([`PidTable::post_ipi`]) or come from a lazy iterator
//! ([`PidTable::post_ipi_iter`]). No lock is held, so the caller delivers
//! the kicks and wake-ups after (or while) iterating, however it likes.

use crate::pid_table::{self, PidTable};
// Defined beside the run state it is derived from; re-exported here, where
// the fast path returns it.
pub use crate::run_state::Notify;

/// Lowest vector a fixed IPI may carry: 0..=15 are reserved (SDM "Valid
/// Interrupt Vectors"; Hyper-V's HvCallSendSyntheticClusterIpi answers
/// HV_STATUS_INVALID_PARAMETER for them, as KVM's `kvm_hv_send_ipi` does).
pub const MIN_IPI_VECTOR: u8 = 0x10;

/// The result for one target of a multicast.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Delivery {
    /// The target's APIC ID.
    pub apic_id: u32,
    /// How to notify it, or why it has no descriptor.
    pub outcome: Result<Notify, pid_table::Error>,
}

impl Default for Delivery {
    fn default() -> Self {
        Self {
            apic_id: 0,
            outcome: Ok(Notify::None),
        }
    }
}

/// Errors of the fast path as a whole (per-target errors are in
/// [`Delivery::outcome`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Error {
    /// The vector is below [`MIN_IPI_VECTOR`]. Nothing was posted.
    #[error("vector {0:#04x} is not a valid IPI vector (0x10..=0xff)")]
    InvalidVector(u8),
    /// The result buffer is shorter than the target list. Nothing was posted.
    #[error("{targets} targets but room for {capacity} results")]
    BufferTooSmall {
        /// Number of targets.
        targets: usize,
        /// Length of the result buffer.
        capacity: usize,
    },
}

fn check_vector(vector: u8) -> Result<(), Error> {
    if vector < MIN_IPI_VECTOR {
        return Err(Error::InvalidVector(vector));
    }
    Ok(())
}

impl PidTable {
    /// Posts `vector` to the vCPU with `apic_id`.
    ///
    /// ```
    /// use ipiv::{HaltCheck, Notify, PidTable};
    ///
    /// let table = PidTable::new(1)?;
    /// let vcpu = table.register(1)?;
    /// assert_eq!(vcpu.run_state().prepare_halt(vcpu.descriptor()), HaltCheck::Sleep);
    /// assert_eq!(table.post_one(1, 0x40)?, Notify::Wake); // unpark its thread
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[inline]
    pub fn post_one(&self, apic_id: u32, vector: u8) -> Result<Notify, pid_table::Error> {
        Ok(self.get(apic_id)?.post(vector))
    }

    /// Posts `vector` to every target and writes one [`Delivery`] per target
    /// into `out`, in order; returns the filled part of `out`. An unknown
    /// APIC ID fails only its own entry.
    ///
    /// ```
    /// use ipiv::{Notify, PidTable, RunState};
    /// let table = PidTable::new(7)?;
    /// let running = table.register(1)?;
    /// running.run_state().set(RunState::InGuest);
    /// table.register(2)?;
    /// let mut out = [ipiv::Delivery::default(); 3];
    /// let done = table.post_ipi(&[1, 2, 9], 0x40, &mut out)?;
    /// assert_eq!(done[0].outcome, Ok(Notify::Kick));
    /// assert_eq!(done[1].outcome, Ok(Notify::None)); // outside the guest
    /// assert!(done[2].outcome.is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn post_ipi<'o>(
        &self,
        targets: &[u32],
        vector: u8,
        out: &'o mut [Delivery],
    ) -> Result<&'o [Delivery], Error> {
        check_vector(vector)?;
        let capacity = out.len();
        let Some(out) = out.get_mut(..targets.len()) else {
            return Err(Error::BufferTooSmall {
                targets: targets.len(),
                capacity,
            });
        };
        for (slot, &apic_id) in out.iter_mut().zip(targets) {
            *slot = Delivery {
                apic_id,
                outcome: self.post_one(apic_id, vector),
            };
        }
        Ok(out)
    }

    /// Posts `vector` to each target as the returned iterator is advanced,
    /// yielding one [`Delivery`] per target.
    ///
    /// ```
    /// use ipiv::{ipi::Error, PidTable};
    ///
    /// let table = PidTable::new(3)?;
    /// for apic_id in 0..=3 {
    ///     table.register(apic_id)?;
    /// }
    /// // A broadcast, as a PV IPI hypercall's VP set names it.
    /// let posted = table.post_ipi_iter(0..=3, 0x40)?.filter(|d| d.outcome.is_ok()).count();
    /// assert_eq!(posted, 4);
    /// assert_eq!(table.post_ipi_iter(0..=3, 0x0F).err(), Some(Error::InvalidVector(0x0F)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn post_ipi_iter<I>(
        &self,
        targets: I,
        vector: u8,
    ) -> Result<PostIpi<'_, I::IntoIter>, Error>
    where
        I: IntoIterator<Item = u32>,
    {
        check_vector(vector)?;
        Ok(PostIpi {
            table: self,
            targets: targets.into_iter(),
            vector,
        })
    }
}

/// Lazy multicast, from [`PidTable::post_ipi_iter`].
#[derive(Debug)]
pub struct PostIpi<'t, I> {
    table: &'t PidTable,
    targets: I,
    vector: u8,
}

impl<I: Iterator<Item = u32>> Iterator for PostIpi<'_, I> {
    type Item = Delivery;

    #[inline]
    fn next(&mut self) -> Option<Delivery> {
        let apic_id = self.targets.next()?;
        Some(Delivery {
            apic_id,
            outcome: self.table.post_one(apic_id, self.vector),
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.targets.size_hint()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::run_state::{HaltCheck, RunState};

    fn table() -> PidTable {
        let t = PidTable::new(15).unwrap();
        for id in 0..4 {
            t.register(id).unwrap();
        }
        t
    }

    #[test]
    fn notify_follows_run_state() {
        let t = table();
        t.get(0).unwrap().run_state().set(RunState::InGuest);
        t.get(1).unwrap().run_state().set(RunState::Halted);
        let mut out = [Delivery::default(); 4];
        let got = t.post_ipi(&[0, 1, 2, 3], 0x30, &mut out).unwrap();
        let notes: Vec<_> = got.iter().map(|d| d.outcome).collect();
        assert_eq!(
            notes,
            vec![
                Ok(Notify::Kick),
                Ok(Notify::Wake),
                Ok(Notify::None),
                Ok(Notify::None)
            ]
        );
        // ON is outstanding everywhere now: a second vector needs no notification.
        let again: Vec<_> = t
            .post_ipi_iter([0, 1, 2, 3], 0x31)
            .unwrap()
            .map(|d| d.outcome)
            .collect();
        assert!(again.iter().all(|o| *o == Ok(Notify::None)));
    }

    #[test]
    fn bad_vector_and_short_buffer_post_nothing() {
        let t = table();
        let mut out = [Delivery::default(); 1];
        assert_eq!(
            t.post_ipi(&[0], 0x0f, &mut out).err(),
            Some(Error::InvalidVector(0x0f))
        );
        assert_eq!(
            t.post_ipi(&[0, 1], 0x40, &mut out).err(),
            Some(Error::BufferTooSmall {
                targets: 2,
                capacity: 1
            })
        );
        assert!(t.post_ipi_iter([0], 0).is_err());
        assert!(t.iter().all(|v| !v.descriptor().has_pending()));
        assert_eq!(t.post_ipi(&[0], 0x10, &mut out).unwrap().len(), 1);
    }

    #[test]
    fn unknown_targets_fail_alone() {
        let t = table();
        let got: Vec<_> = t.post_ipi_iter([2, 9, 16, 3], 0x80).unwrap().collect();
        assert_eq!(got[0].outcome, Ok(Notify::None));
        assert_eq!(
            got[1].outcome,
            Err(pid_table::Error::NoEntry { apic_id: 9 })
        );
        assert!(matches!(
            got[2].outcome,
            Err(pid_table::Error::ApicIdOutOfRange { apic_id: 16, .. })
        ));
        assert_eq!(got[3].outcome, Ok(Notify::None));
    }

    #[test]
    fn halting_target_is_woken_or_sees_the_vector() {
        // A post that lands between the halt publication and the sleep
        // must produce a Wake; one that lands before it must be seen.
        let t = table();
        let v = t.get(0).unwrap();
        assert_eq!(t.post_one(0, 0x41), Ok(Notify::None));
        assert_eq!(
            v.run_state().prepare_halt(v.descriptor()),
            HaltCheck::Pending
        );
        v.descriptor().take();
        assert_eq!(v.run_state().prepare_halt(v.descriptor()), HaltCheck::Sleep);
        assert_eq!(t.post_one(0, 0x42), Ok(Notify::Wake));
    }
}

//! The PID-pointer table: APIC ID -> posted-interrupt descriptor, like the
//! table VT-x IPI virtualization walks (SDM "IPI Virtualization": the
//! "PID-pointer table address" and "last PID-pointer index" VMCS fields;
//! KVM's `vmx_alloc_ipiv_pid_table`). An APIC ID above the last valid
//! index, or one without an entry, is an error here where the hardware
//! would exit to the hypervisor.

use std::sync::{Arc, OnceLock};

use crate::descriptor::{PostOutcome, PostedInterruptDescriptor};
use crate::run_state::{Notify, VcpuRunState};

/// Most APIC IDs a table can hold (IDs 0..=4095), KVM's `KVM_MAX_VCPU_IDS`
/// on x86 and the 4096 VPs a Hyper-V VP set can name.
pub const MAX_APIC_IDS: u32 = 4096;

/// Errors of the PID-pointer table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Error {
    /// The APIC ID is beyond the table's last valid index.
    #[error("APIC ID {apic_id} is beyond the last valid index {last_index}")]
    ApicIdOutOfRange {
        /// The APIC ID asked for.
        apic_id: u32,
        /// The table's last valid index.
        last_index: u32,
    },
    /// No descriptor is registered for the APIC ID.
    #[error("APIC ID {apic_id} has no posted-interrupt descriptor")]
    NoEntry {
        /// The APIC ID asked for.
        apic_id: u32,
    },
    /// A descriptor is already registered for the APIC ID.
    #[error("APIC ID {apic_id} already has a posted-interrupt descriptor")]
    AlreadyRegistered {
        /// The APIC ID asked for.
        apic_id: u32,
    },
    /// The requested last index does not fit [`MAX_APIC_IDS`].
    #[error("last index {0} is above the maximum {max}", max = MAX_APIC_IDS - 1)]
    TableTooLarge(u32),
}

/// Posted-interrupt state of one vCPU: its descriptor and its run state.
/// Shared (in an `Arc`) by the table and the vCPU's own thread.
#[derive(Debug)]
pub struct PostedVcpu {
    descriptor: PostedInterruptDescriptor,
    run_state: VcpuRunState,
    apic_id: u32,
}

impl PostedVcpu {
    /// A vCPU with APIC ID `apic_id`, outside the guest, nothing pending.
    /// NDST is set to `apic_id`.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use ipiv::{PidTable, PostedVcpu};
    ///
    /// let table = PidTable::new(7)?;
    /// table.insert(Arc::new(PostedVcpu::new(5)))?;
    /// assert_eq!(table.get(5)?.descriptor().notification_destination(), 5);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new(apic_id: u32) -> Self {
        let descriptor = PostedInterruptDescriptor::new();
        descriptor.set_notification(0, apic_id);
        Self {
            descriptor,
            run_state: VcpuRunState::new(),
            apic_id,
        }
    }

    /// The vCPU's APIC ID.
    pub fn apic_id(&self) -> u32 {
        self.apic_id
    }

    /// The posted-interrupt descriptor.
    pub fn descriptor(&self) -> &PostedInterruptDescriptor {
        &self.descriptor
    }

    /// The run state, which the vCPU thread keeps up to date.
    pub fn run_state(&self) -> &VcpuRunState {
        &self.run_state
    }

    /// Posts `vector` and says how to notify this vCPU: nothing when no
    /// notification is needed (the vector merged with a pending one, a
    /// notification is outstanding, SN is set, or the vCPU is outside the
    /// guest and will take it before entering), else kick or wake.
    ///
    /// ```
    /// use ipiv::{Notify, PostedVcpu, RunState};
    ///
    /// let vcpu = PostedVcpu::new(0);
    /// vcpu.run_state().set(RunState::InGuest);
    /// assert_eq!(vcpu.post(0x40), Notify::Kick); // interrupt KVM_RUN
    /// assert_eq!(vcpu.post(0x41), Notify::None); // the kick is on its way
    /// ```
    #[inline]
    pub fn post(&self, vector: u8) -> Notify {
        self.post_outcome(vector).1
    }

    /// Like [`post`](Self::post), also saying what the descriptor did
    /// (whether the vector was newly pending).
    ///
    /// ```
    /// use ipiv::{Notify, PostOutcome, PostedVcpu};
    ///
    /// let vcpu = PostedVcpu::new(0); // outside the guest
    /// assert_eq!(vcpu.post_outcome(0x40), (PostOutcome::Notify, Notify::None));
    /// assert_eq!(vcpu.post_outcome(0x40), (PostOutcome::Coalesced, Notify::None));
    /// ```
    #[inline]
    pub fn post_outcome(&self, vector: u8) -> (PostOutcome, Notify) {
        let outcome = self.descriptor.post_outcome(vector);
        if !outcome.needs_notification() {
            return (outcome, Notify::None);
        }
        // Read after ON was set (SeqCst), see `run_state`.
        (outcome, self.run_state.get().notify())
    }
}

/// APIC ID -> [`PostedVcpu`], entries 0..=`last_index`.
///
/// Entries are registered once through `&self` (vCPUs may be added while
/// other threads post) and never removed.
#[derive(Debug)]
pub struct PidTable {
    entries: Box<[OnceLock<Arc<PostedVcpu>>]>,
}

impl PidTable {
    /// A table for APIC IDs 0..=`last_index`; `last_index` must be below
    /// [`MAX_APIC_IDS`].
    ///
    /// ```
    /// use ipiv::{pid_table::Error, PidTable, MAX_APIC_IDS};
    ///
    /// let table = PidTable::new(MAX_APIC_IDS - 1)?;
    /// assert_eq!(table.last_index(), 4095);
    /// assert_eq!(PidTable::new(MAX_APIC_IDS).err(), Some(Error::TableTooLarge(MAX_APIC_IDS)));
    /// # Ok::<(), Error>(())
    /// ```
    pub fn new(last_index: u32) -> Result<Self, Error> {
        if last_index >= MAX_APIC_IDS {
            return Err(Error::TableTooLarge(last_index));
        }
        let entries = (0..=last_index).map(|_| OnceLock::new()).collect();
        Ok(Self { entries })
    }

    /// The last valid index (the highest APIC ID the table can hold).
    pub fn last_index(&self) -> u32 {
        // The constructor bounds the length by MAX_APIC_IDS, which fits u32.
        u32::try_from(self.entries.len().saturating_sub(1)).unwrap_or(MAX_APIC_IDS - 1)
    }

    fn slot(&self, apic_id: u32) -> Result<&OnceLock<Arc<PostedVcpu>>, Error> {
        usize::try_from(apic_id)
            .ok()
            .and_then(|index| self.entries.get(index))
            .ok_or(Error::ApicIdOutOfRange {
                apic_id,
                last_index: self.last_index(),
            })
    }

    /// Creates and registers the entry for `apic_id`, returning it for the
    /// vCPU thread.
    ///
    /// ```
    /// use ipiv::{pid_table::Error, PidTable};
    ///
    /// let table = PidTable::new(3)?;
    /// let vcpu = table.register(2)?; // moved to vCPU 2's thread
    /// assert_eq!(vcpu.apic_id(), 2);
    /// assert_eq!(table.register(2).err(), Some(Error::AlreadyRegistered { apic_id: 2 }));
    /// # Ok::<(), Error>(())
    /// ```
    pub fn register(&self, apic_id: u32) -> Result<Arc<PostedVcpu>, Error> {
        let vcpu = Arc::new(PostedVcpu::new(apic_id));
        self.insert(Arc::clone(&vcpu))?;
        Ok(vcpu)
    }

    /// Registers `vcpu` under its APIC ID.
    pub fn insert(&self, vcpu: Arc<PostedVcpu>) -> Result<(), Error> {
        let apic_id = vcpu.apic_id();
        self.slot(apic_id)?
            .set(vcpu)
            .map_err(|_| Error::AlreadyRegistered { apic_id })
    }

    /// The entry for `apic_id`.
    ///
    /// ```
    /// use ipiv::{pid_table::Error, PidTable};
    ///
    /// let table = PidTable::new(3)?;
    /// table.register(1)?;
    /// assert_eq!(table.get(1)?.apic_id(), 1);
    /// assert_eq!(table.get(2).err(), Some(Error::NoEntry { apic_id: 2 }));
    /// assert!(matches!(table.get(4), Err(Error::ApicIdOutOfRange { apic_id: 4, .. })));
    /// # Ok::<(), Error>(())
    /// ```
    #[inline]
    pub fn get(&self, apic_id: u32) -> Result<&Arc<PostedVcpu>, Error> {
        self.slot(apic_id)?.get().ok_or(Error::NoEntry { apic_id })
    }

    /// The registered entries, by ascending APIC ID.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<PostedVcpu>> {
        self.entries.iter().filter_map(OnceLock::get)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_typed_errors() {
        assert_eq!(PidTable::new(4096).err(), Some(Error::TableTooLarge(4096)));
        let t = PidTable::new(4095).unwrap();
        assert_eq!(t.last_index(), 4095);
        assert!(t.register(4095).is_ok());
        assert_eq!(
            t.register(4096).err(),
            Some(Error::ApicIdOutOfRange {
                apic_id: 4096,
                last_index: 4095
            })
        );
        assert_eq!(
            t.get(u32::MAX).err(),
            Some(Error::ApicIdOutOfRange {
                apic_id: u32::MAX,
                last_index: 4095
            })
        );
        assert_eq!(t.get(7).err(), Some(Error::NoEntry { apic_id: 7 }));
        assert_eq!(
            t.register(4095).err(),
            Some(Error::AlreadyRegistered { apic_id: 4095 })
        );
    }

    #[test]
    fn last_index_is_inclusive() {
        let t = PidTable::new(3).unwrap();
        assert!(t.register(3).is_ok());
        assert!(matches!(
            t.register(4),
            Err(Error::ApicIdOutOfRange { last_index: 3, .. })
        ));
        assert_eq!(t.iter().map(|v| v.apic_id()).collect::<Vec<_>>(), vec![3]);
        assert_eq!(t.get(3).unwrap().descriptor().notification_destination(), 3);
    }
}

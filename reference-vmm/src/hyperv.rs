//! The VMM's Hyper-V partition and per-VP state: synthetic MSRs, the
//! Hyper-V CPUID leaves, and the decoder of the PV IPI and PV TLB flush
//! hypercalls (TLFS 6.0: "Hypercall Interface", "Virtual Processor
//! Management", "Virtual MMU"). Everything the guest controls is bounded
//! and answered with a TLFS status or a #GP.

use hv_enlightenments::msr::*;

use crate::cpuid::Leaf;

/// Hypercall status codes (TLFS Appendix B).
pub mod status {
    /// Success.
    pub const SUCCESS: u16 = 0;
    /// Unknown call code.
    pub const INVALID_HYPERCALL_CODE: u16 = 2;
    /// Reserved bits set, bad rep/header counts, bad vector.
    pub const INVALID_HYPERCALL_INPUT: u16 = 3;
    /// Input GPA not 8-byte aligned or crossing a page.
    pub const INVALID_ALIGNMENT: u16 = 4;
}

/// Call codes.
pub mod code {
    /// HvCallFlushVirtualAddressSpace.
    pub const FLUSH_SPACE: u16 = 0x0002;
    /// HvCallFlushVirtualAddressList.
    pub const FLUSH_LIST: u16 = 0x0003;
    /// HvCallSendSyntheticClusterIpi.
    pub const SEND_IPI: u16 = 0x000B;
    /// HvCallFlushVirtualAddressSpaceEx.
    pub const FLUSH_SPACE_EX: u16 = 0x0013;
    /// HvCallFlushVirtualAddressListEx.
    pub const FLUSH_LIST_EX: u16 = 0x0014;
    /// HvCallSendSyntheticClusterIpiEx.
    pub const SEND_IPI_EX: u16 = 0x0015;
}

/// Hypercall control bits (TLFS 3.7).
const CTL_FAST: u64 = 1 << 16;
/// Bits that must be zero: 27..=30, 44..=47, 60..=63.
const CTL_RESERVED: u64 = (0xF << 27) | (0xF << 44) | (0xF << 60);
/// HV_FLUSH_ALL_PROCESSORS.
const FLUSH_ALL_PROCESSORS: u64 = 1 << 0;
/// HV_GENERIC_SET_SPARSE_4K.
const SET_SPARSE: u64 = 0;
/// HV_GENERIC_SET_ALL.
const SET_ALL: u64 = 1;
/// Lowest and highest IPI vector (KVM `kvm_hv_send_ipi`).
const IPI_VECTOR_MIN: u64 = 0x10;
const IPI_VECTOR_MAX: u64 = 0xFF;
/// Page size: a memory input must not cross one.
const PAGE: u64 = 4096;
/// Banks of 64 VPs in a sparse set.
pub const MAX_BANKS: usize = 64;

/// The set of VPs a call targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Targets {
    /// Every VP.
    All,
    /// VP indices (may name VPs that do not exist: they are ignored).
    List(Vec<u32>),
}

/// What a decoded hypercall asks the VMM to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// Send `vector` to every target.
    SendIpi {
        /// Vector (0x10..=0xFF).
        vector: u8,
        /// Targets.
        targets: Targets,
    },
    /// Flush the targets' TLBs; `reps` repetitions are reported complete.
    Flush {
        /// Targets.
        targets: Targets,
        /// Reps to report in the result.
        reps: u16,
    },
}

/// Where a hypercall's input comes from.
pub struct Input<'a> {
    /// RCX.
    pub control: u64,
    /// RDX.
    pub rdx: u64,
    /// R8.
    pub r8: u64,
    /// XMM0..XMM5 (fast XMM calls).
    pub xmm: &'a [u128; 6],
}

/// Reads guest-physical memory (None: not guest RAM).
pub trait GuestRead {
    /// Reads `buf.len()` bytes at `gpa`.
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Option<()>;
}

impl GuestRead for vm_memory::GuestMemoryMmap {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Option<()> {
        use vm_memory::Bytes;
        self.read_slice(buf, vm_memory::GuestAddress(gpa)).ok()
    }
}

/// Input words of a call: the fast registers or guest memory.
struct Words<'a, M: GuestRead> {
    fast: Option<[u64; 14]>,
    mem: &'a M,
    gpa: u64,
}

impl<M: GuestRead> Words<'_, M> {
    /// Word `i` (8 bytes) of the input.
    fn get(&self, i: usize) -> Result<u64, u16> {
        match &self.fast {
            Some(w) => w.get(i).copied().ok_or(status::INVALID_HYPERCALL_INPUT),
            None => {
                let off = i as u64 * 8;
                if (self.gpa % PAGE) + off + 8 > PAGE {
                    return Err(status::INVALID_HYPERCALL_INPUT);
                }
                let mut b = [0u8; 8];
                self.mem
                    .read(self.gpa + off, &mut b)
                    .ok_or(status::INVALID_HYPERCALL_INPUT)?;
                Ok(u64::from_le_bytes(b))
            }
        }
    }
}

/// Reads a sparse/all VP set starting at word `at`; `var_cnt` is the
/// control word's variable header size.
fn vpset<M: GuestRead>(w: &Words<'_, M>, at: usize, var_cnt: u64) -> Result<Targets, u16> {
    let format = w.get(at)?;
    let valid = w.get(at + 1)?;
    if var_cnt != u64::from(valid.count_ones()) {
        return Err(status::INVALID_HYPERCALL_INPUT);
    }
    match format {
        SET_ALL => Ok(Targets::All),
        SET_SPARSE => {
            let mut vps = Vec::new();
            let mut slot = 0;
            for bank in 0..MAX_BANKS {
                if valid & (1 << bank) == 0 {
                    continue;
                }
                let mask = w.get(at + 2 + slot)?;
                slot += 1;
                for b in 0..64 {
                    if mask & (1 << b) != 0 {
                        vps.push((bank * 64 + b) as u32);
                    }
                }
            }
            Ok(Targets::List(vps))
        }
        _ => Err(status::INVALID_HYPERCALL_INPUT),
    }
}

fn mask_targets(mask: u64) -> Targets {
    Targets::List((0..64).filter(|b| mask & (1 << b) != 0).collect())
}

/// Decodes a PV IPI / PV flush hypercall. `Err(status)` is the result to
/// return to the guest as is.
pub fn decode<M: GuestRead>(input: &Input<'_>, mem: &M) -> Result<Call, u16> {
    let ctl = input.control;
    if ctl & CTL_RESERVED != 0 {
        return Err(status::INVALID_HYPERCALL_INPUT);
    }
    let call = (ctl & 0xFFFF) as u16;
    let fast = ctl & CTL_FAST != 0;
    let var_cnt = (ctl >> 17) & 0x3FF;
    let rep_count = ((ctl >> 32) & 0xFFF) as u16;
    let rep_start = (ctl >> 48) & 0xFFF;
    if !fast && (input.rdx % 8 != 0) {
        return Err(status::INVALID_ALIGNMENT);
    }
    let fast_words = fast.then(|| {
        let mut w = [0u64; 14];
        w[0] = input.rdx;
        w[1] = input.r8;
        for (i, x) in input.xmm.iter().enumerate() {
            w[2 + 2 * i] = *x as u64;
            w[3 + 2 * i] = (*x >> 64) as u64;
        }
        w
    });
    let w = Words {
        fast: fast_words,
        mem,
        gpa: input.rdx,
    };
    let is_rep = matches!(call, code::FLUSH_LIST | code::FLUSH_LIST_EX);
    let known = matches!(
        call,
        code::FLUSH_SPACE
            | code::FLUSH_LIST
            | code::SEND_IPI
            | code::FLUSH_SPACE_EX
            | code::FLUSH_LIST_EX
            | code::SEND_IPI_EX
    );
    if !known {
        return Err(status::INVALID_HYPERCALL_CODE);
    }
    // KVM kvm_hv_hypercall: a rep call needs rep_count > 0 and rep_start
    // within it; a simple call needs both 0.
    if is_rep {
        if rep_count == 0 || rep_start != 0 {
            return Err(status::INVALID_HYPERCALL_INPUT);
        }
    } else if rep_count != 0 || rep_start != 0 {
        return Err(status::INVALID_HYPERCALL_INPUT);
    }
    let is_ex = matches!(
        call,
        code::FLUSH_SPACE_EX | code::FLUSH_LIST_EX | code::SEND_IPI_EX
    );
    if !is_ex && var_cnt != 0 {
        return Err(status::INVALID_HYPERCALL_INPUT);
    }
    // The whole input must stay in one page.
    if !fast {
        let words = match call {
            code::SEND_IPI => 2,
            code::SEND_IPI_EX => 3 + var_cnt,
            code::FLUSH_SPACE => 3,
            code::FLUSH_LIST => 3 + u64::from(rep_count),
            _ => 4 + var_cnt + if is_rep { u64::from(rep_count) } else { 0 },
        };
        if (input.rdx % PAGE) + words * 8 > PAGE {
            return Err(status::INVALID_ALIGNMENT);
        }
    }
    match call {
        code::SEND_IPI | code::SEND_IPI_EX => {
            let vector = w.get(0)? & 0xFFFF_FFFF;
            if !(IPI_VECTOR_MIN..=IPI_VECTOR_MAX).contains(&vector) {
                return Err(status::INVALID_HYPERCALL_INPUT);
            }
            let targets = if call == code::SEND_IPI {
                mask_targets(w.get(1)?)
            } else {
                vpset(&w, 1, var_cnt)?
            };
            Ok(Call::SendIpi {
                vector: vector as u8,
                targets,
            })
        }
        _ => {
            let flags = w.get(1)?;
            let targets = if flags & FLUSH_ALL_PROCESSORS != 0 {
                Targets::All
            } else if is_ex {
                vpset(&w, 2, var_cnt)?
            } else {
                match w.get(2)? {
                    // KVM: an empty mask without ALL_PROCESSORS means all.
                    0 => Targets::All,
                    m => mask_targets(m),
                }
            };
            Ok(Call::Flush {
                targets,
                reps: rep_count,
            })
        }
    }
}

/// The hypercall result in RAX: status, reps completed in bits 43:32.
pub fn result(status: u16, reps: u16) -> u64 {
    u64::from(status) | (u64::from(reps) << 32)
}

/// Partition-wide MSR state.
#[derive(Debug, Default)]
pub struct Partition {
    /// HV_X64_MSR_GUEST_OS_ID.
    pub guest_os_id: u64,
    /// HV_X64_MSR_HYPERCALL.
    pub hypercall: u64,
}

/// What the VMM must do after a synthetic MSR write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsrEffect {
    /// Nothing more.
    None,
    /// Write the hypercall stub into this page.
    WriteHypercallPage(u64),
    /// The VP assist page changed.
    AssistPage,
    /// An x2APIC register write (EOI 0x80B, ICR 0x830, TPR 0x808).
    Apic(u32, u64),
}

/// Per-VP MSR state.
#[derive(Debug, Default)]
pub struct Vp {
    /// VP index.
    pub index: u32,
    /// HV_X64_MSR_VP_ASSIST_PAGE.
    pub assist: u64,
}

/// Reserved bits of the page MSRs (bits 11:1 except HYPERCALL's lock bit).
const HYPERCALL_RESERVED: u64 = 0xFFC;
const ASSIST_RESERVED: u64 = 0xFFE;

impl Vp {
    /// The VP assist page GPA when enabled.
    pub fn assist_page(&self) -> Option<u64> {
        (self.assist & 1 != 0).then_some(self.assist & !0xFFF)
    }

    /// Reads a synthetic MSR. `None`: #GP.
    pub fn read(&self, p: &Partition, msr: u32) -> Option<u64> {
        match msr {
            HV_X64_MSR_GUEST_OS_ID => Some(p.guest_os_id),
            HV_X64_MSR_HYPERCALL => Some(p.hypercall),
            HV_X64_MSR_VP_INDEX => Some(u64::from(self.index)),
            HV_X64_MSR_VP_ASSIST_PAGE => Some(self.assist),
            _ => None,
        }
    }

    /// Writes a synthetic MSR. `None`: #GP.
    pub fn write(&mut self, p: &mut Partition, msr: u32, v: u64) -> Option<MsrEffect> {
        match msr {
            HV_X64_MSR_GUEST_OS_ID => {
                p.guest_os_id = v;
                if v == 0 {
                    p.hypercall &= !1;
                }
                Some(MsrEffect::None)
            }
            HV_X64_MSR_HYPERCALL => {
                if v & HYPERCALL_RESERVED != 0 {
                    return None;
                }
                // KVM: locked stays locked; ignored while GUEST_OS_ID is 0.
                if p.hypercall & 2 != 0 || p.guest_os_id == 0 {
                    return Some(MsrEffect::None);
                }
                p.hypercall = v;
                Some(if v & 1 != 0 {
                    MsrEffect::WriteHypercallPage(v & !0xFFF)
                } else {
                    MsrEffect::None
                })
            }
            HV_X64_MSR_VP_ASSIST_PAGE => {
                if v & ASSIST_RESERVED != 0 {
                    return None;
                }
                self.assist = v;
                Some(MsrEffect::AssistPage)
            }
            HV_X64_MSR_EOI => Some(MsrEffect::Apic(0x80B, v)),
            HV_X64_MSR_ICR => Some(MsrEffect::Apic(0x830, v)),
            HV_X64_MSR_TPR => Some(MsrEffect::Apic(0x808, v)),
            _ => None,
        }
    }
}

/// The Hyper-V CPUID leaves 0x40000000..=0x40000006 for `vcpus` vCPUs in
/// the userspace-irqchip configuration.
pub fn cpuid_leaves(vcpus: u32) -> Vec<Leaf> {
    let l = |function, eax, ebx, ecx, edx| Leaf {
        function,
        index: 0,
        eax,
        ebx,
        ecx,
        edx,
    };
    // "Microsoft Hv"
    let vendor = (0x7263_694D, 0x666F_736F, 0x7648_2074);
    // Privileges: APIC access MSRs (4), HYPERCALL (5), VP_INDEX (6).
    let privileges = (1 << 4) | (1 << 5) | (1 << 6);
    // EDX: XMM hypercall input (4).
    let features_edx = 1 << 4;
    // Hints: REMOTE_TLB_FLUSH (2), APIC_ACCESS_RECOMMENDED (3),
    // RELAXED_TIMING (5), CLUSTER_IPI (10), EX_PROCESSOR_MASKS (11) once
    // a VP index is >= 64.
    let mut hints = (1 << 2) | (1 << 3) | (1 << 5) | (1 << 10);
    if vcpus > 64 {
        hints |= 1 << 11;
    }
    vec![
        l(0x4000_0000, 0x4000_0006, vendor.0, vendor.1, vendor.2),
        l(0x4000_0001, 0x3123_7648, 0, 0, 0),
        l(0x4000_0002, 0x3839, 0x000A_0000, 0, 0),
        l(0x4000_0003, privileges, 0, 0, features_edx),
        l(0x4000_0004, hints, 0xFFFF_FFFF, 0, 0),
        l(0x4000_0005, vcpus, vcpus, 0, 0),
        l(0x4000_0006, 0, 0, 0, 0),
    ]
}

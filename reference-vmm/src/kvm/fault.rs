//! What a guest was executing when KVM gave up on it: the instruction
//! bytes (from KVM's emulation-failure report, or read from guest memory
//! through `KVM_TRANSLATE`) and their disassembly, for error messages.

use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// `kvm_run.emulation_failure.flags`: the instruction bytes are valid.
const KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES: u64 = 1;
/// Longest x86 instruction.
const MAX_INSN: usize = 15;
/// CR0.PE.
const CR0_PE: u64 = 1;

/// The bytes KVM put in an emulation-failure exit (`data[0]` = flags,
/// then `insn_size` and up to 15 bytes; KVM
/// `prepare_emulation_failure_exit`).
pub fn reported_bytes(data: &[u64]) -> Option<Vec<u8>> {
    let flags = *data.first()?;
    if flags & KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES == 0 || data.len() < 3 {
        return None;
    }
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&data[1].to_le_bytes());
    raw[8..].copy_from_slice(&data[2].to_le_bytes());
    let size = usize::from(raw[0]).min(MAX_INSN);
    (size > 0).then(|| raw[1..=size].to_vec())
}

/// Disassembles `bytes` (the first instruction) for `bitness` (feature
/// `disasm`).
#[cfg(feature = "disasm")]
pub fn disassemble(bytes: &[u8], bitness: u32, ip: u64) -> String {
    use iced_x86::{Decoder, DecoderOptions, Formatter, IntelFormatter};
    let mut d = Decoder::with_ip(bitness, bytes, ip, DecoderOptions::NONE);
    let insn = d.decode();
    if insn.is_invalid() {
        return "(undecodable)".into();
    }
    let mut out = String::new();
    IntelFormatter::new().format(&insn, &mut out);
    out
}

/// Without the `disasm` feature: the mode to decode `bytes` in, and how
/// to get them decoded.
#[cfg(not(feature = "disasm"))]
pub fn disassemble(_bytes: &[u8], bitness: u32, _ip: u64) -> String {
    format!("{bitness}-bit code; build with `--features disasm` to decode it")
}

/// `" instruction <bytes> (<disassembly>)"` for a vCPU that stopped on an
/// emulation failure; empty when nothing can be read.
pub fn describe_instruction(fd: &VcpuFd, mem: &GuestMemoryMmap, data: &[u64]) -> String {
    let (Ok(regs), Ok(sregs)) = (fd.get_regs(), fd.get_sregs()) else {
        return String::new();
    };
    let bitness = if crate::kvm::in_64bit_mode(&sregs) {
        64
    } else if sregs.cr0 & CR0_PE != 0 && sregs.cs.db != 0 {
        32
    } else {
        16
    };
    let linear = sregs.cs.base.wrapping_add(regs.rip);
    let bytes = reported_bytes(data).or_else(|| {
        let gpa = fd
            .translate_gva(linear)
            .ok()
            .filter(|t| t.valid != 0)?
            .physical_address;
        let mut b = [0u8; MAX_INSN];
        // Up to the end of the page only: the next one may not be mapped.
        let n = (MAX_INSN as u64).min(0x1000 - (gpa & 0xFFF)) as usize;
        mem.read_slice(&mut b[..n], GuestAddress(gpa)).ok()?;
        Some(b[..n].to_vec())
    });
    match bytes {
        Some(b) => format!(
            "; instruction at {linear:#x}: {} ({})",
            b.iter()
                .map(|x| format!("{x:02x}"))
                .collect::<Vec<_>>()
                .join(" "),
            disassemble(&b, bitness, regs.rip)
        ),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_reported_bytes() {
        // lock cmpxchg16b [rdi]: f0 48 0f c7 0f
        let mut raw = [0u8; 16];
        raw[0] = 5;
        raw[1..6].copy_from_slice(&[0xf0, 0x48, 0x0f, 0xc7, 0x0f]);
        let data = [
            1,
            u64::from_le_bytes(raw[..8].try_into().unwrap()),
            u64::from_le_bytes(raw[8..].try_into().unwrap()),
        ];
        let b = reported_bytes(&data).unwrap();
        assert_eq!(b, [0xf0, 0x48, 0x0f, 0xc7, 0x0f]);
        #[cfg(feature = "disasm")]
        assert_eq!(disassemble(&b, 64, 0), "lock cmpxchg16b [rdi]");
        #[cfg(not(feature = "disasm"))]
        assert!(disassemble(&b, 64, 0).starts_with("64-bit code"));
        assert_eq!(reported_bytes(&[0, data[1], data[2]]), None, "no flag");
        assert_eq!(reported_bytes(&[1]), None, "short");
    }
}

//! Run-time assembly of guest code with iced-x86's code assembler.

use iced_x86::BlockEncoderOptions;
use iced_x86::code_asm::{CodeAssembler, CodeLabel};

/// Errors of guest program construction.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The assembler refused the code.
    #[error("assembling guest code: {0}")]
    Asm(#[from] iced_x86::IcedError),
    /// hv-enlightenments' encoder could not build a hypercall the program
    /// needs.
    #[error("building a guest hypercall: {0}")]
    Encode(#[from] hv_enlightenments::hypercall::EncodeError),
}

/// Assembled code and the addresses of the labels asked for.
pub struct Assembled {
    /// Machine code, to be written at the address it was assembled for.
    pub code: Vec<u8>,
    /// Addresses of the requested labels, in the order given.
    pub labels: Vec<u64>,
}

/// Assembles `a` for address `ip` and resolves `labels`.
pub fn assemble(a: &mut CodeAssembler, ip: u64, labels: &[CodeLabel]) -> Result<Assembled, Error> {
    let r = a.assemble_options(ip, BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS)?;
    let labels = labels
        .iter()
        .map(|l| r.label_ip(l))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Assembled {
        code: r.inner.code_buffer,
        labels,
    })
}

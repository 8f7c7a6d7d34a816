//! Built-in guests, assembled at run time.

pub mod abi;
pub mod asm;
pub mod boot;
pub mod hostile;
pub mod kernel;
pub mod layout;
pub mod scenarios;
pub mod user;

#[cfg(test)]
mod tests {
    use crate::guest::layout::{KERNEL_CODE_SIZE, USER_CODE_SIZE};
    use crate::scenario::Scenario;

    #[test]
    fn kernel_and_programs_assemble_and_fit() {
        let k = super::kernel::build().unwrap();
        assert!(k.code.len() as u64 <= KERNEL_CODE_SIZE);
        assert_eq!(
            super::abi::HYPERCALL_TRAP.stub().as_bytes(),
            [0xE6, 0xE0, 0xC3]
        );
        assert_eq!(
            super::abi::HYPERCALL_TRAP.io_port(),
            Some(super::abi::HYPERCALL_PORT)
        );
        for n in [1, 2, 8, 64, 288, 1024] {
            for s in Scenario::ALL {
                if s.supports(n) {
                    let p = s.program(n).unwrap();
                    assert!(
                        p.user_code.len() as u64 <= USER_CODE_SIZE,
                        "{} at {n}",
                        s.name()
                    );
                }
            }
        }
        let h = super::hostile::program().unwrap();
        assert!(
            (h.user_code.len() as u64)
                < super::hostile::INPUT_BASE - crate::guest::layout::USER_CODE,
            "hostile code overlaps its input pages"
        );
    }
}

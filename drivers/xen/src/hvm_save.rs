//! HVM save records (`xen/include/public/hvm/save.h`, `arch-x86/hvm/save.h`): the format of
//! `XEN_DOMCTL_gethvmcontext`/`sethvmcontext`, which is how a toolstack sets the initial
//! register state of a PVH vCPU.
//!
//! A context is a sequence of records, each a [`SaveDescriptor`] followed by `length` bytes,
//! starting with a HEADER and ending with an END record. Xen's loader rejects a context
//! whose HEADER does not match the running hypervisor, so a toolstack copies the HEADER out
//! of `gethvmcontext` rather than making one up (`xg_dom_x86.c: vcpu_hvm`).

use alloc::vec::Vec;
use core::mem::size_of;

/// `HVM_SAVE_CODE(END)`.
pub const TYPE_END: u16 = 0;
/// `HVM_SAVE_CODE(HEADER)`.
pub const TYPE_HEADER: u16 = 1;
/// `HVM_SAVE_CODE(CPU)`.
pub const TYPE_CPU: u16 = 2;
/// `HVM_SAVE_CODE(MTRR)`.
pub const TYPE_MTRR: u16 = 14;

/// `HVM_FILE_MAGIC`.
pub const HEADER_MAGIC: u32 = 0x5438_1286;
/// `HVM_SAVE_LENGTH(HEADER)`.
pub const HEADER_LEN: usize = 24;
/// `HVM_SAVE_LENGTH(MTRR)`.
pub const MTRR_LEN: usize = 240;
/// Offset of `msr_mtrr_def_type` in `struct hvm_hw_mtrr`.
pub const MTRR_DEF_TYPE_OFFSET: usize = 232;
/// `MTRR_TYPE_WRBACK | MTRR_DEF_TYPE_ENABLE`: all memory write-back, MTRRs on.
pub const MTRR_DEF_TYPE_WB_ENABLED: u64 = 6 | 1 << 11;

/// `struct hvm_save_descriptor` (8 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SaveDescriptor {
    pub typecode: u16,
    /// The vCPU (or other instance) the record is for.
    pub instance: u16,
    pub length: u32,
}

/// One record of a context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    pub typecode: u16,
    pub instance: u16,
    pub data: &'a [u8],
}

/// A context that does not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveFormatError {
    /// A descriptor or its data runs past the end of the buffer.
    Truncated { offset: usize },
    /// The first record is not a HEADER with Xen's magic.
    BadHeader,
    /// A record has the wrong length for its type.
    BadLength { typecode: u16, length: u32 },
}

/// Iterates over the records of a context, stopping after END (or at the end of the data).
pub fn records(context: &[u8]) -> impl Iterator<Item = Result<Record<'_>, SaveFormatError>> {
    let mut offset = 0usize;
    let mut done = false;
    core::iter::from_fn(move || {
        if done || offset >= context.len() {
            return None;
        }
        let desc_end = offset + size_of::<SaveDescriptor>();
        let Some(d) = context.get(offset..desc_end) else {
            done = true;
            return Some(Err(SaveFormatError::Truncated { offset }));
        };
        let typecode = u16::from_le_bytes([d[0], d[1]]);
        let instance = u16::from_le_bytes([d[2], d[3]]);
        let length = u32::from_le_bytes([d[4], d[5], d[6], d[7]]);
        let Some(data) = context.get(desc_end..desc_end.saturating_add(length as usize)) else {
            done = true;
            return Some(Err(SaveFormatError::Truncated { offset }));
        };
        offset = desc_end + data.len();
        done = typecode == TYPE_END;
        Some(Ok(Record {
            typecode,
            instance,
            data,
        }))
    })
}

/// The data of record `typecode`/`instance`, if present.
pub fn find_record(context: &[u8], typecode: u16, instance: u16) -> Option<&[u8]> {
    records(context)
        .map_while(Result::ok)
        .find(|r| r.typecode == typecode && r.instance == instance)
        .map(|r| r.data)
}

/// The HEADER record (descriptor included) at the start of `context`, checked.
pub fn header_record(context: &[u8]) -> Result<&[u8], SaveFormatError> {
    let first = records(context)
        .next()
        .ok_or(SaveFormatError::BadHeader)??;
    if first.typecode != TYPE_HEADER {
        return Err(SaveFormatError::BadHeader);
    }
    if first.data.len() != HEADER_LEN {
        return Err(SaveFormatError::BadLength {
            typecode: TYPE_HEADER,
            length: first.data.len() as u32,
        });
    }
    if first.data[..4] != HEADER_MAGIC.to_le_bytes() {
        return Err(SaveFormatError::BadHeader);
    }
    Ok(&context[..size_of::<SaveDescriptor>() + HEADER_LEN])
}

/// Builds a context for `sethvmcontext`: the given HEADER record, then records, then END.
pub struct ContextWriter {
    bytes: Vec<u8>,
}

impl ContextWriter {
    /// Starts from a HEADER record (descriptor included) taken from [`header_record`].
    pub fn new(header: &[u8]) -> Self {
        ContextWriter {
            bytes: header.to_vec(),
        }
    }

    /// Appends one record.
    pub fn record(&mut self, typecode: u16, instance: u16, data: &[u8]) -> &mut Self {
        self.bytes.extend_from_slice(&typecode.to_le_bytes());
        self.bytes.extend_from_slice(&instance.to_le_bytes());
        self.bytes
            .extend_from_slice(&(data.len() as u32).to_le_bytes());
        self.bytes.extend_from_slice(data);
        self
    }

    /// Appends the END record and returns the context.
    pub fn finish(mut self) -> Vec<u8> {
        self.record(TYPE_END, 0, &[]);
        self.bytes
    }
}

/// `struct hvm_hw_cpu` (1032 bytes): one vCPU's registers.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HvmHwCpu {
    pub fpu_regs: [u8; 512],
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rbp: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rsp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rip: u64,
    pub rflags: u64,
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub dr0: u64,
    pub dr1: u64,
    pub dr2: u64,
    pub dr3: u64,
    pub dr6: u64,
    pub dr7: u64,
    pub cs_sel: u32,
    pub ds_sel: u32,
    pub es_sel: u32,
    pub fs_sel: u32,
    pub gs_sel: u32,
    pub ss_sel: u32,
    pub tr_sel: u32,
    pub ldtr_sel: u32,
    pub cs_limit: u32,
    pub ds_limit: u32,
    pub es_limit: u32,
    pub fs_limit: u32,
    pub gs_limit: u32,
    pub ss_limit: u32,
    pub tr_limit: u32,
    pub ldtr_limit: u32,
    pub idtr_limit: u32,
    pub gdtr_limit: u32,
    pub cs_base: u64,
    pub ds_base: u64,
    pub es_base: u64,
    pub fs_base: u64,
    pub gs_base: u64,
    pub ss_base: u64,
    pub tr_base: u64,
    pub ldtr_base: u64,
    pub idtr_base: u64,
    pub gdtr_base: u64,
    pub cs_arbytes: u32,
    pub ds_arbytes: u32,
    pub es_arbytes: u32,
    pub fs_arbytes: u32,
    pub gs_arbytes: u32,
    pub ss_arbytes: u32,
    pub tr_arbytes: u32,
    pub ldtr_arbytes: u32,
    pub sysenter_cs: u64,
    pub sysenter_esp: u64,
    pub sysenter_eip: u64,
    pub shadow_gs: u64,
    pub msr_flags: u64,
    pub msr_lstar: u64,
    pub msr_star: u64,
    pub msr_cstar: u64,
    pub msr_syscall_mask: u64,
    pub msr_efer: u64,
    pub msr_tsc_aux: u64,
    pub tsc: u64,
    pub pending_event: u32,
    pub error_code: u32,
    pub flags: u32,
    pub pad0: u32,
}

/// `HVM_SAVE_LENGTH(CPU)`.
pub const CPU_LEN: usize = size_of::<HvmHwCpu>();

impl HvmHwCpu {
    /// All registers zero.
    pub fn zeroed() -> Self {
        HvmHwCpu::from_bytes(&[0; CPU_LEN]).unwrap_or_else(|| unreachable!())
    }

    /// The record as Xen lays it out (little-endian x86).
    pub fn to_bytes(&self) -> [u8; CPU_LEN] {
        let mut out = [0u8; CPU_LEN];
        // SAFETY: `HvmHwCpu` is `repr(C)` of integers and byte arrays with no padding (its
        // size, 1032, is the sum of its fields, checked in the tests), so every byte is
        // initialised and may be read as `u8`.
        let bytes: &[u8; CPU_LEN] = unsafe { &*(self as *const Self as *const [u8; CPU_LEN]) };
        out.copy_from_slice(bytes);
        out
    }

    /// Parses a CPU record; `None` if it is not exactly [`CPU_LEN`] bytes.
    pub fn from_bytes(data: &[u8]) -> Option<Self> {
        if data.len() != CPU_LEN {
            return None;
        }
        let mut cpu = core::mem::MaybeUninit::<HvmHwCpu>::uninit();
        // SAFETY: `data` has exactly `size_of::<HvmHwCpu>()` bytes, `cpu` is that big, and
        // they do not overlap.
        unsafe {
            core::ptr::copy_nonoverlapping(data.as_ptr(), cpu.as_mut_ptr() as *mut u8, CPU_LEN)
        };
        // SAFETY: every byte was written above and every bit pattern is a valid `HvmHwCpu`
        // (integers and byte arrays only, no padding).
        Some(unsafe { cpu.assume_init() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::offset_of;

    #[test]
    fn cpu_record_layout_matches_xen_417() {
        assert_eq!(size_of::<SaveDescriptor>(), 8);
        assert_eq!(CPU_LEN, 1032);
        assert_eq!(offset_of!(HvmHwCpu, rbx), 520);
        assert_eq!(offset_of!(HvmHwCpu, rip), 640);
        assert_eq!(offset_of!(HvmHwCpu, rflags), 648);
        assert_eq!(offset_of!(HvmHwCpu, cr0), 656);
        assert_eq!(offset_of!(HvmHwCpu, cr4), 680);
        assert_eq!(offset_of!(HvmHwCpu, dr6), 720);
        assert_eq!(offset_of!(HvmHwCpu, dr7), 728);
        assert_eq!(offset_of!(HvmHwCpu, cs_sel), 736);
        assert_eq!(offset_of!(HvmHwCpu, cs_limit), 768);
        assert_eq!(offset_of!(HvmHwCpu, ss_limit), 788);
        assert_eq!(offset_of!(HvmHwCpu, tr_limit), 792);
        assert_eq!(offset_of!(HvmHwCpu, cs_base), 808);
        assert_eq!(offset_of!(HvmHwCpu, tr_base), 856);
        assert_eq!(offset_of!(HvmHwCpu, cs_arbytes), 888);
        assert_eq!(offset_of!(HvmHwCpu, ds_arbytes), 892);
        assert_eq!(offset_of!(HvmHwCpu, es_arbytes), 896);
        assert_eq!(offset_of!(HvmHwCpu, ss_arbytes), 908);
        assert_eq!(offset_of!(HvmHwCpu, tr_arbytes), 912);
        assert_eq!(offset_of!(HvmHwCpu, msr_efer), 992);
        assert_eq!(offset_of!(HvmHwCpu, flags), 1024);
    }

    #[test]
    fn cpu_record_round_trips_through_bytes() {
        let mut cpu = HvmHwCpu::zeroed();
        cpu.rip = 0x0100_0000;
        cpu.rbx = 0x1234_5000;
        cpu.tr_arbytes = 0x8b;
        let bytes = cpu.to_bytes();
        assert_eq!(bytes[640..648], 0x0100_0000u64.to_le_bytes());
        assert_eq!(bytes[912..916], 0x8bu32.to_le_bytes());
        assert_eq!(HvmHwCpu::from_bytes(&bytes), Some(cpu));
        assert_eq!(HvmHwCpu::from_bytes(&bytes[..1031]), None);
    }

    fn header() -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(&TYPE_HEADER.to_le_bytes());
        h.extend_from_slice(&0u16.to_le_bytes());
        h.extend_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        h.extend_from_slice(&HEADER_MAGIC.to_le_bytes());
        h.extend_from_slice(&[0; HEADER_LEN - 4]);
        h
    }

    #[test]
    fn writer_and_parser_agree() {
        let mut w = ContextWriter::new(&header());
        w.record(TYPE_MTRR, 1, &[7; MTRR_LEN]);
        let ctx = w.finish();
        assert_eq!(header_record(&ctx).unwrap(), &header()[..]);
        let all: Vec<_> = records(&ctx).collect::<Result<_, _>>().unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all[2].typecode, TYPE_END);
        assert_eq!(find_record(&ctx, TYPE_MTRR, 1), Some(&[7u8; MTRR_LEN][..]));
        assert_eq!(find_record(&ctx, TYPE_MTRR, 0), None);
    }

    #[test]
    fn truncated_and_headerless_contexts_are_refused() {
        let ctx = header();
        assert_eq!(
            records(&ctx[..20]).next(),
            Some(Err(SaveFormatError::Truncated { offset: 0 }))
        );
        let mut w = ContextWriter::new(&[]);
        w.record(TYPE_CPU, 0, &[0; CPU_LEN]);
        assert_eq!(header_record(&w.finish()), Err(SaveFormatError::BadHeader));
        let mut bad_magic = header();
        bad_magic[8] ^= 1;
        assert_eq!(header_record(&bad_magic), Err(SaveFormatError::BadHeader));
    }
}

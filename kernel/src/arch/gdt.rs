//! The kernel's GDT and TSS. The TSS exists for its interrupt stack table: a double fault
//! (often a stack overflow) runs on a stack of its own so that it can still be reported.

use spin::Once;
use x86_64::instructions::segmentation::{Segment, CS, DS, ES, SS};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::tss::TaskStateSegment;
use x86_64::VirtAddr;

/// IST slot (1-based in the IDT, 0-based in the TSS) used by the double-fault handler.
pub const DOUBLE_FAULT_IST: u16 = 1;
const FAULT_STACK_SIZE: usize = 16 * 1024;

#[repr(align(16))]
struct FaultStack(#[allow(dead_code)] [u8; FAULT_STACK_SIZE]);
static mut FAULT_STACK: FaultStack = FaultStack([0; FAULT_STACK_SIZE]);

static TSS: Once<TaskStateSegment> = Once::new();
static GDT: Once<(
    GlobalDescriptorTable,
    SegmentSelector,
    SegmentSelector,
    SegmentSelector,
)> = Once::new();

/// The kernel code selector, for IDT entries.
pub fn code_selector() -> u16 {
    GDT.get().map_or(0x08, |g| g.1 .0)
}

pub fn init() {
    let tss = TSS.call_once(|| {
        let mut tss = TaskStateSegment::new();
        let top = VirtAddr::from_ptr(&raw const FAULT_STACK) + FAULT_STACK_SIZE as u64;
        tss.interrupt_stack_table[usize::from(DOUBLE_FAULT_IST - 1)] = top;
        tss
    });
    let (gdt, code, data, tss_sel) = GDT.call_once(|| {
        let mut gdt = GlobalDescriptorTable::new();
        let code = gdt.append(Descriptor::kernel_code_segment());
        let data = gdt.append(Descriptor::kernel_data_segment());
        let tss_sel = gdt.append(Descriptor::tss_segment(tss));
        (gdt, code, data, tss_sel)
    });
    gdt.load();
    // SAFETY: the selectors index the GDT just loaded: `code` a 64-bit code segment, `data`
    // a data segment (for this and the next three), `tss_sel` the TSS.
    unsafe { CS::set_reg(*code) };
    // SAFETY: as above.
    unsafe { DS::set_reg(*data) };
    // SAFETY: as above.
    unsafe { ES::set_reg(*data) };
    // SAFETY: as above.
    unsafe { SS::set_reg(*data) };
    // SAFETY: as above.
    unsafe { load_tss(*tss_sel) };
}

//! The interrupt descriptor table and the common trap path.
//!
//! Each of the 256 vectors has a 16-byte assembly stub that pushes a uniform frame (a dummy
//! error code where the CPU pushes none, then the vector) and jumps to `trap_common`, which
//! saves the general registers and calls [`trap_dispatch`]. Exceptions print everything a
//! person needs to find the fault and end the boot through the panic path; interrupt vectors
//! go to handlers registered with [`set_handler`].

use core::arch::global_asm;
use core::sync::atomic::{AtomicUsize, Ordering};

use super::gdt;

/// First vector available to devices and timers (0..32 are CPU exceptions).
pub const FIRST_IRQ_VECTOR: u8 = 32;
/// The local APIC's spurious-interrupt vector: never acknowledged.
pub const SPURIOUS_VECTOR: u8 = 0xff;

/// Registers saved by the trap path, in stack order.
#[repr(C)]
#[derive(Debug)]
pub struct TrapFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

global_asm!(
    r#"
    .section .text
    .balign 16
    .global trap_stubs
trap_stubs:
    .set vector, 0
    .rept 256
    .balign 16
    .if (vector == 8) || (vector == 10) || (vector == 11) || (vector == 12) || (vector == 13) || (vector == 14) || (vector == 17) || (vector == 21) || (vector == 29) || (vector == 30)
    .else
    pushq $0
    .endif
    pushq $vector
    jmp trap_common
    .set vector, vector + 1
    .endr

trap_common:
    pushq %rax
    pushq %rbx
    pushq %rcx
    pushq %rdx
    pushq %rsi
    pushq %rdi
    pushq %rbp
    pushq %r8
    pushq %r9
    pushq %r10
    pushq %r11
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, %rdi
    cld
    call {dispatch}
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %r11
    popq %r10
    popq %r9
    popq %r8
    popq %rbp
    popq %rdi
    popq %rsi
    popq %rdx
    popq %rcx
    popq %rbx
    popq %rax
    addq $16, %rsp
    iretq
    "#,
    dispatch = sym trap_dispatch,
    options(att_syntax)
);

extern "C" {
    static trap_stubs: [u8; 256 * 16];
}

#[repr(C, packed)]
struct IdtPointer {
    limit: u16,
    base: u64,
}

#[repr(C)]
struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    type_attr: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

#[repr(C, align(16))]
struct Idt([Gate; 256]);

static IDT: spin::Once<Idt> = spin::Once::new();

/// An interrupt handler. It runs with interrupts disabled and must be short: wake a task.
pub type Handler = fn(vector: u8);

static HANDLERS: [AtomicUsize; 256] = [const { AtomicUsize::new(0) }; 256];

/// Installs `handler` for `vector` (≥ [`FIRST_IRQ_VECTOR`]).
pub fn set_handler(vector: u8, handler: Handler) {
    if vector >= FIRST_IRQ_VECTOR {
        HANDLERS[usize::from(vector)].store(handler as usize, Ordering::Release);
    }
}

pub fn init() {
    let selector = gdt::code_selector();
    let idt = IDT.call_once(|| {
        let base = (&raw const trap_stubs) as u64;
        Idt(core::array::from_fn(|vector| {
            // The stubs are 16 bytes apart by construction of the assembly above.
            let addr = base + 16 * vector as u64;
            Gate {
                offset_low: addr as u16,
                selector,
                ist: if vector == 8 {
                    gdt::DOUBLE_FAULT_IST as u8
                } else {
                    0
                },
                type_attr: 0x8e, // present, DPL 0, 64-bit interrupt gate
                offset_mid: (addr >> 16) as u16,
                offset_high: (addr >> 32) as u32,
                reserved: 0,
            }
        }))
    });
    let pointer = IdtPointer {
        limit: (core::mem::size_of::<Idt>() - 1) as u16,
        base: idt as *const Idt as u64,
    };
    // SAFETY: the table is 'static and every gate points at a stub above.
    unsafe { core::arch::asm!("lidt [{}]", in(reg) &pointer, options(readonly, nostack)) };
}

const EXCEPTION_NAMES: [&str; 32] = [
    "divide error (#DE)",
    "debug (#DB)",
    "non-maskable interrupt",
    "breakpoint (#BP)",
    "overflow (#OF)",
    "bound range exceeded (#BR)",
    "invalid opcode (#UD)",
    "device not available (#NM)",
    "double fault (#DF)",
    "coprocessor segment overrun",
    "invalid TSS (#TS)",
    "segment not present (#NP)",
    "stack-segment fault (#SS)",
    "general protection fault (#GP)",
    "page fault (#PF)",
    "reserved",
    "x87 floating-point error (#MF)",
    "alignment check (#AC)",
    "machine check (#MC)",
    "SIMD floating-point error (#XM)",
    "virtualization exception (#VE)",
    "control protection (#CP)",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "hypervisor injection (#HV)",
    "VMM communication (#VC)",
    "security exception (#SX)",
    "reserved",
];

extern "C" fn trap_dispatch(frame: &mut TrapFrame) {
    let vector = frame.vector as u8;
    if vector < FIRST_IRQ_VECTOR {
        exception(frame);
    }
    let handler = HANDLERS[usize::from(vector)].load(Ordering::Acquire);
    if handler != 0 {
        // SAFETY: only `set_handler` stores into HANDLERS, and it stores `Handler`s.
        let handler: Handler = unsafe { core::mem::transmute::<usize, Handler>(handler) };
        handler(vector);
    } else if vector != SPURIOUS_VECTOR {
        log::warn!("interrupt on vector {vector:#x} with no handler");
        crate::apic::end_of_interrupt();
    }
    super::resume_past_idle_halt(&mut frame.rip);
}

fn exception(f: &TrapFrame) -> ! {
    let name = EXCEPTION_NAMES[usize::from(f.vector as u8 & 31)];
    let cr2 = x86_64::registers::control::Cr2::read_raw();
    crate::console::emergency_write(format_args!(
        "\nkeel: CPU exception {} {name}, error code {:#x}\n\
         rip {:#018x} cs {:#x} rflags {:#x} rsp {:#018x} ss {:#x} cr2 {cr2:#018x}\n\
         rax {:#018x} rbx {:#018x} rcx {:#018x} rdx {:#018x}\n\
         rsi {:#018x} rdi {:#018x} rbp {:#018x} r8  {:#018x}\n\
         r9  {:#018x} r10 {:#018x} r11 {:#018x} r12 {:#018x}\n\
         r13 {:#018x} r14 {:#018x} r15 {:#018x}\n",
        f.vector,
        f.error_code,
        f.rip,
        f.cs,
        f.rflags,
        f.rsp,
        f.ss,
        f.rax,
        f.rbx,
        f.rcx,
        f.rdx,
        f.rsi,
        f.rdi,
        f.rbp,
        f.r8,
        f.r9,
        f.r10,
        f.r11,
        f.r12,
        f.r13,
        f.r14,
        f.r15
    ));
    let guard = crate::memory::stack_guard_page();
    if (guard..guard + 4096).contains(&cr2) {
        panic!(
            "CPU exception {} ({name}) at rip {:#x}: the kernel stack overflowed into its guard page at {guard:#x}",
            f.vector, f.rip
        );
    }
    panic!("CPU exception {} ({name}) at rip {:#x}", f.vector, f.rip);
}

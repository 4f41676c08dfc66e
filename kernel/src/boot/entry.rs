//! The 32-bit entry points and the trampoline into 64-bit mode.
//!
//! Both protocols enter in 32-bit protected mode with paging off and `ebx` holding the
//! physical address of their information structure:
//! - PVH (Xen's dom0 builder, QEMU `-kernel` without a multiboot header) enters
//!   `pvh_start32`, named by the `XEN_ELFNOTE_PHYS32_ENTRY` note; `ebx` = `hvm_start_info`.
//! - Multiboot 1 (GRUB, iPXE, QEMU `-kernel`) enters `multiboot_start32`, named by the
//!   header's `entry_addr`; `eax` = 0x2BADB002 and `ebx` = the multiboot information.
//!
//! Each entry only records which protocol it was and where the information is; the shared
//! trampoline zeroes `.bss`, identity-maps the low 4 GiB with 2 MiB pages, enables long mode
//! and calls [`super::kernel_entry`] with the protocol and that address. Rust then builds the
//! real page tables (see `memory.rs`); these boot tables only have to last until then.

use core::arch::global_asm;

/// The boot protocol that entered the kernel, passed to Rust in `edi`.
pub const PROTOCOL_PVH: u32 = 1;
/// Multiboot 1 with the right magic in `eax`.
pub const PROTOCOL_MULTIBOOT: u32 = 2;
/// The multiboot entry without the magic: `esi` then carries the wrong `eax`, not an address.
pub const PROTOCOL_MULTIBOOT_BAD_MAGIC: u32 = 3;

/// Size of the boot stack, which stays the kernel's only stack (the executor is cooperative).
pub const BOOT_STACK_SIZE: usize = 256 * 1024;

pvh::xen_elfnote_phys32_entry!(pvh_start32);

extern "C" {
    fn pvh_start32() -> !;
}

global_asm!(
    r#"
    .section .text.boot, "ax"
    .code32
    .global pvh_start32
pvh_start32:
    cli
    cld
    movl %ebx, %esi              /* start info physical address */
    movl ${pvh}, %ebp            /* boot protocol */
    jmp enter_long_mode

    .global multiboot_start32
multiboot_start32:
    cli
    cld
    movl %ebx, %esi              /* multiboot information physical address */
    movl ${multiboot}, %ebp
    cmpl ${multiboot_magic}, %eax
    je enter_long_mode
    movl %eax, %esi              /* report the wrong magic instead of trusting ebx */
    movl ${multiboot_bad_magic}, %ebp
    jmp enter_long_mode

/* In: esi = boot information address, ebp = protocol. Clobbers everything else. */
enter_long_mode:
    /* Zero .bss (it holds the boot stack and page tables). */
    movl $__bss_start, %edi
    movl $__bss_end, %ecx
    subl %edi, %ecx
    shrl $2, %ecx
    xorl %eax, %eax
    rep stosl
    movl $boot_stack_top, %esp

    /* PML4[0] -> PDPT; PDPT[0..4] -> four page directories of 2 MiB pages: 0..4 GiB. */
    movl $boot_pdpt, %eax
    orl $0x3, %eax
    movl %eax, boot_pml4
    movl $boot_pd, %eax
    orl $0x3, %eax
    movl $boot_pdpt, %edi
    movl $4, %ecx
1:  movl %eax, (%edi)
    addl $0x1000, %eax
    addl $8, %edi
    loop 1b
    movl $boot_pd, %edi
    movl $0x83, %eax             /* present, writable, 2 MiB page */
    xorl %edx, %edx
    movl $2048, %ecx
2:  movl %eax, (%edi)
    movl %edx, 4(%edi)
    addl $0x200000, %eax
    adcl $0, %edx
    addl $8, %edi
    loop 2b

    movl %cr4, %eax
    orl $(1 << 5), %eax          /* PAE */
    movl %eax, %cr4
    movl $boot_pml4, %eax
    movl %eax, %cr3
    movl $0xC0000080, %ecx       /* EFER */
    rdmsr
    orl $(1 << 8), %eax          /* long mode enable */
    wrmsr
    movl %cr0, %eax
    orl $((1 << 31) | (1 << 16) | 1), %eax /* paging, write protect, protected mode */
    movl %eax, %cr0
    lgdt boot_gdt_pointer
    ljmp $0x08, $long_mode_entry

    .code64
long_mode_entry:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorw %ax, %ax
    movw %ax, %fs
    movw %ax, %gs
    movq $boot_stack_top, %rsp
    xorl %eax, %eax
    movl %ebp, %edi              /* protocol */
    /* esi already holds the boot information address; the upper half is zero. */
    call {kernel_entry}
3:  hlt
    jmp 3b

    .section .rodata.boot, "a"
    .balign 8
boot_gdt:
    .quad 0
    .quad 0x00af9a000000ffff     /* 0x08: 64-bit code */
    .quad 0x00cf92000000ffff     /* 0x10: data */
boot_gdt_pointer:
    .word boot_gdt_pointer - boot_gdt - 1
    .long boot_gdt

    .section .bss.boot, "aw", @nobits
    .balign 4096
boot_pml4:
    .skip 4096
boot_pdpt:
    .skip 4096
boot_pd:
    .skip 4096 * 4
    .balign 16
boot_stack_bottom:
    .skip {stack_size}
boot_stack_top:
    .global boot_stack_bottom
    .global boot_stack_top
    "#,
    pvh = const PROTOCOL_PVH,
    multiboot = const PROTOCOL_MULTIBOOT,
    multiboot_bad_magic = const PROTOCOL_MULTIBOOT_BAD_MAGIC,
    multiboot_magic = const keel_multiboot::BOOTLOADER_MAGIC,
    stack_size = const BOOT_STACK_SIZE,
    kernel_entry = sym super::kernel_entry,
    options(att_syntax)
);

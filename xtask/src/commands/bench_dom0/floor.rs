//! The floor of the dom0 benchmark: the smallest PVH dom0 there is, written byte by byte.
//!
//! One ELF segment loaded at 1 MiB and an ELF note that gives Xen the 32-bit PVH entry
//! (`XEN_ELFNOTE_PHYS32_ENTRY`, all a PVH image needs). The code installs the hypercall page
//! (CPUID leaf `0x40000002` names the MSR), writes [`FLOOR_READY`] with `console_io` and
//! shuts the domain down with `sched_op`. Xen enters in 32-bit protected mode with paging
//! off, so hypercalls use the 32-bit ABI: the argument registers are `ebx, ecx, edx`.
//!
//! Nothing here can be smaller on Xen's side, so QEMU start → [`FLOOR_READY`] is the time
//! Xen itself takes to come up and start a PVH dom0 with these QEMU and Xen flags.

/// The one line the floor prints.
pub const FLOOR_READY: &str = "keel-floor: ready";

/// Where Xen loads the image (the conventional 1 MiB, as for Keel).
const LOAD: u32 = 0x10_0000;
/// File layout: headers and the note, then the code, the shutdown reason and the message.
const NOTE_OFFSET: u32 = 0xb0;
const CODE_OFFSET: u32 = 0x100;
const REASON_OFFSET: u32 = 0x1f0;
const MESSAGE_OFFSET: u32 = 0x200;
/// Memory after the file: the hypercall page and the top of a small stack.
const HYPERCALL_PAGE: u32 = LOAD + 0x1000;
const STACK_TOP: u32 = LOAD + 0x3000;
const MEMORY_SIZE: u64 = 0x3000;

/// Hypercall numbers and sub-commands (`xen.h`, `sched.h`).
const HYPERCALL_CONSOLE_IO: u32 = 18;
const HYPERCALL_SCHED_OP: u32 = 29;
const CONSOLEIO_WRITE: u32 = 0;
const SCHEDOP_SHUTDOWN: u32 = 2;
const SHUTDOWN_POWEROFF: u32 = 0;
/// `XEN_ELFNOTE_PHYS32_ENTRY`.
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// 32-bit x86 instructions, encoded by hand.
mod x86 {
    pub const EAX: u8 = 0;
    pub const ECX: u8 = 1;
    pub const EDX: u8 = 2;
    pub const EBX: u8 = 3;
    pub const ESP: u8 = 4;

    /// `mov reg, imm32`.
    pub fn mov_imm(code: &mut Vec<u8>, reg: u8, imm: u32) {
        code.push(0xb8 + reg);
        code.extend_from_slice(&imm.to_le_bytes());
    }
    pub const CPUID: [u8; 2] = [0x0f, 0xa2];
    pub const WRMSR: [u8; 2] = [0x0f, 0x30];
    /// `mov ecx, ebx`.
    pub const MOV_ECX_EBX: [u8; 2] = [0x89, 0xd9];
    /// `xor edx, edx`.
    pub const XOR_EDX_EDX: [u8; 2] = [0x31, 0xd2];
    /// `call eax`.
    pub const CALL_EAX: [u8; 2] = [0xff, 0xd0];
    /// `cli; hlt; jmp` back to the `hlt`.
    pub const HALT_FOREVER: [u8; 4] = [0xfa, 0xf4, 0xeb, 0xfd];
}

fn hypercall(code: &mut Vec<u8>, op: u32, args: [u32; 3]) {
    use x86::*;
    for (reg, value) in [EBX, ECX, EDX].into_iter().zip(args) {
        mov_imm(code, reg, value);
    }
    mov_imm(code, EAX, HYPERCALL_PAGE + 32 * op);
    code.extend_from_slice(&CALL_EAX);
}

/// The machine code at the entry point.
fn code() -> Vec<u8> {
    use x86::*;
    let mut code = Vec::new();
    mov_imm(&mut code, ESP, STACK_TOP);
    // The hypercall MSR from Xen's leaf base+2 (base 0x40000000: no Viridian for dom0).
    mov_imm(&mut code, EAX, 0x4000_0002);
    code.extend_from_slice(&CPUID);
    code.extend_from_slice(&MOV_ECX_EBX);
    mov_imm(&mut code, EAX, HYPERCALL_PAGE);
    code.extend_from_slice(&XOR_EDX_EDX);
    code.extend_from_slice(&WRMSR);
    let message_len = FLOOR_READY.len() as u32 + 1;
    hypercall(
        &mut code,
        HYPERCALL_CONSOLE_IO,
        [CONSOLEIO_WRITE, message_len, LOAD + MESSAGE_OFFSET],
    );
    hypercall(
        &mut code,
        HYPERCALL_SCHED_OP,
        [SCHEDOP_SHUTDOWN, LOAD + REASON_OFFSET, 0],
    );
    code.extend_from_slice(&HALT_FOREVER);
    code
}

fn put(image: &mut Vec<u8>, offset: u32, bytes: &[u8]) {
    let start = offset as usize;
    if image.len() < start + bytes.len() {
        image.resize(start + bytes.len(), 0);
    }
    image[start..start + bytes.len()].copy_from_slice(bytes);
}

/// The whole ELF64 file.
pub fn image() -> Vec<u8> {
    let mut message = FLOOR_READY.as_bytes().to_vec();
    message.push(b'\n');
    let file_size = u64::from(MESSAGE_OFFSET) + message.len() as u64;
    let entry = LOAD + CODE_OFFSET;

    let mut header = Vec::with_capacity(64);
    header.extend_from_slice(b"\x7fELF");
    header.extend_from_slice(&[2, 1, 1, 0]); // 64-bit, little endian, version 1, SysV
    header.extend_from_slice(&[0; 8]);
    header.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    header.extend_from_slice(&0x3eu16.to_le_bytes()); // x86-64
    header.extend_from_slice(&1u32.to_le_bytes());
    header.extend_from_slice(&u64::from(entry).to_le_bytes());
    header.extend_from_slice(&64u64.to_le_bytes()); // program headers right after
    header.extend_from_slice(&0u64.to_le_bytes()); // no section headers
    header.extend_from_slice(&0u32.to_le_bytes());
    for half in [64u16, 56, 2, 64, 0, 0] {
        header.extend_from_slice(&half.to_le_bytes());
    }

    let program_header = |kind: u32, flags: u32, offset: u64, size: u64, mem: u64, align: u64| {
        let mut ph = Vec::with_capacity(56);
        ph.extend_from_slice(&kind.to_le_bytes());
        ph.extend_from_slice(&flags.to_le_bytes());
        ph.extend_from_slice(&offset.to_le_bytes());
        let address = u64::from(LOAD) + offset;
        ph.extend_from_slice(&address.to_le_bytes()); // virtual
        ph.extend_from_slice(&address.to_le_bytes()); // physical
        ph.extend_from_slice(&size.to_le_bytes());
        ph.extend_from_slice(&mem.to_le_bytes());
        ph.extend_from_slice(&align.to_le_bytes());
        ph
    };
    let load = program_header(1, 7, 0, file_size, MEMORY_SIZE, 0x1000);
    let note_size = 20;
    let note_header = program_header(4, 4, u64::from(NOTE_OFFSET), note_size, note_size, 4);

    let mut note = Vec::with_capacity(20);
    for word in [4u32, 4, XEN_ELFNOTE_PHYS32_ENTRY] {
        note.extend_from_slice(&word.to_le_bytes());
    }
    note.extend_from_slice(b"Xen\0");
    note.extend_from_slice(&entry.to_le_bytes());

    let mut image = Vec::new();
    put(&mut image, 0, &header);
    put(&mut image, 64, &load);
    put(&mut image, 120, &note_header);
    put(&mut image, NOTE_OFFSET, &note);
    put(&mut image, CODE_OFFSET, &code());
    put(&mut image, REASON_OFFSET, &SHUTDOWN_POWEROFF.to_le_bytes());
    put(&mut image, MESSAGE_OFFSET, &message);
    image
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_le_bytes([b[at], b[at + 1]])
    }
    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }
    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from(u32_at(b, at)) | (u64::from(u32_at(b, at + 4)) << 32)
    }

    #[test]
    fn the_image_is_an_elf64_with_one_load_segment_at_1_mib_and_the_pvh_note() {
        let image = image();
        assert_eq!(&image[..4], b"\x7fELF");
        assert_eq!((image[4], image[5]), (2, 1));
        assert_eq!((u16_at(&image, 16), u16_at(&image, 18)), (2, 0x3e));
        assert_eq!((u16_at(&image, 54), u16_at(&image, 56)), (56, 2));
        // PT_LOAD covering the file, with room for the hypercall page and the stack.
        assert_eq!(u32_at(&image, 64), 1);
        assert_eq!(u64_at(&image, 64 + 16), 0x10_0000);
        assert_eq!(u64_at(&image, 64 + 24), 0x10_0000);
        assert_eq!(u64_at(&image, 64 + 32), image.len() as u64);
        assert_eq!(u64_at(&image, 64 + 40), 0x3000);
        // PT_NOTE pointing at a "Xen" note of type 18 whose entry is the code.
        assert_eq!(u32_at(&image, 120), 4);
        let note = u64_at(&image, 120 + 8) as usize;
        assert_eq!((u32_at(&image, note), u32_at(&image, note + 4)), (4, 4));
        assert_eq!(u32_at(&image, note + 8), 18);
        assert_eq!(&image[note + 12..note + 16], b"Xen\0");
        assert_eq!(u32_at(&image, note + 16), 0x10_0100);
        assert_eq!(u64_at(&image, 24), 0x10_0100);
    }

    #[test]
    fn the_code_sets_a_stack_installs_the_page_and_makes_two_hypercalls() {
        let code = code();
        // mov esp, 0x103000 first: Xen leaves the stack pointer undefined.
        assert_eq!(code[..5], [0xbc, 0x00, 0x30, 0x10, 0x00]);
        // cpuid and wrmsr, then two calls through the page: console_io (18) and sched_op (29).
        let find = |needle: &[u8]| code.windows(needle.len()).position(|w| w == needle);
        let wrmsr = find(&x86::WRMSR);
        assert!(find(&x86::CPUID) < wrmsr);
        let console = find(&(0x10_1000u32 + 32 * 18).to_le_bytes());
        let sched = find(&(0x10_1000u32 + 32 * 29).to_le_bytes());
        assert!(wrmsr < console && console < sched, "{code:02x?}");
        assert_eq!(code.windows(2).filter(|w| *w == x86::CALL_EAX).count(), 2);
        assert!(code.ends_with(&x86::HALT_FOREVER));
        // The message is where the console_io call points, newline-terminated.
        let image = image();
        let message = &image[MESSAGE_OFFSET as usize..];
        assert_eq!(message, b"keel-floor: ready\n");
    }
}

//! Host tests of the multiboot information parser: a fake loader lays the structure, its
//! strings, memory map and module table out in a byte array, as GRUB, iPXE and QEMU do in RAM.

use keel_multiboot::{
    flags, module_name, without_image_name, InfoError, MemoryRegion, MultibootInfo, PhysMemory,
    INFO_LEN, MAX_MODULES, MAX_STRING,
};

/// Physical memory from `BASE` to `BASE + bytes.len()`; everything else is unreadable.
struct FakeMemory {
    bytes: Vec<u8>,
}

const BASE: u64 = 0x10000;

impl<'m> PhysMemory<'m> for &'m FakeMemory {
    fn bytes(&self, paddr: u64, len: usize) -> Option<&'m [u8]> {
        let start = usize::try_from(paddr.checked_sub(BASE)?).ok()?;
        self.bytes.get(start..start.checked_add(len)?)
    }
}

/// Builds an information structure at `BASE` with its data after it, like a loader does.
struct Loader {
    memory: FakeMemory,
}

impl Loader {
    fn new() -> Loader {
        Loader {
            memory: FakeMemory {
                bytes: vec![0; INFO_LEN],
            },
        }
    }

    /// Appends `data` (4-byte aligned) and returns its physical address.
    fn place(&mut self, data: &[u8]) -> u32 {
        while !self.memory.bytes.len().is_multiple_of(4) {
            self.memory.bytes.push(0);
        }
        let at = BASE as u32 + self.memory.bytes.len() as u32;
        self.memory.bytes.extend_from_slice(data);
        at
    }

    fn set(&mut self, offset: usize, value: u32) {
        self.memory.bytes[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
    }

    fn add_flag(&mut self, flag: u32) {
        let old = u32::from_le_bytes(self.memory.bytes[0..4].try_into().unwrap_or_default());
        self.set(0, old | flag);
    }

    fn cmdline(&mut self, text: &[u8]) -> &mut Self {
        let at = self.place(&[text, b"\0"].concat());
        self.set(16, at);
        self.add_flag(flags::CMDLINE);
        self
    }

    fn loader_name(&mut self, text: &str) -> &mut Self {
        let at = self.place(&[text.as_bytes(), b"\0"].concat());
        self.set(64, at);
        self.add_flag(flags::LOADER_NAME);
        self
    }

    fn basic_memory(&mut self, lower_kib: u32, upper_kib: u32) -> &mut Self {
        self.set(4, lower_kib);
        self.set(8, upper_kib);
        self.add_flag(flags::MEMORY);
        self
    }

    fn memory_map(&mut self, regions: &[(u64, u64, u32)]) -> &mut Self {
        let mut map = Vec::new();
        for &(base, len, kind) in regions {
            map.extend_from_slice(&20u32.to_le_bytes());
            map.extend_from_slice(&base.to_le_bytes());
            map.extend_from_slice(&len.to_le_bytes());
            map.extend_from_slice(&kind.to_le_bytes());
        }
        self.raw_memory_map(&map)
    }

    fn raw_memory_map(&mut self, map: &[u8]) -> &mut Self {
        let at = self.place(map);
        self.set(44, map.len() as u32);
        self.set(48, at);
        self.add_flag(flags::MEMORY_MAP);
        self
    }

    fn modules(&mut self, modules: &[(u32, u32, Option<&str>)]) -> &mut Self {
        let strings: Vec<u32> = modules
            .iter()
            .map(|(_, _, s)| s.map_or(0, |s| self.place(&[s.as_bytes(), b"\0"].concat())))
            .collect();
        let mut table = Vec::new();
        for (&(start, end, _), string) in modules.iter().zip(strings) {
            for v in [start, end, string, 0] {
                table.extend_from_slice(&v.to_le_bytes());
            }
        }
        let at = self.place(&table);
        self.set(20, modules.len() as u32);
        self.set(24, at);
        self.add_flag(flags::MODULES);
        self
    }

    fn parse(&self) -> Result<MultibootInfo<'_>, InfoError> {
        MultibootInfo::parse(&&self.memory, BASE as u32)
    }
}

#[test]
fn a_full_structure_gives_cmdline_loader_memory_and_modules() {
    let mut loader = Loader::new();
    loader
        .cmdline(b"keel.elf keel.log=debug")
        .loader_name("iPXE 1.0.0")
        .basic_memory(639, 1000)
        .memory_map(&[
            (0, 0x9fc00, 1),
            (0xf0000, 0x10000, 2),
            (0x100000, 0x7f00000, 1),
        ])
        .modules(&[
            (0x200000, 0x200040, Some("host.cfg")),
            (0x201000, 0x201000, None),
        ]);
    let info = loader.parse();
    let Ok(info) = info else {
        panic!("{info:?}");
    };
    assert_eq!(
        info.cmdline().map(|c| c.bytes),
        Some(&b"keel.elf keel.log=debug"[..])
    );
    assert_eq!(
        info.loader_name().map(|c| c.bytes),
        Some(&b"iPXE 1.0.0"[..])
    );
    // The map wins over the basic fields.
    let regions: Vec<MemoryRegion> = info.memory_regions().collect();
    assert_eq!(
        regions,
        [
            MemoryRegion {
                base: 0,
                len: 0x9fc00,
                kind: 1
            },
            MemoryRegion {
                base: 0xf0000,
                len: 0x10000,
                kind: 2
            },
            MemoryRegion {
                base: 0x100000,
                len: 0x7f00000,
                kind: 1
            },
        ]
    );
    let modules: Vec<_> = info.modules().collect();
    assert_eq!(modules.len(), 2);
    assert_eq!((modules[0].start, modules[0].end), (0x200000, 0x200040));
    assert_eq!(modules[0].string.map(|s| s.bytes), Some(&b"host.cfg"[..]));
    assert_eq!(modules[1].string, None);
    // Every structure the loader handed over has a range to keep.
    assert_eq!(info.range(), (BASE, BASE + INFO_LEN as u64));
    assert!(info
        .memory_map_range()
        .is_some_and(|(s, e)| e - s == 3 * 24));
    assert!(info.module_table_range().is_some_and(|(s, e)| e - s == 32));
    let cmdline = info.cmdline().map(|c| c.range());
    assert!(cmdline.is_some_and(|(s, e)| e - s == 24));
}

#[test]
fn basic_memory_fields_stand_in_for_a_missing_map() {
    let mut loader = Loader::new();
    loader.basic_memory(640, 64 * 1024);
    let regions: Option<Vec<MemoryRegion>> =
        loader.parse().ok().map(|i| i.memory_regions().collect());
    assert_eq!(
        regions,
        Some(vec![
            MemoryRegion {
                base: 0,
                len: 640 * 1024,
                kind: 1
            },
            MemoryRegion {
                base: 1 << 20,
                len: 64 << 20,
                kind: 1
            },
        ])
    );
}

#[test]
fn no_memory_information_is_an_error() {
    let mut loader = Loader::new();
    loader.cmdline(b"x");
    assert_eq!(loader.parse().err(), Some(InfoError::NoMemoryInformation));
}

#[test]
fn an_unreadable_structure_is_an_error() {
    let memory = FakeMemory { bytes: vec![0; 8] };
    assert_eq!(
        MultibootInfo::parse(&&memory, BASE as u32).err(),
        Some(InfoError::Unreadable { paddr: BASE as u32 })
    );
}

#[test]
fn unterminated_or_unreadable_strings_are_errors() {
    let mut loader = Loader::new();
    loader.basic_memory(640, 1024);
    let at = loader.place(&vec![b'a'; MAX_STRING + 8]);
    loader.place(&[0]);
    loader.set(16, at);
    loader.add_flag(flags::CMDLINE);
    assert_eq!(
        loader.parse().err(),
        Some(InfoError::BadCmdline { paddr: at })
    );

    let mut loader = Loader::new();
    loader.basic_memory(640, 1024);
    loader.set(64, 0x00ff_0000);
    loader.add_flag(flags::LOADER_NAME);
    assert_eq!(
        loader.parse().err(),
        Some(InfoError::BadLoaderName { paddr: 0x00ff_0000 })
    );

    // A string that runs into unreadable memory without a NUL.
    let mut loader = Loader::new();
    loader.basic_memory(640, 1024);
    let at = loader.place(b"abc");
    loader.set(16, at);
    loader.add_flag(flags::CMDLINE);
    assert_eq!(
        loader.parse().err(),
        Some(InfoError::BadCmdline { paddr: at })
    );
}

#[test]
fn malformed_memory_maps_are_refused() {
    // An entry claiming 12 bytes (less than base + length + type).
    let mut short = Vec::new();
    short.extend_from_slice(&12u32.to_le_bytes());
    short.extend_from_slice(&[0; 12]);
    // An entry whose size runs past the map.
    let mut overlong = Vec::new();
    overlong.extend_from_slice(&200u32.to_le_bytes());
    overlong.extend_from_slice(&[0; 20]);
    // A size that would wrap a 32-bit walker around.
    let mut wrapping = Vec::new();
    wrapping.extend_from_slice(&0xffff_fffcu32.to_le_bytes());
    wrapping.extend_from_slice(&[0; 20]);
    for map in [short, overlong, wrapping] {
        let mut loader = Loader::new();
        loader.raw_memory_map(&map);
        assert!(
            matches!(loader.parse(), Err(InfoError::BadMemoryMap { .. })),
            "{map:?}"
        );
    }
    // A map whose length points past readable memory.
    let mut loader = Loader::new();
    loader.memory_map(&[(0, 4096, 1)]);
    loader.set(44, 1 << 20);
    assert!(matches!(
        loader.parse(),
        Err(InfoError::BadMemoryMap { .. })
    ));
}

#[test]
fn entries_larger_than_the_minimum_are_skipped_by_their_size() {
    let mut map = Vec::new();
    for (base, kind) in [(0u64, 1u32), (0x100000, 1)] {
        map.extend_from_slice(&24u32.to_le_bytes());
        map.extend_from_slice(&base.to_le_bytes());
        map.extend_from_slice(&0x1000u64.to_le_bytes());
        map.extend_from_slice(&kind.to_le_bytes());
        map.extend_from_slice(&[0xee; 4]); // ACPI 3.0 extended attributes
    }
    let mut loader = Loader::new();
    loader.raw_memory_map(&map);
    let bases: Option<Vec<u64>> = loader
        .parse()
        .ok()
        .map(|i| i.memory_regions().map(|r| r.base).collect());
    assert_eq!(bases, Some(vec![0, 0x100000]));
}

#[test]
fn too_many_or_broken_modules_are_refused() {
    let mut loader = Loader::new();
    loader.basic_memory(640, 1024);
    let many: Vec<(u32, u32, Option<&str>)> = (0..=MAX_MODULES).map(|_| (0, 0, None)).collect();
    loader.modules(&many);
    assert_eq!(
        loader.parse().err(),
        Some(InfoError::TooManyModules {
            count: MAX_MODULES as u32 + 1
        })
    );

    let mut loader = Loader::new();
    loader.basic_memory(640, 1024);
    loader.modules(&[(0x200000, 0x100000, None)]);
    assert_eq!(
        loader.parse().err(),
        Some(InfoError::BadModule { index: 0 })
    );

    let mut loader = Loader::new();
    loader.basic_memory(640, 1024);
    loader.modules(&[(0, 0, None)]);
    loader.set(24, 0x00ff_0000);
    assert!(matches!(
        loader.parse(),
        Err(InfoError::BadModuleTable { .. })
    ));
}

#[test]
fn fields_without_their_flag_are_ignored() {
    let mut loader = Loader::new();
    loader.basic_memory(640, 1024);
    // Garbage addresses, but the flags do not claim them.
    loader.set(16, 0xdead_beef);
    loader.set(24, 0xdead_beef);
    loader.set(20, 1000);
    let info = loader.parse();
    assert!(info
        .as_ref()
        .is_ok_and(|i| i.cmdline().is_none() && i.modules().count() == 0));
}

#[test]
fn the_image_name_is_dropped_from_the_command_line() {
    let ipxe = Some(&b"iPXE 1.0.0+git-20190125.36a4c85"[..]);
    assert_eq!(
        without_image_name(b"/boot/keel.elf keel.log=debug", Some(b"qemu")),
        b"keel.log=debug"
    );
    assert_eq!(
        without_image_name(b"keel.elf  keel.log=debug ", ipxe),
        b"keel.log=debug "
    );
    assert_eq!(without_image_name(b"keel.elf", ipxe), b"");
    assert_eq!(without_image_name(b"", None), b"");
    assert_eq!(
        without_image_name(b"keel.elf keel.test", None),
        b"keel.test"
    );
}

#[test]
fn grub2_passes_no_image_name_so_nothing_is_dropped() {
    let grub = Some(&b"GRUB 2.06-13+deb12u2"[..]);
    assert_eq!(
        without_image_name(b"console=com1 keel.log=debug", grub),
        b"console=com1 keel.log=debug"
    );
    // GRUB legacy does add the name.
    assert_eq!(
        without_image_name(b"/boot/keel.elf keel.test", Some(b"GNU GRUB 0.97")),
        b"keel.test"
    );
    // A loader that does not add the name loses no keel option, whatever it is called.
    assert_eq!(
        without_image_name(b"keel.log=debug keel.panic=halt", None),
        b"keel.log=debug keel.panic=halt"
    );
}

#[test]
fn module_names_are_the_last_component_of_the_first_word() {
    assert_eq!(module_name(b"/boot/host.cfg"), b"host.cfg");
    assert_eq!(module_name(b"host.cfg extra words"), b"host.cfg");
    assert_eq!(module_name(b"  tftp://10.0.2.2/pxe/host.cfg"), b"host.cfg");
    assert_eq!(module_name(b""), b"");
    assert_eq!(module_name(b"dir/"), b"");
}

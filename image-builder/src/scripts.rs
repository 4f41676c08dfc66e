//! The loader scripts: the iPXE script of the PXE bundle and the GRUB menu of the ISO.
//!
//! Both load the same things the same way: Xen (when asked for) by multiboot with `dom0=pvh`
//! and Keel as its first module, or Keel alone by multiboot, with the same `keel.*` words.
//! Every word in them has passed [`crate::config::is_script_safe`], so nothing in a value can
//! be read as script syntax.

use crate::config::HostConfig;

/// The iPXE script's file name: what the DHCP server names as the boot file.
pub const IPXE_SCRIPT: &str = "boot.ipxe";
/// Keel's file name on both media.
pub const KERNEL_FILE: &str = "keel.elf";
/// The (uncompressed) Xen hypervisor's file name.
pub const XEN_FILE: &str = "xen";
/// What the "Keel alone" entry says under UEFI instead of booting.
pub const UEFI_NEEDS_XEN: &str =
    "Keel alone starts from BIOS only (multiboot 1 gives it no ACPI tables under UEFI); choose Xen + Keel";

/// Seconds the GRUB menu waits before booting the default entry.
pub const GRUB_TIMEOUT_SECONDS: u32 = 3;

/// A word for the GRUB menu: argon2 hashes carry `$`, which GRUB would expand, so such words
/// are single-quoted (GRUB passes them on without the quotes). Script-safe words never
/// contain a quote themselves.
fn grub_word(word: &str) -> String {
    if word.contains('$') {
        format!("'{word}'")
    } else {
        word.to_string()
    }
}

/// Keel's words for the GRUB menu.
fn grub_keel_args(config: &HostConfig) -> String {
    config
        .keel_options
        .iter()
        .map(|w| grub_word(w))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `command` followed by `args` when there are any.
fn line(command: &str, args: &str) -> String {
    if args.is_empty() {
        format!("{command}\n")
    } else {
        format!("{command} {args}\n")
    }
}

/// The iPXE script. Its file names are relative, which iPXE resolves against the script's own
/// URL, so the same directory serves over TFTP and over HTTP.
pub fn ipxe_script(config: &HostConfig) -> String {
    let mut script = String::from(
        "#!ipxe\n\
         # Keel network boot, written by `cargo xtask image` (see docs/boot.md).\n\
         # File names are relative to this script's URL: serve the directory over TFTP or HTTP.\n",
    );
    let keel = config.keel_cmdline();
    if config.xen {
        script.push_str("echo Keel: loading Xen and Keel as its dom0\n");
        script.push_str(&line(&format!("kernel {XEN_FILE}"), &config.xen_cmdline()));
        script.push_str(&line(&format!("module {KERNEL_FILE}"), &keel));
    } else {
        script.push_str("echo Keel: loading Keel\n");
        script.push_str(&line(&format!("kernel {KERNEL_FILE}"), &keel));
    }
    script.push_str("boot\n");
    script
}

/// The GRUB menu. With Xen: "Xen + Keel" (the default) and "Keel alone"; without: Keel only.
/// GRUB talks on the first serial port and the screen, like Keel and Xen.
pub fn grub_cfg(config: &HostConfig) -> String {
    let keel = grub_keel_args(config);
    let mut menu = format!(
        "# Keel boot menu, written by `cargo xtask image` (see docs/boot.md).\n\
         serial --unit=0 --speed=115200\n\
         terminal_input serial console\n\
         terminal_output serial console\n\
         set timeout={GRUB_TIMEOUT_SECONDS}\n\
         set default={}\n",
        if config.xen { "xen" } else { "keel" }
    );
    if config.xen {
        menu.push_str("\nmenuentry \"Xen + Keel\" --id xen {\n");
        menu.push_str(&line(
            &format!("    multiboot2 /boot/{XEN_FILE}"),
            &config.xen_cmdline(),
        ));
        menu.push_str(&line(&format!("    module2 /boot/{KERNEL_FILE}"), &keel));
        menu.push_str("}\n");
    }
    menu.push_str(&format!(
        "\nmenuentry \"Keel{}\" --id keel {{\n",
        if config.xen {
            " alone (no hypervisor)"
        } else {
            ""
        }
    ));
    // Multiboot 1 passes no ACPI tables, and a UEFI machine has none where the BIOS would
    // put them: Keel alone starts from BIOS only; under UEFI, Xen passes them on.
    menu.push_str(&format!(
        "    if [ \"$grub_platform\" = \"efi\" ]; then\n\
         \x20       echo \"{UEFI_NEEDS_XEN}\"\n\
         \x20       sleep 10\n\
         \x20   else\n"
    ));
    menu.push_str(&line(
        &format!("        multiboot /boot/{KERNEL_FILE}"),
        &keel,
    ));
    menu.push_str("    fi\n}\n");
    menu
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn config(text: &str) -> HostConfig {
        match Settings::parse(text).and_then(Settings::resolve) {
            Ok(config) => config,
            Err(error) => panic!("{error}"),
        }
    }

    #[test]
    fn ipxe_script_for_keel_alone() {
        let script = ipxe_script(&config("keel.log = debug"));
        assert!(script.starts_with("#!ipxe\n"));
        assert!(script.ends_with("echo Keel: loading Keel\nkernel keel.elf keel.log=debug\nboot\n"));
        assert!(!script.contains("xen"));
    }

    #[test]
    fn ipxe_script_for_xen_loads_keel_as_the_first_module() {
        let script = ipxe_script(&config(
            "xen = true\nxen_args = console=com1\ndom0_mem = 512M",
        ));
        assert!(script.ends_with(
            "kernel xen console=com1 dom0=pvh dom0_mem=512M,max:512M\n\
             module keel.elf\n\
             boot\n"
        ));
    }

    #[test]
    fn grub_menu_with_xen_has_both_entries_with_the_same_keel_words() {
        let menu = grub_cfg(&config("xen = true\nkeel.log = warn"));
        assert!(menu.contains("set default=xen\n"));
        assert!(menu.contains(
            "menuentry \"Xen + Keel\" --id xen {\n\
             \x20   multiboot2 /boot/xen console=com1,vga com1=115200,8n1 dom0=pvh dom0_mem=1024M,max:1024M\n\
             \x20   module2 /boot/keel.elf keel.log=warn\n}\n"
        ));
        assert!(menu.contains("menuentry \"Keel alone (no hypervisor)\" --id keel {\n"));
        assert!(menu.contains("        multiboot /boot/keel.elf keel.log=warn\n    fi\n}\n"));
        assert!(menu.contains("serial --unit=0 --speed=115200\n"));
    }

    #[test]
    fn password_hashes_are_quoted_for_grub_and_literal_for_ipxe() {
        let hash = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzYWx0$8hK0y0n5W9aCZb8m1yJk2o3J0y4YQe0b3xJv0Qd7zYk";
        let config = config(&format!("root_password_hash = {hash}\nkeel.log = info"));
        assert!(grub_cfg(&config).contains(&format!(
            "        multiboot /boot/keel.elf keel.log=info 'keel.root_hash={hash}'\n"
        )));
        // iPXE expands only `${…}`, which an argon2 hash never contains.
        assert!(!hash.contains("${"));
        assert!(ipxe_script(&config).contains(&format!(
            "kernel keel.elf keel.log=info keel.root_hash={hash}\n"
        )));
    }

    #[test]
    fn grub_menu_without_xen_has_only_keel() {
        let menu = grub_cfg(&config(""));
        assert!(menu.contains("set default=keel\n"));
        assert!(!menu.contains("multiboot2"));
        assert!(menu.contains("menuentry \"Keel\" --id keel {\n"));
        assert!(menu.contains("    else\n        multiboot /boot/keel.elf\n    fi\n"));
        // Under UEFI the entry explains instead of starting a Keel that cannot find ACPI.
        assert!(menu.contains(&format!(
            "    if [ \"$grub_platform\" = \"efi\" ]; then\n        echo \"{UEFI_NEEDS_XEN}\"\n"
        )));
    }
}

//! Choosing QEMU's accelerator: KVM only where the CPU really offers hardware virtualization.
//!
//! A `/dev/kvm` node alone proves nothing: some hosts expose a software virtualizer there
//! that has no `vmx`/`svm` and freezes QEMU instead of running it. So `auto` picks KVM only
//! when `/proc/cpuinfo` lists `vmx` (Intel) or `svm` (AMD) *and* `/dev/kvm` exists.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

/// The accelerator QEMU runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    /// The value of QEMU's `-accel` option.
    pub fn qemu_name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "KVM",
            Accel::Tcg => "TCG",
        })
    }
}

/// What the user asked for: a fixed accelerator or detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccelChoice {
    #[default]
    Auto,
    Kvm,
    Tcg,
}

/// An `--accel` value that is not `tcg`, `kvm` or `auto`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownAccel(pub String);

impl fmt::Display for UnknownAccel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown accelerator '{}': expected tcg, kvm or auto",
            self.0
        )
    }
}

impl std::error::Error for UnknownAccel {}

impl FromStr for AccelChoice {
    type Err = UnknownAccel;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(AccelChoice::Auto),
            "kvm" => Ok(AccelChoice::Kvm),
            "tcg" => Ok(AccelChoice::Tcg),
            other => Err(UnknownAccel(other.to_string())),
        }
    }
}

impl AccelChoice {
    /// Resolves `auto` by looking at this machine's CPU flags and `/dev/kvm`.
    pub fn resolve(self) -> Accel {
        match self {
            AccelChoice::Kvm => Accel::Kvm,
            AccelChoice::Tcg => Accel::Tcg,
            AccelChoice::Auto => {
                let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
                detect(&cpuinfo, Path::new("/dev/kvm").exists())
            }
        }
    }
}

/// The `auto` rule, separated from the file system so that it can be tested.
pub fn detect(cpuinfo: &str, dev_kvm_exists: bool) -> Accel {
    if dev_kvm_exists && cpu_has_virtualization(cpuinfo) {
        Accel::Kvm
    } else {
        Accel::Tcg
    }
}

/// Whether any `flags` line of `/proc/cpuinfo` lists `vmx` or `svm` as a whole word.
pub fn cpu_has_virtualization(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter_map(|line| line.split_once(':'))
        .filter(|(key, _)| key.trim() == "flags")
        .any(|(_, flags)| flags.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const AMD_WITH_SVM: &str =
        "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu vme sse2 svm npt\n";
    const INTEL_WITH_VMX: &str = "processor\t: 0\nflags\t\t: fpu vmx ept\nvmx flags\t: ept vpid\n";
    const NO_VIRT: &str = "processor\t: 0\nflags\t\t: fpu vme sse2 svm_lock hypervisor\n";

    #[test]
    fn kvm_needs_both_cpu_flags_and_dev_kvm() {
        assert_eq!(detect(AMD_WITH_SVM, true), Accel::Kvm);
        assert_eq!(detect(INTEL_WITH_VMX, true), Accel::Kvm);
        assert_eq!(detect(AMD_WITH_SVM, false), Accel::Tcg);
        assert_eq!(detect(NO_VIRT, true), Accel::Tcg);
        assert_eq!(detect("", true), Accel::Tcg);
    }

    #[test]
    fn flag_must_be_a_whole_word_on_a_flags_line() {
        // `svm_lock` is not `svm`, and a "vmx flags" line is not the flags line.
        assert!(!cpu_has_virtualization(NO_VIRT));
        assert!(!cpu_has_virtualization("vmx flags\t: vmx\n"));
        assert!(cpu_has_virtualization(INTEL_WITH_VMX));
    }

    #[test]
    fn choice_parses_the_three_names_only() {
        assert_eq!("auto".parse(), Ok(AccelChoice::Auto));
        assert_eq!("kvm".parse(), Ok(AccelChoice::Kvm));
        assert_eq!("tcg".parse(), Ok(AccelChoice::Tcg));
        assert_eq!(
            "KVM".parse::<AccelChoice>(),
            Err(UnknownAccel("KVM".into()))
        );
    }

    #[test]
    fn fixed_choices_resolve_without_detection() {
        assert_eq!(AccelChoice::Kvm.resolve(), Accel::Kvm);
        assert_eq!(AccelChoice::Tcg.resolve(), Accel::Tcg);
    }

    #[test]
    fn auto_applies_the_rule_to_this_machine() {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let expected = detect(&cpuinfo, Path::new("/dev/kvm").exists());
        assert_eq!(AccelChoice::Auto.resolve(), expected);
    }
}

//! Triple faults that Xen reports on its console, told apart: the emulator's, and anyone
//! else's.
//!
//! QEMU's TCG emulation of nested AMD SVM sometimes ends a domain with a triple fault whose
//! reported state is Xen's own: `RIP` in Xen's code segment (`e008`) at a hypervisor address,
//! the instruction after `vmrun` (`../shared/notes/linux-dom0-xl.md`). No guest can be
//! running there, so that signature is the emulator's, not the guest's and not Keel's. Any
//! other triple fault (a guest's own `CS`, or dom0 itself) is a real fault and must fail the
//! test that sees it. Xen prints:
//!
//! ```text
//! (XEN) d7v0 Triple fault - invoking HVM shutdown action 1
//! (XEN) *** Dumping Dom7 vcpu#0 state: ***
//! (XEN) ----[ Xen-4.17.7  x86_64  debug=n  Not tainted ]----
//! (XEN) CPU:    0
//! (XEN) RIP:    e008:[<ffff82d0402044a5>]
//! ```

/// One triple fault Xen reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TripleFault {
    pub domain: u32,
    pub vcpu: u32,
    /// The reported state is Xen's own (`RIP` in segment `e008`): the emulator's fault.
    pub emulator: bool,
    /// The `RIP:` line, if Xen printed one.
    pub rip: Option<String>,
}

/// Lines after the fault line within which Xen prints the `RIP:` of the dump.
const DUMP_LINES: usize = 8;

/// Every triple fault in a console transcript, in order.
pub fn triple_faults(lines: &[String]) -> Vec<TripleFault> {
    let mut faults = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some((domain, vcpu)) = fault_line(line) else {
            continue;
        };
        let rip = lines
            .iter()
            .skip(i + 1)
            .take(DUMP_LINES)
            .find(|l| l.contains("(XEN) RIP:"))
            .map(|l| l.trim().to_string());
        let emulator = rip.as_deref().is_some_and(|r| {
            r.split_whitespace()
                .nth(2)
                .is_some_and(|at| at.starts_with("e008:[<ffff82d0"))
        });
        faults.push(TripleFault {
            domain,
            vcpu,
            emulator,
            rip,
        });
    }
    faults
}

/// `(XEN) d7v0 Triple fault - …` → (7, 0).
fn fault_line(line: &str) -> Option<(u32, u32)> {
    let rest = &line[line.find("(XEN) d")? + "(XEN) d".len()..];
    let (id, rest) = rest.split_once(' ')?;
    if !rest.starts_with("Triple fault") {
        return None;
    }
    let (domain, vcpu) = id.split_once('v')?;
    Some((domain.parse().ok()?, vcpu.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_string).collect()
    }

    #[test]
    fn xens_own_rip_is_the_emulators_fault() {
        let log = lines(
            "(XEN) d7v0 Triple fault - invoking HVM shutdown action 1\n\
             (XEN) *** Dumping Dom7 vcpu#0 state: ***\n\
             (XEN) ----[ Xen-4.17.7  x86_64  debug=n  Not tainted ]----\n\
             (XEN) CPU:    0\n\
             (XEN) RIP:    e008:[<ffff82d0402044a5>]\n\
             (XEN) RFLAGS: 0000000000000246   CONTEXT: hvm guest (d7v0)\n",
        );
        let faults = triple_faults(&log);
        assert_eq!(faults.len(), 1);
        assert_eq!((faults[0].domain, faults[0].vcpu), (7, 0));
        assert!(faults[0].emulator, "{faults:?}");
    }

    #[test]
    fn a_guests_own_rip_is_a_real_fault() {
        let log = lines(
            "(XEN) d3v1 Triple fault - invoking HVM shutdown action 1\n\
             (XEN) *** Dumping Dom3 vcpu#1 state: ***\n\
             (XEN) RIP:    0010:[<ffffffff81000850>]\n",
        );
        let faults = triple_faults(&log);
        assert_eq!(faults.len(), 1);
        assert!(!faults[0].emulator);
        assert_eq!(faults[0].domain, 3);
        assert_eq!(faults[0].vcpu, 1);
    }

    #[test]
    fn a_fault_without_a_dump_is_not_the_emulators_and_other_lines_are_not_faults() {
        let log = lines(
            "[ 1.0] DEBUG guest d2: Triple fault in a message\n\
             (XEN) d0v0 Triple fault - invoking HVM shutdown action 1\n\
             (XEN) d0v0 upcall vector f3\n",
        );
        let faults = triple_faults(&log);
        assert_eq!(faults.len(), 1);
        assert_eq!(faults[0].domain, 0);
        assert!(!faults[0].emulator);
        assert_eq!(faults[0].rip, None);
    }
}

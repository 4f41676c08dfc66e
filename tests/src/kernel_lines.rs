//! Parsers for the console lines whose format the kernel promises (its console contract).
//!
//! The tests assert on these instead of on ad-hoc substrings, so a change of format shows
//! up as a parse failure naming the line.

/// `keel: ready (keel 0.1.0, boot 123.4 ms)`.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadyLine {
    pub version: String,
    /// Milliseconds from kernel entry to ready, as the kernel measured them.
    pub boot_ms: f64,
}

/// The prefix the ready line starts with.
pub const READY_PREFIX: &str = "keel: ready";

impl ReadyLine {
    pub fn parse(line: &str) -> Option<ReadyLine> {
        let rest = line.trim_end().strip_prefix("keel: ready (keel ")?;
        let (version, rest) = rest.split_once(", boot ")?;
        let ms = rest.strip_suffix(" ms)")?;
        let boot_ms: f64 = ms.parse().ok()?;
        let version_ok = !version.is_empty()
            && version.split('.').all(|part| !part.is_empty())
            && version
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
        (version_ok && boot_ms.is_finite() && boot_ms >= 0.0).then(|| ReadyLine {
            version: version.to_string(),
            boot_ms,
        })
    }
}

/// `pci 00:02.0 1af4:1000 class 02.00.00 virtio-net ...`: one PCI function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciLine {
    pub bus: u8,
    pub device: u8,
    pub function: u8,
    pub vendor_id: u16,
    pub device_id: u16,
    /// Class, subclass, programming interface.
    pub class: (u8, u8, u8),
    /// The kernel's name for the function (`virtio-net`, `nvme`, `unknown`, ...).
    pub name: String,
}

impl PciLine {
    pub fn parse(line: &str) -> Option<PciLine> {
        let mut words = line.split_whitespace();
        if words.next()? != "pci" {
            return None;
        }
        let (bus, slot) = words.next()?.split_once(':')?;
        let (device, function) = slot.split_once('.')?;
        let (vendor_id, device_id) = words.next()?.split_once(':')?;
        if words.next()? != "class" {
            return None;
        }
        let mut class = words.next()?.split('.');
        let class_code = (
            hex_u8(class.next()?)?,
            hex_u8(class.next()?)?,
            hex_u8(class.next()?)?,
        );
        if class.next().is_some() {
            return None;
        }
        Some(PciLine {
            bus: hex_u8(bus)?,
            device: hex_u8(device)?,
            function: hex_u8(function)?,
            vendor_id: hex_u16(vendor_id)?,
            device_id: hex_u16(device_id)?,
            class: class_code,
            name: words.next()?.to_string(),
        })
    }
}

/// `keel: PANIC at kernel/src/main.rs:12:5: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PanicLine {
    pub file: String,
    pub line: u32,
    pub column: u32,
    pub message: String,
}

impl PanicLine {
    pub fn parse(text: &str) -> Option<PanicLine> {
        let rest = text.strip_prefix("keel: PANIC at ")?;
        let (location, message) = rest.split_once(": ")?;
        let mut parts = location.rsplitn(3, ':');
        let column = parts.next()?.parse().ok()?;
        let line = parts.next()?.parse().ok()?;
        let file = parts.next()?;
        (!file.is_empty()).then(|| PanicLine {
            file: file.to_string(),
            line,
            column,
            message: message.to_string(),
        })
    }
}

/// `[    1.234567] INFO  message`: one log record.
#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    /// Seconds since kernel entry.
    pub seconds: f64,
    pub level: LogLevel,
    pub message: String,
}

/// The level word of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLine {
    pub fn parse(line: &str) -> Option<LogLine> {
        let (stamp, rest) = line.strip_prefix('[')?.split_once("] ")?;
        let seconds: f64 = stamp.trim_start().parse().ok()?;
        let (level, message) = rest.split_once(' ')?;
        let level = match level {
            "ERROR" => LogLevel::Error,
            "WARN" => LogLevel::Warn,
            "INFO" => LogLevel::Info,
            "DEBUG" => LogLevel::Debug,
            "TRACE" => LogLevel::Trace,
            _ => return None,
        };
        (seconds.is_finite() && seconds >= 0.0).then(|| LogLine {
            seconds,
            level,
            message: message.trim_start().to_string(),
        })
    }
}

fn hex_u8(text: &str) -> Option<u8> {
    (!text.is_empty() && text.len() <= 2).then(|| u8::from_str_radix(text, 16).ok())?
}

fn hex_u16(text: &str) -> Option<u16> {
    (text.len() == 4).then(|| u16::from_str_radix(text, 16).ok())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_line_gives_version_and_boot_time() {
        let ready = ReadyLine::parse("keel: ready (keel 0.1.0, boot 123.4 ms)");
        assert_eq!(
            ready,
            Some(ReadyLine {
                version: "0.1.0".into(),
                boot_ms: 123.4
            })
        );
        assert_eq!(
            ReadyLine::parse("keel: ready (keel 0.1.0, boot 7 ms)\r").map(|r| r.boot_ms),
            Some(7.0)
        );
    }

    #[test]
    fn ready_line_without_version_or_time_is_rejected() {
        for bad in [
            "keel: ready",
            "keel: ready (keel , boot 1.0 ms)",
            "keel: ready (keel 0.1.0)",
            "keel: ready (keel 0.1.0, boot fast ms)",
            "keel: ready (keel 0.1.0, boot -1 ms)",
            "keel: ready (keel 0.1.0, boot NaN ms)",
            "keel: ready (keel 0..1, boot 1 ms)",
            "[ 0.1] INFO keel: ready (keel 0.1.0, boot 1 ms)",
        ] {
            assert_eq!(ReadyLine::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn pci_line_parses_address_ids_class_and_name() {
        let line =
            "pci 00:02.0 1af4:1000 class 02.00.00 virtio-net bar0 io 0xc000 bar1 mem 0xfebd1000";
        assert_eq!(
            PciLine::parse(line),
            Some(PciLine {
                bus: 0,
                device: 2,
                function: 0,
                vendor_id: 0x1af4,
                device_id: 0x1000,
                class: (2, 0, 0),
                name: "virtio-net".into(),
            })
        );
        let nvme = PciLine::parse("pci 00:1f.7 1b36:0010 class 01.08.02 nvme");
        assert_eq!(
            nvme.map(|p| (p.device, p.function, p.name)),
            Some((0x1f, 7, "nvme".into()))
        );
    }

    #[test]
    fn non_pci_and_malformed_lines_are_rejected() {
        for bad in [
            "[    0.1] INFO pci 00:02.0 1af4:1000 class 02.00.00 virtio-net",
            "pci 00:02.0 1af4:1000 class 02.00.00",
            "pci 00:02 1af4:1000 class 02.00.00 virtio-net",
            "pci 00:02.0 1af4:10000 class 02.00.00 virtio-net",
            "pci 00:02.0 1af4:1000 klass 02.00.00 virtio-net",
            "pci 00:02.0 1af4:1000 class 02.00.00.00 virtio-net",
            "pci 00:zz.0 1af4:1000 class 02.00.00 virtio-net",
        ] {
            assert_eq!(PciLine::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn panic_line_gives_location_and_message() {
        let line =
            "keel: PANIC at kernel/src/main.rs:42:9: test panic requested by keel.test=panic";
        assert_eq!(
            PanicLine::parse(line),
            Some(PanicLine {
                file: "kernel/src/main.rs".into(),
                line: 42,
                column: 9,
                message: "test panic requested by keel.test=panic".into(),
            })
        );
        // The message may itself contain ": ".
        let nested = PanicLine::parse("keel: PANIC at a.rs:1:2: outer: inner");
        assert_eq!(nested.map(|p| p.message), Some("outer: inner".into()));
    }

    #[test]
    fn log_line_gives_time_level_and_message() {
        assert_eq!(
            LogLine::parse("[    1.234567] INFO  memory: 255 MiB RAM"),
            Some(LogLine {
                seconds: 1.234567,
                level: LogLevel::Info,
                message: "memory: 255 MiB RAM".into()
            })
        );
        let error = LogLine::parse("[   12.000001] ERROR disk gone");
        assert_eq!(
            error.map(|l| (l.level, l.message)),
            Some((LogLevel::Error, "disk gone".into()))
        );
        for bad in [
            "[ 1.0] NOTICE x",
            "[x] INFO y",
            "1.0] INFO y",
            "[ -1.0] INFO y",
            "keel: ready",
        ] {
            assert_eq!(LogLine::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn panic_line_without_location_is_rejected() {
        assert_eq!(PanicLine::parse("keel: PANIC at somewhere: oops"), None);
        assert_eq!(PanicLine::parse("keel: PANIC at :1:2: oops"), None);
        assert_eq!(PanicLine::parse("PANIC at a.rs:1:2: oops"), None);
    }
}

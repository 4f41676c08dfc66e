//! Presenting boot-benchmark figures: the terminal table and the `docs/benchmarks.md`
//! section that `--record` writes (replacing the previous one, keeping everything else).

use keel_tests::Accel;

use crate::commands::build::format_size;
use crate::stats::Summary;

/// Everything one `bench boot` run measured and the context needed to compare it later.
#[derive(Debug, Clone, PartialEq)]
pub struct BootBench {
    pub runs: usize,
    pub accel: Accel,
    pub cores: usize,
    pub cpu_model: Option<String>,
    pub qemu_version: Option<String>,
    /// The image as shown to people (`target/keel/keel.elf`).
    pub image: String,
    pub image_bytes: u64,
    /// The VM's device set, in words.
    pub devices: String,
    /// QEMU process start to the ready line, on the host's clock.
    pub host_ms: Summary,
    /// Kernel entry to ready, as the ready line reports it.
    pub kernel_ms: Summary,
}

/// The markers around the generated section of benchmark `name` in docs/benchmarks.md.
pub fn section_markers(name: &str) -> (String, String) {
    (
        format!(
            "<!-- cargo xtask bench {name}: begin (generated; --record replaces this section) -->"
        ),
        format!("<!-- cargo xtask bench {name}: end -->"),
    )
}

const HOST_ROW: &str = "QEMU start -> keel: ready";
const KERNEL_ROW: &str = "kernel entry -> ready";

impl BootBench {
    fn machine_note(&self) -> String {
        let accel = match self.accel {
            Accel::Tcg => "TCG (software emulation)",
            Accel::Kvm => "KVM",
        };
        let mut note = format!("{accel}, {} host cores", self.cores);
        if let Some(cpu) = &self.cpu_model {
            note.push_str(&format!(", {cpu}"));
        }
        if let Some(qemu) = &self.qemu_version {
            note.push_str(&format!("; {qemu}"));
        }
        note
    }

    /// The table printed at the end of `cargo xtask bench boot`.
    pub fn table(&self) -> String {
        let row = |label: &str, s: &Summary| {
            format!(
                "{label:<28}{:>10.1}{:>10.1}{:>10.1}\n",
                s.min, s.median, s.max
            )
        };
        let mut out = format!(
            "Keel boot time, {} runs: {}\n",
            self.runs,
            self.machine_note()
        );
        out.push_str(&format!(
            "image {}: {}\n",
            self.image,
            format_size(self.image_bytes)
        ));
        out.push_str(&format!("VM: {}\n\n", self.devices));
        out.push_str(&format!(
            "{:<28}{:>10}{:>10}{:>10}\n",
            "ms", "min", "median", "max"
        ));
        out.push_str(&row(HOST_ROW, &self.host_ms));
        out.push_str(&row(KERNEL_ROW, &self.kernel_ms));
        out
    }

    /// The Markdown section for `docs/benchmarks.md`, markers included.
    pub fn markdown_section(&self, command: &str, date: &str) -> String {
        let row = |label: &str, s: &Summary| {
            format!(
                "| {label} | {:.1} ms | {:.1} ms | {:.1} ms |\n",
                s.min, s.median, s.max
            )
        };
        let (begin, end) = section_markers("boot");
        let mut out = format!("{begin}\n## Boot time\n\n");
        out.push_str(&format!("Recorded {date} with `{command}`.\n\n"));
        out.push_str(&format!("- Machine: {}\n", self.machine_note()));
        out.push_str(&format!(
            "- Image: `{}`, {}\n",
            self.image,
            format_size(self.image_bytes)
        ));
        out.push_str(&format!("- VM: {}\n", self.devices));
        out.push_str(&format!("- Runs: {}\n\n", self.runs));
        out.push_str("| Measure | min | median | max |\n|---|---:|---:|---:|\n");
        out.push_str(&row(
            "QEMU start → `keel: ready` (host clock)",
            &self.host_ms,
        ));
        out.push_str(&row(
            "kernel entry → ready (kernel's clock, from the ready line)",
            &self.kernel_ms,
        ));
        out.push_str(&end);
        out.push('\n');
        out
    }
}

/// `existing` (the file's text, if any) with the section of benchmark `name` replaced by
/// `section`, or `section` appended when there was none.
pub fn upsert_section(existing: Option<&str>, name: &str, section: &str) -> String {
    let (begin, end) = section_markers(name);
    let (begin, end) = (begin.as_str(), end.as_str());
    let Some(text) = existing else {
        return format!(
            "# Keel benchmarks\n\nFigures written by `cargo xtask bench ... --record`; each section is \
             replaced by the next recording.\n\n{section}"
        );
    };
    if let Some(start) = text.find(begin) {
        if let Some(end_offset) = text.get(start..).and_then(|rest| rest.find(end)) {
            let mut stop = start + end_offset + end.len();
            if text.get(stop..stop + 1) == Some("\n") {
                stop += 1;
            }
            let (before, after) = (
                text.get(..start).unwrap_or(""),
                text.get(stop..).unwrap_or(""),
            );
            return format!("{before}{section}{after}");
        }
    }
    format!("{}\n\n{section}", text.trim_end())
}

/// Writes `section` (benchmark `name`) into docs/benchmarks.md, replacing its last recording.
pub fn record_section(
    name: &str,
    section: &str,
) -> Result<std::path::PathBuf, crate::error::XtaskError> {
    let doc = keel_tests::paths::workspace_root()
        .join("docs")
        .join("benchmarks.md");
    let existing = std::fs::read_to_string(&doc).ok();
    let updated = upsert_section(existing.as_deref(), name, section);
    let io = |error| crate::error::XtaskError::Io {
        what: format!("writing {}", doc.display()),
        error,
    };
    if let Some(dir) = doc.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    std::fs::write(&doc, updated).map_err(io)?;
    Ok(doc)
}

/// The first line of `qemu-system-x86_64 --version`.
pub fn qemu_version() -> Option<String> {
    let output = std::process::Command::new(keel_tests::qemu::QEMU_BINARY)
        .arg("--version")
        .output()
        .ok()?;
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .next()
        .map(|line| line.trim().to_string())
}

/// The CPU's model name from `/proc/cpuinfo` text.
pub fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(key, _)| key.trim() == "model name")
        .map(|(_, value)| value.trim().to_string())
        .filter(|model| !model.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> BootBench {
        BootBench {
            runs: 3,
            accel: Accel::Tcg,
            cores: 2,
            cpu_model: Some("AMD EPYC".into()),
            qemu_version: Some("QEMU emulator version 7.2.22".into()),
            image: "target/keel/keel.elf".into(),
            image_bytes: 1_289_748,
            devices: "q35, 256 MiB, virtio-net, virtio-blk".into(),
            host_ms: Summary {
                min: 812.34,
                median: 830.1,
                max: 901.25,
            },
            kernel_ms: Summary {
                min: 12.1,
                median: 13.0,
                max: 15.2,
            },
        }
    }

    #[test]
    fn table_has_both_rows_and_the_context() {
        let table = sample().table();
        assert!(table.starts_with(
            "Keel boot time, 3 runs: TCG (software emulation), 2 host cores, AMD EPYC; QEMU"
        ));
        assert!(table.contains("image target/keel/keel.elf: 1.23 MiB (1289748 bytes)"));
        assert!(
            table.contains("QEMU start -> keel: ready        812.3     830.1     901.2\n"),
            "{table}"
        );
        assert!(
            table.contains("kernel entry -> ready             12.1      13.0      15.2\n"),
            "{table}"
        );
    }

    #[test]
    fn markdown_section_has_command_date_machine_and_figures() {
        let section = sample().markdown_section(
            "cargo xtask bench boot --runs 3 --record",
            "2026-01-02 03:04 UTC",
        );
        let (begin, end) = section_markers("boot");
        assert!(section.starts_with(&begin));
        assert!(section.ends_with(&format!("{end}\n")));
        assert!(section.contains(
            "Recorded 2026-01-02 03:04 UTC with `cargo xtask bench boot --runs 3 --record`."
        ));
        assert!(section.contains("- Machine: TCG (software emulation), 2 host cores"));
        assert!(section.contains("| 812.3 ms | 830.1 ms | 901.2 ms |"));
        assert!(section.contains("| 12.1 ms | 13.0 ms | 15.2 ms |"));
    }

    #[test]
    fn a_missing_file_gets_a_title_and_the_section() {
        let text = upsert_section(None, "boot", "SECTION\n");
        assert!(text.starts_with("# Keel benchmarks\n"));
        assert!(text.ends_with("SECTION\n"));
    }

    #[test]
    fn the_section_is_appended_once_and_then_replaced_in_place() {
        let first = sample().markdown_section("cmd", "day one");
        let doc = upsert_section(
            Some("# Keel benchmarks\n\n## Other\n\nkeep me\n"),
            "boot",
            &first,
        );
        assert!(doc.starts_with("# Keel benchmarks\n\n## Other\n\nkeep me\n\n"));
        assert!(doc.ends_with(&first));
        let doc = format!("{doc}\n## Later section\n\nkeep me too\n");

        let second = sample().markdown_section("cmd", "day two");
        let updated = upsert_section(Some(&doc), "boot", &second);
        assert!(!updated.contains("day one"));
        assert_eq!(updated.matches(&section_markers("boot").0).count(), 1);
        assert!(updated.contains("keep me\n\n"));
        assert!(updated.contains(&format!("{second}\n## Later section\n\nkeep me too\n")));
    }

    #[test]
    fn sections_of_different_benchmarks_do_not_replace_each_other() {
        let doc = upsert_section(None, "boot", "BOOT\n");
        let (b, e) = section_markers("api");
        let doc = upsert_section(Some(&doc), "api", &format!("{b}\nAPI one\n{e}\n"));
        let doc = upsert_section(Some(&doc), "api", &format!("{b}\nAPI two\n{e}\n"));
        assert!(doc.contains("BOOT") && doc.contains("API two") && !doc.contains("API one"));
    }

    #[test]
    fn an_unterminated_section_is_left_alone_and_a_new_one_appended() {
        let broken = format!("# B\n\n{}\nhalf", section_markers("boot").0);
        let updated = upsert_section(Some(&broken), "boot", "NEW\n");
        assert!(updated.starts_with(&broken));
        assert!(updated.ends_with("\n\nNEW\n"));
    }

    #[test]
    fn cpu_model_is_the_first_model_name() {
        assert_eq!(
            cpu_model("processor\t: 0\nmodel name\t: AMD EPYC 7B13\nmodel name\t: other\n"),
            Some("AMD EPYC 7B13".into())
        );
        assert_eq!(cpu_model("processor\t: 0\n"), None);
        assert_eq!(cpu_model("model name\t:   \n"), None);
    }
}

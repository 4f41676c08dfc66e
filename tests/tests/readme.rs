//! The README's `keel.*` options table says what the kernel really accepts (no QEMU needed).

use keel_tests::paths::workspace_root;

/// The table row the README must have for one option (`|` inside a cell is escaped).
fn expected_row(spec: &keel_cmdline::OptionSpec) -> String {
    format!(
        "| `keel.{}` | {} | `{}` | {} |",
        spec.name,
        spec.accepted.replace('|', "\\|"),
        spec.default,
        spec.help
    )
}

#[test]
fn readme_documents_every_keel_option_as_declared() {
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).unwrap_or_default();
    let rows: Vec<&str> = readme
        .lines()
        .filter(|line| line.starts_with("| `keel."))
        .collect();
    for spec in keel_cmdline::OPTIONS {
        let row = expected_row(spec);
        assert!(
            rows.contains(&row.as_str()),
            "README.md lacks the row\n{row}\nrows: {rows:#?}"
        );
    }
    assert_eq!(
        rows.len(),
        keel_cmdline::OPTIONS.len(),
        "README documents options the kernel lacks: {rows:#?}"
    );
}

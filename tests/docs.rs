//! The README must describe what the code reads.

use data_ingestion_api::config::SETTINGS;

#[test]
fn the_readme_settings_table_lists_every_setting_the_code_reads() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let rows: Vec<&str> = readme.lines().filter(|l| l.starts_with("| `")).collect();
    for setting in SETTINGS {
        let row = rows.iter().find(|r| r.starts_with(&format!("| `{}` |", setting.name)));
        let row = row.unwrap_or_else(|| panic!("README.md has no settings row for {}", setting.name));
        let default =
            if setting.default.is_empty() { "–".to_owned() } else { format!("`{}`", setting.default) };
        assert!(
            row.contains(&format!("| {default} |")),
            "README.md states another default for {}: {row}",
            setting.name
        );
    }
}

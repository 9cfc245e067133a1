//! The documentation stays true to the code: every link between its pages leads somewhere,
//! every option `docs/tools.md` documents is one its tool takes, and every setting of
//! `config.yaml` is described in `docs/configuration.md`.

use cm_common::config::Config;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// README.md and every page in docs/.
fn pages() -> Vec<PathBuf> {
    let mut pages = vec![root().join("README.md")];
    let docs = std::fs::read_dir(root().join("docs")).expect("docs/");
    pages.extend(docs.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "md")));
    pages
}

/// The targets of the Markdown links `[text](target)` in `text`.
fn links(text: &str) -> Vec<String> {
    text.split("](").skip(1).filter_map(|rest| rest.split_once(')').map(|(target, _)| target.to_string())).collect()
}

#[test]
fn every_link_between_the_pages_leads_to_a_file_that_exists() {
    let mut broken = vec![];
    for page in pages() {
        let text = std::fs::read_to_string(&page).expect("page");
        for target in links(&text) {
            if target.starts_with("http") || target.starts_with('#') {
                continue;
            }
            let path = target.split('#').next().unwrap_or_default();
            let resolved = page.parent().expect("dir").join(path);
            if !resolved.exists() {
                broken.push(format!("{}: {target}", page.display()));
            }
        }
    }
    assert!(broken.is_empty(), "broken links: {broken:#?}");
    assert!(pages().len() >= 9, "README and the eight docs pages");
}

#[test]
fn every_option_that_tools_md_documents_is_in_its_tools_help() {
    let text = std::fs::read_to_string(root().join("docs/tools.md")).expect("tools.md");
    let mut checked = 0;
    for section in text.split("\n## ").skip(1) {
        let tool = section.split_whitespace().next().unwrap_or_default();
        let help = Command::new(cm_testkit::bin(tool)).arg("--help").output().expect("--help");
        let help = String::from_utf8_lossy(&help.stdout).to_string();
        assert!(!help.is_empty(), "{tool} --help printed nothing");
        for row in section.lines().filter(|l| l.starts_with("| `-")) {
            let first_cell = row.split('|').nth(1).unwrap_or_default();
            for option in first_cell.split('`').skip(1).step_by(2) {
                let flag = option.split_whitespace().next().unwrap_or_default();
                assert!(help.contains(flag), "docs/tools.md documents {flag} for {tool}, which its --help lacks");
                checked += 1;
            }
        }
    }
    assert!(checked >= 20, "only {checked} options found in docs/tools.md");
}

/// Every setting's dotted name (`limits.max_jobs`), from the defaults themselves.
fn settings(value: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
    if let serde_json::Value::Object(map) = value {
        for (key, inner) in map {
            let name = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
            if inner.is_object() {
                settings(inner, &name, out);
            } else {
                out.push(name);
            }
        }
    }
}

#[test]
fn every_setting_is_described_in_configuration_md() {
    let text = std::fs::read_to_string(root().join("docs/configuration.md")).expect("configuration.md");
    let mut names = vec![];
    settings(&serde_json::to_value(Config::default()).expect("json"), "", &mut names);
    let missing: Vec<&String> = names.iter().filter(|name| !text.contains(&format!("`{name}`"))).collect();
    assert!(missing.is_empty(), "docs/configuration.md does not describe {missing:?}");
    assert!(names.len() > 30, "{names:?}");
}

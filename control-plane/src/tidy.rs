//! Architecture Invariants (docs/ARCHITECTURE.md) checked against the sources, like
//! rust-analyzer's tidy tests.

use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            out.push(path);
        }
    }
}

fn plane_sources() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut paths = Vec::new();
    sources(&root, &mut paths);
    paths.sort();
    paths
        .into_iter()
        .map(|path| (path.strip_prefix(&root).unwrap().display().to_string(), std::fs::read_to_string(&path).unwrap()))
        .collect()
}

/// Whether a source text names the `api` module from outside it.
fn imports_api(text: &str) -> bool {
    text.lines().map(str::trim).filter(|line| !line.starts_with("//")).any(|line| {
        line.contains("crate::api") || line.contains("super::api") || (line.starts_with("use crate::{") && line.contains("api"))
    })
}

#[test]
fn nothing_outside_api_the_cli_and_the_demo_imports_api() {
    let offenders: Vec<String> = plane_sources()
        .into_iter()
        .filter(|(path, _)| !["api/", "cli/", "demo/"].iter().any(|allowed| path.starts_with(allowed)))
        .filter(|(path, _)| path != "lib.rs" && path != "tidy.rs")
        .filter(|(_, text)| imports_api(text))
        .map(|(path, _)| path)
        .collect();
    assert!(offenders.is_empty(), "domain code depends on the HTTP layer: {offenders:?}");
    // lib.rs declares the module and starts the server; it may name `api::router` only.
    let lib = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs")).unwrap();
    let code = lib.split("#[cfg(test)]").next().unwrap_or("");
    let uses: Vec<&str> = code.lines().filter(|line| line.contains("api::") && !line.trim_start().starts_with("//")).collect();
    assert!(uses.iter().all(|line| line.contains("api::router(")), "lib.rs uses the API beyond its router: {uses:?}");
}

#[test]
fn the_check_sees_an_import_of_api() {
    assert!(imports_api("use crate::api::views::SlotView;"));
    assert!(imports_api("    let x = crate::api::splits::assign(core);"));
    assert!(imports_api("use crate::{api, store};"));
    assert!(!imports_api("//! says crate::api in a comment\nuse crate::store;"));
}

#[test]
fn every_source_file_says_what_it_is_for() {
    let undocumented: Vec<String> =
        plane_sources().into_iter().filter(|(_, text)| !text.starts_with("//!")).map(|(path, _)| path).collect();
    assert!(undocumented.is_empty(), "files without a //! line: {undocumented:?}");
}

//! The import graph of `src/` follows the layer picture in docs/architecture.md: a module
//! may use modules of lower layers only (which also rules out cycles between modules). The
//! picture is the one place the order is written; this test reads it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The layers, top first, from the fenced block after `<!-- layers -->`: each row
/// `│ a · b │ comment` is one layer.
fn layers() -> Vec<Vec<String>> {
    let doc = std::fs::read_to_string(Path::new(ROOT).join("docs/architecture.md"))
        .expect("docs/architecture.md");
    let after = doc
        .split_once("<!-- layers -->")
        .expect("docs/architecture.md has a `<!-- layers -->` marker before the layer picture")
        .1;
    let block = after
        .split("```")
        .nth(1)
        .expect("a fenced block follows the marker");
    block
        .lines()
        .filter_map(|l| l.trim().strip_prefix('│'))
        .filter_map(|l| l.split_once('│').map(|(cell, _)| cell))
        .map(|cell| {
            cell.split(|c: char| c == '·' || c.is_whitespace())
                .filter(|m| !m.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter(|row| !row.is_empty())
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file of `src/` belongs to; None for the crate root and binaries.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    match first {
        "lib.rs" | "main.rs" | "bin" => None,
        f => Some(f.trim_end_matches(".rs").to_owned()),
    }
}

/// Every `crate::<module>` a file refers to in code (comments left out).
fn uses(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or_default();
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.insert(name);
            }
        }
    }
    found
}

#[test]
fn every_import_goes_down_the_layer_picture() {
    let layers = layers();
    assert!(
        layers.len() >= 5,
        "the layer picture was not found: {layers:?}"
    );
    let rank: BTreeMap<&str, usize> = layers
        .iter()
        .enumerate()
        .flat_map(|(i, row)| row.iter().map(move |m| (m.as_str(), i)))
        .collect();
    let src = Path::new(ROOT).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut problems = Vec::new();
    for file in &files {
        let Some(module) = module_of(&src, file) else {
            continue;
        };
        let Some(&from) = rank.get(module.as_str()) else {
            problems.push(format!(
                "module `{module}` is not in the layer picture of docs/architecture.md"
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).expect("read");
        for used in uses(&text) {
            if used == module {
                continue;
            }
            match rank.get(used.as_str()) {
                Some(&to) if to > from => {}
                Some(_) => problems.push(format!(
                    "{}: `{module}` uses `crate::{used}`, which is not in a lower layer",
                    file.strip_prefix(ROOT).unwrap_or(file).display()
                )),
                None => problems.push(format!(
                    "{}: `crate::{used}` is not in the layer picture",
                    file.strip_prefix(ROOT).unwrap_or(file).display()
                )),
            }
        }
    }
    problems.sort();
    problems.dedup();
    assert!(
        problems.is_empty(),
        "layering broken:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_check_sees_an_import_that_climbs() {
    // A use of a higher layer, as the check reads it.
    let found = uses("use crate::gateway::Gateway; // crate::server in a comment\n");
    assert_eq!(found.into_iter().collect::<Vec<_>>(), vec!["gateway"]);
}

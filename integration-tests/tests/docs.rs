//! The documentation against the tree: every relative link reaches a file,
//! every `#anchor` a heading, and every `make` target a user is told to run
//! exists. (The `sandbox-router ...` lines are parsed with the CLI itself in
//! control's `cli` tests.)

use std::path::Path;

use testbed::docs;

fn relative(path: &Path) -> String {
    path.strip_prefix(testbed::workspace_root())
        .unwrap_or(path)
        .display()
        .to_string()
}

#[test]
fn the_readme_and_docs_are_found() {
    let files: Vec<String> = docs::documentation_files()
        .iter()
        .map(|p| relative(p))
        .collect();
    for expected in ["README.md", "docs/README.md", "fuzz/README.md"] {
        assert!(files.iter().any(|f| f == expected), "{expected}: {files:?}");
    }
}

#[test]
fn every_relative_link_and_anchor_resolves() {
    let mut broken = Vec::new();
    for path in docs::documentation_files() {
        let doc = docs::read(&path).unwrap();
        let dir = path.parent().unwrap();
        for (line, link) in &doc.links {
            if link.contains("://") || link.starts_with("mailto:") {
                continue;
            }
            let (file, anchor) = match link.split_once('#') {
                Some((file, anchor)) => (file, Some(anchor)),
                None => (link.as_str(), None),
            };
            let target = if file.is_empty() {
                path.clone()
            } else if let Some(from_root) = file.strip_prefix('/') {
                testbed::workspace_root().join(from_root)
            } else {
                dir.join(file)
            };
            let at = format!("{}:{line}: {link}", relative(&path));
            if !target.exists() {
                broken.push(format!("{at}: no such file"));
                continue;
            }
            let Some(anchor) = anchor else { continue };
            if target.extension().is_some_and(|e| e == "md") {
                let anchors = docs::read(&target).unwrap().anchors;
                if !anchors.contains(anchor) {
                    broken.push(format!("{at}: no heading makes #{anchor}"));
                }
            } else if !anchor.starts_with('L') {
                // Into a non-Markdown file only GitHub's line anchors (#L10) work.
                broken.push(format!("{at}: #{anchor} in a file without headings"));
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn every_make_target_named_in_the_docs_exists() {
    let defined = docs::makefile_targets().unwrap();
    for expected in ["test", "demo", "help"] {
        assert!(defined.contains(expected), "{expected}: {defined:?}");
    }
    let mut missing = Vec::new();
    let mut named = 0;
    for path in docs::documentation_files() {
        for (line, target) in docs::make_targets(&docs::read(&path).unwrap()) {
            named += 1;
            if !defined.contains(&target) {
                missing.push(format!("{}:{line}: make {target}", relative(&path)));
            }
        }
    }
    assert!(
        named > 10,
        "only {named} make commands found: is the parser blind?"
    );
    assert!(
        missing.is_empty(),
        "no such target:\n{}",
        missing.join("\n")
    );
}

#[test]
fn the_readme_quick_start_is_what_ci_runs() {
    let readme = docs::read(&testbed::workspace_root().join("README.md")).unwrap();
    let typed: Vec<String> = docs::commands(&readme, "make")
        .into_iter()
        .map(|(_, args)| args.join(" "))
        .collect();
    let ci = std::fs::read_to_string(testbed::workspace_root().join(".ci/run")).unwrap();
    for command in ["test", "demo"] {
        assert!(typed.iter().any(|t| t == command), "README: {typed:?}");
        assert!(
            ci.lines()
                .any(|l| l.trim_start().starts_with(&format!("make {command}"))
                    || l.contains(&format!("'make {command}'"))),
            ".ci/run does not run `make {command}`"
        );
    }
}

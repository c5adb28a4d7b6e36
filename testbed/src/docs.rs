//! The project's Markdown as a user reads it: the links they follow, the
//! headings those links name, and the commands the code blocks tell them to
//! type. Tests check these against the tree (integration-tests/tests/docs.rs)
//! and against the CLI (control's `cli` tests), so a renamed target, flag,
//! file or heading fails CI instead of a user.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use pulldown_cmark::{CodeBlockKind, Event, Options, Parser, Tag, TagEnd};

use crate::workspace_root;

/// One Markdown file, parsed.
#[derive(Debug, Default)]
pub struct Doc {
    pub path: PathBuf,
    /// Link and image destinations, with the line they are on.
    pub links: Vec<(usize, String)>,
    /// The anchors its headings define (GitHub's slugs).
    pub anchors: HashSet<String>,
    /// Lines of fenced code blocks, with their line number.
    pub code_lines: Vec<(usize, String)>,
    /// Inline code spans (`make demo` in prose), with their line number.
    pub inline_code: Vec<(usize, String)>,
}

/// Every Markdown file of the repository a reader may open: README.md,
/// docs/ and the READMEs and result pages beside the code. Build output,
/// fuzzing corpora and hidden directories are not documentation.
pub fn documentation_files() -> Vec<PathBuf> {
    let mut found = Vec::new();
    walk(&workspace_root(), &mut found);
    found.sort();
    found
}

fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
    const SKIP: [&str; 4] = ["target", "corpus", "artifacts", "node_modules"];
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || SKIP.contains(&name.as_str()) {
            continue;
        }
        if path.is_dir() {
            walk(&path, found);
        } else if name.ends_with(".md") {
            found.push(path);
        }
    }
}

/// Reads and parses one Markdown file.
pub fn read(path: &Path) -> anyhow::Result<Doc> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    Ok(parse(path, &text))
}

/// Parses Markdown text (`path` only names it).
pub fn parse(path: &Path, text: &str) -> Doc {
    let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
    let mut doc = Doc {
        path: path.to_path_buf(),
        ..Doc::default()
    };
    let mut slugs = Slugs::default();
    let mut heading: Option<String> = None;
    let mut in_fence = false;
    for (event, range) in Parser::new_ext(text, Options::all()).into_offset_iter() {
        match event {
            Event::Start(Tag::Heading { id, .. }) => {
                // An explicit `{#id}` adds an anchor; the slug is made anyway.
                if let Some(id) = id {
                    doc.anchors.insert(id.to_string());
                }
                heading = Some(String::new());
            }
            Event::End(TagEnd::Heading(_)) => {
                if let Some(text) = heading.take() {
                    doc.anchors.insert(slugs.next(&text));
                }
            }
            Event::Start(Tag::Link { dest_url, .. } | Tag::Image { dest_url, .. }) => {
                doc.links.push((line_of(range.start), dest_url.to_string()));
            }
            Event::Start(Tag::CodeBlock(CodeBlockKind::Fenced(_))) => in_fence = true,
            Event::End(TagEnd::CodeBlock) => in_fence = false,
            Event::Text(t) if in_fence => {
                // One Text event may hold the whole block: split it into lines.
                let first = line_of(range.start);
                for (i, line) in t.lines().enumerate() {
                    doc.code_lines.push((first + i, line.to_string()));
                }
            }
            Event::Text(t) => {
                if let Some(h) = heading.as_mut() {
                    h.push_str(&t);
                }
            }
            Event::Code(t) => {
                if let Some(h) = heading.as_mut() {
                    h.push_str(&t);
                }
                doc.inline_code.push((line_of(range.start), t.to_string()));
            }
            Event::Html(html) | Event::InlineHtml(html) => {
                // <a id="..."> / <a name="..."> anchors.
                for attr in ["id=\"", "name=\""] {
                    if let Some(rest) = html.split(attr).nth(1) {
                        if let Some(id) = rest.split('"').next() {
                            doc.anchors.insert(id.to_string());
                        }
                    }
                }
            }
            _ => {}
        }
    }
    doc
}

/// GitHub's heading anchors: lower case; letters, digits, `-` and `_` kept,
/// spaces turned into `-`, everything else dropped; a repeated slug gets
/// `-1`, `-2`, ...
#[derive(Default)]
struct Slugs {
    seen: HashSet<String>,
}

impl Slugs {
    fn next(&mut self, heading: &str) -> String {
        let base: String = heading
            .trim()
            .to_lowercase()
            .chars()
            .filter_map(|c| match c {
                ' ' => Some('-'),
                c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                _ => None,
            })
            .collect();
        let mut slug = base.clone();
        let mut n = 0;
        while !self.seen.insert(slug.clone()) {
            n += 1;
            slug = format!("{base}-{n}");
        }
        slug
    }
}

/// The commands of `program` that the code blocks tell a user to type, as
/// argument vectors (without the program), with their line. Understands a
/// `$ ` prompt, `\` continuations, `VAR=value` prefixes, `&&`/`;` chains,
/// pipes, redirections and trailing `#` comments.
pub fn commands(doc: &Doc, program: &str) -> Vec<(usize, Vec<String>)> {
    let mut found = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for (line_no, line) in &doc.code_lines {
        let (start, mut text) = match pending.take() {
            Some((start, so_far)) => (start, so_far + " " + line.trim()),
            None => (*line_no, line.trim().to_string()),
        };
        if let Some(stripped) = text.strip_suffix('\\') {
            pending = Some((start, stripped.trim_end().to_string()));
            continue;
        }
        if let Some(stripped) = text.strip_prefix("$ ") {
            text = stripped.to_string();
        }
        for command in split_chain(&text) {
            let Some(words) = shlex::split(&command) else {
                continue;
            };
            let mut words = words
                .into_iter()
                .skip_while(|w| w.contains('=') && !w.starts_with('-'));
            let Some(first) = words.next() else {
                continue;
            };
            if first == program || first.ends_with(&format!("/{program}")) {
                found.push((start, words.collect()));
            }
        }
    }
    found
}

/// `a && b; c | d > f # note` -> [`a`, `b`, `c`]: the commands whose
/// arguments a user types (what a pipe feeds or a redirection names is not
/// an argument).
fn split_chain(line: &str) -> Vec<String> {
    let without_comment = match line.find(" #") {
        Some(i) => &line[..i],
        None => line,
    };
    without_comment
        .split("&&")
        .flat_map(|part| part.split(';'))
        .filter_map(|part| part.split('|').next())
        .map(|part| part.split(" >").next().unwrap_or(part).trim().to_string())
        .filter(|part| !part.is_empty())
        .collect()
}

/// The `make` targets named anywhere in the docs, code blocks and inline code
/// alike (`make test`, `make bench FOO=1` -> `bench`), with their line.
pub fn make_targets(doc: &Doc) -> Vec<(usize, String)> {
    let inline = doc.inline_code.iter().map(|(n, code)| (*n, code.clone()));
    let mut named = Vec::new();
    for (line, code) in doc.code_lines.iter().cloned().chain(inline) {
        for (_, args) in commands(
            &Doc {
                code_lines: vec![(line, code)],
                ..Doc::default()
            },
            "make",
        ) {
            named.extend(
                args.into_iter()
                    .filter(|a| !a.starts_with('-') && !a.contains('='))
                    .map(|target| (line, target)),
            );
        }
    }
    named
}

/// The targets the Makefile defines.
pub fn makefile_targets() -> anyhow::Result<HashSet<String>> {
    let path = workspace_root().join("Makefile");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    Ok(text
        .lines()
        .filter(|l| !l.starts_with(['\t', '#', ' ', '.', '$']))
        .filter_map(|l| l.split_once(':'))
        .filter(|(_, rest)| !rest.starts_with('='))
        .flat_map(|(targets, _)| targets.split_whitespace().map(str::to_string))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(text: &str) -> Doc {
        parse(Path::new("t.md"), text)
    }

    #[test]
    fn headings_become_github_anchors() {
        let d = doc("# sandbox-router\n## Edge mode: trust at the ingress\n## `make demo` (two hops)\n## Quick start\n## Quick start\n");
        for anchor in [
            "sandbox-router",
            "edge-mode-trust-at-the-ingress",
            "make-demo-two-hops",
            "quick-start",
            "quick-start-1",
        ] {
            assert!(d.anchors.contains(anchor), "{anchor}: {:?}", d.anchors);
        }
    }

    #[test]
    fn links_code_and_commands_are_found_with_their_lines() {
        let d = doc("See [docs](docs/a.md#x).\n\n```sh\n$ sandbox-router sandbox create a \\\n    --fork b=1.2.3.4:5 # note\nKEY=1 target/debug/sandbox-router status | jq . && make test demo V=1\n```\nRun `make bench`.\n");
        assert_eq!(d.links, vec![(1, "docs/a.md#x".to_string())]);
        let cmds = commands(&d, "sandbox-router");
        assert_eq!(
            cmds,
            vec![
                (
                    4,
                    ["sandbox", "create", "a", "--fork", "b=1.2.3.4:5"]
                        .map(String::from)
                        .to_vec()
                ),
                (6, vec!["status".to_string()]),
            ]
        );
        let targets: Vec<_> = make_targets(&d).into_iter().map(|(_, t)| t).collect();
        assert_eq!(targets, ["test", "demo", "bench"]);
    }
}

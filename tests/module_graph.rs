//! No import circle among the modules of `src/`: reads every `use` and every inline
//! `crate::`/`super::`/`self::` path of each file (and `use child::...` of a module's own
//! children), resolves it to the file of the deepest module it names, and fails on any circle, at
//! two levels: among files, and among the crate's top-level modules (`api`, `db`, `runner`, ...).
//! Not imports: a module's `mod` lines, its `#[cfg(test)]` items, and a `pub use` of its own
//! descendants (a facade: `db/mod.rs` re-exporting `db::runs::DeleteRun` for its callers).
//! `src/main.rs` is its own crate and is left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module path from the crate root: `["api", "runs"]` for `src/api/runs.rs`.
type Module = Vec<String>;

fn module_of(src: &Path, file: &Path) -> Module {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without comments, string literals and `#[cfg(test)]` items.
fn code(text: &str) -> String {
    without_tests(&without_literals(text))
}

/// `code` without each item that follows a `#[cfg(test)]`: up to its `;`, or its `{...}` block.
fn without_tests(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(i) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..i]);
        let item = &rest[i..];
        let end = match item.find([';', '{']) {
            Some(j) if item.as_bytes()[j] == b';' => j + 1,
            Some(j) => {
                let mut depth = 0;
                let mut end = item.len();
                for (k, c) in item[j..].char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = j + k + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                end
            }
            None => item.len(),
        };
        rest = &item[end..];
    }
    out.push_str(rest);
    out
}

/// `text` without comments and the contents of string and char literals.
fn without_literals(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '"' => {
                let mut escaped = false;
                for c in chars.by_ref() {
                    match (escaped, c) {
                        (false, '\\') => escaped = true,
                        (false, '"') => break,
                        _ => escaped = false,
                    }
                }
                out.push_str("\"\"");
            }
            // A char literal ('"', '{'); a lifetime ('a) has no closing quote right after.
            '\'' => {
                let ahead: Vec<char> = chars.clone().take(3).collect();
                let len = match ahead.as_slice() {
                    ['\\', _, '\''] => 3,
                    [_, '\'', ..] => 2,
                    _ => 0,
                };
                for _ in 0..len {
                    chars.next();
                }
                out.push_str(if len > 0 { "' '" } else { "'" });
            }
            _ => out.push(c),
        }
    }
    out
}

/// Every path a `use` tree names: `a::{b, c::{d}}` gives `a::b` and `a::c::d`.
fn expand(tree: &str) -> Vec<String> {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        let path = tree.split(" as ").next().unwrap_or(tree).trim();
        return vec![path.to_string()];
    };
    let prefix = &tree[..open];
    let inner = &tree[open + 1..tree.rfind('}').unwrap()];
    let mut parts = vec![];
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
        .into_iter()
        .filter(|p| !p.trim().is_empty())
        .flat_map(expand)
        .map(|p| match p.as_str() {
            "self" => prefix.trim_end_matches("::").to_string(),
            _ => format!("{prefix}{p}"),
        })
        .collect()
}

/// The paths a file names, made absolute from the crate root.
fn imports(modules: &BTreeSet<Module>, module: &Module, code: &str) -> Vec<Module> {
    let mut paths = vec![];
    // A `pub use` of a descendant, which is a facade, not an import.
    let mut facades = vec![];
    // `use` items, which may span lines and hold brace groups.
    let mut rest = code;
    while let Some(i) = rest.find("use ") {
        let head = &rest[..i];
        let before = head.chars().last();
        let after = &rest[i + 4..];
        rest = after;
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let public = head.trim_end().ends_with("pub") || head.trim_end().ends_with(')');
        if let Some(end) = after.find(';') {
            let found = expand(&after[..end]);
            match public {
                true => facades.extend(found),
                false => paths.extend(found),
            }
        }
    }
    // Inline paths in code: `crate::a::b(...)`, `super::c::D`.
    for start in ["crate::", "super::", "self::"] {
        for (i, _) in code.match_indices(start) {
            let before = code[..i].chars().last();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let end = code[i..]
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .map_or(code.len(), |n| i + n);
            paths.push(code[i..end].to_string());
        }
    }
    let absolute = |p: &String| -> Option<Module> {
        let segments: Vec<&str> = p.split("::").map(str::trim).collect();
        let first = *segments.first()?;
        let mut child = module.clone();
        child.push(first.to_string());
        let mut abs: Module = match first {
            "crate" => vec![],
            "super" | "self" => module.clone(),
            _ if modules.contains(&child) => module.clone(),
            _ => return None, // another crate
        };
        for (n, s) in segments.iter().enumerate() {
            match *s {
                "crate" if n == 0 => {}
                "self" if n == 0 => {}
                "super" => {
                    abs.pop();
                }
                "" | "*" => {}
                s => abs.push(s.to_string()),
            }
        }
        Some(abs)
    };
    let descendant = |abs: &Module| abs.len() > module.len() && abs.starts_with(module);
    let facades = facades
        .iter()
        .filter_map(absolute)
        .filter(|abs| !descendant(abs));
    paths.iter().filter_map(absolute).chain(facades).collect()
}

/// The deepest module of `modules` that `path` is in.
fn resolve(modules: &BTreeSet<Module>, path: &Module) -> Module {
    (0..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|m| modules.contains(m))
        .unwrap_or_default()
}

/// The circles of a graph: its strongly connected components of more than one node (Tarjan).
fn circles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        found: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.graph.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = vec![];
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.found.push(component);
            }
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: vec![],
        on_stack: BTreeSet::new(),
        found: vec![],
    };
    for v in graph.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.found
}

fn name(m: &Module) -> String {
    match m.is_empty() {
        true => "crate".to_string(),
        false => m.join("::"),
    }
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = vec![];
    rust_files(&src, &mut files);
    files.retain(|f| f != &src.join("main.rs"));
    let modules: BTreeSet<Module> = files.iter().map(|f| module_of(&src, f)).collect();
    let mut by_file: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut by_top: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut why_file: BTreeMap<(String, String), String> = BTreeMap::new();
    let mut why_top: BTreeMap<(String, String), String> = BTreeMap::new();
    for file in &files {
        let module = module_of(&src, file);
        let text = std::fs::read_to_string(file).unwrap();
        for path in imports(&modules, &module, &code(&text)) {
            let to = resolve(&modules, &path);
            if to == module {
                continue;
            }
            let (from_name, to_name) = (name(&module), name(&to));
            why_file
                .entry((from_name.clone(), to_name.clone()))
                .or_insert_with(|| format!("{from_name} uses {}", name(&path)));
            by_file.entry(from_name).or_default().insert(to_name);
            let (a, b) = (module.first(), to.first());
            if let (Some(a), Some(b)) = (a, b)
                && a != b
            {
                why_top
                    .entry((a.clone(), b.clone()))
                    .or_insert_with(|| format!("{} uses {}", name(&module), name(&path)));
                by_top.entry(a.clone()).or_default().insert(b.clone());
            }
        }
    }
    let mut report = String::new();
    for (level, graph, why) in [
        ("files", &by_file, &why_file),
        ("top-level modules", &by_top, &why_top),
    ] {
        for circle in circles(graph) {
            report.push_str(&format!("a circle among {level}: {}\n", circle.join(", ")));
            for a in &circle {
                for b in graph.get(a).into_iter().flatten() {
                    if circle.contains(b) {
                        report.push_str(&format!("    {}\n", why[&(a.clone(), b.clone())]));
                    }
                }
            }
        }
    }
    assert!(report.is_empty(), "{report}");
}

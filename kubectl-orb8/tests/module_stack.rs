//! The client's modules form a stack: no module imports one that imports it back, neither
//! between files nor between top-level modules (`k8s` as a whole, `transport`, `cli`, ...).
//!
//! This reads every source file of the crate (and of `orb8-flowspec`), lists each reference
//! from one module to another (`crate::`, `super::`, `self::` and a parent naming its child,
//! in `use` lines, paths in code and test modules alike; comments and strings are skipped),
//! and fails on a cycle. Run with `--nocapture` to see the edges and the layers they form;
//! `ORB8_STACK_SRC=path/to/src` checks another crate's sources the same way.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module path inside a crate: `[]` is the crate root, `["k8s", "cluster"]` is `k8s::cluster`.
type ModPath = Vec<String>;

fn name(m: &ModPath) -> String {
    if m.is_empty() {
        "crate".to_string()
    } else {
        m.join("::")
    }
}

/// Every module file under `src` (not `main.rs`, the binary's own crate root) by module path.
fn module_files(src: &Path) -> BTreeMap<ModPath, PathBuf> {
    fn walk(dir: &Path, prefix: &[String], out: &mut BTreeMap<ModPath, PathBuf>) {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
            .map(|e| e.expect("directory entry").path())
            .collect();
        entries.sort();
        for path in entries {
            let stem = path
                .file_stem()
                .and_then(|s| s.to_str())
                .expect("utf-8 file name")
                .to_string();
            if path.is_dir() {
                let mut p = prefix.to_vec();
                p.push(stem);
                walk(&path, &p, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let module = match stem.as_str() {
                    "main" if prefix.is_empty() => continue,
                    "lib" if prefix.is_empty() => Vec::new(),
                    "mod" => prefix.to_vec(),
                    _ => {
                        let mut p = prefix.to_vec();
                        p.push(stem);
                        p
                    }
                };
                out.insert(module, path);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(src, &[], &mut out);
    out
}

/// The source with comments, string literals and char literals blanked out (same length, so
/// nothing that looks like a path inside them is read).
fn code_only(text: &str) -> Vec<char> {
    let c: Vec<char> = text.chars().collect();
    let mut out = c.clone();
    let blank = |out: &mut Vec<char>, from: usize, to: usize| {
        for ch in out.iter_mut().take(to.min(c.len())).skip(from) {
            if *ch != '\n' {
                *ch = ' ';
            }
        }
    };
    let mut i = 0;
    while i < c.len() {
        let next = c.get(i + 1).copied();
        if c[i] == '/' && next == Some('/') {
            let end = (i..c.len()).find(|&j| c[j] == '\n').unwrap_or(c.len());
            blank(&mut out, i, end);
            i = end;
        } else if c[i] == '/' && next == Some('*') {
            let mut depth = 0;
            let mut j = i;
            while j < c.len() {
                if c[j] == '/' && c.get(j + 1) == Some(&'*') {
                    depth += 1;
                    j += 2;
                } else if c[j] == '*' && c.get(j + 1) == Some(&'/') {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            blank(&mut out, i, j);
            i = j;
        } else if c[i] == 'r'
            && (next == Some('"') || next == Some('#'))
            && (i == 0 || !is_ident(c[i - 1]))
        {
            // Raw string: r"..." or r#"..."#.
            let hashes = c[i + 1..].iter().take_while(|ch| **ch == '#').count();
            if c.get(i + 1 + hashes) != Some(&'"') {
                i += 1;
                continue;
            }
            let mut j = i + 2 + hashes;
            while j < c.len() {
                if c[j] == '"'
                    && c[j + 1..]
                        .iter()
                        .take(hashes)
                        .filter(|ch| **ch == '#')
                        .count()
                        == hashes
                {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            blank(&mut out, i, j);
            i = j;
        } else if c[i] == '"' {
            let mut j = i + 1;
            while j < c.len() && c[j] != '"' {
                j += if c[j] == '\\' { 2 } else { 1 };
            }
            blank(&mut out, i, j + 1);
            i = j + 1;
        } else if c[i] == '\'' {
            // A char literal ('x', '\n', '"'), or a lifetime ('a), which is left alone.
            if next == Some('\\') {
                let end = (i + 2..c.len()).find(|&j| c[j] == '\'').unwrap_or(c.len());
                blank(&mut out, i, end + 1);
                i = end + 1;
            } else if c.get(i + 2) == Some(&'\'') {
                blank(&mut out, i, i + 3);
                i += 3;
            } else {
                i += 1;
            }
        } else {
            i += 1;
        }
    }
    out
}

fn is_ident(ch: char) -> bool {
    ch.is_alphanumeric() || ch == '_'
}

/// Reads `ident (:: ident)*` and an optional `::{a, b::c, ...}` group at `i`; returns every full
/// path it names (a group's `self` names the group's prefix) and where it ended.
fn read_paths(c: &[char], mut i: usize) -> (Vec<Vec<String>>, usize) {
    let skip_ws = |c: &[char], mut i: usize| {
        while i < c.len() && c[i].is_whitespace() {
            i += 1;
        }
        i
    };
    let mut segments = Vec::new();
    loop {
        i = skip_ws(c, i);
        let start = i;
        while i < c.len() && is_ident(c[i]) {
            i += 1;
        }
        if i == start {
            // `::*`, `::<T>` or the end: the path stops here.
            break;
        }
        segments.push(c[start..i].iter().collect::<String>());
        let j = skip_ws(c, i);
        if !(c.get(j) == Some(&':') && c.get(j + 1) == Some(&':')) {
            break;
        }
        let k = skip_ws(c, j + 2);
        if c.get(k) != Some(&'{') {
            i = k;
            continue;
        }
        let mut paths = Vec::new();
        let mut at = k + 1;
        loop {
            at = skip_ws(c, at);
            match c.get(at) {
                None => return (paths, at),
                Some('}') => return (paths, at + 1),
                Some(_) => {
                    let (inner, end) = read_paths(c, at);
                    for p in inner {
                        let mut full = segments.clone();
                        full.extend(p.into_iter().filter(|s| s != "self"));
                        paths.push(full);
                    }
                    // Past the item and whatever follows it up to the next `,` or `}`.
                    at = end.max(at + 1);
                    while at < c.len() && c[at] != ',' && c[at] != '}' {
                        at += 1;
                    }
                    if c.get(at) == Some(&',') {
                        at += 1;
                    }
                }
            }
        }
    }
    (vec![segments], i)
}

/// The module paths `file` (module `me`) refers to, with how often; `known` are all modules.
fn references(me: &ModPath, text: &str, known: &BTreeSet<ModPath>) -> BTreeMap<ModPath, usize> {
    let c = code_only(text);
    let mut out: BTreeMap<ModPath, usize> = BTreeMap::new();
    // Inline `mod name {` blocks: (name, brace depth inside them).
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        if ch == '{' {
            depth += 1;
            i += 1;
            continue;
        }
        if ch == '}' {
            if inline.last().is_some_and(|(_, d)| *d == depth) {
                inline.pop();
            }
            depth = depth.saturating_sub(1);
            i += 1;
            continue;
        }
        if !is_ident(ch) || (i > 0 && (is_ident(c[i - 1]) || c[i - 1] == ':')) {
            i += 1;
            continue;
        }
        let end = (i..c.len()).find(|&j| !is_ident(c[j])).unwrap_or(c.len());
        let word: String = c[i..end].iter().collect();
        if word == "mod" {
            let (paths, after) = read_paths(&c, end);
            let j = (after..c.len())
                .find(|&j| !c[j].is_whitespace())
                .unwrap_or(c.len());
            if c.get(j) == Some(&'{')
                && let Some(n) = paths.first().and_then(|p| p.first())
            {
                inline.push((n.clone(), depth + 1));
            }
            i = after;
            continue;
        }
        let followed_by_path = {
            let j = (end..c.len())
                .find(|&j| !c[j].is_whitespace())
                .unwrap_or(c.len());
            c.get(j) == Some(&':') && c.get(j + 1) == Some(&':')
        };
        if !followed_by_path {
            i = end;
            continue;
        }
        let (paths, after) = read_paths(&c, i);
        let mut here: ModPath = me.clone();
        here.extend(inline.iter().map(|(n, _)| n.clone()));
        for path in paths {
            let (mut base, rest): (ModPath, &[String]) = match path.first().map(String::as_str) {
                Some("crate") => (Vec::new(), &path[1..]),
                Some("self") => (here.clone(), &path[1..]),
                Some("super") => {
                    let ups = path.iter().take_while(|s| *s == "super").count();
                    let keep = here.len().saturating_sub(ups);
                    (here[..keep].to_vec(), &path[ups..])
                }
                Some(first) => {
                    // A parent naming its child module without `self::`.
                    let mut child = here.clone();
                    child.push(first.to_string());
                    if !known.contains(&child) {
                        continue;
                    }
                    (here.clone(), &path[..])
                }
                None => continue,
            };
            base.extend(rest.iter().cloned());
            let target = (0..=base.len())
                .rev()
                .map(|n| base[..n].to_vec())
                .find(|p| known.contains(p))
                .expect("the crate root is known");
            if target != *me {
                *out.entry(target).or_default() += 1;
            }
        }
        i = after.max(end);
    }
    out
}

/// Strongly connected components with more than one module: the cycles.
fn cycles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Tarjan<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<String, usize>,
        low: BTreeMap<String, usize>,
        stack: Vec<String>,
        on_stack: BTreeSet<String>,
        next: usize,
        found: Vec<Vec<String>>,
    }
    impl Tarjan<'_> {
        fn visit(&mut self, v: &str) {
            self.index.insert(v.to_string(), self.next);
            self.low.insert(v.to_string(), self.next);
            self.next += 1;
            self.stack.push(v.to_string());
            self.on_stack.insert(v.to_string());
            let targets: Vec<String> = self
                .edges
                .get(v)
                .map(|t| t.iter().cloned().collect())
                .unwrap_or_default();
            for w in targets {
                if !self.index.contains_key(&w) {
                    self.visit(&w);
                    let low = self.low[v].min(self.low[&w]);
                    self.low.insert(v.to_string(), low);
                } else if self.on_stack.contains(&w) {
                    let low = self.low[v].min(self.index[&w]);
                    self.low.insert(v.to_string(), low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut scc = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(&w);
                    let done = w == v;
                    scc.push(w);
                    if done {
                        break;
                    }
                }
                if scc.len() > 1 {
                    scc.sort();
                    self.found.push(scc);
                }
            }
        }
    }
    let mut t = Tarjan {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        found: Vec::new(),
    };
    let nodes: BTreeSet<String> = edges
        .iter()
        .flat_map(|(k, v)| std::iter::once(k.clone()).chain(v.iter().cloned()))
        .collect();
    for n in &nodes {
        if !t.index.contains_key(n) {
            t.visit(n);
        }
    }
    t.found
}

/// Layer of each module: 0 imports nothing, otherwise one above the highest it imports.
fn layers(edges: &BTreeMap<String, BTreeSet<String>>) -> BTreeMap<usize, Vec<String>> {
    fn level(
        n: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        memo: &mut BTreeMap<String, usize>,
    ) -> usize {
        if let Some(l) = memo.get(n) {
            return *l;
        }
        memo.insert(n.to_string(), 0); // Cut cycles; only called on acyclic graphs anyway.
        let l = edges
            .get(n)
            .into_iter()
            .flatten()
            .map(|t| level(t, edges, memo) + 1)
            .max()
            .unwrap_or(0);
        memo.insert(n.to_string(), l);
        l
    }
    let mut memo = BTreeMap::new();
    let nodes: BTreeSet<String> = edges
        .iter()
        .flat_map(|(k, v)| std::iter::once(k.clone()).chain(v.iter().cloned()))
        .collect();
    let mut out: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for n in nodes {
        let l = level(&n, edges, &mut memo);
        out.entry(l).or_default().push(n);
    }
    out
}

/// The module graph of the crate whose sources are in `src`: (file-level, top-level) edges.
type Graph = BTreeMap<String, BTreeSet<String>>;

fn graph(src: &Path) -> (Graph, Graph) {
    let files = module_files(src);
    let known: BTreeSet<ModPath> = files.keys().cloned().collect();
    let mut by_file: Graph = known.iter().map(|m| (name(m), BTreeSet::new())).collect();
    let mut by_top: Graph = BTreeMap::new();
    let top = |m: &ModPath| m.first().cloned().unwrap_or_else(|| "crate".to_string());
    println!("edges in {} (from -> to: references)", src.display());
    for (module, path) in &files {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        for (target, count) in references(module, &text, &known) {
            println!("  {} -> {}: {count}", name(module), name(&target));
            by_file
                .entry(name(module))
                .or_default()
                .insert(name(&target));
            by_top.entry(top(module)).or_default();
            if top(module) != top(&target) {
                by_top.entry(top(module)).or_default().insert(top(&target));
            }
        }
    }
    (by_file, by_top)
}

fn check(src: &Path) {
    let (by_file, by_top) = graph(src);
    let mut failures = Vec::new();
    for (what, g) in [("files", &by_file), ("top-level modules", &by_top)] {
        let found = cycles(g);
        if found.is_empty() {
            println!("layers of {what}, bottom first:");
            for (l, nodes) in layers(g) {
                println!("  {l}: {}", nodes.join(", "));
            }
        } else {
            for c in &found {
                println!("CYCLE among {what}: {}", c.join(", "));
            }
            failures.push(format!("{what}: {found:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "modules of {} import each other: {failures:?}",
        src.display()
    );
}

#[test]
fn client_modules_form_a_stack() {
    check(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
}

#[test]
fn flowspec_modules_form_a_stack() {
    check(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../flowspec/src"));
}

#[test]
fn another_crate_given_by_env_forms_a_stack() {
    match std::env::var_os("ORB8_STACK_SRC") {
        Some(src) => check(Path::new(&src)),
        None => println!("ORB8_STACK_SRC not set: no other crate checked"),
    }
}

#[test]
fn the_reader_sees_every_kind_of_reference_and_nothing_else() {
    let known: BTreeSet<ModPath> = [
        vec![],
        vec!["a".to_string()],
        vec!["b".to_string()],
        vec!["k8s".to_string()],
        vec!["k8s".to_string(), "pf".to_string()],
        vec!["k8s".to_string(), "x".to_string()],
        vec!["z".to_string()],
    ]
    .into_iter()
    .collect();
    let me = vec!["k8s".to_string(), "pf".to_string()];
    let text = r#"
        //! Links in docs are not imports: [`crate::z`].
        use crate::{a::Thing, b};
        use super::x::{self, Y};
        fn f() { let s = "crate::z"; let c = '"'; crate::a::g(); }
        #[cfg(test)]
        mod tests {
            use super::*;
            use super::super::x::Z;
        }
    "#;
    let got = references(&me, text, &known);
    let expect: BTreeMap<ModPath, usize> = [
        (vec!["a".to_string()], 2),
        (vec!["b".to_string()], 1),
        (vec!["k8s".to_string(), "x".to_string()], 3),
    ]
    .into_iter()
    .collect();
    assert_eq!(got, expect);

    let root_text = "pub mod a; pub mod b; fn main() { a::run(); b::X; std::io::stdout(); }";
    let got = references(&vec![], root_text, &known);
    assert_eq!(
        got.keys().cloned().collect::<Vec<_>>(),
        vec![vec!["a".to_string()], vec!["b".to_string()]]
    );

    let mut edges: Graph = BTreeMap::new();
    edges.insert("a".into(), ["b".to_string()].into());
    edges.insert("b".into(), ["c".to_string()].into());
    assert!(cycles(&edges).is_empty());
    edges.insert("c".into(), ["a".to_string()].into());
    assert_eq!(cycles(&edges), vec![vec!["a", "b", "c"]]);
}

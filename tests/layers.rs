//! The layering of `src/` (docs/architecture.md, "Layers"): every file
//! imports only its own layer or the ones below, and no files import each
//! other in a circle. Reads the `crate::…`, `super::…`, `self::…` and
//! child-module paths of every file (test modules excluded) and resolves
//! them to files.
//!
//! `NOT_YET` and `CIRCLES_NOT_YET` are what the layering work has not
//! removed yet. The test fails on anything new and on an entry that no
//! longer happens, so both lists only shrink.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Layers, top to bottom, by top-level module of `src/`.
const LAYERS: &[(&str, &[&str])] = &[
    ("entry", &["main", "lib", "server", "ctl", "monitor"]),
    ("control plane", &["api", "rpc", "broker"]),
    ("data plane", &["shard"]),
    ("bus", &["bus"]),
    (
        "domain",
        &[
            "session",
            "webrocket",
            "dialect",
            "publish",
            "hooks",
            "clients",
            "config",
            "snapshot",
            "metrics",
            "stats",
            "auth",
            "history",
        ],
    ),
    ("ground", &["ws", "rt", "handle", "proto", "tls", "limits", "panics"]),
];

/// Imports that still run upward (file, imported file).
const NOT_YET: &[(&str, &str)] = &[];

/// Files that still import each other in a circle, one circle per entry.
const CIRCLES_NOT_YET: &[&[&str]] = &[];

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

/// `src/shard/mod.rs` → ["shard"]; `src/shard/conn.rs` → ["shard", "conn"].
fn module_of(file: &str) -> Vec<String> {
    let mut parts: Vec<String> =
        file.trim_start_matches("src/").trim_end_matches(".rs").split('/').map(str::to_string).collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib" | "main")) {
        parts.pop();
    }
    parts
}

fn layer_of(file: &str) -> usize {
    let top = module_of(file).first().cloned().unwrap_or_else(|| "lib".into());
    LAYERS
        .iter()
        .position(|(_, modules)| modules.contains(&top.as_str()))
        .unwrap_or_else(|| panic!("{file}: module `{top}` is in no layer of tests/layers.rs"))
}

/// The file's code without its `#[cfg(test)]` module and without comments.
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]\nmod tests").next().unwrap();
    text.lines().map(|l| l.split("//").next().unwrap()).collect::<Vec<_>>().join("\n")
}

/// Every path the file names that starts at `crate`, `super`, `self` or a
/// child module: its segments, each `{a, b}` group expanded by one level.
fn paths(code: &str, children: &[String]) -> Vec<(String, Vec<String>)> {
    let bytes = code.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if !ident(bytes[i]) || (i > 0 && (ident(bytes[i - 1]) || bytes[i - 1] == b':')) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && ident(bytes[i]) {
            i += 1;
        }
        let root = &code[start..i];
        if !(["crate", "super", "self"].contains(&root) || children.iter().any(|c| c == root))
            || !code[i..].starts_with("::")
        {
            continue;
        }
        let mut segments = Vec::new();
        let mut rest = &code[i..];
        while let Some(after) = rest.strip_prefix("::") {
            if let Some(group) = after.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                for name in group[..end].split(',') {
                    let name: String =
                        name.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                    if !name.is_empty() {
                        out.push((root.to_string(), [segments.clone(), vec![name]].concat()));
                    }
                }
                break;
            }
            let name: String = after.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if name.is_empty() {
                break;
            }
            rest = &after[name.len()..];
            segments.push(name);
        }
        out.push((root.to_string(), segments));
    }
    out
}

/// The imports of every file of `src/`, as files.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    let name = |p: &Path| p.strip_prefix(root).unwrap().to_string_lossy().replace('\\', "/");
    let by_module: BTreeMap<Vec<String>, String> =
        files.iter().map(|f| (module_of(&name(f)), name(f))).collect();
    let resolve = |path: &[String]| (1..=path.len()).rev().find_map(|n| by_module.get(&path[..n])).cloned();
    let mut edges = BTreeMap::new();
    for file in &files {
        let me = name(file);
        let module = module_of(&me);
        let text = code(&std::fs::read_to_string(file).unwrap());
        let is_parent = me.ends_with("mod.rs") || me == "src/lib.rs" || me == "src/main.rs";
        let children: Vec<String> = if is_parent {
            text.lines()
                .filter_map(|l| {
                    let l = l.trim().trim_start_matches("pub ").trim_start_matches("pub(crate) ");
                    l.strip_prefix("mod ").and_then(|m| m.strip_suffix(';')).map(str::to_string)
                })
                .collect()
        } else {
            Vec::new()
        };
        let mut to = BTreeSet::new();
        for (root, segments) in paths(&text, &children) {
            let base: Vec<String> = match root.as_str() {
                "crate" => Vec::new(),
                "self" => module.clone(),
                "super" => module[..module.len().saturating_sub(1)].to_vec(),
                child => [module.clone(), vec![child.to_string()]].concat(),
            };
            if let Some(target) = resolve(&[base, segments].concat()) {
                if target != me {
                    to.insert(target);
                }
            }
        }
        edges.insert(me, to);
    }
    edges
}

/// Strongly connected components with more than one file (Tarjan).
fn circles(edges: &BTreeMap<String, BTreeSet<String>>) -> BTreeSet<Vec<String>> {
    struct State<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        found: BTreeSet<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        for w in s.edges.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.stack.contains(&w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut circle = Vec::new();
            while let Some(w) = s.stack.pop() {
                circle.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if circle.len() > 1 {
                circle.sort();
                s.found.insert(circle);
            }
        }
    }
    let mut s = State {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        found: BTreeSet::new(),
    };
    for v in edges.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.found
}

#[test]
fn no_file_imports_a_layer_above_its_own() {
    let edges = imports();
    let upward: BTreeSet<(String, String)> = edges
        .iter()
        .flat_map(|(from, to)| to.iter().map(move |t| (from.clone(), t.clone())))
        .filter(|(from, to)| layer_of(to) < layer_of(from))
        .collect();
    let allowed: BTreeSet<(String, String)> =
        NOT_YET.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    let new: Vec<_> = upward.difference(&allowed).collect();
    let gone: Vec<_> = allowed.difference(&upward).collect();
    let name = |f: &str| LAYERS[layer_of(f)].0;
    assert!(
        new.is_empty(),
        "imports from a lower layer up to a higher one:\n{}",
        new.iter()
            .map(|(a, b)| format!("  {a} ({}) -> {b} ({})", name(a), name(b)))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(gone.is_empty(), "no longer imported upward, remove from NOT_YET: {gone:?}");
}

#[test]
fn no_files_import_each_other_in_a_circle() {
    let found = circles(&imports());
    let allowed: BTreeSet<Vec<String>> =
        CIRCLES_NOT_YET.iter().map(|c| c.iter().map(|f| f.to_string()).collect()).collect();
    let new: Vec<_> = found.difference(&allowed).collect();
    let gone: Vec<_> = allowed.difference(&found).collect();
    assert!(new.is_empty(), "files importing each other in a circle: {new:#?}");
    assert!(gone.is_empty(), "circles that are gone (or changed), update CIRCLES_NOT_YET: {gone:#?}");
}

#[test]
fn the_check_sees_imports_of_every_kind() {
    // A check that finds nothing can never fail: the kinds of path it reads.
    let edges = imports();
    let has = |from: &str, to: &str| edges[from].contains(to);
    assert!(
        has("src/server.rs", "src/bus/mod.rs"),
        "use crate::bus::ShardRouter (a re-export: the module that names it)"
    );
    assert!(has("src/webrocket/replicate.rs", "src/webrocket/mod.rs"), "use super::WebRocket (the parent)");
    assert!(has("src/shard/driver.rs", "src/shard/state.rs"), "use super::state::… (a sibling)");
    assert!(has("src/shard/mod.rs", "src/shard/state.rs"), "pub use state::… in a parent module");
    assert!(has("src/shard/mod.rs", "src/shard/work.rs"), "work::after_pass() in a parent module");
    assert!(has("src/api/admin.rs", "src/proto.rs"), "crate::proto::… inside an expression");
}

//! No module of the agent imports another that imports it back, directly
//! or through others: the graph of `crate::`/`super::` references between
//! the modules of `src/` (test code and comments aside) has no cycle.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

/// Module path (`ebpf::maps`) → source, for every module file under `src`.
fn modules(src: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![src.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let rel = path.strip_prefix(src).unwrap().with_extension("");
            let name = rel.to_string_lossy().replace('/', "::");
            let name = name.strip_suffix("::mod").unwrap_or(&name).to_owned();
            if name == "lib" || name == "main" || path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            // Tests may reach anywhere; comments don't import.
            let code = text.split("#[cfg(test)]").next().unwrap();
            let code: String = code.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n");
            out.insert(name, code);
        }
    }
    out
}

/// The identifiers of a path that starts at `code[start..]`: `a::b::{c, d}`
/// gives `[[a, b, c], [a, b, d]]` (at most the first two of each count).
fn paths(code: &str, start: usize) -> Vec<Vec<String>> {
    let rest = &code[start..];
    let mut prefix = Vec::new();
    let mut i = 0;
    let bytes = rest.as_bytes();
    loop {
        let id_end = rest[i..].find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).map_or(rest.len(), |n| i + n);
        if id_end > i {
            prefix.push(rest[i..id_end].to_owned());
        }
        i = id_end;
        if rest[i..].starts_with("::{") {
            i += 2;
        }
        if rest[i..].starts_with('{') {
            // A group: each top-level item is a path of its own.
            let mut depth = 0;
            let mut item_start = i + 1;
            let mut out = Vec::new();
            for (k, &b) in bytes.iter().enumerate().skip(i) {
                match b {
                    b'{' => depth += 1,
                    b'}' | b',' if depth == 1 => {
                        for mut p in paths(rest[item_start..k].trim_start(), 0).into_iter().filter(|p| !p.is_empty()) {
                            let mut full = prefix.clone();
                            full.append(&mut p);
                            out.push(full);
                        }
                        item_start = k + 1;
                        if b == b'}' {
                            return out;
                        }
                    }
                    b'}' => depth -= 1,
                    _ => {}
                }
            }
            return out;
        }
        if rest[i..].starts_with("::") {
            i += 2;
            continue;
        }
        return vec![prefix];
    }
}

/// Module → the modules it names.
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mods = modules(src);
    let known: BTreeSet<String> = mods.keys().cloned().collect();
    // The deepest known module a path names.
    let resolve = |path: &[String]| -> Option<String> { (1..=path.len()).rev().map(|n| path[..n].join("::")).find(|m| known.contains(m)) };
    let mut g = BTreeMap::new();
    for (name, code) in &mods {
        let mut deps = BTreeSet::new();
        for (marker, base) in
            [("crate::", Vec::new()), ("super::", name.rsplit_once("::").map(|(p, _)| vec![p.to_owned()]).unwrap_or_default())]
        {
            for (at, _) in code.match_indices(marker) {
                // `super::` of a top-level module is the crate root.
                for p in paths(code, at + marker.len()) {
                    let mut full: Vec<String> = base.iter().flat_map(|b: &String| b.split("::").map(str::to_owned)).collect();
                    full.extend(p);
                    if let Some(m) = resolve(&full).filter(|m| m != name && !name.starts_with(&format!("{m}::"))) {
                        deps.insert(m);
                    }
                }
            }
        }
        g.insert(name.clone(), deps);
    }
    g
}

/// A cycle, if the graph has one.
fn cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(m: &str, g: &BTreeMap<String, BTreeSet<String>>, path: &mut Vec<String>, done: &mut BTreeSet<String>) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == m) {
            let mut c = path[at..].to_vec();
            c.push(m.to_owned());
            return Some(c);
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.to_owned());
        for d in g.get(m).into_iter().flatten() {
            if let Some(c) = visit(d, g, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(m.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    g.keys().find_map(|m| visit(m, g, &mut Vec::new(), &mut done))
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let g = graph(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    assert!(
        g.len() > 20 && g["agent"].contains("state") && g["ebpf::maps"].contains("ebpf::policy_entries"),
        "the scan found too little: {g:#?}"
    );
    if let Some(c) = cycle(&g) {
        panic!("modules import each other: {}", c.join(" -> "));
    }
}

#[test]
fn the_scan_sees_a_cycle_through_a_group_import() {
    let g: BTreeMap<String, BTreeSet<String>> = [("a", vec!["b"]), ("b", vec!["c"]), ("c", vec!["a"])]
        .into_iter()
        .map(|(m, d)| (m.to_owned(), d.into_iter().map(str::to_owned).collect()))
        .collect();
    assert_eq!(cycle(&g), Some(vec!["a".to_owned(), "b".into(), "c".into(), "a".into()]));
    assert_eq!(paths("x::{y, z::{w}}, q", 0), [vec!["x", "y"], vec!["x", "z", "w"]]);
    assert_eq!(paths("ebpf::maps::SharedMaps;", 0), [vec!["ebpf", "maps", "SharedMaps"]]);
    assert_eq!(
        paths("{\n    agent::Agent,\n    control::{Check, Query},\n};", 0),
        [vec!["agent", "Agent"], vec!["control", "Check"], vec!["control", "Query"]]
    );
}

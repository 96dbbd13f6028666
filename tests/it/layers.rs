//! The import graph of `src/`: no file imports one that imports it back,
//! directly or around a circle, and each layer imports only the layers
//! below it (the rule `src/lib.rs` states in its Layout).
//!
//! A module is a file (`src/chat/hub.rs` is `chat::hub`, `src/chat/mod.rs`
//! is `chat`); an import is any `crate::` or `super::` path in its code
//! (unit tests excluded), resolved to the longest module it names.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level modules by layer, highest first. A module may import its own
/// layer's and lower layers' modules; `client` and `server` are both tops
/// and never import each other.
const LAYERS: &[&[&str]] = &[
    &["server", "client"],
    &["services", "admin"],
    &["rpc", "chat", "health", "auth"],
    &["limits", "duration", "tls", "fanout", "wire", "ready", "telemetry", "proto"],
];

/// What the client may import: leaves only (no server module, no runtime).
const CLIENT_MAY_IMPORT: &[&str] = &["client", "limits", "duration", "tls", "fanout", "wire", "telemetry", "proto"];

/// What the chat domain may import: leaves (it knows nothing of gRPC statuses or services).
const CHAT_MAY_IMPORT: &[&str] = &["chat", "fanout", "wire", "telemetry", "proto"];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// `chat::hub` for `src/chat/hub.rs`; `None` for binaries and lib.rs.
fn module_of(path: &Path) -> Option<String> {
    let relative = path.strip_prefix(src()).ok()?.with_extension("");
    let parts: Vec<String> = relative.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    match parts.as_slice() {
        [first, ..] if first == "bin" => None,
        [only] if only == "lib" => None,
        [.., last] if last == "mod" => Some(parts[..parts.len() - 1].join("::")),
        _ => Some(parts.join("::")),
    }
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

/// Every `crate::a::b` / `super::c` path in `code`, as written (brace
/// groups expanded one level: `crate::a::{b, c::D}` gives `a::b`, `a::c::D`).
fn paths(code: &str, module: &str) -> Vec<String> {
    let mut found = Vec::new();
    let parent: Vec<&str> = module.split("::").collect();
    let parent = parent[..parent.len() - 1].join("::");
    for (prefix, base) in [("crate::", String::new()), ("super::", parent)] {
        let mut rest = code;
        while let Some(at) = rest.find(prefix) {
            let before = rest[..at].chars().last();
            rest = &rest[at + prefix.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let head: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':').collect();
            let head = head.trim_end_matches(':').to_string();
            let full = |tail: &str| if base.is_empty() { tail.to_string() } else { format!("{base}::{tail}") };
            let after = &rest[head.len()..];
            if after.starts_with("::{") {
                let group = &after[3..after.find('}').unwrap_or(after.len())];
                for item in group.split(',') {
                    let item = item.trim().trim_start_matches('{');
                    let name: String =
                        item.chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':').collect();
                    if !name.is_empty() && name != "self" {
                        found.push(full(&format!("{head}::{name}")));
                    }
                }
            }
            found.push(full(&head));
        }
    }
    found
}

/// A module's uses of its own child modules by their short name
/// (`hub::start` in `chat/mod.rs`), as full paths (`chat::hub`).
fn child_paths(code: &str, module: &str, modules: &BTreeSet<String>) -> Vec<String> {
    let mut found = Vec::new();
    let prefix = format!("{module}::");
    for child in modules.iter().filter_map(|m| m.strip_prefix(&prefix)).filter(|c| !c.contains("::")) {
        let needle = format!("{child}::");
        let mut rest = code;
        while let Some(at) = rest.find(&needle) {
            let before = rest[..at].chars().last();
            rest = &rest[at + needle.len()..];
            if !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                found.push(format!("{module}::{child}"));
            }
        }
    }
    found
}

/// The longest module that `path` names.
fn resolve(path: &str, modules: &BTreeSet<String>) -> Option<String> {
    let parts: Vec<&str> = path.split("::").collect();
    (1..=parts.len()).rev().map(|n| parts[..n].join("::")).find(|candidate| modules.contains(candidate))
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let sources: BTreeMap<String, String> = files
        .iter()
        .filter_map(|path| {
            let code = std::fs::read_to_string(path).unwrap();
            // Unit tests may reach anywhere.
            let code = code.split("#[cfg(test)]").next().unwrap_or("").to_string();
            Some((module_of(path)?, code))
        })
        .collect();
    let mut modules: BTreeSet<String> = sources.keys().cloned().collect();
    // Generated code lives in OUT_DIR: `proto` (messages, client stubs) is a leaf module of lib.rs.
    modules.insert("proto".to_string());
    sources
        .iter()
        .map(|(module, code)| {
            let imports = paths(code, module)
                .into_iter()
                .chain(child_paths(code, module, &modules))
                .filter_map(|p| resolve(&p, &modules))
                .filter(|m| m != module)
                .collect();
            (module.clone(), imports)
        })
        .collect()
}

fn top(module: &str) -> &str {
    module.split("::").next().unwrap_or(module)
}

fn layer(module: &str) -> usize {
    LAYERS.iter().position(|layer| layer.contains(&top(module))).unwrap_or_else(|| {
        panic!("src/{module}: not in any layer; add it to LAYERS here and to the Layout in src/lib.rs")
    })
}

/// A circle through `start`, if there is one.
fn circle_from(start: &str, graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn walk(
        at: &str,
        start: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        for next in graph.get(at).into_iter().flatten() {
            if next == start {
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if walk(next, start, graph, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![start.to_string()];
    walk(start, start, graph, &mut path, &mut BTreeSet::new()).then_some(path)
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let graph = graph();
    assert!(graph.len() > 20, "the scan found only {} modules: {:?}", graph.len(), graph.keys());
    let circles: Vec<String> = graph
        .keys()
        .filter_map(|m| circle_from(m, &graph))
        .map(|c| format!("{} -> {}", c.join(" -> "), c[0]))
        .collect();
    assert!(circles.is_empty(), "import circles in src/:\n{}", circles.join("\n"));
}

#[test]
fn each_layer_imports_only_its_own_and_lower_layers() {
    let mut wrong = Vec::new();
    for (module, imports) in graph() {
        for import in imports {
            let upward = layer(&import) < layer(&module);
            let across_tops = layer(&module) == 0 && top(&import) != top(&module) && layer(&import) == 0;
            if upward || across_tops {
                wrong.push(format!("{module} -> {import}"));
            }
        }
    }
    assert!(wrong.is_empty(), "imports that point up:\n{}", wrong.join("\n"));
}

#[test]
fn the_client_imports_no_server_module_and_the_chat_domain_no_grpc_layer() {
    let mut wrong = Vec::new();
    for (module, imports) in graph() {
        let allowed: &[&str] = match top(&module) {
            "client" => CLIENT_MAY_IMPORT,
            "chat" => CHAT_MAY_IMPORT,
            "admin" => &["admin"],
            "limits" | "duration" | "tls" | "fanout" | "wire" | "ready" => &["proto"],
            _ => continue,
        };
        for import in imports {
            if top(&import) != top(&module) && !allowed.contains(&top(&import)) {
                wrong.push(format!("{module} -> {import}"));
            }
        }
    }
    assert!(wrong.is_empty(), "imports a module may not make:\n{}", wrong.join("\n"));
}

#[test]
fn the_scan_sees_imports_and_circles() {
    // The scanner itself: a braced import, a super:: path, and a circle.
    assert_eq!(paths("use crate::rpc::{Call, codec::de};", "services::x"), ["rpc::Call", "rpc::codec::de", "rpc"]);
    assert_eq!(paths("use super::broker::Broker;", "chat::hub"), ["chat::broker::Broker"]);
    let modules = BTreeSet::from(["chat".to_string(), "chat::hub".to_string()]);
    assert_eq!(child_paths("let (c, h) = hub::start(config);", "chat", &modules), ["chat::hub"]);
    let graph: BTreeMap<String, BTreeSet<String>> =
        [("a".to_string(), BTreeSet::from(["b".to_string()])), ("b".to_string(), BTreeSet::from(["a".to_string()]))]
            .into();
    assert_eq!(circle_from("a", &graph), Some(vec!["a".to_string(), "b".to_string()]));
}

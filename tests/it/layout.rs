//! The layout ARCHITECTURE.md promises: the worker's top-level modules import each other
//! without a cycle, `config` imports nothing of the crate, and the simulator crate nothing of
//! the worker. Read from the sources, so a change that breaks it fails here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level modules of `src/` and the other top-level modules each one names (`crate::x`).
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut modules: BTreeMap<String, Vec<std::path::PathBuf>> = BTreeMap::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if name == "lib" || name == "main" {
            continue;
        }
        let files = if path.is_dir() {
            std::fs::read_dir(&path)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|e| e == "rs"))
                .collect()
        } else {
            vec![path]
        };
        modules.entry(name).or_default().extend(files);
    }
    let names: BTreeSet<String> = modules.keys().cloned().collect();
    modules
        .into_iter()
        .map(|(name, files)| {
            let mut uses = BTreeSet::new();
            for file in files {
                let text = std::fs::read_to_string(file).unwrap();
                for (at, _) in text.match_indices("crate::") {
                    let rest = &text[at + "crate::".len()..];
                    let used: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                    if used != name && names.contains(&used) {
                        uses.insert(used);
                    }
                }
            }
            (name, uses)
        })
        .collect()
}

/// A cycle in `graph`, if there is one (depth-first search).
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|n| n == node) {
            let mut cycle = path[start..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn the_worker_modules_import_each_other_without_a_cycle() {
    let graph = module_graph();
    assert!(graph.len() > 10, "read the modules of src/: {graph:?}");
    assert_eq!(find_cycle(&graph), None, "import cycle among the modules of src/");
    assert!(graph["config"].is_empty(), "config imports {:?}", graph["config"]);
    assert!(
        !graph["lifecycle"].contains("store") && !graph["lifecycle"].contains("worker"),
        "the decision core does no I/O"
    );
}

#[test]
fn the_cycle_check_finds_a_cycle() {
    let mut graph = module_graph();
    graph.get_mut("config").unwrap().insert("providers".into());
    assert!(find_cycle(&graph).is_some());
}

#[test]
fn the_simulator_crate_knows_nothing_of_the_worker() {
    let manifest = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("sim/Cargo.toml")).unwrap();
    let dependencies = manifest.split("[dependencies]").nth(1).unwrap_or_default();
    assert!(
        !dependencies.lines().any(|l| l.trim_start().starts_with("orgprov ") || l.trim_start().starts_with("orgprov=")),
        "{manifest}"
    );
    let sources = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("sim/src")).unwrap();
    for file in sources {
        let text = std::fs::read_to_string(file.unwrap().path()).unwrap();
        assert!(!text.contains("orgprov::"), "the simulator uses the worker's internals");
    }
}

//! Backbones, checkpoint loading, freeze groups and the Frozen Pretrained Transformer (FPT)
//! wrapper of *Pretrained Transformers as Universal Computation Engines* (Lu et al., 2021).
//!
//! This crate knows nothing of tasks or training: it maps token features to logits.
//!
//! Layout, bottom to top (docs/model.md, "Module layout"):
//! - [`kernels`] (crate-private): dropout, GELU, attention and the OpenMP binding, with every
//!   `unsafe` block of the computation;
//! - [`layers`]: the shared building blocks (parameter init, norms, linear layer, activations,
//!   read-out rows, input checks); [`freeze`] (parameter groups and freeze specs),
//!   [`checkpoint`] (safetensors loading), [`tolerance`];
//! - one file per backbone ([`gpt2`], [`bert`], [`llama`], [`lstm`]), each with its config and its
//!   parameter groups, importing only the modules above, never another backbone;
//! - [`backbone`]: the enum over the backbones and their registration;
//! - [`fpt`] (the wrapper) and [`params`].

pub mod backbone;
pub mod bert;
pub mod checkpoint;
pub mod fpt;
pub mod freeze;
pub mod gpt2;
mod kernels;
pub mod layers;
pub mod llama;
pub mod lstm;
pub mod params;
pub mod tolerance;

pub use layers::init;

pub use backbone::{load_backbone_dir, Backbone, BackboneConfig, Precision};
pub use bert::{Bert, BertConfig};
pub use fpt::{orth_gain_text, Fpt, FptConfig, InputSpec, Readout};
pub use freeze::{FreezeSpec, ParamGroup, ParamGroups};
pub use gpt2::{Gpt2, Gpt2Config, GPT2_PRESETS};
pub use layers::{Activation, Rows};
pub use llama::{Biases, Family, Llama, LlamaConfig, Setting};
pub use lstm::{Lstm, LstmConfig};

/// The import rule of the crate's layout, checked on its source files: every module is
/// classified, nothing below a backbone imports one, no backbone imports another (or the enum
/// above them), and the modules import each other without a circle.
#[cfg(test)]
mod module_layout {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::Path;

    /// Building blocks, below the backbones: they import only each other.
    const BELOW: [&str; 5] = ["layers", "kernels", "freeze", "checkpoint", "tolerance"];
    /// Above the backbones: they may import anything.
    const ABOVE: [&str; 3] = ["backbone", "fpt", "params"];

    /// The top-level module each `crate::…` path of `code` names (`crate::{a::x, b}` names a
    /// and b).
    fn crate_refs(code: &str) -> BTreeSet<String> {
        let mut refs = BTreeSet::new();
        let ident = |s: &str| s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<String>();
        for (at, _) in code.match_indices("crate::") {
            let rest = &code[at + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let (mut depth, mut item_start) = (0, true);
                for (i, c) in group.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => item_start = true,
                        c if item_start && !c.is_whitespace() => {
                            refs.insert(ident(&group[i..]));
                            item_start = false;
                        }
                        _ => {}
                    }
                }
            } else {
                refs.insert(ident(rest));
            }
        }
        refs.remove("");
        refs
    }

    /// Source without `//` comments (doc links are not imports).
    fn code_of(path: &Path) -> String {
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        text.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n")
    }

    /// Top-level module → the modules it names, over `src/*.rs` and `src/<folder>/*.rs`.
    fn graph() -> BTreeMap<String, BTreeSet<String>> {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for entry in std::fs::read_dir(&src).unwrap() {
            let path = entry.unwrap().path();
            let (module, files) = if path.is_dir() {
                let files = std::fs::read_dir(&path)
                    .unwrap()
                    .map(|e| e.unwrap().path())
                    .filter(|p| p.extension().is_some_and(|e| e == "rs"))
                    .collect();
                (path.file_name().unwrap().to_string_lossy().into_owned(), files)
            } else if path.extension().is_some_and(|e| e == "rs") {
                (path.file_stem().unwrap().to_string_lossy().into_owned(), vec![path.clone()])
            } else {
                continue;
            };
            if module == "lib" {
                continue;
            }
            let refs = graph.entry(module.clone()).or_default();
            for file in files {
                refs.extend(crate_refs(&code_of(&file)).into_iter().filter(|r| *r != module));
            }
        }
        graph
    }

    #[test]
    fn the_reference_parser_sees_grouped_and_plain_paths() {
        let refs = crate_refs("use crate::{gpt2::Gpt2, layers::{Rows, init}};\nlet x = crate::kernels::dropout(y);");
        assert_eq!(refs, ["gpt2", "kernels", "layers"].into_iter().map(String::from).collect());
    }

    #[test]
    fn backbones_import_only_building_blocks_and_nothing_imports_upwards() {
        let graph = graph();
        let backbones = crate::backbone::BACKBONE_MODULES;
        for (module, refs) in &graph {
            let is_backbone = backbones.contains(&module.as_str());
            assert!(
                is_backbone || BELOW.contains(&module.as_str()) || ABOVE.contains(&module.as_str()),
                "module {module} is not classified: add it to backbone::BACKBONE_MODULES (a backbone) or to BELOW/ABOVE here"
            );
            if is_backbone || BELOW.contains(&module.as_str()) {
                for r in refs {
                    let what = if is_backbone { "a backbone" } else { "a building block" };
                    assert!(
                        BELOW.contains(&r.as_str()),
                        "{module} is {what} and imports crate::{r}; it may import only {BELOW:?} (never another backbone, backbone.rs or the wrapper)"
                    );
                }
            }
        }
        for b in backbones.iter().copied() {
            assert!(graph.contains_key(b), "backbone module {b} has no file");
        }
    }

    #[test]
    fn no_import_circle() {
        let graph = graph();
        // Depth-first search; a module met again while on the stack closes a circle.
        fn visit<'a>(m: &'a str, graph: &'a BTreeMap<String, BTreeSet<String>>, stack: &mut Vec<&'a str>, done: &mut BTreeSet<&'a str>) {
            if done.contains(m) {
                return;
            }
            if let Some(i) = stack.iter().position(|s| *s == m) {
                panic!("import circle: {} -> {m}", stack[i..].join(" -> "));
            }
            stack.push(m);
            for r in graph.get(m).into_iter().flatten() {
                if graph.contains_key(r) {
                    visit(r, graph, stack, done);
                }
            }
            stack.pop();
            done.insert(m);
        }
        let mut done = BTreeSet::new();
        for m in graph.keys() {
            visit(m, &graph, &mut Vec::new(), &mut done);
        }
    }
}

//! Experiment grids: shared defaults plus axes that expand to cells with stable names.
//!
//! ```toml
//! name = "cpu"
//! [defaults]                 # any run-config fields (see `fpt train`)
//! seed = 0
//! [defaults.model]
//! backbone = "gpt2"
//! [axes.task]                # axis "task": label = overrides (dotted keys)
//! bit-xor = { "task.name" = "bit-xor" }
//! fashion-mnist = { "task.name" = "fashion-mnist", "train.steps" = 400 }
//! [axes.freeze]
//! frozen = { "model.freeze" = "paper" }
//! full = { "model.freeze" = "full" }
//! [axes.seed]
//! s0 = { seed = 0 }
//! [[exclude]]                # skip combinations (a label, or an array: any of them)
//! task = ["fashion-mnist", "bit-xor"]
//! freeze = "full"
//! [[override]]               # settings for combinations, applied after the axes, in order
//! when = { task = "bit-xor", freeze = "frozen" }
//! set = { "train.steps" = 500 }
//! ```
//!
//! A cell's name is its labels joined by `__` in axis order (`bit-xor__frozen__s0`); its group
//! (what the results table averages over) is the name without the `seed` axis.

use anyhow::{bail, Context, Result};
use std::path::Path;
use toml::{Table, Value};

pub const SEED_AXIS: &str = "seed";

#[derive(Debug, Clone)]
pub struct Cell {
    pub name: String,
    pub group: String,
    /// (axis, label) in axis order.
    pub labels: Vec<(String, String)>,
    pub config: Table,
}

impl Cell {
    /// The cell's config as TOML: the body of its `cell.toml`, and what the grid record compares.
    pub fn config_toml(&self) -> anyhow::Result<String> {
        toml::to_string(&self.config).with_context(|| format!("cell {}: its config does not serialise as TOML", self.name))
    }

    pub fn label(&self, axis: &str) -> Option<&str> {
        self.labels.iter().find(|(a, _)| a == axis).map(|(_, l)| l.as_str())
    }
}

#[derive(Debug, Clone)]
pub struct Grid {
    pub name: String,
    pub cells: Vec<Cell>,
    /// The file's other top-level tables (e.g. `expectations` of the regression grid).
    pub extra: Table,
}

/// Deep-merges `overrides` into `base`; keys containing dots address nested tables.
pub fn merge(base: &mut Table, overrides: &Table) -> Result<()> {
    for (key, value) in overrides {
        let parts: Vec<&str> = key.split('.').collect();
        let mut node = &mut *base;
        for part in &parts[..parts.len() - 1] {
            let entry = node.entry(part.to_string()).or_insert_with(|| Value::Table(Table::new()));
            node = entry.as_table_mut().with_context(|| format!("override {key}: {part} is not a table"))?;
        }
        let last = parts[parts.len() - 1].to_string();
        match (node.get_mut(&last), value) {
            (Some(Value::Table(existing)), Value::Table(incoming)) => merge(existing, incoming)?,
            _ => {
                node.insert(last, value.clone());
            }
        }
    }
    Ok(())
}

fn valid_label(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.') && !s.contains("__")
}

pub fn load(path: &Path) -> Result<Grid> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading grid {}", path.display()))?;
    parse(&text, path)
}

pub fn parse(text: &str, path: &Path) -> Result<Grid> {
    let mut table: Table = toml::from_str(text).with_context(|| format!("{}: not valid TOML", path.display()))?;
    let name = match table.remove("name") {
        Some(Value::String(s)) if valid_label(&s) => s,
        Some(other) => bail!("{}: name {other} must be a plain name (letters, digits, - _ .)", path.display()),
        None => path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "grid".into()),
    };
    // Dotted keys mean nested tables here as in the axes (`"model.backbone" = …`); fpt itself
    // would refuse a literal "model.backbone" field.
    let defaults = match table.remove("defaults") {
        Some(Value::Table(t)) => {
            let mut defaults = Table::new();
            merge(&mut defaults, &t).with_context(|| format!("{}: [defaults]", path.display()))?;
            defaults
        }
        None => Table::new(),
        Some(_) => bail!("{}: [defaults] must be a table", path.display()),
    };
    let axes = match table.remove("axes") {
        Some(Value::Table(t)) => t,
        None => Table::new(),
        Some(_) => bail!("{}: [axes] must be a table of axes", path.display()),
    };
    let excludes: Vec<Table> = match table.remove("exclude") {
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|v| match v {
                Value::Table(t) => Ok(t),
                _ => bail!("{}: each [[exclude]] must be a table of axis = label", path.display()),
            })
            .collect::<Result<_>>()?,
        None => Vec::new(),
        Some(_) => bail!("{}: exclude must be an array of tables ([[exclude]])", path.display()),
    };
    let overrides: Vec<(Table, Table)> = match table.remove("override") {
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|v| {
                let Value::Table(mut t) = v else { bail!("{}: each [[override]] must be a table with `when` and `set`", path.display()) };
                let (Some(Value::Table(when)), Some(Value::Table(set))) = (t.remove("when"), t.remove("set")) else {
                    bail!("{}: each [[override]] needs when = {{ axis = \"label\", … }} and set = {{ overrides }}", path.display())
                };
                if let Some(key) = t.keys().next() {
                    bail!("{}: [[override]] has an unknown key {key:?} (expected when and set)", path.display());
                }
                Ok((when, set))
            })
            .collect::<Result<_>>()?,
        None => Vec::new(),
        Some(_) => bail!("{}: override must be an array of tables ([[override]])", path.display()),
    };
    table.remove("description");

    let mut cells = vec![Cell { name: String::new(), group: String::new(), labels: Vec::new(), config: defaults }];
    for (axis, values) in &axes {
        let Value::Table(values) = values else { bail!("{}: axis {axis} must be a table of label = {{ overrides }}", path.display()) };
        if values.is_empty() {
            bail!("{}: axis {axis} has no values", path.display());
        }
        let mut next = Vec::new();
        for cell in &cells {
            for (label, overrides) in values {
                if !valid_label(label) {
                    bail!("{}: label {label:?} of axis {axis} must use letters, digits, - _ . (and no \"__\")", path.display());
                }
                let Value::Table(overrides) = overrides else { bail!("{}: {axis}.{label} must be a table of overrides", path.display()) };
                let mut config = cell.config.clone();
                merge(&mut config, overrides).with_context(|| format!("{}: {axis}.{label}", path.display()))?;
                let mut labels = cell.labels.clone();
                labels.push((axis.clone(), label.clone()));
                next.push(Cell { name: String::new(), group: String::new(), labels, config });
            }
        }
        cells = next;
    }
    for (kind, conditions) in excludes.iter().map(|e| ("exclude", e)).chain(overrides.iter().map(|(w, _)| ("override", w))) {
        for (axis, labels) in conditions {
            let Some(Value::Table(values)) = axes.get(axis) else {
                bail!("{}: {kind} names axis {axis:?}, which the grid does not have", path.display());
            };
            let Some(labels) = condition_labels(labels) else {
                bail!("{}: {kind} {axis} must be a label string or an array of label strings", path.display());
            };
            if let Some(unknown) = labels.iter().find(|l| !values.contains_key(**l)) {
                bail!("{}: {kind} {axis} = {unknown:?}: the axis has no such label", path.display());
            }
        }
    }
    for cell in &mut cells {
        for (when, set) in &overrides {
            if conditions_hold(when, cell) {
                merge(&mut cell.config, set).with_context(|| format!("{}: an [[override]] of {when}", path.display()))?;
            }
        }
    }
    cells.retain(|cell| !excludes.iter().any(|ex| conditions_hold(ex, cell)));
    for cell in &mut cells {
        cell.name = if cell.labels.is_empty() {
            "default".into()
        } else {
            cell.labels.iter().map(|(_, l)| l.as_str()).collect::<Vec<_>>().join("__")
        };
        let group: Vec<&str> = cell.labels.iter().filter(|(a, _)| a != SEED_AXIS).map(|(_, l)| l.as_str()).collect();
        cell.group = if group.is_empty() { "all".into() } else { group.join("__") };
    }
    if cells.is_empty() {
        bail!("{}: every cell is excluded", path.display());
    }
    Ok(Grid { name, cells, extra: table })
}

/// A condition's labels: one label, or an array meaning any of them.
fn condition_labels(value: &Value) -> Option<Vec<&str>> {
    match value {
        Value::String(label) => Some(vec![label.as_str()]),
        Value::Array(items) if !items.is_empty() => items.iter().map(Value::as_str).collect(),
        _ => None,
    }
}

/// Whether `cell` has, on every axis the conditions name, one of the labels given (validated).
fn conditions_hold(conditions: &Table, cell: &Cell) -> bool {
    conditions.iter().all(|(axis, labels)| {
        let labels = condition_labels(labels).unwrap_or_default();
        cell.label(axis).is_some_and(|l| labels.contains(&l))
    })
}

/// `*` matches any run of characters; otherwise a substring match.
pub fn matches(pattern: &str, name: &str) -> bool {
    if !pattern.contains('*') {
        return name.contains(pattern);
    }
    let parts: Vec<&str> = pattern.split('*').collect();
    let mut rest = name;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            if !rest.starts_with(part) {
                return false;
            }
            rest = &rest[part.len()..];
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else if let Some(pos) = rest.find(part) {
            rest = &rest[pos + part.len()..];
        } else {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRID: &str = r#"
name = "t"
[defaults]
seed = 0
[defaults.train]
steps = 10
lr = 0.001
[axes.task]
xor = { "task.name" = "bit-xor" }
mem = { "task.name" = "bit-memory", "train.steps" = 20 }
[axes.freeze]
frozen = { model = { freeze = "paper" } }
full = { "model.freeze" = "full" }
[axes.seed]
s0 = { seed = 0 }
s1 = { seed = 1 }
[[exclude]]
task = "mem"
freeze = "full"
[[override]]
when = { task = "xor", freeze = "full" }
set = { "train.steps" = 5, "train.batch_size" = 4 }
[[override]]
when = { seed = "s1" }
set = { "train.lr" = 0.01 }
"#;

    #[test]
    fn expands_in_order_with_stable_names() {
        let g = parse(GRID, Path::new("t.toml")).unwrap();
        let names: Vec<&str> = g.cells.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            vec!["xor__frozen__s0", "xor__frozen__s1", "xor__full__s0", "xor__full__s1", "mem__frozen__s0", "mem__frozen__s1"]
        );
        let mem = &g.cells[4];
        assert_eq!(mem.group, "mem__frozen");
        assert_eq!(mem.config["train"]["steps"].as_integer(), Some(20));
        assert_eq!(mem.config["train"]["lr"].as_float(), Some(0.001), "deep merge keeps siblings");
        assert_eq!(mem.config["task"]["name"].as_str(), Some("bit-memory"));
        assert_eq!(mem.config["model"]["freeze"].as_str(), Some("paper"));
        assert_eq!(g.cells[1].config["seed"].as_integer(), Some(1));
        // [[override]]: only the matching cells, after the axes, later tables over earlier.
        let steps = |i: usize| g.cells[i].config["train"]["steps"].as_integer();
        assert_eq!((steps(0), steps(2), steps(3), steps(4)), (Some(10), Some(5), Some(5), Some(20)));
        assert_eq!(g.cells[2].config["train"]["batch_size"].as_integer(), Some(4));
        assert!(g.cells[0].config["train"].get("batch_size").is_none());
        let lr = |i: usize| g.cells[i].config["train"]["lr"].as_float();
        assert_eq!((lr(0), lr(1), lr(5)), (Some(0.001), Some(0.01), Some(0.01)));
    }

    /// `[defaults]` takes dotted keys as the axes do (experiments/smollm2.toml's cells failed
    /// with "unknown field `model.backbone`" before).
    #[test]
    fn dotted_keys_in_defaults_are_nested_tables() {
        let grid = "[defaults]\nseed = 3\n\"model.backbone\" = \"smollm2\"\n[defaults.train]\nsteps = 9\n[axes.task]\na = { \"model.init\" = \"random\" }\n";
        let g = parse(grid, Path::new("t.toml")).unwrap();
        let cfg = &g.cells[0].config;
        assert_eq!(cfg["model"]["backbone"].as_str(), Some("smollm2"));
        assert_eq!(cfg["model"]["init"].as_str(), Some("random"));
        assert_eq!(cfg["train"]["steps"].as_integer(), Some(9));
        assert!(cfg.get("model.backbone").is_none(), "{cfg}");
    }

    /// A condition may list labels: the exclusion (or override) applies to any of them.
    #[test]
    fn conditions_may_list_labels() {
        let grid = "[axes.task]\na = {}\nb = {}\nc = {}\n[axes.model]\nm = {}\nn = {}\n\
                    [[exclude]]\nmodel = \"n\"\ntask = [\"b\", \"c\"]\n\
                    [[override]]\nwhen = { task = [\"a\", \"c\"] }\nset = { \"train.steps\" = 7 }\n";
        let g = parse(grid, Path::new("t.toml")).unwrap();
        let names: Vec<&str> = g.cells.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["a__m", "a__n", "b__m", "c__m"]);
        let steps: Vec<Option<i64>> = g.cells.iter().map(|c| c.config.get("train").and_then(|t| t["steps"].as_integer())).collect();
        assert_eq!(steps, [Some(7), Some(7), None, Some(7)]);
    }

    #[test]
    fn rejects_bad_grids() {
        for (bad, needle) in [
            ("[axes.task]\n\"a__b\" = {}\n", "no \"__\""),
            ("[axes.task]\nx = 3\n", "table of overrides"),
            ("[axes.task]\nx = {}\n[[exclude]]\nnope = \"x\"\n", "does not have"),
            ("[axes.task]\nx = {}\n[[exclude]]\ntask = \"x\"\n", "every cell is excluded"),
            ("[axes.task]\nx = {}\n[[override]]\nwhen = { nope = \"x\" }\nset = {}\n", "does not have"),
            ("[axes.task]\nx = {}\n[[override]]\nwhen = { task = \"x\" }\n", "needs when"),
            ("[axes.task]\nx = {}\n[[override]]\nwhen = { task = \"x\" }\nset = {}\nif = 1\n", "unknown key"),
            ("[axes]\ntask = {}\n", "no values"),
            ("[axes.task]\nx = {}\ny = {}\n[[exclude]]\ntask = \"z\"\n", "no such label"),
            ("[axes.task]\nx = {}\ny = {}\n[[exclude]]\ntask = [\"x\", \"zz\"]\n", "no such label"),
            ("[axes.task]\nx = {}\ny = {}\n[[exclude]]\ntask = []\n", "array of label strings"),
            ("[axes.task]\nx = {}\ny = {}\n[[override]]\nwhen = { task = 3 }\nset = {}\n", "array of label strings"),
        ] {
            let err = format!("{:#}", parse(bad, Path::new("bad.toml")).unwrap_err());
            assert!(err.contains(needle) && err.contains("bad.toml"), "{needle}: {err}");
        }
    }

    #[test]
    fn patterns() {
        assert!(matches("xor", "bit-xor__full__s0"));
        assert!(matches("*full*", "bit-xor__full__s0"));
        assert!(matches("bit-*__s0", "bit-xor__full__s0"));
        assert!(!matches("bit-*__s1", "bit-xor__full__s0"));
    }
}

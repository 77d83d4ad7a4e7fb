//! ListOps (Long Range Arena `basic` task): the TSV files, the vocabulary, and a generator that
//! implements LRA's algorithm.
//!
//! Vocabulary (fixed, 15 token ids + 1 padding id): digits `0`–`9` → 0–9, `[MIN` → 10,
//! `[MAX` → 11, `[MED` → 12, `[SM` → 13, `]` → 14, padding → 15. The parentheses `(` `)` that
//! LRA writes around every node carry no information beyond the brackets and are dropped.
//! Sequences are left-padded, so the last token — the one the model reads out — is always the
//! expression's final `]`.

use crate::rng::{stream, TaskRng};
use crate::{InputKind, InputSlot, Split, Task, TaskSpec};
use anyhow::{bail, Context, Result};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

pub const TOKENS: [&str; 15] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "[MIN", "[MAX", "[MED", "[SM", "]"];
pub const PAD: u8 = 15;
pub const VOCAB: usize = 16;
pub const CLASSES: usize = 10;
pub const HEADER: &str = "Source\tTarget";

/// What to do with an example longer than the configured maximum.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Overflow {
    /// Leave it out (counted and reported).
    #[default]
    Drop,
    /// Keep its first `max_len` tokens, as the reference did (counted and reported).
    Truncate,
}

pub fn token_id(token: &str) -> Option<u8> {
    TOKENS.iter().position(|t| *t == token).map(|i| i as u8)
}

/// Token ids of a `Source` string; `None` names the first unknown token.
pub fn encode(source: &str) -> std::result::Result<Vec<u8>, String> {
    source
        .split_whitespace()
        .filter(|t| *t != "(" && *t != ")")
        .map(|t| token_id(t).ok_or_else(|| t.to_string()))
        .collect()
}

/// One parsed TSV file: token ids and labels.
#[derive(Debug, Default)]
pub struct ListOpsFile {
    pub examples: Vec<Vec<u8>>,
    pub labels: Vec<u8>,
}

/// Parses an LRA ListOps TSV (`Source<TAB>Target` header, one example a line).
pub fn parse_tsv(bytes: &[u8], origin: &str) -> Result<ListOpsFile> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| anyhow::anyhow!("{origin}: not UTF-8 (invalid byte at offset {})", e.valid_up_to()))?;
    let mut lines = text.lines().enumerate();
    match lines.next() {
        None => bail!("{origin}: empty file (expected the header {HEADER:?})"),
        Some((_, header)) if header.trim_end_matches('\r') != HEADER => {
            bail!("{origin}: line 1 is {:?}, expected the header {HEADER:?}", truncate_for_message(header))
        }
        _ => {}
    }
    let mut file = ListOpsFile::default();
    for (i, line) in lines {
        let line_no = i + 1;
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        if fields.len() != 2 {
            bail!("{origin}: line {line_no} has {} tab-separated fields, expected 2 (Source, Target)", fields.len());
        }
        let label: u8 = match fields[1].trim().parse() {
            Ok(v) if (v as usize) < CLASSES => v,
            _ => bail!("{origin}: line {line_no}: Target {:?} is not a class 0–9", truncate_for_message(fields[1])),
        };
        let tokens = encode(fields[0])
            .map_err(|t| anyhow::anyhow!("{origin}: line {line_no}: unknown token {:?}", truncate_for_message(&t)))?;
        if tokens.is_empty() {
            bail!("{origin}: line {line_no}: empty Source");
        }
        file.examples.push(tokens);
        file.labels.push(label);
    }
    if file.examples.is_empty() {
        bail!("{origin}: no examples after the header");
    }
    Ok(file)
}

fn truncate_for_message(s: &str) -> String {
    s.chars().take(40).collect()
}

pub const SPLIT_FILES: [(Split, &str); 3] =
    [(Split::Train, "basic_train.tsv"), (Split::Val, "basic_val.tsv"), (Split::Test, "basic_test.tsv")];

pub struct ListOps {
    spec: TaskSpec,
    splits: Vec<(Split, ListOpsFile)>,
    notes: Vec<String>,
}

impl ListOps {
    /// Loads `basic_{train,val,test}.tsv` from `dir`; examples longer than `max_len` are
    /// dropped or truncated per `overflow`, and counted.
    pub fn load(dir: &Path, max_len: usize, overflow: Overflow) -> Result<Self> {
        let mut files = Vec::new();
        for (split, name) in SPLIT_FILES {
            let path: PathBuf = dir.join(name);
            if !path.is_file() {
                bail!("{}: missing {name} (the {split} split; `cargo xtask data listops` generates one)", dir.display());
            }
            let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            files.push((split, parse_tsv(&bytes, &path.display().to_string())?, path.display().to_string()));
        }
        Self::from_files(files, max_len, overflow)
    }

    /// Generates the splits in memory with LRA's algorithm (see [`generate`]).
    pub fn generated(cfg: &GeneratorConfig, max_len: usize, overflow: Overflow) -> Result<Self> {
        let generated = generate(cfg)?;
        let to_file = |rows: &[(String, u8)]| -> Result<ListOpsFile> {
            let mut f = ListOpsFile::default();
            for (source, target) in rows {
                f.examples.push(encode(source).map_err(|t| anyhow::anyhow!("generator produced unknown token {t:?}"))?);
                f.labels.push(*target);
            }
            Ok(f)
        };
        let origin = format!("generated (seed {})", cfg.seed);
        let files = vec![
            (Split::Train, to_file(&generated.train)?, origin.clone()),
            (Split::Val, to_file(&generated.val)?, origin.clone()),
            (Split::Test, to_file(&generated.test)?, origin),
        ];
        Self::from_files(files, max_len, overflow)
    }

    fn from_files(files: Vec<(Split, ListOpsFile, String)>, max_len: usize, overflow: Overflow) -> Result<Self> {
        if max_len == 0 {
            bail!("listops: max_len must be positive");
        }
        let mut splits = Vec::new();
        let mut notes = Vec::new();
        let mut longest = 0;
        for (split, mut file, origin) in files {
            let total = file.examples.len();
            let over = file.examples.iter().filter(|e| e.len() > max_len).count();
            match overflow {
                Overflow::Drop => {
                    let keep: Vec<bool> = file.examples.iter().map(|e| e.len() <= max_len).collect();
                    let mut k = keep.iter();
                    file.examples.retain(|_| *k.next().expect("one flag per example"));
                    let mut k = keep.iter();
                    file.labels.retain(|_| *k.next().expect("one flag per example"));
                    if file.examples.is_empty() && total > 0 {
                        bail!("{origin}: all {total} examples are longer than max_len {max_len}");
                    }
                }
                Overflow::Truncate => file.examples.iter_mut().for_each(|e| e.truncate(max_len)),
            }
            notes.push(format!(
                "{split}: {total} examples in {origin}; {over} longer than {max_len} tokens {}",
                if overflow == Overflow::Drop { "dropped" } else { "truncated" }
            ));
            longest = longest.max(file.examples.iter().map(Vec::len).max().unwrap_or(0));
            splits.push((split, file));
        }
        let spec = TaskSpec {
            name: "listops".into(),
            input: InputKind::Tokens { vocab: VOCAB },
            seq_len: longest,
            predictions: 1,
            classes: CLASSES,
            readout_tokens: 1,
        };
        Ok(ListOps { spec, splits, notes })
    }

    fn file(&self, split: Split) -> Option<&ListOpsFile> {
        self.splits.iter().find(|(s, _)| *s == split).map(|(_, f)| f)
    }
}

impl Task for ListOps {
    fn spec(&self) -> &TaskSpec {
        &self.spec
    }

    fn len(&self, split: Split) -> Option<usize> {
        Some(self.file(split).map_or(0, |f| f.examples.len()))
    }

    fn write_example(&self, split: Split, index: usize, _augment: bool, _rng: &mut TaskRng, input: InputSlot<'_>, targets: &mut [i64]) {
        let InputSlot::Tokens(x) = input else { unreachable!("ListOps has token input") };
        let file = self.file(split).expect("index within a present split");
        let tokens = &file.examples[index];
        let pad = x.len() - tokens.len();
        x[..pad].fill(PAD as i64);
        for (out, &t) in x[pad..].iter_mut().zip(tokens) {
            *out = t as i64;
        }
        targets[0] = file.labels[index] as i64;
    }

    fn example_len(&self, split: Split, index: usize) -> usize {
        self.file(split).map_or(0, |f| f.examples[index].len())
    }

    fn notes(&self) -> Vec<String> {
        self.notes.clone()
    }
}

// ---------------------------------------------------------------------------------------------
// The generator: LRA's `listops.py` (google-research/long-range-arena), re-implemented.

/// Generator settings; the defaults are LRA's. In a task config (generating in memory instead of
/// reading files): `generate = { train = 2000, val = 200, test = 200, min_len = 20, max_len = 100 }`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GeneratorConfig {
    pub seed: u64,
    pub train: usize,
    pub val: usize,
    pub test: usize,
    /// Kept examples have `min_len < length < max_len` tokens (parentheses not counted),
    /// strict as in LRA.
    pub min_len: usize,
    pub max_len: usize,
    pub max_depth: usize,
    pub max_args: usize,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        GeneratorConfig { seed: 0, train: 96_000, val: 2_000, test: 2_000, min_len: 500, max_len: 2000, max_depth: 10, max_args: 10 }
    }
}

/// LRA's probability that a node *below the maximum depth* is an operator. LRA names it
/// `VALUE_P = 0.25` but tests `if r > VALUE_P: leaf`, so a node is a leaf with p = 0.75.
const OPERATOR_P: f64 = 0.25;
const OPERATORS: [&str; 4] = ["[MIN", "[MAX", "[MED", "[SM"];

/// A generated expression tree.
enum Node {
    Value(u8),
    Op(&'static str, Vec<Node>),
}

/// Draws one tree as LRA does; returns it with its value and its length in tokens
/// (parentheses not counted). Text is only rendered for kept trees (`render`).
fn generate_tree(rng: &mut TaskRng, depth: usize, cfg: &GeneratorConfig) -> (Node, u8, usize) {
    let r: f64 = if depth < cfg.max_depth { rng.random() } else { 1.0 };
    if r > OPERATOR_P {
        let v: u8 = rng.random_range(0..10);
        return (Node::Value(v), v, 1);
    }
    let n_args = rng.random_range(2..=cfg.max_args);
    let mut length = 2;
    let mut args = Vec::with_capacity(n_args);
    let mut values = Vec::with_capacity(n_args);
    for _ in 0..n_args {
        let (node, value, len) = generate_tree(rng, depth + 1, cfg);
        length += len;
        args.push(node);
        values.push(value);
    }
    let op = OPERATORS[rng.random_range(0..OPERATORS.len())];
    (Node::Op(op, args), apply(op, &values), length)
}

/// LRA's text: binary tuples nested as ((((op a1) a2) …) ]), each printed "( x y )".
fn render(node: &Node, out: &mut String) {
    match node {
        Node::Value(v) => out.push(char::from(b'0' + v)),
        Node::Op(op, args) => {
            // k arguments and the closing bracket make k + 1 nested tuples.
            for _ in 0..=args.len() {
                out.push_str("( ");
            }
            out.push_str(op);
            for arg in args {
                out.push(' ');
                render(arg, out);
                out.push_str(" )");
            }
            out.push_str(" ] )");
        }
    }
}

/// LRA's operators on argument values (MED: numpy's median, then `int`, i.e. floor here).
pub fn apply(op: &str, values: &[u8]) -> u8 {
    match op {
        "[MIN" => *values.iter().min().expect("operators have ≥ 2 arguments"),
        "[MAX" => *values.iter().max().expect("operators have ≥ 2 arguments"),
        "[SM" => (values.iter().map(|&v| v as u32).sum::<u32>() % 10) as u8,
        "[MED" => {
            let mut v = values.to_vec();
            v.sort_unstable();
            let n = v.len();
            if n % 2 == 1 {
                v[n / 2]
            } else {
                ((v[n / 2 - 1] as u32 + v[n / 2] as u32) / 2) as u8
            }
        }
        other => unreachable!("unknown operator {other}"),
    }
}

/// Evaluates a `Source` string (with or without parentheses); used to check labels.
pub fn evaluate(source: &str) -> Option<u8> {
    let mut stack: Vec<(String, Vec<u8>)> = Vec::new();
    let mut result = None;
    for tok in source.split_whitespace().filter(|t| *t != "(" && *t != ")") {
        if OPERATORS.contains(&tok) {
            stack.push((tok.to_string(), Vec::new()));
        } else if tok == "]" {
            let (op, args) = stack.pop()?;
            if args.len() < 2 {
                return None;
            }
            let v = apply(&op, &args);
            match stack.last_mut() {
                Some(parent) => parent.1.push(v),
                None => result = Some(v),
            }
        } else {
            let v: u8 = tok.parse().ok().filter(|v| *v < 10)?;
            match stack.last_mut() {
                Some(parent) => parent.1.push(v),
                None => result = Some(v),
            }
        }
    }
    if stack.is_empty() { result } else { None }
}

/// Generated examples, as (Source text, Target) per split, LRA's order: distinct trees are
/// drawn until there are enough, then the first `train` go to train, the next `val` to val.
pub struct Generated {
    pub train: Vec<(String, u8)>,
    pub val: Vec<(String, u8)>,
    pub test: Vec<(String, u8)>,
    /// Trees drawn in total (kept + rejected for length + duplicates).
    pub drawn: usize,
}

pub fn generate(cfg: &GeneratorConfig) -> Result<Generated> {
    if cfg.min_len + 1 >= cfg.max_len {
        bail!("listops generator: no length satisfies {} < length < {}", cfg.min_len, cfg.max_len);
    }
    if cfg.max_args < 2 || cfg.max_depth < 1 {
        bail!("listops generator: max_args must be ≥ 2 and max_depth ≥ 1");
    }
    let total = cfg.train + cfg.val + cfg.test;
    let mut rng = stream(cfg.seed, &[0x11570b5]);
    // Distinctness by a 64-bit hash of the text: holding 100,000 texts twice would cost GBs.
    let mut seen: HashSet<u64> = HashSet::with_capacity(total);
    let mut kept = Vec::with_capacity(total);
    let mut drawn = 0usize;
    while kept.len() < total {
        drawn += 1;
        if drawn > 10_000 * (total + 100) {
            bail!("listops generator: drew {drawn} trees without finding {total} in {}..{} tokens", cfg.min_len, cfg.max_len);
        }
        let (tree, value, length) = generate_tree(&mut rng, 1, cfg);
        if length > cfg.min_len && length < cfg.max_len {
            let mut text = String::with_capacity(length * 4);
            render(&tree, &mut text);
            let mut h = std::collections::hash_map::DefaultHasher::new();
            std::hash::Hash::hash(&text, &mut h);
            if seen.insert(std::hash::Hasher::finish(&h)) {
                kept.push((text, value));
            }
        }
    }
    let test = kept.split_off(cfg.train + cfg.val);
    let val = kept.split_off(cfg.train);
    Ok(Generated { train: kept, val, test, drawn })
}

/// Writes `basic_{train,val,test}.tsv` into `dir`.
pub fn write_tsv(dir: &Path, generated: &Generated) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for ((_, name), rows) in SPLIT_FILES.iter().zip([&generated.train, &generated.val, &generated.test]) {
        let mut text = String::from(HEADER);
        text.push('\n');
        for (source, target) in rows {
            text.push_str(source);
            text.push('\t');
            text.push_str(&target.to_string());
            text.push('\n');
        }
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vocabulary_is_fixed() {
        assert_eq!(encode("( ( ( [MAX 2 ) 9 ) ] )").unwrap(), vec![11, 2, 9, 14]);
        assert_eq!(encode("[SM [MIN 0 1 ] 3 ]").unwrap(), vec![13, 10, 0, 1, 14, 3, 14]);
        assert_eq!(encode("[MAX 2 X ]").unwrap_err(), "X");
        assert_eq!(encode("[MAX 12 ]").unwrap_err(), "12");
    }

    #[test]
    fn operators_follow_lra() {
        assert_eq!(apply("[MED", &[1, 2, 9, 8]), 5); // numpy median 5.0
        assert_eq!(apply("[MED", &[1, 2, 4, 9]), 3); // median 3.0
        assert_eq!(apply("[MED", &[0, 1]), 0); // median 0.5 -> int 0
        assert_eq!(apply("[SM", &[9, 9, 5]), 3);
        assert_eq!(evaluate("( ( ( [MAX 2 ) 9 ) ] )"), Some(9));
        assert_eq!(evaluate("[SM [MIN 0 1 ] 3 ]"), Some(3));
        assert_eq!(evaluate("[SM 3 ]"), None);
    }

    #[test]
    fn renders_lra_text() {
        let tree = Node::Op("[MAX", vec![Node::Value(2), Node::Op("[SM", vec![Node::Value(9), Node::Value(3)]), Node::Value(1)]);
        let mut text = String::new();
        render(&tree, &mut text);
        assert_eq!(text, "( ( ( ( [MAX 2 ) ( ( ( [SM 9 ) 3 ) ] ) ) 1 ) ] )");
        assert_eq!(evaluate(&text), Some(2));
    }

    #[test]
    fn generator_is_deterministic_and_labels_are_right() {
        let cfg = GeneratorConfig { seed: 4, train: 30, val: 5, test: 5, min_len: 20, max_len: 200, ..Default::default() };
        let a = generate(&cfg).unwrap();
        let b = generate(&cfg).unwrap();
        assert_eq!(a.train, b.train);
        let other = generate(&GeneratorConfig { seed: 5, ..cfg.clone() }).unwrap();
        assert_ne!(a.train, other.train);
        let all: Vec<&(String, u8)> = a.train.iter().chain(&a.val).chain(&a.test).collect();
        assert_eq!(all.len(), 40);
        let distinct: HashSet<&String> = all.iter().map(|(s, _)| s).collect();
        assert_eq!(distinct.len(), 40, "examples must be distinct");
        for (source, target) in all {
            let len = encode(source).unwrap().len();
            assert!(len > 20 && len < 200, "length {len}");
            assert_eq!(evaluate(source), Some(*target), "{source}");
        }
    }

    #[test]
    fn tsv_errors_name_file_and_line() {
        let cases: Vec<(&[u8], &str)> = vec![
            (b"", "empty file"),
            (b"Src\tTgt\n", "expected the header"),
            (b"Source\tTarget\n", "no examples"),
            (b"Source\tTarget\n[MAX 1 2 ]\n", "line 2 has 1 tab-separated fields"),
            (b"Source\tTarget\n[MAX 1 2 ]\t12\n", "line 2: Target \"12\""),
            (b"Source\tTarget\n[MAX 1 2 ]\t1\n[MAX 1 two ]\t1\n", "line 3: unknown token \"two\""),
            (b"Source\tTarget\n[MAX 1 \xff ]\t1\n", "not UTF-8 (invalid byte at offset 21)"),
            (b"Source\tTarget\n\t1\n", "empty Source"),
        ];
        for (bytes, needle) in cases {
            let err = parse_tsv(bytes, "basic_x.tsv").unwrap_err().to_string();
            assert!(err.contains("basic_x.tsv") && err.contains(needle), "{needle}: {err}");
        }
        let ok = parse_tsv(b"Source\tTarget\r\n( [MAX 1 2 ] )\t2\r\n", "f").unwrap();
        assert_eq!(ok.examples, vec![vec![11, 1, 2, 14]]);
    }
}

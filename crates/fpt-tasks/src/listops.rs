//! ListOps (Long Range Arena `basic` task): the TSV files, the vocabulary, and a generator that
//! implements LRA's algorithm.
//!
//! Vocabulary (fixed, 15 token ids + 1 padding id): digits `0`–`9` → 0–9, `[MIN` → 10,
//! `[MAX` → 11, `[MED` → 12, `[SM` → 13, `]` → 14, padding → 15. The parentheses `(` `)` that
//! LRA writes around every node carry no information beyond the brackets and are dropped. With
//! [`Tokenizer::Alphanumeric`] (the reference's tokenizer, which keeps alphanumeric tokens only)
//! `]` is dropped too and padding is 14 (vocabulary 15, the reference's `input_dim`).
//! Sequences are right-padded ([`Padding`]): the model is told each example's length
//! ([`Padding::Masked`], the default) or, as the reference, reads the padding as input
//! ([`Padding::Fixed`]: every example padded to `max_len`).
//!
//! Loading checks every line ([`parse_source`]): balanced brackets and parentheses, known
//! operators with at least one argument, one expression a line, Targets 0–9, no blank line
//! between examples. A Target that is not the expression's value is kept and counted in the
//! loader's notes.

use crate::rng::{stream, TaskRng};
use crate::{InputKind, InputSlot, Padding, Split, SplitCounts, Task, TaskSpec};
use anyhow::{bail, Context, Result};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

pub const TOKENS: [&str; 15] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "[MIN", "[MAX", "[MED", "[SM", "]"];
/// The padding id of the full vocabulary ([`Tokenizer::Full`]).
pub const PAD: u8 = 15;
/// Token ids of the full vocabulary, padding included.
pub const VOCAB: usize = 16;
/// The id of `]`, the one token [`Tokenizer::Alphanumeric`] drops.
pub const CLOSE: u8 = 14;
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

/// Which tokens of a `Source` become ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Tokenizer {
    /// Digits, operators and `]` (15 ids, padding 15): every expression is unambiguous.
    #[default]
    Full,
    /// The reference's: `tfds.deprecated.text.Tokenizer()` keeps alphanumeric tokens only, so
    /// `[MAX` becomes `MAX` and every `]` is lost (14 ids, padding 14; the reference's
    /// `input_dim = 15`). Nested expressions become ambiguous (LRA issue #14).
    Alphanumeric,
}

impl Tokenizer {
    /// The padding id and the vocabulary size (padding included).
    pub fn pad_and_vocab(self) -> (u8, usize) {
        match self {
            Tokenizer::Full => (PAD, VOCAB),
            Tokenizer::Alphanumeric => (CLOSE, VOCAB - 1),
        }
    }
}

pub fn token_id(token: &str) -> Option<u8> {
    TOKENS.iter().position(|t| *t == token).map(|i| i as u8)
}

/// Token ids of a `Source` string; `None` names the first unknown token.
pub fn encode(source: &str) -> std::result::Result<Vec<u8>, String> {
    source.split_whitespace().filter(|t| *t != "(" && *t != ")").map(|t| token_id(t).ok_or_else(|| t.to_string())).collect()
}

/// Token ids and value of one `Source` expression, its structure checked: brackets balance,
/// every `[` is one of the operators `[MIN` `[MAX` `[MED` `[SM` and is closed by a `]` after at
/// least one argument, arguments are digits 0–9 or nested expressions, parentheses (LRA's tuple
/// text, dropped from the ids) balance, and the line holds exactly one expression. The error
/// says what was expected, counting tokens (parentheses included) from 1.
pub fn parse_source(source: &str) -> std::result::Result<(Vec<u8>, u8), String> {
    let mut ids = Vec::new();
    // Open operators: (token, its position, argument values so far).
    let mut open: Vec<(&str, usize, Vec<u8>)> = Vec::new();
    let mut parens = 0usize;
    let mut top: Option<u8> = None;
    for (i, tok) in source.split_whitespace().enumerate() {
        let pos = i + 1;
        // A value (a digit or a closed operator) that starts at token `start`.
        let mut value = None;
        match tok {
            "(" => parens += 1,
            ")" => {
                parens = parens.checked_sub(1).ok_or_else(|| format!("`)` at token {pos} closes no `(` (unbalanced parentheses)"))?;
            }
            "]" => {
                let (op, start, args) = open.pop().ok_or_else(|| format!("`]` at token {pos} closes no operator (unbalanced brackets)"))?;
                if args.is_empty() {
                    return Err(format!(
                        "operator {op} at token {start} has no arguments (expected at least one before its `]` at token {pos})"
                    ));
                }
                value = Some((apply(op, &args), start));
            }
            _ if OPERATORS.contains(&tok) => {
                if open.is_empty() && top.is_some() {
                    return Err(format!("a second expression starts at token {pos} (expected exactly one expression per line)"));
                }
                open.push((tok, pos, Vec::new()));
            }
            _ if tok.starts_with('[') => {
                return Err(format!("unknown operator {:?} at token {pos} (expected [MIN, [MAX, [MED or [SM)", truncate_for_message(tok)));
            }
            _ => match tok.as_bytes() {
                [d @ b'0'..=b'9'] => value = Some((d - b'0', pos)),
                _ => {
                    return Err(format!(
                        "unknown token {:?} at token {pos} (expected a digit 0–9, an operator [MIN [MAX [MED [SM, `]`, `(` or `)`)",
                        truncate_for_message(tok)
                    ))
                }
            },
        }
        if tok != "(" && tok != ")" {
            ids.push(token_id(tok).ok_or_else(|| format!("unknown token {:?} at token {pos}", truncate_for_message(tok)))?);
        }
        if let Some((v, start)) = value {
            match open.last_mut() {
                Some((_, _, args)) => args.push(v),
                None if top.is_some() => {
                    return Err(format!("a second expression starts at token {start} (expected exactly one expression per line)"))
                }
                None => top = Some(v),
            }
        }
    }
    if let Some((op, start, _)) = open.first() {
        let n = open.len();
        return Err(format!("operator {op} at token {start} is never closed (expected {n} more `]`: unbalanced brackets)"));
    }
    if parens > 0 {
        return Err(format!("{parens} `(` never closed (unbalanced parentheses)"));
    }
    top.map(|v| (ids, v)).ok_or_else(|| "empty Source (expected an expression)".to_string())
}

/// One parsed TSV file: token ids and labels.
#[derive(Debug, Default)]
pub struct ListOpsFile {
    pub examples: Vec<Vec<u8>>,
    pub labels: Vec<u8>,
    /// Examples whose Target is not the value of their expression (reported, kept).
    pub label_mismatches: usize,
}

/// Parses an LRA ListOps TSV (`Source<TAB>Target` header, one example a line; CRLF line ends
/// and a UTF-8 byte-order mark are accepted). Each Source is checked with [`parse_source`]; a
/// blank line is allowed only after the last example. Errors name `origin` and the 1-based line.
pub fn parse_tsv(bytes: &[u8], origin: &str) -> Result<ListOpsFile> {
    let text =
        std::str::from_utf8(bytes).map_err(|e| anyhow::anyhow!("{origin}: not UTF-8 (invalid byte at offset {})", e.valid_up_to()))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines = text.lines().enumerate();
    match lines.next() {
        None => bail!("{origin}: empty file (expected the header {HEADER:?})"),
        Some((_, header)) if header.trim_end_matches('\r') != HEADER => {
            bail!("{origin}: line 1 is {:?}, expected the header {HEADER:?}", truncate_for_message(header))
        }
        _ => {}
    }
    let mut file = ListOpsFile::default();
    let mut blank: Option<usize> = None;
    for (i, line) in lines {
        let line_no = i + 1;
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            blank.get_or_insert(line_no);
            continue;
        }
        if let Some(b) = blank {
            bail!("{origin}: line {b} is blank but examples follow it (line {line_no}); expected one example per line, blank lines only at the end of the file");
        }
        let fields: Vec<&str> = line.split('\t').collect();
        let &[source, target] = fields.as_slice() else {
            bail!("{origin}: line {line_no} has {} tab-separated fields, expected 2 (Source, Target)", fields.len());
        };
        let label: u8 = match target.trim().parse() {
            Ok(v) if (v as usize) < CLASSES => v,
            _ => bail!("{origin}: line {line_no}: Target {:?} is not a class 0–9", truncate_for_message(target)),
        };
        file.push(source, label).map_err(|e| anyhow::anyhow!("{origin}: line {line_no}: {e}"))?;
    }
    if file.examples.is_empty() {
        bail!("{origin}: no examples after the header");
    }
    Ok(file)
}

impl ListOpsFile {
    /// Adds one example after checking its Source; counts a Target that is not its value.
    pub fn push(&mut self, source: &str, label: u8) -> std::result::Result<(), String> {
        let (tokens, value) = parse_source(source)?;
        if value != label {
            self.label_mismatches += 1;
        }
        self.examples.push(tokens);
        self.labels.push(label);
        Ok(())
    }
}

fn truncate_for_message(s: &str) -> String {
    s.chars().take(40).collect()
}

pub const SPLIT_FILES: [(Split, &str); 3] =
    [(Split::Train, "basic_train.tsv"), (Split::Val, "basic_val.tsv"), (Split::Test, "basic_test.tsv")];

/// How ListOps examples are tokenized, limited and padded (the `listops` task's settings).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Preprocessing {
    pub max_len: usize,
    pub overflow: Overflow,
    pub tokenizer: Tokenizer,
    pub padding: Padding,
}

impl Preprocessing {
    /// The project's defaults for a length limit: drop longer examples, full vocabulary,
    /// masked padding.
    pub fn new(max_len: usize, overflow: Overflow) -> Self {
        Preprocessing { max_len, overflow, tokenizer: Tokenizer::Full, padding: Padding::Masked }
    }

    /// The reference's (`datasets/helpers/listops.py`): its tokenizer, the first 512 tokens,
    /// every example right-padded to 512, the padding read as input.
    pub fn reference() -> Self {
        Preprocessing { max_len: 512, overflow: Overflow::Truncate, tokenizer: Tokenizer::Alphanumeric, padding: Padding::Fixed }
    }
}

pub struct ListOps {
    spec: TaskSpec,
    splits: Vec<(Split, ListOpsFile)>,
    notes: Vec<String>,
    counts: Vec<SplitCounts>,
    pad: u8,
}

impl ListOps {
    /// Loads `basic_{train,val,test}.tsv` from `dir`; examples longer than `max_len` are
    /// dropped or truncated per `overflow`, and counted.
    pub fn load(dir: &Path, max_len: usize, overflow: Overflow) -> Result<Self> {
        Self::load_with(dir, &Preprocessing::new(max_len, overflow))
    }

    /// [`ListOps::load`] with every preprocessing setting.
    pub fn load_with(dir: &Path, pre: &Preprocessing) -> Result<Self> {
        let mut files = Vec::new();
        for (split, name) in SPLIT_FILES {
            let path: PathBuf = dir.join(name);
            crate::require_file(&path, &format!("the {split} split (an LRA ListOps TSV)"), || {
                format!("{}: missing {name} (the {split} split; `cargo xtask data listops` generates one)", dir.display())
            })?;
            let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            files.push((split, parse_tsv(&bytes, &path.display().to_string())?, path.display().to_string()));
        }
        Self::from_files(files, pre)
    }

    /// Generates the splits in memory with LRA's algorithm (see [`generate`]).
    pub fn generated(cfg: &GeneratorConfig, max_len: usize, overflow: Overflow) -> Result<Self> {
        Self::generated_with(cfg, &Preprocessing::new(max_len, overflow))
    }

    /// [`ListOps::generated`] with every preprocessing setting.
    pub fn generated_with(cfg: &GeneratorConfig, pre: &Preprocessing) -> Result<Self> {
        let generated = generate(cfg)?;
        let to_file = |rows: &[(String, u8)]| -> Result<ListOpsFile> {
            let mut f = ListOpsFile::default();
            for (i, (source, target)) in rows.iter().enumerate() {
                f.push(source, *target).map_err(|e| anyhow::anyhow!("listops generator: example {i}: {e}"))?;
            }
            if f.label_mismatches > 0 {
                bail!("listops generator: {} Targets differ from their expression's value", f.label_mismatches);
            }
            Ok(f)
        };
        let origin = format!("generated (seed {})", cfg.seed);
        let files = vec![
            (Split::Train, to_file(&generated.train)?, origin.clone()),
            (Split::Val, to_file(&generated.val)?, origin.clone()),
            (Split::Test, to_file(&generated.test)?, origin),
        ];
        Self::from_files(files, pre)
    }

    fn from_files(files: Vec<(Split, ListOpsFile, String)>, pre: &Preprocessing) -> Result<Self> {
        let Preprocessing { max_len, overflow, tokenizer, padding } = *pre;
        if max_len == 0 {
            bail!("listops: max_len is 0; expected a positive number of tokens (1024 is GPT-2's context, 512 the reference's)");
        }
        if padding == Padding::None {
            bail!("listops: padding \"none\" does not fit examples of different lengths; expected \"masked\", \"fixed\" or \"batch\"");
        }
        let (pad, vocab) = tokenizer.pad_and_vocab();
        let mut splits = Vec::new();
        let mut notes = Vec::new();
        let mut counts = Vec::new();
        let mut longest = 0;
        for (split, mut file, origin) in files {
            if tokenizer == Tokenizer::Alphanumeric {
                file.examples.iter_mut().for_each(|e| e.retain(|&t| t != CLOSE));
            }
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
            let mismatches = match file.label_mismatches {
                0 => String::new(),
                m => format!("; {m} Targets differ from their expression's value (kept as given)"),
            };
            let action = if overflow == Overflow::Drop { "dropped" } else { "truncated" };
            notes.push(format!("{split}: {total} examples in {origin}; {over} longer than {max_len} tokens {action}{mismatches}"));
            counts.push(SplitCounts {
                split,
                source: total,
                kept: file.examples.len(),
                dropped: if overflow == Overflow::Drop { over } else { 0 },
                truncated: if overflow == Overflow::Truncate { over } else { 0 },
                over_limit: 0,
                rule: format!("longer than {max_len} tokens {action}"),
            });
            longest = longest.max(file.examples.iter().map(Vec::len).max().unwrap_or(0));
            splits.push((split, file));
        }
        let tokens = match tokenizer {
            Tokenizer::Full => "digits, operators and `]`",
            Tokenizer::Alphanumeric => "alphanumeric tokens only (the reference's tokenizer: every `]` dropped)",
        };
        let layout = match padding {
            Padding::Fixed => format!("every example right-padded with id {pad} to {max_len} tokens, the padding read as input"),
            Padding::Batch => format!("right-padded with id {pad} to each batch's longest example, the padding read as input"),
            _ => format!("right-padded with id {pad} to each batch's longest example, lengths passed to the model"),
        };
        notes.push(format!("tokens: {tokens}; {layout}"));
        let spec = TaskSpec {
            name: "listops".into(),
            input: InputKind::Tokens { vocab },
            seq_len: if padding == Padding::Fixed { max_len } else { longest },
            predictions: 1,
            classes: CLASSES,
            readout_tokens: 1,
            padding,
        };
        Ok(ListOps { spec, splits, notes, counts, pad })
    }

    fn file(&self, split: Split) -> Option<&ListOpsFile> {
        self.splits.iter().find(|(s, _)| *s == split).map(|(_, f)| f)
    }
}

/// Writes `tokens` into `x` from position 0 and fills the rest with `pad` (right padding);
/// tokens past the end of `x` are cut (never the case for a batch built by `assemble`).
pub(crate) fn write_right_padded(x: &mut [i64], tokens: &[u8], pad: u8) {
    let n = tokens.len().min(x.len());
    for (out, &t) in x[..n].iter_mut().zip(tokens) {
        *out = t as i64;
    }
    x[n..].fill(pad as i64);
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
        write_right_padded(x, &file.examples[index], self.pad);
        targets[0] = file.labels[index] as i64;
    }

    fn example_len(&self, split: Split, index: usize) -> usize {
        self.file(split).map_or(0, |f| f.examples[index].len())
    }

    fn notes(&self) -> Vec<String> {
        self.notes.clone()
    }

    fn counts(&self) -> Vec<SplitCounts> {
        self.counts.clone()
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
        "[MIN" => values.iter().copied().min().unwrap_or(0),
        "[MAX" => values.iter().copied().max().unwrap_or(0),
        "[SM" => (values.iter().map(|&v| v as u64).sum::<u64>() % 10) as u8,
        "[MED" => {
            let mut v = values.to_vec();
            v.sort_unstable();
            match v.len() {
                0 => 0,
                n if n % 2 == 1 => v[n / 2],
                n => ((v[n / 2 - 1] as u32 + v[n / 2] as u32) / 2) as u8,
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
    if stack.is_empty() {
        result
    } else {
        None
    }
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

/// The largest mean tree size (nodes) the generator accepts; LRA's settings give about 113.
const MAX_EXPECTED_TREE_SIZE: f64 = 1e6;

/// The mean number of nodes of a tree drawn by [`generate_tree`]: a node above the last level is
/// an operator with probability 0.25 and then has (2 + max_args) / 2 children on average, so
/// level d holds m^d nodes on average, m = 0.25 · (2 + max_args) / 2.
fn expected_tree_size(cfg: &GeneratorConfig) -> f64 {
    let m = OPERATOR_P * (2.0 + cfg.max_args as f64) / 2.0;
    let (mut level, mut sum) = (1.0f64, 0.0f64);
    for _ in 0..cfg.max_depth {
        sum += level;
        level *= m;
        // Past the limit (a lower bound suffices), or converged (m < 1: levels vanish).
        if sum > MAX_EXPECTED_TREE_SIZE || level < 1e-9 {
            break;
        }
    }
    sum
}

pub fn generate(cfg: &GeneratorConfig) -> Result<Generated> {
    if cfg.min_len + 1 >= cfg.max_len {
        bail!("listops generator: no length satisfies {} < length < {}", cfg.min_len, cfg.max_len);
    }
    if cfg.max_args < 2 || cfg.max_depth < 1 {
        bail!("listops generator: max_args must be ≥ 2 and max_depth ≥ 1");
    }
    let expected = expected_tree_size(cfg);
    if expected > MAX_EXPECTED_TREE_SIZE {
        bail!(
            "listops generator: max_depth {} with max_args {} makes LRA's trees hold {expected:.1e}+ nodes on average \
             (each is drawn whole before its length is checked); expected at most {MAX_EXPECTED_TREE_SIZE:.0e} — lower max_depth or max_args",
            cfg.max_depth,
            cfg.max_args
        );
    }
    let total = cfg
        .train
        .checked_add(cfg.val)
        .and_then(|t| t.checked_add(cfg.test))
        .with_context(|| format!("listops generator: train {} + val {} + test {} overflows", cfg.train, cfg.val, cfg.test))?;
    let mut rng = stream(cfg.seed, &[0x11570b5]);
    // Distinctness by a 64-bit hash of the text: holding 100,000 texts twice would cost GBs.
    // Capacity grows with what is kept, not with what was asked for.
    let mut seen: HashSet<u64> = HashSet::with_capacity(total.min(1 << 20));
    let mut kept = Vec::with_capacity(total.min(1 << 20));
    let mut drawn = 0usize;
    while kept.len() < total {
        drawn += 1;
        if drawn > total.saturating_add(100).saturating_mul(10_000) {
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

    /// Malformed expressions, blank lines between examples and bad Targets are errors naming
    /// the file, the 1-based line and what was expected.
    #[test]
    fn malformed_sources_are_rejected_with_file_and_line() {
        let cases: Vec<(&str, &str)> = vec![
            ("[MAX 1 2 ] ]\t2", "line 2: `]` at token 5 closes no operator (unbalanced brackets)"),
            ("] 1 [MAX 2\t2", "line 2: `]` at token 1 closes no operator"),
            ("[MAX 1 [MIN 2 3 ]\t2", "line 2: operator [MAX at token 1 is never closed (expected 1 more `]`"),
            ("[MAX [SM 1\t2", "line 2: operator [MAX at token 1 is never closed (expected 2 more `]`"),
            ("[FOO 1 2 ]\t2", "line 2: unknown operator \"[FOO\" at token 1 (expected [MIN, [MAX, [MED or [SM)"),
            ("[ MAX 1 ]\t1", "line 2: unknown operator \"[\" at token 1"),
            ("[MAX 1 [SM ] ]\t1", "line 2: operator [SM at token 3 has no arguments"),
            ("[MAX ]\t1", "line 2: operator [MAX at token 1 has no arguments"),
            ("[MAX 1 ] [MIN 2 ]\t1", "line 2: a second expression starts at token 4 (expected exactly one expression per line)"),
            ("[MAX 1 ] 3\t1", "line 2: a second expression starts at token 4"),
            ("1 2\t1", "line 2: a second expression starts at token 2"),
            ("( ( [MAX 1 ] )\t1", "line 2: 1 `(` never closed (unbalanced parentheses)"),
            ("[MAX 1 ] )\t1", "line 2: `)` at token 4 closes no `(`"),
            ("( )\t1", "line 2: empty Source"),
            ("[MAX 1 ]\t10", "line 2: Target \"10\" is not a class 0–9"),
            ("[MAX 1 ]\t-1", "line 2: Target \"-1\""),
            ("[MAX 1 ]\t", "line 2: Target \"\""),
            ("[MAX 1 ]\t1\textra", "line 2 has 3 tab-separated fields"),
            ("[MAX 1 ]\t1\n\n[MAX 2 ]\t2", "line 3 is blank but examples follow it (line 4)"),
            ("[MAX 1 ]\t1\n \t \n[MAX 2 ]\t2", "line 3 is blank"),
            ("[MAX 1 ]\t1\r\n\r\n[MAX 2 ]\t2\r\n", "line 3 is blank"),
        ];
        for (body, needle) in cases {
            let bytes = format!("Source\tTarget\n{body}\n");
            let err = parse_tsv(bytes.as_bytes(), "basic_train.tsv").unwrap_err().to_string();
            assert!(err.starts_with("basic_train.tsv: ") && err.contains(needle), "{body:?}: {err}");
        }
    }

    /// What LRA's format allows stays accepted: parentheses or none, one-argument operators, a
    /// bare digit, CRLF, a byte-order mark, blank lines after the last example.
    #[test]
    fn valid_sources_are_accepted_and_valued() {
        assert_eq!(parse_source("( ( ( [MAX 2 ) 9 ) ] )").unwrap(), (vec![11, 2, 9, 14], 9));
        assert_eq!(parse_source("[SM [MIN 0 1 ] 3 ]").unwrap(), (vec![13, 10, 0, 1, 14, 3, 14], 3));
        assert_eq!(parse_source("[MED 7 ]").unwrap(), (vec![12, 7, 14], 7));
        assert_eq!(parse_source(" 4 ").unwrap(), (vec![4], 4));
        let text = "\u{feff}Source\tTarget\r\n[MAX 1 2 ]\t2\r\n( [MIN 3 ] )\t3\r\n\r\n\n";
        let f = parse_tsv(text.as_bytes(), "f").unwrap();
        assert_eq!((f.examples.len(), f.labels.clone(), f.label_mismatches), (2, vec![2, 3], 0));
        // A Target that is a class but not the expression's value is kept and counted.
        let f = parse_tsv(b"Source\tTarget\n[MAX 1 2 ]\t5\n[SM 4 4 ]\t8\n", "f").unwrap();
        assert_eq!((f.labels.clone(), f.label_mismatches), (vec![5, 8], 1));
    }

    /// The generator's own output, written as TSV and loaded back, passes every check and every
    /// Target is its expression's value.
    #[test]
    fn generated_files_validate() {
        let cfg = GeneratorConfig { seed: 9, train: 300, val: 50, test: 50, min_len: 5, max_len: 120, ..Default::default() };
        let generated = generate(&cfg).unwrap();
        let dir = std::env::temp_dir().join(format!("fpt-listops-gen-{}", std::process::id()));
        write_tsv(&dir, &generated).unwrap();
        for (_, name) in SPLIT_FILES {
            let path = dir.join(name);
            let f = parse_tsv(&std::fs::read(&path).unwrap(), name).unwrap();
            assert_eq!(f.label_mismatches, 0, "{name}");
        }
        let task = ListOps::load(&dir, 1024, Overflow::Drop).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!((task.len(Split::Train), task.len(Split::Val), task.len(Split::Test)), (Some(300), Some(50), Some(50)));
        assert!(task.notes().iter().all(|n| !n.contains("differ")), "{:?}", task.notes());
        assert!(ListOps::generated(&cfg, 1024, Overflow::Drop).is_ok());
    }

    /// Generator settings that would overflow, pre-allocate without bound or grow trees without
    /// bound are errors up front.
    #[test]
    fn generator_rejects_unbounded_settings() {
        let small = GeneratorConfig { train: 10, val: 1, test: 1, min_len: 2, max_len: 50, ..Default::default() };
        let cases = [
            (GeneratorConfig { train: usize::MAX, val: 1, ..small.clone() }, "overflows"),
            (GeneratorConfig { max_depth: 60, ..small.clone() }, "max_depth 60 with max_args 10"),
            (GeneratorConfig { max_args: usize::MAX, ..small.clone() }, "lower max_depth or max_args"),
            (GeneratorConfig { max_depth: usize::MAX, max_args: 6, ..small.clone() }, "lower max_depth or max_args"),
        ];
        for (cfg, needle) in cases {
            let err = generate(&cfg).err().expect("must fail").to_string();
            assert!(err.contains(needle), "{needle}: {err}");
        }
        // Subcritical trees (max_args 2: 0.5 children on average) stay small at any depth.
        assert!(expected_tree_size(&GeneratorConfig { max_depth: usize::MAX, max_args: 2, ..small.clone() }) < 3.0);
        assert!((expected_tree_size(&GeneratorConfig::default()) - 113.33).abs() < 0.1);
    }
}

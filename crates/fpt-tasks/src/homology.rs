//! Remote homology (TAPE, SCOPe 1.75 folds) from TAPE's JSON release:
//! `remote_homology_{train,valid,test_fold_holdout,test_superfamily_holdout,test_family_holdout}.json`,
//! each a JSON array of records with at least `primary` (the amino-acid sequence) and
//! `fold_label` (0..1195).
//!
//! Tokens: TAPE's IUPAC vocabulary of 30 ids — `<pad>` 0, `<mask>` 1, `<cls>` 2, `<sep>` 3,
//! `<unk>` 4, then A B C D E F G H I K L M N O P Q R S T U V W X Y Z = 5..29 — with `<cls>`
//! first and `<sep>` last, as TAPE's tokenizer. Letters outside the vocabulary become `<unk>`
//! (as in TAPE) and are counted. Sequences longer than `max_len` tokens (with `<cls>`/`<sep>`)
//! are dropped and counted, as the reference did. Batches are left-padded with `<pad>`, so the
//! read-out token is always `<sep>`.

use crate::rng::TaskRng;
use crate::{InputKind, InputSlot, Split, Task, TaskSpec};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const PAD: u8 = 0;
pub const CLS: u8 = 2;
pub const SEP: u8 = 3;
pub const UNK: u8 = 4;
pub const VOCAB: usize = 30;
pub const CLASSES: usize = 1195;
const RESIDUES: &str = "ABCDEFGHIKLMNOPQRSTUVWXYZ";

/// Which of TAPE's three held-out test sets is `Split::Test`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TestSet {
    #[default]
    Fold,
    Superfamily,
    Family,
}

impl TestSet {
    pub fn file_name(self) -> &'static str {
        match self {
            TestSet::Fold => "remote_homology_test_fold_holdout.json",
            TestSet::Superfamily => "remote_homology_test_superfamily_holdout.json",
            TestSet::Family => "remote_homology_test_family_holdout.json",
        }
    }
}

pub fn residue_id(c: char) -> Option<u8> {
    RESIDUES.find(c).map(|i| i as u8 + 5)
}

#[derive(Deserialize)]
struct Record {
    primary: String,
    fold_label: i64,
}

#[derive(Debug, Default)]
pub struct HomologyFile {
    pub sequences: Vec<Vec<u8>>,
    pub labels: Vec<u16>,
    pub total: usize,
    pub dropped_long: usize,
    pub unknown_residues: usize,
}

/// Parses one TAPE JSON file; `origin` names it in errors.
pub fn parse_json(bytes: &[u8], origin: &str, max_len: usize) -> Result<HomologyFile> {
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        bail!("{origin}: empty file (expected a JSON array of records)");
    }
    let records: Vec<Record> = serde_json::from_slice(bytes).map_err(|e| {
        anyhow::anyhow!("{origin}: not a TAPE remote-homology JSON array of records with `primary` and `fold_label`: {e}")
    })?;
    let mut file = HomologyFile { total: records.len(), ..Default::default() };
    for (i, record) in records.into_iter().enumerate() {
        if record.fold_label < 0 || record.fold_label as usize >= CLASSES {
            bail!("{origin}: record {i}: fold_label {} is outside 0..{CLASSES}", record.fold_label);
        }
        if record.primary.is_empty() {
            bail!("{origin}: record {i}: empty `primary` sequence");
        }
        let length = record.primary.chars().count() + 2;
        if length > max_len {
            file.dropped_long += 1;
            continue;
        }
        let mut tokens = Vec::with_capacity(length);
        tokens.push(CLS);
        for c in record.primary.chars() {
            tokens.push(residue_id(c).unwrap_or_else(|| {
                file.unknown_residues += 1;
                UNK
            }));
        }
        tokens.push(SEP);
        file.sequences.push(tokens);
        file.labels.push(record.fold_label as u16);
    }
    if file.total == 0 {
        bail!("{origin}: the array holds no records");
    }
    Ok(file)
}

pub struct RemoteHomology {
    spec: TaskSpec,
    splits: Vec<(Split, HomologyFile)>,
    notes: Vec<String>,
}

impl RemoteHomology {
    pub fn load(dir: &Path, max_len: usize, test_set: TestSet) -> Result<Self> {
        if max_len < 3 {
            bail!("remote homology: max_len {max_len} leaves no room for a residue between <cls> and <sep>");
        }
        let files = [
            (Split::Train, "remote_homology_train.json"),
            (Split::Val, "remote_homology_valid.json"),
            (Split::Test, test_set.file_name()),
        ];
        let mut splits = Vec::new();
        let mut notes = Vec::new();
        let mut longest = 0;
        for (split, name) in files {
            let path = dir.join(name);
            crate::require_file(&path, &format!("the {split} split of TAPE's JSON release"), || {
                format!("{}: missing {name} (the {split} split of TAPE's JSON release)", dir.display())
            })?;
            let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let file = parse_json(&bytes, &path.display().to_string(), max_len)?;
            if file.sequences.is_empty() {
                bail!("{}: all {} sequences are longer than max_len {max_len}", path.display(), file.total);
            }
            notes.push(format!(
                "{split}: {} records in {}; {} longer than {max_len} tokens dropped; {} residues outside the vocabulary mapped to <unk>",
                file.total,
                path.display(),
                file.dropped_long,
                file.unknown_residues
            ));
            longest = longest.max(file.sequences.iter().map(Vec::len).max().unwrap_or(0));
            splits.push((split, file));
        }
        let spec = TaskSpec {
            name: "remote-homology".into(),
            input: InputKind::Tokens { vocab: VOCAB },
            seq_len: longest,
            predictions: 1,
            classes: CLASSES,
            readout_tokens: 1,
        };
        Ok(RemoteHomology { spec, splits, notes })
    }

    fn file(&self, split: Split) -> &HomologyFile {
        &self.splits.iter().find(|(s, _)| *s == split).expect("all three splits are loaded").1
    }
}

impl Task for RemoteHomology {
    fn spec(&self) -> &TaskSpec {
        &self.spec
    }

    fn len(&self, split: Split) -> Option<usize> {
        Some(self.file(split).sequences.len())
    }

    fn write_example(&self, split: Split, index: usize, _augment: bool, _rng: &mut TaskRng, input: InputSlot<'_>, targets: &mut [i64]) {
        let InputSlot::Tokens(x) = input else { unreachable!("remote homology has token input") };
        let file = self.file(split);
        let tokens = &file.sequences[index];
        let pad = x.len() - tokens.len();
        x[..pad].fill(PAD as i64);
        for (out, &t) in x[pad..].iter_mut().zip(tokens) {
            *out = t as i64;
        }
        targets[0] = file.labels[index] as i64;
    }

    fn example_len(&self, split: Split, index: usize) -> usize {
        self.file(split).sequences[index].len()
    }

    fn notes(&self) -> Vec<String> {
        self.notes.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vocabulary_matches_tape() {
        assert_eq!(residue_id('A'), Some(5));
        assert_eq!(residue_id('K'), Some(14));
        assert_eq!(residue_id('Z'), Some(29));
        assert_eq!(residue_id('J'), None);
        let f = parse_json(br#"[{"primary":"MKJ","fold_label":3,"id":"x"}]"#, "f.json", 100).unwrap();
        assert_eq!(f.sequences, vec![vec![CLS, 16, 14, UNK, SEP]]);
        assert_eq!(f.unknown_residues, 1);
    }

    #[test]
    fn long_sequences_are_dropped_and_counted() {
        let f = parse_json(br#"[{"primary":"AAAA","fold_label":0},{"primary":"AAA","fold_label":1}]"#, "f.json", 5).unwrap();
        assert_eq!((f.total, f.dropped_long, f.sequences.len()), (2, 1, 1));
        assert_eq!(f.labels, vec![1]);
    }

    #[test]
    fn bad_json_names_file_and_record() {
        let cases: Vec<(&[u8], &str)> = vec![
            (b"", "empty file"),
            (b"[]", "no records"),
            (b"{\"primary\": \"A\"}", "not a TAPE"),
            (b"[{\"primary\":\"A\"}]", "fold_label"),
            (b"[{\"primary\":\"A\",\"fold_label\":1195}]", "record 0: fold_label 1195"),
            (b"[{\"primary\":\"A\",\"fold_label\":-1}]", "record 0: fold_label -1"),
            (b"[{\"primary\":\"\",\"fold_label\":1}]", "empty `primary`"),
            (b"[{\"primary\":\"A\",\"fold_label\":1}", "EOF"),
            (b"[{\"primary\":\"\xff\",\"fold_label\":1}]", "line 1"),
        ];
        for (bytes, needle) in cases {
            let err = parse_json(bytes, "remote_homology_train.json", 100).unwrap_err().to_string();
            assert!(err.contains("remote_homology_train.json") && err.contains(needle), "{needle}: {err}");
        }
    }
}

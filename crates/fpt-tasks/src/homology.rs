//! Remote homology (TAPE, SCOPe 1.75 folds) from TAPE's JSON release:
//! `remote_homology_{train,valid,test_fold_holdout,test_superfamily_holdout,test_family_holdout}.json`,
//! each a JSON array of records with at least `primary` (the amino-acid sequence) and
//! `fold_label` (0..1195).
//!
//! Tokens: TAPE's IUPAC vocabulary of 30 ids — `<pad>` 0, `<mask>` 1, `<cls>` 2, `<sep>` 3,
//! `<unk>` 4, then A B C D E F G H I K L M N O P Q R S T U V W X Y Z = 5..29 — with `<cls>`
//! first and `<sep>` last, as TAPE's tokenizer. Letters outside the vocabulary become `<unk>`
//! (as in TAPE) and are counted.
//!
//! Two ways with sequences longer than `max_len` tokens (with `<cls>`/`<sep>`), [`Long`]: the
//! project's drops them from every split at loading (counted); the reference's keeps them,
//! forms batches by length as TAPE's loader does and skips every batch that holds one (counted
//! when batches are made), then scales reported accuracy by 0.9739. Batches are right-padded
//! with `<pad>` ([`Padding`]): the model is told each sequence's length ([`Padding::Masked`],
//! the default) or reads the padding as input ([`Padding::Batch`], TAPE's `collate_fn`).

use crate::rng::TaskRng;
use crate::{InputKind, InputSlot, LengthBatching, Padding, Split, SplitCounts, Task, TaskSpec};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const PAD: u8 = 0;
pub const CLS: u8 = 2;
pub const SEP: u8 = 3;
pub const UNK: u8 = 4;
pub const VOCAB: usize = 30;
pub const CLASSES: usize = 1195;
/// The reference's correction for the examples its loader skipped: "we multiply reported
/// accuracies for the paper by .9739" (`datasets/remote_homology.py`: 236224 of 242560
/// examples kept, 97.39%).
pub const REFERENCE_ACCURACY_SCALE: f64 = 0.9739;
/// TAPE's `BucketBatchSampler` default `bucket_size_multiplier`.
pub const TAPE_BUCKET_BATCHES: usize = 100;

/// What happens to sequences longer than `max_len` tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Long {
    /// Dropped from every split at loading, and counted.
    #[default]
    Drop,
    /// The reference's: kept; batches are formed by length as TAPE's loader forms them
    /// (training: buckets of 100 batches of the shuffled split, each sorted by length;
    /// evaluation: the split sorted by length), every batch holding an over-long sequence is
    /// skipped and counted, and reported accuracy is multiplied by 0.9739
    /// ([`REFERENCE_ACCURACY_SCALE`]).
    SkipBatch,
}
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
    /// Sequences longer than `max_len`: dropped ([`Long::Drop`]) or kept ([`Long::SkipBatch`]).
    pub dropped_long: usize,
    pub unknown_residues: usize,
}

/// Parses one TAPE JSON file; `origin` names it in errors.
pub fn parse_json(bytes: &[u8], origin: &str, max_len: usize) -> Result<HomologyFile> {
    parse_json_with(bytes, origin, max_len, Long::Drop)
}

/// [`parse_json`] keeping over-long sequences ([`Long::SkipBatch`]: `dropped_long` then counts
/// the ones kept over the limit).
pub fn parse_json_with(bytes: &[u8], origin: &str, max_len: usize, long: Long) -> Result<HomologyFile> {
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        bail!("{origin}: empty file (expected a JSON array of records)");
    }
    let records: Vec<Record> = serde_json::from_slice(bytes)
        .map_err(|e| anyhow::anyhow!("{origin}: not a TAPE remote-homology JSON array of records with `primary` and `fold_label`: {e}"))?;
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
            if long == Long::Drop {
                continue;
            }
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
    counts: Vec<SplitCounts>,
    long: Long,
    max_len: usize,
}

impl RemoteHomology {
    /// The project's preprocessing: over-long sequences dropped, masked padding.
    pub fn load(dir: &Path, max_len: usize, test_set: TestSet) -> Result<Self> {
        Self::load_with(dir, max_len, test_set, Long::Drop, Padding::Masked)
    }

    /// Every setting: `long` for sequences over `max_len`, `padding` for the batches.
    pub fn load_with(dir: &Path, max_len: usize, test_set: TestSet, long: Long, padding: Padding) -> Result<Self> {
        if max_len < 3 {
            bail!("remote homology: max_len {max_len} leaves no room for a residue between <cls> and <sep>; expected at least 3 (the reference's is 1024)");
        }
        if padding == Padding::None {
            bail!("remote homology: padding \"none\" does not fit sequences of different lengths; expected \"masked\", \"batch\" or \"fixed\"");
        }
        let files =
            [(Split::Train, "remote_homology_train.json"), (Split::Val, "remote_homology_valid.json"), (Split::Test, test_set.file_name())];
        let mut splits = Vec::new();
        let mut notes = Vec::new();
        let mut counts = Vec::new();
        let mut longest = 0;
        for (split, name) in files {
            let path = dir.join(name);
            crate::require_file(&path, &format!("the {split} split of TAPE's JSON release"), || {
                format!("{}: missing {name} (the {split} split of TAPE's JSON release)", dir.display())
            })?;
            let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let file = parse_json_with(&bytes, &path.display().to_string(), max_len, long)?;
            let within = file.sequences.iter().filter(|t| t.len() <= max_len).count();
            if within == 0 {
                bail!("{}: all {} sequences are longer than max_len {max_len}", path.display(), file.total);
            }
            let action = match long {
                Long::Drop => "dropped",
                Long::SkipBatch => "kept; batches holding one are skipped",
            };
            notes.push(format!(
                "{split}: {} records in {}; {} longer than {max_len} tokens {action}; {} residues outside the vocabulary mapped to <unk>",
                file.total,
                path.display(),
                file.dropped_long,
                file.unknown_residues
            ));
            counts.push(SplitCounts {
                split,
                source: file.total,
                kept: file.sequences.len(),
                dropped: if long == Long::Drop { file.dropped_long } else { 0 },
                truncated: 0,
                over_limit: if long == Long::SkipBatch { file.dropped_long } else { 0 },
                rule: format!("longer than {max_len} tokens {action}"),
            });
            longest = longest.max(file.sequences.iter().map(Vec::len).filter(|&n| n <= max_len).max().unwrap_or(0));
            splits.push((split, file));
        }
        if long == Long::SkipBatch {
            notes.push(format!(
                "batches formed by length as TAPE's loader forms them; reported accuracy × {REFERENCE_ACCURACY_SCALE} (the reference's correction for what it skipped)"
            ));
        }
        let spec = TaskSpec {
            name: "remote-homology".into(),
            input: InputKind::Tokens { vocab: VOCAB },
            seq_len: if padding == Padding::Fixed { max_len } else { longest },
            predictions: 1,
            classes: CLASSES,
            readout_tokens: 1,
            padding,
        };
        Ok(RemoteHomology { spec, splits, notes, counts, long, max_len })
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
        crate::listops::write_right_padded(x, &file.sequences[index], PAD);
        targets[0] = file.labels[index] as i64;
    }

    fn example_len(&self, split: Split, index: usize) -> usize {
        self.file(split).sequences[index].len()
    }

    fn notes(&self) -> Vec<String> {
        self.notes.clone()
    }

    fn counts(&self) -> Vec<SplitCounts> {
        self.counts.clone()
    }

    fn length_batching(&self) -> Option<LengthBatching> {
        (self.long == Long::SkipBatch)
            .then_some(LengthBatching { bucket_batches: TAPE_BUCKET_BATCHES, skip_longer_than: Some(self.max_len) })
    }

    fn accuracy_scale(&self) -> f64 {
        match self.long {
            Long::Drop => 1.0,
            Long::SkipBatch => REFERENCE_ACCURACY_SCALE,
        }
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

//! Parameter counts per group: what `fpt params` prints.

use crate::freeze::ParamGroup;
use anyhow::Result;
use std::collections::BTreeMap;
use tch::nn;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupCount {
    pub total: i64,
    pub trainable: i64,
}

/// Counts every variable of `vs` by group; trainable = `requires_grad`.
pub fn count_by_group(vs: &nn::VarStore) -> Result<BTreeMap<ParamGroup, GroupCount>> {
    let mut counts: BTreeMap<ParamGroup, GroupCount> =
        ParamGroup::ALL.into_iter().map(|g| (g, GroupCount::default())).collect();
    for (name, tensor) in vs.variables() {
        let entry = counts.entry(ParamGroup::of(&name)?).or_default();
        let n = tensor.numel() as i64;
        entry.total += n;
        if tensor.requires_grad() {
            entry.trainable += n;
        }
    }
    Ok(counts)
}

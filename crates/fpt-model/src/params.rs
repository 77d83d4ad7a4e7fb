//! Parameter counts per group: what `fpt params` prints.

use crate::freeze::{ParamGroup, ParamGroups};
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use tch::nn;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupCount {
    pub total: i64,
    pub trainable: i64,
}

/// Counts every variable of `vs` by the group `model` declares for it; trainable =
/// `requires_grad`.
pub fn count_by_group(vs: &nn::VarStore, model: &dyn ParamGroups) -> Result<BTreeMap<ParamGroup, GroupCount>> {
    let mut counts: BTreeMap<ParamGroup, GroupCount> = ParamGroup::ALL.into_iter().map(|g| (g, GroupCount::default())).collect();
    for (name, tensor) in vs.variables() {
        let group =
            model.param_group(&name).with_context(|| format!("variable {name:?} belongs to no parameter group the model declares"))?;
        let entry = counts.entry(group).or_default();
        let n = tensor.numel() as i64;
        entry.total += n;
        if tensor.requires_grad() {
            entry.trainable += n;
        }
    }
    Ok(counts)
}

//! Parameter groups and which of them are frozen.
//!
//! Every tensor of a model belongs to exactly one [`ParamGroup`], which the model declares
//! ([`ParamGroups`]: each backbone maps its own variable names, the FPT wrapper its input and
//! output layers). A [`FreezeSpec`] says which groups train. Models are built with every tensor
//! trainable; [`FreezeSpec::apply`] then freezes, once, after construction: frozen tensors get
//! `requires_grad = false` and leave `VarStore::trainable_variables`, so an optimizer built from
//! the store never sees them.

use anyhow::{anyhow, bail, Result};
use serde::{Deserialize, Serialize};
use std::fmt;
use tch::nn;

/// The groups the paper freezes or trains (its reference code's freeze_in/pos/ln/attn/ff/out,
/// plus the token embedding that FPT never uses).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ParamGroup {
    /// The new input layer (linear or embedding table, and any MLP before it).
    Input,
    /// The new output layer (and any MLP before it).
    Output,
    /// Learned position embeddings (`wpe`).
    Positions,
    /// Every layer norm (`ln_1`, `ln_2`, `ln_f`).
    LayerNorms,
    /// Self-attention projections (`attn.c_attn`, `attn.c_proj`).
    Attention,
    /// Feed-forward layers (`mlp.c_fc`, `mlp.c_proj`).
    FeedForward,
    /// The language model's token embedding (`wte`), unused by FPT.
    TokenEmbedding,
}

impl ParamGroup {
    pub const ALL: [ParamGroup; 7] = [
        ParamGroup::Input,
        ParamGroup::Output,
        ParamGroup::Positions,
        ParamGroup::LayerNorms,
        ParamGroup::Attention,
        ParamGroup::FeedForward,
        ParamGroup::TokenEmbedding,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ParamGroup::Input => "input",
            ParamGroup::Output => "output",
            ParamGroup::Positions => "positions",
            ParamGroup::LayerNorms => "layer_norms",
            ParamGroup::Attention => "attention",
            ParamGroup::FeedForward => "feed_forward",
            ParamGroup::TokenEmbedding => "token_embedding",
        }
    }

    /// Parses a group name; short aliases follow the reference's switch names.
    pub fn parse(s: &str) -> Result<ParamGroup> {
        Ok(match s.trim() {
            "input" | "in" => ParamGroup::Input,
            "output" | "out" => ParamGroup::Output,
            "positions" | "pos" => ParamGroup::Positions,
            "layer_norms" | "ln" => ParamGroup::LayerNorms,
            "attention" | "attn" => ParamGroup::Attention,
            "feed_forward" | "ff" => ParamGroup::FeedForward,
            "token_embedding" | "wte" => ParamGroup::TokenEmbedding,
            other => bail!(
                "unknown parameter group {other:?}: expected one of input (in), output (out), \
                 positions (pos), layer_norms (ln), attention (attn), feed_forward (ff), \
                 token_embedding (wte)"
            ),
        })
    }
}

/// A model that declares the group of each of its variables.
pub trait ParamGroups {
    /// The group of the variable `name` (its VarStore path); `None` for a name the model does
    /// not create.
    fn param_group(&self, name: &str) -> Option<ParamGroup>;
}

impl fmt::Display for ParamGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which parameter groups are frozen. `true` means frozen (no gradient, no optimizer state).
///
/// Written as text (CLI `--freeze`, config files) as a preset followed by edits:
/// `paper` (the default), `full` (everything the FPT uses trained), `all` (everything frozen), then
/// `+group` to train a group or `-group` to freeze it, comma-separated. Examples:
/// `paper`, `full`, `paper,-pos` (the reference's freeze_pos), `all,+out` (output only,
/// the first column of the paper's Table 15), `paper,+ff` (Table 13).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FreezeSpec {
    pub input: bool,
    pub output: bool,
    pub positions: bool,
    pub layer_norms: bool,
    pub attention: bool,
    pub feed_forward: bool,
    pub token_embedding: bool,
}

impl Default for FreezeSpec {
    fn default() -> Self {
        FreezeSpec::paper()
    }
}

impl FreezeSpec {
    /// The paper's FPT: attention, feed-forward (and the unused token embedding) frozen; input,
    /// output, positions and layer norms trained.
    pub fn paper() -> Self {
        FreezeSpec {
            input: false,
            output: false,
            positions: false,
            layer_norms: false,
            attention: true,
            feed_forward: true,
            token_embedding: true,
        }
    }

    /// The fully trained transformer (the reference's freeze_trans=false): every group the FPT
    /// computes with is trained. The token embedding stays frozen: FPT never uses it, so it
    /// could only carry optimizer state and inflate parameter counts (`full,+wte` overrides).
    pub fn full() -> Self {
        FreezeSpec {
            input: false,
            output: false,
            positions: false,
            layer_norms: false,
            attention: false,
            feed_forward: false,
            token_embedding: true,
        }
    }

    /// Everything frozen; a starting point for `+group` edits.
    pub fn all() -> Self {
        FreezeSpec {
            input: true,
            output: true,
            positions: true,
            layer_norms: true,
            attention: true,
            feed_forward: true,
            token_embedding: true,
        }
    }

    pub fn is_frozen(&self, group: ParamGroup) -> bool {
        *self.slot(group)
    }

    pub fn set_frozen(&mut self, group: ParamGroup, frozen: bool) {
        *self.slot_mut(group) = frozen;
    }

    fn slot(&self, group: ParamGroup) -> &bool {
        match group {
            ParamGroup::Input => &self.input,
            ParamGroup::Output => &self.output,
            ParamGroup::Positions => &self.positions,
            ParamGroup::LayerNorms => &self.layer_norms,
            ParamGroup::Attention => &self.attention,
            ParamGroup::FeedForward => &self.feed_forward,
            ParamGroup::TokenEmbedding => &self.token_embedding,
        }
    }

    fn slot_mut(&mut self, group: ParamGroup) -> &mut bool {
        match group {
            ParamGroup::Input => &mut self.input,
            ParamGroup::Output => &mut self.output,
            ParamGroup::Positions => &mut self.positions,
            ParamGroup::LayerNorms => &mut self.layer_norms,
            ParamGroup::Attention => &mut self.attention,
            ParamGroup::FeedForward => &mut self.feed_forward,
            ParamGroup::TokenEmbedding => &mut self.token_embedding,
        }
    }

    /// Parses `preset[,+group|-group]…` (see the type's documentation).
    pub fn parse(text: &str) -> Result<FreezeSpec> {
        let mut items = text.split(',').map(str::trim).filter(|s| !s.is_empty()).peekable();
        let mut spec = match items.peek().copied() {
            Some("paper") | Some("default") => FreezeSpec::paper(),
            Some("full") | Some("none") => FreezeSpec::full(),
            Some("all") => FreezeSpec::all(),
            Some(first) if first.starts_with('+') || first.starts_with('-') => return Self::apply_edits(FreezeSpec::paper(), items, text),
            Some(other) => bail!(
                "freeze spec {text:?}: unknown preset {other:?}; expected paper, full or all, \
                 then +group / -group edits (e.g. \"paper,+attn\")"
            ),
            None => bail!("freeze spec is empty; expected paper, full or all"),
        };
        items.next();
        spec = Self::apply_edits(spec, items, text)?;
        Ok(spec)
    }

    fn apply_edits<'a>(mut spec: FreezeSpec, items: impl Iterator<Item = &'a str>, text: &str) -> Result<FreezeSpec> {
        for item in items {
            let (frozen, name) = if let Some(name) = item.strip_prefix('+') {
                (false, name)
            } else if let Some(name) = item.strip_prefix('-') {
                (true, name)
            } else {
                bail!(
                    "freeze spec {text:?}: {item:?} must start with + (train) or - (freeze), \
                     and only the first item may be a preset"
                )
            };
            let group = ParamGroup::parse(name).map_err(|e| anyhow::anyhow!("freeze spec {text:?}: {e}"))?;
            spec.set_frozen(group, frozen);
        }
        Ok(spec)
    }

    /// Freezes the variables of `vs` whose group (as `model` declares it) this spec freezes
    /// and makes the others trainable: `requires_grad` per variable, and
    /// `VarStore::trainable_variables` (what a tch optimizer is built from) left holding the
    /// trainable ones only, in creation order. Every variable must have a group. Once per
    /// model: a frozen tensor cannot be made trainable again.
    pub fn apply(&self, vs: &nn::VarStore, model: &dyn ParamGroups) -> Result<()> {
        let mut variables = vs.variables_.lock().map_err(|_| anyhow!("the model's VarStore lock is poisoned"))?;
        let mut unknown: Vec<&str> =
            variables.named_variables.keys().filter(|n| model.param_group(n).is_none()).map(String::as_str).collect();
        if !unknown.is_empty() {
            unknown.sort();
            bail!("variables {unknown:?} belong to no parameter group the model declares");
        }
        // Models create every variable trainable, so tch lists each one (with requires_grad
        // set); a tensor already frozen cannot rejoin that list (tch builds it only at creation).
        if let Some((name, _)) = variables
            .named_variables
            .iter()
            .find(|(name, t)| !t.requires_grad() && !self.is_frozen(model.param_group(name).expect("checked above")))
        {
            bail!("variable {name} is already frozen: a freeze spec is applied once, after the model is built");
        }
        for (name, tensor) in &variables.named_variables {
            let train = !self.is_frozen(model.param_group(name).expect("checked above"));
            let _ = tensor.set_requires_grad(train);
        }
        variables.trainable_variables.retain(|v| v.tensor.requires_grad());
        Ok(())
    }

    pub fn trained_groups(&self) -> Vec<ParamGroup> {
        ParamGroup::ALL.into_iter().filter(|g| !self.is_frozen(*g)).collect()
    }
}

impl fmt::Display for FreezeSpec {
    /// The shortest `preset,+g,-g` form that parses back to `self`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut best: Option<String> = None;
        for (name, preset) in [("paper", FreezeSpec::paper()), ("full", FreezeSpec::full()), ("all", FreezeSpec::all())] {
            let mut text = name.to_string();
            for g in ParamGroup::ALL {
                if preset.is_frozen(g) != self.is_frozen(g) {
                    text.push_str(if self.is_frozen(g) { ",-" } else { ",+" });
                    text.push_str(g.name());
                }
            }
            if best.as_ref().is_none_or(|b| text.len() < b.len()) {
                best = Some(text);
            }
        }
        f.write_str(&best.unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_and_edits_parse() {
        assert_eq!(FreezeSpec::parse("paper").unwrap(), FreezeSpec::paper());
        assert_eq!(FreezeSpec::parse("full").unwrap(), FreezeSpec::full());
        let out_only = FreezeSpec::parse("all,+out").unwrap();
        assert_eq!(out_only.trained_groups(), vec![ParamGroup::Output]);
        let no_pos = FreezeSpec::parse("paper,-pos").unwrap();
        assert!(no_pos.is_frozen(ParamGroup::Positions));
        assert!(!no_pos.is_frozen(ParamGroup::LayerNorms));
        // Edits alone start from the paper's default.
        assert_eq!(FreezeSpec::parse("+ff").unwrap(), FreezeSpec::parse("paper,+feed_forward").unwrap());
    }

    #[test]
    fn paper_default_trains_exactly_in_out_pos_ln() {
        assert_eq!(
            FreezeSpec::default().trained_groups(),
            vec![ParamGroup::Input, ParamGroup::Output, ParamGroup::Positions, ParamGroup::LayerNorms]
        );
    }

    #[test]
    fn bad_specs_are_errors() {
        for bad in ["", "papr", "paper,attn", "paper,+bogus", "paper,full"] {
            let err = FreezeSpec::parse(bad).unwrap_err().to_string();
            assert!(err.contains("freeze spec"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn display_round_trips() {
        for text in ["paper", "full", "all,+out", "paper,-pos", "paper,+attn,+ff", "all,+out,+ln"] {
            let spec = FreezeSpec::parse(text).unwrap();
            assert_eq!(FreezeSpec::parse(&spec.to_string()).unwrap(), spec, "{text}");
        }
        assert_eq!(FreezeSpec::paper().to_string(), "paper");
    }
}

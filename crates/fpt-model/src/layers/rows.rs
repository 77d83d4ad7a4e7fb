//! Read-out rows and input checks shared by the backbones: which positions a forward pass
//! computes the last layer at ([`Rows`], [`Queries`]), gathering per-example rows, and the
//! validation of `inputs_embeds` and read-out positions.

use anyhow::{bail, Result};
use tch::{Kind, Tensor};

/// Positions `start..start + len` of the sequence: the only ones a read-out needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rows {
    pub start: i64,
    pub len: i64,
}

impl Rows {
    /// Checks `rows` against a sequence of `seq` tokens; `None` when they cover it all (no
    /// restriction to apply).
    pub fn restricting(rows: Option<Rows>, seq: i64) -> Result<Option<Rows>> {
        match rows {
            Some(r) if r.len <= 0 || r.start < 0 || r.start + r.len > seq => {
                bail!("read-out positions {}..{} are outside the sequence 0..{seq}", r.start, r.start + r.len)
            }
            Some(r) if r.start == 0 && r.len == seq => Ok(None),
            other => Ok(other),
        }
    }
}

/// Which query positions a layer computes (the last layer needs only the read-out's).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Queries<'a> {
    All,
    /// The same positions for every example.
    Rows(Rows),
    /// `[batch, k]` int64 positions, per example (read-outs at each example's last real token).
    At(&'a Tensor),
}

impl Queries<'_> {
    /// The rows of `x` `[batch, seq, width]` at these positions.
    pub(crate) fn select(&self, x: &Tensor) -> Tensor {
        match self {
            Queries::All => x.shallow_clone(),
            Queries::Rows(r) => x.narrow(1, r.start, r.len),
            Queries::At(pos) => gather_rows(x, pos),
        }
    }

    /// How many positions, in a sequence of `seq`.
    pub(crate) fn len(&self, seq: i64) -> i64 {
        match self {
            Queries::All => seq,
            Queries::Rows(r) => r.len,
            Queries::At(pos) => pos.size()[1],
        }
    }
}

/// `x[b, pos[b, j], :]` for `x` `[batch, seq, width]` and `pos` `[batch, k]`: `[batch, k, width]`.
pub(crate) fn gather_rows(x: &Tensor, pos: &Tensor) -> Tensor {
    let (b, _, w) = x.size3().expect("rows are gathered from [batch, seq, width]");
    let k = pos.size()[1];
    x.gather(1, &pos.unsqueeze(-1).expand([b, k, w], false), false)
}

/// Checks per-example read-out `positions`: int64 `[batch, k]` with k ≥ 1, each in `0..seq`
/// (the range on the CPU only: reading it back from a GPU would stall the step).
pub(crate) fn check_positions(positions: &Tensor, batch: i64, seq: i64) -> Result<()> {
    let size = positions.size();
    if size.len() != 2 || size[0] != batch || size[1] < 1 {
        bail!("read-out positions must be [batch = {batch}, k ≥ 1], got shape {size:?}");
    }
    if positions.kind() != Kind::Int64 {
        bail!("read-out positions must be int64, got {:?}", positions.kind());
    }
    if positions.device() == tch::Device::Cpu {
        let (lo, hi) = (positions.min().int64_value(&[]), positions.max().int64_value(&[]));
        if lo < 0 || hi >= seq {
            bail!("read-out positions span {lo}..={hi}, outside the sequence 0..{seq}");
        }
    }
    Ok(())
}

/// Checks that `inputs_embeds` is `[batch, seq, width]` with the model's `width` and
/// 1..=`max_positions` tokens, naming the config fields (`width_field`, `positions_field`) in
/// the errors; returns `[batch, seq, width]`.
pub(crate) fn check_inputs_embeds(
    inputs_embeds: &Tensor,
    width: i64,
    width_field: &str,
    max_positions: i64,
    positions_field: &str,
) -> Result<[i64; 3]> {
    let size = inputs_embeds.size();
    let &[b, t, w] = size.as_slice() else {
        bail!("inputs_embeds must have rank 3 [batch, seq, width], got shape {size:?}");
    };
    if w != width {
        bail!("inputs_embeds width is {w}, but the model's {width_field} is {width}");
    }
    if t > max_positions || t == 0 {
        bail!("sequence length {t} is outside 1..={max_positions} (the model's {positions_field})");
    }
    Ok([b, t, w])
}

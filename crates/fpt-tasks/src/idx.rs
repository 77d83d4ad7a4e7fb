//! The IDX format of MNIST and Fashion-MNIST (gzipped or raw): a 4-byte magic
//! `00 00 <type> <ndims>`, `ndims` big-endian u32 sizes, then the values. Only unsigned bytes
//! (type 0x08), the type MNIST uses, are accepted.

use anyhow::{bail, Context, Result};
use std::io::Read;
use std::path::Path;

/// An IDX array of unsigned bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Reads a file, un-gzipping it when it starts with the gzip magic (1f 8b).
pub fn read_maybe_gzip(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .with_context(|| format!("{}: corrupt or truncated gzip stream", path.display()))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Parses IDX bytes; `origin` names the file in errors.
pub fn parse_idx(bytes: &[u8], origin: &str) -> Result<IdxArray> {
    if bytes.len() < 4 {
        bail!("{origin}: {} bytes is too short for an IDX header (4-byte magic)", bytes.len());
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        bail!("{origin}: bad IDX magic {:02x} {:02x} {:02x} {:02x} at offset 0 (expected 00 00 08 <ndims>)", bytes[0], bytes[1], bytes[2], bytes[3]);
    }
    if bytes[2] != 0x08 {
        bail!("{origin}: IDX value type 0x{:02x} at offset 2 is not supported (expected 0x08, unsigned bytes)", bytes[2]);
    }
    let ndims = bytes[3] as usize;
    if ndims == 0 {
        bail!("{origin}: IDX header at offset 3 declares 0 dimensions");
    }
    let header = 4 + 4 * ndims;
    if bytes.len() < header {
        bail!("{origin}: truncated IDX header: {ndims} dimensions need {header} bytes, file has {}", bytes.len());
    }
    let dims: Vec<usize> = (0..ndims)
        .map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().expect("4 bytes")) as usize)
        .collect();
    let count = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .with_context(|| format!("{origin}: IDX dimensions {dims:?} overflow"))?;
    let body = bytes.len() - header;
    if body != count {
        bail!(
            "{origin}: IDX dimensions {dims:?} need {count} data bytes after the {header}-byte header, file has {body} ({})",
            if body < count { "truncated" } else { "trailing bytes" }
        );
    }
    Ok(IdxArray { dims, data: bytes[header..].to_vec() })
}

pub fn read_idx(path: &Path) -> Result<IdxArray> {
    let bytes = read_maybe_gzip(path)?;
    parse_idx(&bytes, &path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn encode(dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut out = vec![0, 0, 8, dims.len() as u8];
        for d in dims {
            out.extend_from_slice(&d.to_be_bytes());
        }
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn parses_and_rejects() {
        let ok = encode(&[2, 3], &[1, 2, 3, 4, 5, 6]);
        assert_eq!(parse_idx(&ok, "f").unwrap(), IdxArray { dims: vec![2, 3], data: vec![1, 2, 3, 4, 5, 6] });
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![], "too short"),
            (vec![1, 0, 8, 1], "bad IDX magic"),
            (vec![0, 0, 0x0d, 1, 0, 0, 0, 1, 0, 0, 0, 0], "not supported"),
            (vec![0, 0, 8, 0], "0 dimensions"),
            (vec![0, 0, 8, 3, 0, 0], "truncated IDX header"),
            (ok[..ok.len() - 1].to_vec(), "truncated"),
            ([ok.clone(), vec![9]].concat(), "trailing bytes"),
            (encode(&[u32::MAX, u32::MAX, u32::MAX], &[]), "overflow"),
        ];
        for (bytes, needle) in cases {
            let err = parse_idx(&bytes, "file.idx").unwrap_err().to_string();
            assert!(err.contains("file.idx") && err.contains(needle), "{needle}: {err}");
        }
    }

    /// Property test: no byte string makes the parser panic, and whatever it accepts is
    /// self-consistent. `FPT_FUZZ_ITERS` runs it longer.
    #[test]
    fn never_panics_on_random_bytes() {
        use rand::{Rng, SeedableRng};
        let iters: usize = std::env::var("FPT_FUZZ_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let ok = encode(&[3, 2, 2], &[7; 12]);
        for _ in 0..iters {
            let mut bytes = if rng.random::<bool>() { ok.clone() } else { vec![0u8; rng.random_range(0..40)] };
            for _ in 0..rng.random_range(0..4) {
                if bytes.is_empty() {
                    break;
                }
                let i = rng.random_range(0..bytes.len());
                bytes[i] = rng.random();
            }
            bytes.truncate(rng.random_range(0..=bytes.len()));
            if let Ok(a) = parse_idx(&bytes, "fuzz") {
                assert_eq!(a.data.len(), a.dims.iter().product::<usize>());
            }
        }
    }
}

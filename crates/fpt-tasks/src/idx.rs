//! The IDX format of MNIST and Fashion-MNIST (gzipped or raw): a 4-byte magic
//! `00 00 <type> <ndims>`, `ndims` big-endian u32 sizes, then the values. Only unsigned bytes
//! (type 0x08), the type MNIST uses, are accepted.
//!
//! Files are read as a stream (un-gzipped on the fly): the header first, then exactly the bytes it
//! declares, then a one-byte probe for trailing data — never more, so a small `.gz` that inflates
//! to gigabytes behind a valid header costs only what the header declares.

use anyhow::{bail, Context, Result};
use std::io::Read;
use std::path::Path;

/// An IDX array of unsigned bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Largest up-front allocation for the values; more grows as bytes actually arrive, so a header
/// that declares more than the file holds costs no more than the file.
const INITIAL_CAPACITY: usize = 1 << 20;
/// Bytes read per call while reading the values.
const CHUNK: usize = 1 << 16;

/// Parses IDX bytes; `origin` names the file in errors.
pub fn parse_idx(bytes: &[u8], origin: &str) -> Result<IdxArray> {
    read_idx_stream(bytes, origin, "read error")
}

/// Reads an IDX array from `reader`: the header, exactly the number of value bytes it declares,
/// and one more byte to detect trailing data. `origin` names the file in errors; `io_what` says
/// what a read error means (a corrupt gzip stream, say).
pub fn read_idx_stream<R: Read>(mut reader: R, origin: &str, io_what: &str) -> Result<IdxArray> {
    let mut io = |buf: &mut [u8]| read_full(&mut reader, buf).with_context(|| format!("{origin}: {io_what}"));
    let mut magic = [0u8; 4];
    let got = io(&mut magic)?;
    if got < 4 {
        bail!("{origin}: {got} bytes is too short for an IDX header (4-byte magic)");
    }
    if magic[0] != 0 || magic[1] != 0 {
        bail!(
            "{origin}: bad IDX magic {:02x} {:02x} {:02x} {:02x} at offset 0 (expected 00 00 08 <ndims>)",
            magic[0],
            magic[1],
            magic[2],
            magic[3]
        );
    }
    if magic[2] != 0x08 {
        bail!("{origin}: IDX value type 0x{:02x} at offset 2 is not supported (expected 0x08, unsigned bytes)", magic[2]);
    }
    let ndims = magic[3] as usize;
    if ndims == 0 {
        bail!("{origin}: IDX header at offset 3 declares 0 dimensions");
    }
    let header = 4 + 4 * ndims;
    let mut sizes = vec![0u8; 4 * ndims];
    let got = io(&mut sizes)?;
    if got < sizes.len() {
        bail!("{origin}: truncated IDX header: {ndims} dimensions need {header} bytes, file has {}", 4 + got);
    }
    let dims: Vec<usize> = sizes.chunks_exact(4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize).collect();
    let count = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .with_context(|| format!("{origin}: IDX dimensions {dims:?} overflow"))?;
    let mut data = Vec::with_capacity(count.min(INITIAL_CAPACITY));
    let mut chunk = vec![0u8; CHUNK.min(count).max(1)];
    while data.len() < count {
        let want = (count - data.len()).min(chunk.len());
        let got = io(&mut chunk[..want])?;
        data.extend_from_slice(&chunk[..got]);
        if got < want {
            bail!(
                "{origin}: IDX dimensions {dims:?} need {count} data bytes after the {header}-byte header, file has {} (truncated)",
                data.len()
            );
        }
    }
    if io(&mut [0u8; 1])? != 0 {
        bail!("{origin}: IDX dimensions {dims:?} need {count} data bytes after the {header}-byte header, file has more (trailing bytes)");
    }
    Ok(IdxArray { dims, data })
}

/// Fills `buf` unless the stream ends first; returns the bytes read.
fn read_full<R: Read>(reader: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Reads an IDX file, gzipped (1f 8b) or raw, as a stream (see the module notes).
pub fn read_idx(path: &Path) -> Result<IdxArray> {
    let origin = path.display().to_string();
    if path.is_dir() {
        bail!("{origin}: is a directory, expected an IDX file");
    }
    let mut file = std::io::BufReader::new(std::fs::File::open(path).with_context(|| format!("opening {origin}"))?);
    let mut magic = [0u8; 2];
    let got = read_full(&mut file, &mut magic).with_context(|| format!("reading {origin}"))?;
    let start = std::io::Cursor::new(magic[..got].to_vec()).chain(file);
    if magic[..got] == [0x1f, 0x8b] {
        read_idx_stream(flate2::read::MultiGzDecoder::new(start), &origin, "corrupt or truncated gzip stream")
    } else {
        read_idx_stream(start, &origin, "read error")
    }
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

    /// Counts the bytes a reader hands out.
    struct Counting<R> {
        inner: R,
        count: std::rc::Rc<std::cell::Cell<usize>>,
    }

    impl<R: Read> Read for Counting<R> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.count.set(self.count.get() + n);
            Ok(n)
        }
    }

    fn scratch_file(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("fpt-idx-{}-{name}", std::process::id()))
    }

    /// A gzip stream of a valid 1-D header declaring 10 bytes, then `10 + trailing` zero bytes,
    /// compressed in chunks (200 MB of zeros compress to ~200 KB).
    fn bomb(trailing: usize) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(&encode(&[10], &[0; 10])).unwrap();
        let zeros = vec![0u8; 1 << 20];
        let mut left = trailing;
        while left > 0 {
            let n = left.min(zeros.len());
            e.write_all(&zeros[..n]).unwrap();
            left -= n;
        }
        e.finish().unwrap()
    }

    /// A decompression bomb behind a valid header: the reader stops one byte past the declared
    /// data and reports trailing bytes, naming the file; it never inflates the rest.
    #[test]
    fn gzip_bomb_is_read_only_as_far_as_the_header_says() {
        let gz = bomb(200 << 20);
        assert!(gz.len() < 1 << 20, "the bomb compresses to {} bytes", gz.len());
        let count = std::rc::Rc::new(std::cell::Cell::new(0));
        let reader = Counting { inner: flate2::read::MultiGzDecoder::new(gz.as_slice()), count: count.clone() };
        let err = read_idx_stream(reader, "bomb.idx.gz", "corrupt gzip").unwrap_err().to_string();
        assert!(err.contains("bomb.idx.gz") && err.contains("trailing bytes"), "{err}");
        assert!(count.get() <= 8 + 10 + 1, "inflated {} bytes, the header declares 18", count.get());

        let path = scratch_file("bomb-idx1-ubyte.gz");
        std::fs::write(&path, &gz).unwrap();
        let start = std::time::Instant::now();
        let err = read_idx(&path).unwrap_err().to_string();
        std::fs::remove_file(&path).unwrap();
        assert!(err.contains(&path.display().to_string()) && err.contains("trailing bytes"), "{err}");
        assert!(start.elapsed().as_secs_f64() < 5.0, "took {:?}", start.elapsed());
    }

    /// A header declaring far more than the file holds is "truncated", without allocating the
    /// declared size first ([u32::MAX, u32::MAX] is beyond any allocation: a `with_capacity` of
    /// it would panic).
    #[test]
    fn huge_declared_sizes_are_truncated_not_allocated() {
        let lying = encode(&[u32::MAX, u32::MAX], &[1, 2, 3]);
        let err = parse_idx(&lying, "huge.idx").unwrap_err().to_string();
        assert!(err.contains("huge.idx") && err.contains("file has 3 (truncated)"), "{err}");
        for (suffix, bytes) in [
            ("raw", lying.clone()),
            ("gz", {
                use std::io::Write;
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(&lying).unwrap();
                e.finish().unwrap()
            }),
        ] {
            let path = scratch_file(&format!("huge-{suffix}"));
            std::fs::write(&path, bytes).unwrap();
            let err = read_idx(&path).unwrap_err().to_string();
            std::fs::remove_file(&path).unwrap();
            assert!(err.contains(&path.display().to_string()) && err.contains("truncated"), "{suffix}: {err}");
        }
    }

    /// Files read from disk, raw and gzipped, give the same array and the same errors as bytes;
    /// a corrupt gzip stream and a directory are errors naming the path.
    #[test]
    fn files_raw_gzipped_and_corrupt() {
        use std::io::Write;
        let ok = encode(&[2, 3], &[1, 2, 3, 4, 5, 6]);
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&ok).unwrap();
        let gz = e.finish().unwrap();
        let mut bad_crc = gz.clone();
        let n = bad_crc.len();
        bad_crc[n - 8] ^= 0xff; // the CRC32 of the trailer
        let cases: Vec<(&str, Vec<u8>, Option<&str>)> = vec![
            ("raw", ok.clone(), None),
            ("gz", gz.clone(), None),
            ("gz-trailing", [gz.clone(), vec![1, 2, 3]].concat(), Some("corrupt or truncated gzip")),
            ("gz-half", gz[..gz.len() / 2].to_vec(), Some("corrupt or truncated gzip")),
            ("gz-crc", bad_crc, Some("corrupt or truncated gzip")),
            ("one-byte", vec![0x1f], Some("1 bytes is too short")),
            ("empty", vec![], Some("0 bytes is too short")),
        ];
        for (name, bytes, needle) in cases {
            let path = scratch_file(name);
            std::fs::write(&path, bytes).unwrap();
            let got = read_idx(&path);
            std::fs::remove_file(&path).unwrap();
            match needle {
                None => assert_eq!(got.unwrap(), IdxArray { dims: vec![2, 3], data: vec![1, 2, 3, 4, 5, 6] }, "{name}"),
                Some(needle) => {
                    let err = format!("{:#}", got.unwrap_err());
                    assert!(err.contains(&path.display().to_string()) && err.contains(needle), "{name}: {err}");
                }
            }
        }
        let dir = scratch_file("dir");
        std::fs::create_dir_all(&dir).unwrap();
        let err = read_idx(&dir).unwrap_err().to_string();
        std::fs::remove_dir(&dir).unwrap();
        assert!(err.contains(&dir.display().to_string()) && err.contains("is a directory"), "{err}");
    }
}

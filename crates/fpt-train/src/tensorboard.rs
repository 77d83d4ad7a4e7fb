//! TensorBoard event files for scalars, written directly: TFRecord framing (length, masked
//! CRC-32C, payload, masked CRC-32C) around hand-encoded `Event` protocol buffers. Only what
//! scalar curves need: `file_version`, `summary { value { tag, simple_value } }`, and
//! `session_log { status: START }`, which tells TensorBoard to drop the steps after a resume
//! point that an interrupted run had already written.

use anyhow::{Context, Result};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

const CRC32C_POLY: u32 = 0x82F6_3B78;

fn crc32c_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    for (i, slot) in table.iter_mut().enumerate() {
        let mut c = i as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 { (c >> 1) ^ CRC32C_POLY } else { c >> 1 };
        }
        *slot = c;
    }
    table
}

pub fn crc32c(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(crc32c_table);
    !data.iter().fold(!0u32, |c, &b| table[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8))
}

fn masked_crc(data: &[u8]) -> u32 {
    let c = crc32c(data);
    (c.rotate_right(15)).wrapping_add(0xa282_ead8)
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn key(field: u32, wire: u8, out: &mut Vec<u8>) {
    varint(((field as u64) << 3) | wire as u64, out);
}

fn bytes_field(field: u32, data: &[u8], out: &mut Vec<u8>) {
    key(field, 2, out);
    varint(data.len() as u64, out);
    out.extend_from_slice(data);
}

/// `Event { wall_time = 1 (double), step = 2 (int64), <what> }`.
fn event(wall_time: f64, step: i64, what: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = Vec::new();
    key(1, 1, &mut out);
    out.extend_from_slice(&wall_time.to_le_bytes());
    key(2, 0, &mut out);
    varint(step as u64, &mut out);
    what(&mut out);
    out
}

pub struct EventWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

impl EventWriter {
    /// Creates `dir/events.out.tfevents.<unix time>.fpt` and writes the file-version record.
    pub fn create(dir: &Path) -> Result<Self> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let mut path = dir.join(format!("events.out.tfevents.{}.fpt", now.as_secs()));
        let mut n = 1;
        while path.exists() {
            path = dir.join(format!("events.out.tfevents.{}.fpt.{n}", now.as_secs()));
            n += 1;
        }
        let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let mut writer = EventWriter { path, out: BufWriter::new(file) };
        let record = event(now.as_secs_f64(), 0, |o| bytes_field(3, b"brain.Event:2", o));
        writer.record(&record)?;
        Ok(writer)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn record(&mut self, data: &[u8]) -> Result<()> {
        let len = (data.len() as u64).to_le_bytes();
        let mut buf = Vec::with_capacity(data.len() + 16);
        buf.extend_from_slice(&len);
        buf.extend_from_slice(&masked_crc(&len).to_le_bytes());
        buf.extend_from_slice(data);
        buf.extend_from_slice(&masked_crc(data).to_le_bytes());
        self.out.write_all(&buf).with_context(|| format!("writing {}", self.path.display()))
    }

    fn now() -> f64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs_f64()
    }

    /// Marks a (re)start at `step`: TensorBoard discards earlier-written events from `step` on.
    pub fn session_start(&mut self, step: i64) -> Result<()> {
        let record = event(Self::now(), step, |o| {
            let mut session = Vec::new();
            key(1, 0, &mut session);
            varint(1, &mut session); // SessionLog.START
            bytes_field(7, &session, o);
        });
        self.record(&record)
    }

    /// One scalar point.
    pub fn scalar(&mut self, tag: &str, step: i64, value: f32) -> Result<()> {
        let record = event(Self::now(), step, |o| {
            let mut value_msg = Vec::new();
            bytes_field(1, tag.as_bytes(), &mut value_msg);
            key(2, 5, &mut value_msg);
            value_msg.extend_from_slice(&value.to_le_bytes());
            let mut summary = Vec::new();
            bytes_field(1, &value_msg, &mut summary);
            bytes_field(5, &summary, o);
        });
        self.record(&record)
    }

    pub fn flush(&mut self) -> Result<()> {
        self.out.flush().with_context(|| format!("flushing {}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_known_vector() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn records_are_framed() {
        let dir = std::env::temp_dir().join(format!("fpt-tb-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut w = EventWriter::create(&dir).unwrap();
        w.scalar("train/loss", 3, 0.5).unwrap();
        w.flush().unwrap();
        let bytes = std::fs::read(w.path()).unwrap();
        // Walk the records and check both CRCs of each.
        let mut pos = 0;
        let mut records = 0;
        while pos < bytes.len() {
            let len_bytes = &bytes[pos..pos + 8];
            let len = u64::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
            assert_eq!(u32::from_le_bytes(bytes[pos + 8..pos + 12].try_into().unwrap()), masked_crc(len_bytes));
            let data = &bytes[pos + 12..pos + 12 + len];
            assert_eq!(u32::from_le_bytes(bytes[pos + 12 + len..pos + 16 + len].try_into().unwrap()), masked_crc(data));
            pos += 16 + len;
            records += 1;
        }
        assert_eq!(records, 2);
        let _ = std::fs::remove_dir_all(dir);
    }
}

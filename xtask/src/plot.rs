//! What the PNG plots share (the learning curves of `results`, the cost against sequence length
//! of `bench`): plotters' bitmap backend draws text with ab_glyph, which needs a TTF registered
//! once per process, and its errors carry no `std::error::Error` that anyhow could wrap.

use anyhow::Result;

const FONT_PATHS: [&str; 2] = ["/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/TTF/DejaVuSans.ttf"];

/// Registers DejaVu Sans as plotters' "sans-serif" (once; later calls return the first outcome).
pub fn register_font() -> Result<()> {
    static FONT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let registered = *FONT.get_or_init(|| {
        FONT_PATHS.iter().filter_map(|p| std::fs::read(p).ok()).next().is_some_and(|bytes| {
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font("sans-serif", plotters::style::FontStyle::Normal, bytes).is_ok()
        })
    });
    anyhow::ensure!(registered, "no DejaVuSans.ttf font found (Debian: fonts-dejavu-core)");
    Ok(())
}

/// A plotters error as anyhow's (`.map_err(plot::err)`).
pub fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

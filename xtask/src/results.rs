//! Results of a grid: `results/<grid>.md` (mean ± std over seeds per cell group, the paper's
//! number and the difference, steps-to-target) and a learning-curve PNG per task.

use crate::grid::{Cell, Grid};
use anyhow::{Context, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize)]
pub struct Summary {
    pub status: String,
    pub final_eval_acc: Option<f64>,
    pub steps_to_target: Option<u64>,
    pub total_time_s: f64,
    pub trainable_params: i64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct MetricsLine {
    pub step: u64,
    pub eval_acc: Option<f64>,
}

pub fn read_summary(dir: &Path) -> Option<Summary> {
    serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).ok()?).ok()
}

pub fn read_eval_curve(dir: &Path) -> Vec<(u64, f64)> {
    let Ok(text) = std::fs::read_to_string(dir.join("metrics.jsonl")) else { return Vec::new() };
    text.lines()
        .filter_map(|l| serde_json::from_str::<MetricsLine>(l).ok())
        .filter_map(|m| m.eval_acc.map(|a| (m.step, a)))
        .collect()
}

/// The paper's numbers: `[table.row] task = percent`.
pub fn load_paper(path: &Path) -> Result<toml::Table> {
    if !path.is_file() {
        return Ok(toml::Table::new());
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("{}: not valid TOML", path.display()))
}

pub fn paper_value(paper: &toml::Table, reference: &str, task: &str) -> Option<f64> {
    let mut node = paper;
    let parts: Vec<&str> = reference.split('.').collect();
    for part in &parts {
        node = node.get(*part)?.as_table()?;
    }
    let v = node.get(task)?;
    v.as_float().or_else(|| v.as_integer().map(|i| i as f64))
}

fn mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = if values.len() > 1 { values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    (mean, var.sqrt())
}

fn task_of(cell: &Cell) -> String {
    cell.config.get("task").and_then(|t| t.get("name")).and_then(|n| n.as_str()).unwrap_or("?").to_string()
}

/// Writes `results/<grid>.md` and `results/<grid>-<task>.png`; returns the markdown path.
pub fn write(grid: &Grid, runs: &Path, results: &Path, paper: &toml::Table, command: &str) -> Result<PathBuf> {
    let shown_runs = runs.strip_prefix(crate::util::workspace_root()).unwrap_or(runs);
    std::fs::create_dir_all(results).with_context(|| format!("creating {}", results.display()))?;
    let mut groups: BTreeMap<(String, String), Vec<&Cell>> = BTreeMap::new();
    let mut order: Vec<(String, String)> = Vec::new();
    for cell in &grid.cells {
        let key = (task_of(cell), cell.group.clone());
        if !groups.contains_key(&key) {
            order.push(key.clone());
        }
        groups.entry(key).or_default().push(cell);
    }
    let mut md = String::new();
    writeln!(md, "# Results: grid `{}`\n", grid.name)?;
    writeln!(md, "Made by `{command}`; run directories under `{}/`. Accuracy is test accuracy on the", shown_runs.display())?;
    writeln!(md, "whole evaluation split at the last step, in percent: mean ± sample std over the seeds that")?;
    writeln!(md, "completed (n). \"paper\" is the paper's number for the same row and task")?;
    writeln!(md, "(`experiments/paper_results.toml`); Δ = ours − paper. Steps to target: first evaluated step")?;
    writeln!(md, "whose accuracy reached the cell's `train.target_accuracy` (paper Table 6), mean over seeds that")?;
    writeln!(md, "reached it.\n")?;
    writeln!(md, "| task | cell group | n | accuracy % | paper % | Δ | steps to target | trainable params | time (s) |")?;
    writeln!(md, "|---|---|---|---|---|---|---|---|---|")?;
    for key in &order {
        let cells = &groups[key];
        let done: Vec<(&Cell, Summary)> = cells
            .iter()
            .filter_map(|c| read_summary(&runs.join(&c.name)).filter(|s| s.status == "completed").map(|s| (*c, s)))
            .collect();
        let accs: Vec<f64> = done.iter().filter_map(|(_, s)| s.final_eval_acc.map(|a| a * 100.0)).collect();
        let acc = if accs.is_empty() { "—".to_string() } else {
            let (m, sd) = mean_std(&accs);
            if accs.len() > 1 { format!("{m:.1} ± {sd:.1}") } else { format!("{m:.1}") }
        };
        let paper_ref = cells[0].config.get("paper_ref").and_then(|v| v.as_str());
        let paper_v = paper_ref.and_then(|r| paper_value(paper, r, &key.0));
        let (paper_s, delta) = match (paper_v, accs.is_empty()) {
            (Some(p), false) => (format!("{p:.1}"), format!("{:+.1}", mean_std(&accs).0 - p)),
            (Some(p), true) => (format!("{p:.1}"), "—".into()),
            (None, _) => ("—".into(), "—".into()),
        };
        let reached: Vec<f64> = done.iter().filter_map(|(_, s)| s.steps_to_target.map(|v| v as f64)).collect();
        let steps = if reached.is_empty() { "—".to_string() } else { format!("{:.0} ({}/{})", mean_std(&reached).0, reached.len(), done.len()) };
        let params = done.first().map(|(_, s)| s.trainable_params.to_string()).unwrap_or_else(|| "—".into());
        let time: f64 = done.iter().map(|(_, s)| s.total_time_s).sum::<f64>() / done.len().max(1) as f64;
        writeln!(md, "| {} | {} | {}/{} | {acc} | {paper_s} | {delta} | {steps} | {params} | {time:.0} |", key.0, key.1, done.len(), cells.len())?;
    }
    let mut tasks: Vec<String> = order.iter().map(|k| k.0.clone()).collect();
    tasks.dedup();
    writeln!(md)?;
    for task in &tasks {
        let curves: Vec<(String, Vec<(u64, f64)>)> = order
            .iter()
            .filter(|k| &k.0 == task)
            .map(|k| (k.1.clone(), mean_curve(&groups[k].iter().map(|c| read_eval_curve(&runs.join(&c.name))).collect::<Vec<_>>())))
            .filter(|(_, c)| !c.is_empty())
            .collect();
        if curves.is_empty() {
            continue;
        }
        let png = results.join(format!("{}-{task}.png", grid.name));
        match plot(&png, task, &curves) {
            Ok(()) => writeln!(md, "![{task} learning curves]({})", png.file_name().unwrap_or_default().to_string_lossy())?,
            Err(e) => writeln!(md, "(no plot for {task}: {e:#})")?,
        }
    }
    let path = results.join(format!("{}.md", grid.name));
    std::fs::write(&path, md).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Mean over runs at the steps all of them evaluated.
fn mean_curve(runs: &[Vec<(u64, f64)>]) -> Vec<(u64, f64)> {
    let runs: Vec<&Vec<(u64, f64)>> = runs.iter().filter(|r| !r.is_empty()).collect();
    let Some(first) = runs.first() else { return Vec::new() };
    first
        .iter()
        .filter_map(|(step, _)| {
            let vals: Vec<f64> = runs.iter().filter_map(|r| r.iter().find(|(s, _)| s == step).map(|(_, a)| *a)).collect();
            (vals.len() == runs.len()).then(|| (*step, vals.iter().sum::<f64>() / vals.len() as f64))
        })
        .collect()
}

const FONT_PATHS: [&str; 2] = ["/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/TTF/DejaVuSans.ttf"];

fn plot(path: &Path, task: &str, curves: &[(String, Vec<(u64, f64)>)]) -> Result<()> {
    use plotters::prelude::*;
    static FONT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let registered = *FONT.get_or_init(|| {
        FONT_PATHS.iter().filter_map(|p| std::fs::read(p).ok()).next().is_some_and(|bytes| {
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
        })
    });
    anyhow::ensure!(registered, "no DejaVuSans.ttf font found (Debian: fonts-dejavu-core)");
    let max_step = curves.iter().flat_map(|(_, c)| c.iter().map(|p| p.0)).max().unwrap_or(1).max(1);
    let root = BitMapBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{task}: eval accuracy"), ("sans-serif", 24))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0u64..max_step, 0f64..100f64)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("accuracy %")
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for (i, (name, curve)) in curves.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(curve.iter().map(|(s, a)| (*s, a * 100.0)), color.stroke_width(2)))
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        chart
            .draw_series(curve.iter().map(|(s, a)| Circle::new((*s, a * 100.0), 3, color.filled())))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_lookup_and_stats() {
        let paper: toml::Table = toml::from_str("[table1.fpt]\nlistops = 38.4\nbit-xor = 100\n").unwrap();
        assert_eq!(paper_value(&paper, "table1.fpt", "listops"), Some(38.4));
        assert_eq!(paper_value(&paper, "table1.fpt", "bit-xor"), Some(100.0));
        assert_eq!(paper_value(&paper, "table1.lstm", "listops"), None);
        let (m, s) = mean_std(&[1.0, 2.0, 3.0]);
        assert!((m - 2.0).abs() < 1e-12 && (s - 1.0).abs() < 1e-12);
        assert_eq!(mean_curve(&[vec![(10, 0.5), (20, 1.0)], vec![(10, 0.7), (20, 0.8)]]), vec![(10, 0.6), (20, 0.9)]);
    }
}

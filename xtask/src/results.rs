//! Results of a grid: `results/<grid>.md` (mean ± std over seeds per cell group, the paper's
//! number and the difference, steps-to-target, the examples evaluated, and notes on what each
//! task's data pipeline dropped, truncated or skipped), a learning-curve PNG per task, and
//! `results/<grid>.cells.json`, the record of every finished cell ([`Record`]).

use crate::grid::{Cell, Grid};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize)]
pub struct Summary {
    pub status: String,
    pub final_eval_acc: Option<f64>,
    pub steps_to_target: Option<u64>,
    /// Absent only in a record entry transcribed from an older table ([`RecordedCell::note`]).
    #[serde(default)]
    pub total_time_s: Option<f64>,
    pub trainable_params: i64,
    /// What the run's data pipeline dropped, truncated or skipped (fpt_train's `DataReport`;
    /// absent in summaries written before it existed).
    #[serde(default)]
    pub data: Option<DataReport>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct DataReport {
    #[serde(default)]
    pub splits: Vec<SplitCounts>,
    #[serde(default)]
    pub padding: String,
    #[serde(default)]
    pub eval_split: String,
    #[serde(default)]
    pub eval_examples: u64,
    #[serde(default)]
    pub eval_skipped: Skipped,
    #[serde(default)]
    pub train_skipped: Skipped,
    #[serde(default = "one")]
    pub accuracy_scale: f64,
}

fn one() -> f64 {
    1.0
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct SplitCounts {
    pub split: String,
    pub source: u64,
    pub kept: u64,
    #[serde(default)]
    pub dropped: u64,
    #[serde(default)]
    pub truncated: u64,
    #[serde(default)]
    pub over_limit: u64,
    #[serde(default)]
    pub rule: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
pub struct Skipped {
    pub batches: u64,
    pub examples: u64,
}

impl DataReport {
    /// The table cell: examples evaluated, of how many in the evaluation split's source.
    fn eval_cell(&self) -> String {
        let source = self.splits.iter().find(|c| c.split == self.eval_split).map(|c| c.source);
        match source {
            Some(n) if n != self.eval_examples => format!("{} of {n} ({})", self.eval_examples, self.eval_split),
            _ => format!("{} ({})", self.eval_examples, self.eval_split),
        }
    }

    /// One line on what the pipeline did to every split, or `None` when it kept everything.
    fn note(&self) -> Option<String> {
        let mut parts = Vec::new();
        for c in &self.splits {
            let mut what = Vec::new();
            for (n, verb) in [(c.dropped, "dropped"), (c.truncated, "truncated"), (c.over_limit, "kept over the limit")] {
                if n > 0 {
                    what.push(format!("{n} {verb}"));
                }
            }
            if !what.is_empty() {
                parts.push(format!("{} {} of {} kept, {} ({})", c.split, c.kept, c.source, what.join(", "), c.rule));
            }
        }
        if self.eval_skipped.batches > 0 {
            parts.push(format!(
                "evaluation skipped {} batches ({} examples) holding an over-long example",
                self.eval_skipped.batches, self.eval_skipped.examples
            ));
        }
        if self.train_skipped.batches > 0 {
            parts.push(format!("training skipped {} batches ({} examples)", self.train_skipped.batches, self.train_skipped.examples));
        }
        if self.accuracy_scale != 1.0 {
            parts.push(format!("accuracy reported × {} (the reference's correction for what it skipped)", self.accuracy_scale));
        }
        if parts.is_empty() {
            return None;
        }
        Some(format!("evaluated on {}, padding {}: {}", self.eval_split, self.padding, parts.join("; ")))
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct MetricsLine {
    pub step: u64,
    pub eval_acc: Option<f64>,
}

pub fn read_summary(dir: &Path) -> Option<Summary> {
    serde_json::from_value(read_summary_json(dir)?).ok()
}

/// The run's `summary.json` as a JSON value; None when it is absent or not JSON.
fn read_summary_json(dir: &Path) -> Option<serde_json::Value> {
    serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).ok()?).ok()
}

pub fn read_eval_curve(dir: &Path) -> Vec<(u64, f64)> {
    let Ok(text) = std::fs::read_to_string(dir.join("metrics.jsonl")) else { return Vec::new() };
    text.lines().filter_map(|l| serde_json::from_str::<MetricsLine>(l).ok()).filter_map(|m| m.eval_acc.map(|a| (m.step, a))).collect()
}

/// `results/<grid>.cells.json`: each finished cell's summary and evaluation curve, written with
/// the table and committed with it. Run directories hold checkpoints and stay out of version
/// control, so a fresh clone or another machine has none; from the record it still rebuilds the
/// whole table and runs only the cells nobody has finished (a grid spread over machines or
/// sittings). An entry counts only while the grid gives its cell the same config.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Record {
    pub cells: BTreeMap<String, RecordedCell>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedCell {
    /// The cell's config as its `cell.toml` holds it ([`Cell::config_toml`]).
    pub config: String,
    /// The run's `summary.json` as `fpt` wrote it.
    pub summary: serde_json::Value,
    /// (step, evaluation accuracy) at every evaluation.
    pub eval_curve: Vec<(u64, f64)>,
    /// Where an entry not copied from a run directory came from (say, transcribed from an older
    /// table whose run directories were lost); the table prints it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

pub fn record_path(results: &Path, grid: &str) -> PathBuf {
    results.join(format!("{grid}.cells.json"))
}

impl Record {
    /// The record at `path`; empty when there is none yet.
    pub fn load(path: &Path) -> Result<Record> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Record::default()),
            Err(e) => return Err(e).with_context(|| format!("reading the grid record {}", path.display())),
        };
        let record: Record = serde_json::from_str(&text).with_context(|| {
            format!("{}: not a grid record (expected {{\"cells\": {{name: {{config, summary, eval_curve}}}}}})", path.display())
        })?;
        for (name, entry) in &record.cells {
            entry.summary().with_context(|| format!("{}: cell {name}: its summary is not an fpt summary.json", path.display()))?;
        }
        Ok(record)
    }

    /// The cell's entry, if it was recorded with the config the grid gives it now (the same keys
    /// and values; their order in the grid file does not matter).
    pub fn finished(&self, cell: &Cell) -> Option<&RecordedCell> {
        let entry = self.cells.get(&cell.name)?;
        let config: toml::Table = toml::from_str(&entry.config).ok()?;
        (config == cell.config).then_some(entry)
    }
}

impl RecordedCell {
    pub fn summary(&self) -> Result<Summary> {
        Ok(serde_json::from_value(self.summary.clone())?)
    }

    /// A run directory's entry, if the run there completed (as [`read_summary`] reads it).
    /// The file is read once: the entry keeps it whole, as a JSON value, and the status is read
    /// from that value.
    fn from_run(cell: &Cell, dir: &Path) -> Result<Option<RecordedCell>> {
        let Some(summary) = read_summary_json(dir) else { return Ok(None) };
        if !serde_json::from_value::<Summary>(summary.clone()).is_ok_and(|s| s.status == "completed") {
            return Ok(None);
        }
        Ok(Some(RecordedCell { config: cell.config_toml()?, summary, eval_curve: read_eval_curve(dir), note: None }))
    }
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
    // Every finished cell: its run directory's result, else the record's.
    let record_file = record_path(results, &grid.name);
    let previous = Record::load(&record_file)?;
    let mut record = Record::default();
    let mut recorded_only = 0;
    for cell in &grid.cells {
        let entry = match RecordedCell::from_run(cell, &runs.join(&cell.name))? {
            Some(entry) => entry,
            None => match previous.finished(cell) {
                Some(entry) => {
                    recorded_only += 1;
                    entry.clone()
                }
                None => continue,
            },
        };
        record.cells.insert(cell.name.clone(), entry);
    }
    let mut md = String::new();
    writeln!(md, "# Results: grid `{}`\n", grid.name)?;
    writeln!(md, "Made by `{command}`; run directories under `{}/`. Accuracy is the accuracy on the", shown_runs.display())?;
    writeln!(md, "evaluation split (`train.eval_split`) at the last step, in percent: mean ± sample std over the")?;
    writeln!(md, "seeds that completed (n); \"eval examples\" says how many examples that is (of how many the")?;
    writeln!(md, "split's file holds), and the notes under the table what was dropped, truncated or skipped.")?;
    writeln!(md, "\"paper\" is the paper's number for the same row and task")?;
    writeln!(md, "(`experiments/paper_results.toml`); Δ = ours − paper. Steps to target: first evaluated step")?;
    writeln!(md, "whose accuracy reached the cell's `train.target_accuracy` (paper Table 6), mean over seeds that")?;
    writeln!(md, "reached it.")?;
    let record_name = record_file.file_name().unwrap_or_default().to_string_lossy();
    if recorded_only > 0 {
        writeln!(
            md,
            "{recorded_only} of the {} finished cells have no run directory here: their results come from `{record_name}`,",
            record.cells.len()
        )?;
        writeln!(md, "the record this command keeps of every finished cell.")?;
    }
    writeln!(md)?;
    writeln!(md, "| task | cell group | n | accuracy % | paper % | Δ | eval examples | steps to target | trainable params | time (s) |")?;
    writeln!(md, "|---|---|---|---|---|---|---|---|---|---|")?;
    let mut notes: Vec<(String, String)> = Vec::new();
    for key in &order {
        let cells = &groups[key];
        let mut done: Vec<(&Cell, Summary)> = Vec::new();
        for cell in cells {
            if let Some(entry) = record.cells.get(&cell.name) {
                done.push((cell, entry.summary().with_context(|| format!("cell {}: reading its summary", cell.name))?));
            }
        }
        let accs: Vec<f64> = done.iter().filter_map(|(_, s)| s.final_eval_acc.map(|a| a * 100.0)).collect();
        let acc = if accs.is_empty() {
            "—".to_string()
        } else {
            let (m, sd) = mean_std(&accs);
            if accs.len() > 1 {
                format!("{m:.1} ± {sd:.1}")
            } else {
                format!("{m:.1}")
            }
        };
        let paper_ref = cells[0].config.get("paper_ref").and_then(|v| v.as_str());
        let paper_v = paper_ref.and_then(|r| paper_value(paper, r, &key.0));
        let (paper_s, delta) = match (paper_v, accs.is_empty()) {
            (Some(p), false) => (format!("{p:.1}"), format!("{:+.1}", mean_std(&accs).0 - p)),
            (Some(p), true) => (format!("{p:.1}"), "—".into()),
            (None, _) => ("—".into(), "—".into()),
        };
        let reached: Vec<f64> = done.iter().filter_map(|(_, s)| s.steps_to_target.map(|v| v as f64)).collect();
        let steps =
            if reached.is_empty() { "—".to_string() } else { format!("{:.0} ({}/{})", mean_std(&reached).0, reached.len(), done.len()) };
        let params = done.first().map(|(_, s)| s.trainable_params.to_string()).unwrap_or_else(|| "—".into());
        // Mean over the seeds that have a time; none (no finished seed, or only transcribed
        // entries without one): a dash.
        let times: Vec<f64> = done.iter().filter_map(|(_, s)| s.total_time_s).collect();
        let time = if times.is_empty() { "—".to_string() } else { format!("{:.0}", mean_std(&times).0) };
        let data = done.iter().find_map(|(_, s)| s.data.as_ref());
        let evaluated = data.map(DataReport::eval_cell).unwrap_or_else(|| "—".into());
        if let Some(note) = data.and_then(DataReport::note) {
            if !notes.iter().any(|(t, n)| t == &key.0 && n == &note) {
                notes.push((key.0.clone(), note));
            }
        }
        writeln!(
            md,
            "| {} | {} | {}/{} | {acc} | {paper_s} | {delta} | {evaluated} | {steps} | {params} | {time} |",
            key.0,
            key.1,
            done.len(),
            cells.len()
        )?;
    }
    if !notes.is_empty() {
        writeln!(md, "\nData (per task, from the runs' summary.json):\n")?;
        for (task, note) in &notes {
            writeln!(md, "- {task}: {note}")?;
        }
    }
    // The provenance of entries not copied from a run directory, once per distinct note.
    let mut provenance: Vec<(&str, Vec<&str>)> = Vec::new();
    for (name, entry) in &record.cells {
        if let Some(note) = entry.note.as_deref() {
            match provenance.iter_mut().find(|(n, _)| *n == note) {
                Some((_, names)) => names.push(name),
                None => provenance.push((note, vec![name])),
            }
        }
    }
    if !provenance.is_empty() {
        writeln!(md, "\nFrom `{record_name}`, not from a run:\n")?;
        for (note, names) in &provenance {
            writeln!(md, "- {}: {note}", names.join(", "))?;
        }
    }
    let mut tasks: Vec<String> = order.iter().map(|k| k.0.clone()).collect();
    tasks.dedup();
    writeln!(md)?;
    for task in &tasks {
        let curves: Vec<(String, Vec<(u64, f64)>)> = order
            .iter()
            .filter(|k| &k.0 == task)
            .map(|k| (k.1.clone(), group_curve(&record, &groups[k], runs)))
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
    if !record.cells.is_empty() {
        let text = serde_json::to_string_pretty(&record).context("serialising the grid record")?;
        std::fs::write(&record_file, text + "\n").with_context(|| format!("writing {}", record_file.display()))?;
    }
    Ok(path)
}

/// A cell's evaluation curve: a finished cell's as recorded (its run directory's, where that
/// finished here), else what an unfinished run here has evaluated so far.
fn curve_of(record: &Record, cell: &Cell, runs: &Path) -> Vec<(u64, f64)> {
    match record.cells.get(&cell.name) {
        Some(entry) => entry.eval_curve.clone(),
        None => read_eval_curve(&runs.join(&cell.name)),
    }
}

/// A cell group's plotted curve: the mean of its finished cells' curves; only while none of
/// them has finished, of what its unfinished runs here have evaluated so far. (An unfinished
/// seed in the mean would cut the finished seeds' curves back to the last step it reached.)
fn group_curve(record: &Record, cells: &[&Cell], runs: &Path) -> Vec<(u64, f64)> {
    let finished: Vec<&Cell> = cells.iter().copied().filter(|c| record.cells.contains_key(&c.name)).collect();
    let plotted = if finished.is_empty() { cells } else { &finished[..] };
    mean_curve(&plotted.iter().map(|c| curve_of(record, c, runs)).collect::<Vec<_>>())
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

fn plot(path: &Path, task: &str, curves: &[(String, Vec<(u64, f64)>)]) -> Result<()> {
    use plotters::prelude::*;
    crate::plot::register_font()?;
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

    /// The examples each run evaluated, and what its data pipeline dropped, truncated or
    /// skipped, reach the table (a column and notes), read from summary.json as fpt writes it;
    /// a summary without the report still reads.
    #[test]
    fn data_counts_reach_the_table() {
        let dir = std::env::temp_dir().join(format!("xtask-results-data-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let grid_text = "name = \"t\"\n[defaults.model]\nbackbone = \"gpt2\"\n[axes.task]\nlistops = { task = { name = \"listops\" } }\nhomology = { task = { name = \"remote-homology\" } }\nxor = { task = { name = \"bit-xor\" } }\nmem = { task = { name = \"bit-memory\" } }\n[axes.seed]\ns0 = { seed = 0 }\n";
        let grid = crate::grid::parse(grid_text, Path::new("t.toml")).unwrap();
        let summary = |data: &str| {
            format!(
            "{{\"status\": \"completed\", \"final_eval_acc\": 0.5, \"steps_to_target\": null, \"total_time_s\": 1.0, \"trainable_params\": 7{data}}}"
        )
        };
        let listops = r#", "data": {"splits": [
            {"split": "train", "source": 96000, "kept": 53592, "dropped": 42408, "truncated": 0, "over_limit": 0, "rule": "longer than 1024 tokens dropped"},
            {"split": "val", "source": 2000, "kept": 1088, "dropped": 912, "truncated": 0, "over_limit": 0, "rule": "longer than 1024 tokens dropped"},
            {"split": "test", "source": 2000, "kept": 1132, "dropped": 868, "truncated": 0, "over_limit": 0, "rule": "longer than 1024 tokens dropped"}],
            "padding": "masked", "eval_split": "test", "eval_examples": 1132,
            "eval_skipped": {"batches": 0, "examples": 0}, "train_skipped": {"batches": 0, "examples": 0}, "accuracy_scale": 1.0}"#;
        let homology = r#", "data": {"splits": [
            {"split": "val", "source": 736, "kept": 736, "dropped": 0, "truncated": 0, "over_limit": 2, "rule": "longer than 1024 tokens kept; batches holding one are skipped"}],
            "padding": "batch", "eval_split": "val", "eval_examples": 672,
            "eval_skipped": {"batches": 1, "examples": 64}, "train_skipped": {"batches": 5, "examples": 80}, "accuracy_scale": 0.9739}"#;
        for (cell, data) in [("listops__s0", listops), ("homology__s0", homology), ("xor__s0", "")] {
            std::fs::create_dir_all(dir.join("runs").join(cell)).unwrap();
            std::fs::write(dir.join("runs").join(cell).join("summary.json"), summary(data)).unwrap();
        }
        let md = write(&grid, &dir.join("runs"), &dir.join("results"), &toml::Table::new(), "test").unwrap();
        let text = std::fs::read_to_string(md).unwrap();
        assert!(text.contains("| listops | listops | 1/1 | 50.0 | — | — | 1132 of 2000 (test) |"), "{text}");
        assert!(text.contains("| remote-homology | homology | 1/1 | 50.0 | — | — | 672 of 736 (val) |"), "{text}");
        assert!(text.contains("| bit-xor | xor | 1/1 | 50.0 | — | — | — |"), "{text}");
        // A group no seed of which has finished: dashes, not a time of "-0".
        let mem = text.lines().find(|l| l.starts_with("| bit-memory | mem |")).unwrap_or_else(|| panic!("no mem row: {text}"));
        assert!(mem.starts_with("| bit-memory | mem | 0/1 | — |") && mem.ends_with("| — | — |"), "{mem}");
        assert!(text.contains("- listops: evaluated on test, padding masked: train 53592 of 96000 kept, 42408 dropped (longer than 1024 tokens dropped); val 1088 of 2000 kept, 912 dropped"), "{text}");
        assert!(text.contains("test 1132 of 2000 kept, 868 dropped"), "{text}");
        assert!(text.contains("- remote-homology: evaluated on val, padding batch: val 736 of 736 kept, 2 kept over the limit"), "{text}");
        assert!(text.contains("evaluation skipped 1 batches (64 examples)") && text.contains("accuracy reported × 0.9739"), "{text}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A group with a finished seed and an unfinished one plots the finished seed's whole curve,
    /// not the steps both have reached; with none finished, the unfinished runs' progress.
    #[test]
    fn a_groups_curve_is_its_finished_seeds_while_any_has_finished() {
        let dir = std::env::temp_dir().join(format!("xtask-results-group-curve-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let grid = crate::grid::parse(
            "name = \"t\"\n[defaults.model]\nbackbone = \"gpt2\"\n[defaults.task]\nname = \"bit-xor\"\n[axes.seed]\ns0 = { seed = 0 }\ns1 = { seed = 1 }\n",
            Path::new("t.toml"),
        )
        .unwrap();
        let cells: Vec<&Cell> = grid.cells.iter().collect();
        std::fs::create_dir_all(dir.join("s1")).unwrap();
        std::fs::write(dir.join("s1/metrics.jsonl"), "{\"step\": 20, \"eval_acc\": 0.1}\n").unwrap();
        assert_eq!(group_curve(&Record::default(), &cells, &dir), vec![(20, 0.1)], "none finished: the progress so far");
        let mut record = Record::default();
        let finished = RecordedCell {
            config: cells[0].config_toml().unwrap(),
            summary: serde_json::json!({"status": "completed"}),
            eval_curve: vec![(20, 0.25), (40, 0.5)],
            note: None,
        };
        record.cells.insert(cells[0].name.clone(), finished);
        assert_eq!(cells[0].name, "s0");
        assert_eq!(group_curve(&record, &cells, &dir), vec![(20, 0.25), (40, 0.5)]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A grid's table survives its run directories: the record written with the table rebuilds
    /// every row and curve without them, keeps an entry only while the grid gives its cell the
    /// same config, prints where transcribed entries came from, and refuses a damaged record by
    /// name.
    #[test]
    fn the_record_rebuilds_the_table_without_run_directories() {
        let dir = std::env::temp_dir().join(format!("xtask-results-record-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let grid_text = |steps: u32| {
            format!(
                "name = \"t\"\n[defaults.model]\nbackbone = \"gpt2\"\n[defaults.task]\nname = \"bit-xor\"\n[axes.cell]\na = {{ \"train.steps\" = 40 }}\nb = {{ \"train.steps\" = {steps} }}\nc = {{ \"train.steps\" = 60 }}\n[axes.seed]\ns0 = {{ seed = 0 }}\n"
            )
        };
        let grid = crate::grid::parse(&grid_text(200), Path::new("t.toml")).unwrap();
        let (runs, results) = (dir.join("runs"), dir.join("results"));
        for (cell, acc, time) in [("a__s0", 0.5, 10.0), ("b__s0", 0.75, 30.0)] {
            std::fs::create_dir_all(runs.join(cell)).unwrap();
            let summary = format!(
                "{{\"status\": \"completed\", \"steps\": 40, \"final_eval_acc\": {acc}, \"steps_to_target\": null, \"total_time_s\": {time}, \"trainable_params\": 7}}"
            );
            std::fs::write(runs.join(cell).join("summary.json"), summary).unwrap();
            let metrics = format!("{{\"step\": 20, \"eval_acc\": 0.25}}\n{{\"step\": 40, \"eval_acc\": {acc}}}\n");
            std::fs::write(runs.join(cell).join("metrics.jsonl"), metrics).unwrap();
        }
        // c is unfinished: in neither the table nor the record.
        std::fs::create_dir_all(runs.join("c__s0")).unwrap();
        std::fs::write(runs.join("c__s0/summary.json"), r#"{"status": "failed", "total_time_s": 1.0, "trainable_params": 7}"#).unwrap();
        let row = |text: &str, group: &str| {
            text.lines().find(|l| l.starts_with(&format!("| bit-xor | {group} |"))).unwrap_or_default().to_string()
        };
        let text = std::fs::read_to_string(write(&grid, &runs, &results, &toml::Table::new(), "test").unwrap()).unwrap();
        let first = (row(&text, "a"), row(&text, "b"));
        assert!(first.0.starts_with("| bit-xor | a | 1/1 | 50.0 |") && first.0.ends_with("| 7 | 10 |"), "{text}");
        assert!(first.1.starts_with("| bit-xor | b | 1/1 | 75.0 |") && first.1.ends_with("| 7 | 30 |"), "{text}");
        assert!(row(&text, "c").starts_with("| bit-xor | c | 0/1 | — |"), "{text}");
        assert!(!text.contains("no run directory here"), "{text}");
        let record_file = record_path(&results, "t");
        let record = Record::load(&record_file).unwrap();
        assert_eq!(record.cells.keys().collect::<Vec<_>>(), ["a__s0", "b__s0"]);
        assert_eq!(record.cells["b__s0"].eval_curve, vec![(20, 0.25), (40, 0.75)]);
        assert_eq!(record.cells["b__s0"].summary["steps"], 40, "summary.json kept whole");
        let plot = results.join("t-bit-xor.png");
        std::fs::remove_file(&plot).unwrap();

        // The run directories gone (a fresh clone): the same rows, the curves, and the record.
        std::fs::remove_dir_all(&runs).unwrap();
        let text = std::fs::read_to_string(write(&grid, &runs, &results, &toml::Table::new(), "test").unwrap()).unwrap();
        assert_eq!((row(&text, "a"), row(&text, "b")), first, "{text}");
        assert!(text.contains("2 of the 2 finished cells have no run directory here: their results come from `t.cells.json`"), "{text}");
        assert!(plot.is_file(), "the curves come from the record");
        assert_eq!(Record::load(&record_file).unwrap().cells, record.cells);
        let a = grid.cells.iter().find(|c| c.name == "a__s0").unwrap();
        assert!(record.finished(a).is_some());

        // b's config changed: its entry no longer counts and leaves the record; a's stays.
        let changed = crate::grid::parse(&grid_text(300), Path::new("t.toml")).unwrap();
        let b = changed.cells.iter().find(|c| c.name == "b__s0").unwrap();
        assert!(record.finished(b).is_none());
        let text = std::fs::read_to_string(write(&changed, &runs, &results, &toml::Table::new(), "test").unwrap()).unwrap();
        assert!(row(&text, "b").starts_with("| bit-xor | b | 0/1 | — |") && row(&text, "a") == first.0, "{text}");
        assert_eq!(Record::load(&record_file).unwrap().cells.keys().collect::<Vec<_>>(), ["a__s0"]);

        // A transcribed entry (no time, no curve) counts, and its note is printed.
        let mut record = Record::load(&record_file).unwrap();
        let mut c = record.cells["a__s0"].clone();
        c.config = changed.cells.iter().find(|c| c.name == "c__s0").unwrap().config_toml().unwrap();
        c.summary = serde_json::json!({"status": "completed", "final_eval_acc": 1.0, "steps_to_target": null, "trainable_params": 7});
        c.eval_curve.clear();
        c.note = Some("transcribed from an older table".into());
        record.cells.insert("c__s0".into(), c);
        std::fs::write(&record_file, serde_json::to_string(&record).unwrap()).unwrap();
        let text = std::fs::read_to_string(write(&changed, &runs, &results, &toml::Table::new(), "test").unwrap()).unwrap();
        assert!(row(&text, "c").starts_with("| bit-xor | c | 1/1 | 100.0 |") && row(&text, "c").ends_with("| 7 | — |"), "{text}");
        assert!(text.contains("- c__s0: transcribed from an older table"), "{text}");
        // An unfinished run of a recorded cell here does not replace the record's curve.
        std::fs::create_dir_all(runs.join("c__s0")).unwrap();
        std::fs::write(runs.join("c__s0/metrics.jsonl"), "{\"step\": 20, \"eval_acc\": 0.1}\n").unwrap();
        let c = changed.cells.iter().find(|c| c.name == "c__s0").unwrap();
        assert!(curve_of(&Record::load(&record_file).unwrap(), c, &runs).is_empty());
        assert_eq!(curve_of(&Record::default(), c, &runs), vec![(20, 0.1)], "unrecorded: the run's curve so far");

        // A damaged record is refused, naming the file.
        for bad in ["{\"cells\": ", "[1, 2]", r#"{"cells": {"a__s0": {"config": "", "summary": {"status": 3}, "eval_curve": []}}}"#] {
            std::fs::write(&record_file, bad).unwrap();
            let err = format!("{:#}", write(&changed, &runs, &results, &toml::Table::new(), "test").unwrap_err());
            assert!(err.contains("t.cells.json"), "{err}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! The metrics log (CSV or JSON Lines, one row per step, appended) and the loss-curve plot
//! (SVG).
//! On resume the rows after the resumed step are dropped, so the log always tells the
//! history of the state being trained, once.

use std::io::Write;
use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::TrainError;

/// One row: a training step, with the evaluation when the step ended an epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// Steps taken (1-based).
    pub step: u64,
    /// The step's epoch (0-based).
    pub epoch: u64,
    /// Training loss of the step's batch.
    pub loss: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Training samples per second (moving average).
    pub samples_per_sec: f64,
    /// Held-out loss (epoch ends only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_loss: Option<f64>,
    /// Held-out accuracy in `[0, 1]` (epoch ends only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_accuracy: Option<f64>,
}

/// File format of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `metrics.csv`.
    #[default]
    Csv,
    /// `metrics.jsonl`.
    Jsonl,
}

const CSV_HEADER: &str = "step,epoch,loss,lr,samples_per_sec,test_loss,test_accuracy";

/// The metrics log of a run.
#[derive(Debug)]
pub struct MetricsLog {
    path: PathBuf,
    format: LogFormat,
    rows: Vec<Row>,
    file: fs_err::File,
}

fn opt(v: Option<f64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

impl Row {
    fn to_line(&self, format: LogFormat) -> String {
        match format {
            LogFormat::Csv => format!(
                "{},{},{},{},{},{},{}",
                self.step,
                self.epoch,
                self.loss,
                self.lr,
                self.samples_per_sec,
                opt(self.test_loss),
                opt(self.test_accuracy)
            ),
            LogFormat::Jsonl => serde_json::to_string(self).unwrap_or_default(),
        }
    }

    fn parse(line: &str, format: LogFormat) -> Option<Row> {
        match format {
            LogFormat::Jsonl => serde_json::from_str(line).ok(),
            LogFormat::Csv => {
                let f: Vec<&str> = line.split(',').collect();
                if f.len() != 7 {
                    return None;
                }
                let num = |s: &str| s.parse::<f64>().ok();
                Some(Row {
                    step: f[0].parse().ok()?,
                    epoch: f[1].parse().ok()?,
                    loss: num(f[2])?,
                    lr: num(f[3])?,
                    samples_per_sec: num(f[4])?,
                    test_loss: num(f[5]),
                    test_accuracy: num(f[6]),
                })
            }
        }
    }
}

impl MetricsLog {
    /// Opens the log at `path`, keeping the rows up to `keep_through_step` (the step training
    /// resumes from; 0 for a fresh run) and dropping later ones and any torn last line.
    pub fn open(
        path: &Path,
        format: LogFormat,
        keep_through_step: u64,
    ) -> Result<Self, TrainError> {
        let mut rows = Vec::new();
        if keep_through_step > 0 && path.exists() {
            // Open, then check: a FIFO or device in the log's place is refused, not read.
            let (file, _) = crate::data::open_regular(path, crate::data::MAX_FILE_BYTES)?;
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(
                &mut std::io::Read::take(file, crate::data::MAX_FILE_BYTES),
                &mut bytes,
            )?;
            for line in String::from_utf8_lossy(&bytes).lines() {
                if let Some(row) = Row::parse(line, format)
                    && row.step <= keep_through_step
                {
                    rows.push(row);
                }
            }
        }
        if let Some(parent) = path.parent() {
            fs_err::create_dir_all(parent)?;
        }
        Self::rewrite(path, format, rows)
    }

    /// Appends a row.
    pub fn push(&mut self, row: Row) -> Result<(), TrainError> {
        writeln!(self.file, "{}", row.to_line(self.format))?;
        self.rows.push(row);
        Ok(())
    }

    /// Writes `rows` through a temporary file (a crash leaves the old log or the new one) and
    /// opens the result for appending.
    fn rewrite(path: &Path, format: LogFormat, rows: Vec<Row>) -> Result<Self, TrainError> {
        let temp = path.with_extension("tmp");
        let mut text = String::new();
        if format == LogFormat::Csv {
            text.push_str(CSV_HEADER);
            text.push('\n');
        }
        for row in &rows {
            text.push_str(&row.to_line(format));
            text.push('\n');
        }
        fs_err::write(&temp, text)?;
        fs_err::rename(&temp, path)?;
        let file = fs_err::OpenOptions::new().append(true).open(path)?;
        Ok(MetricsLog {
            path: path.to_path_buf(),
            format,
            rows,
            file,
        })
    }

    /// The rows so far.
    pub fn rows(&self) -> &[Row] {
        &self.rows
    }

    /// Where the log is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Draws the training loss per step (and the held-out loss at each epoch end) as an SVG.
pub fn plot_loss(rows: &[Row], path: &Path, title: &str) -> Result<(), TrainError> {
    let fail = |e: &dyn std::fmt::Display| TrainError::Plot {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    if let Some(parent) = path.parent() {
        fs_err::create_dir_all(parent)?;
    }
    let finite: Vec<&Row> = rows.iter().filter(|r| r.loss.is_finite()).collect();
    let max_step = finite.last().map_or(1, |r| r.step.max(1));
    let max_loss = finite
        .iter()
        .flat_map(|r| std::iter::once(r.loss).chain(r.test_loss))
        .fold(0.0f64, f64::max)
        .max(1e-3);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (960, 540)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| fail(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(0u64..max_step, 0f64..max_loss * 1.05)
            .map_err(|e| fail(&e))?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("loss")
            .draw()
            .map_err(|e| fail(&e))?;
        chart
            .draw_series(LineSeries::new(
                finite.iter().map(|r| (r.step, r.loss)),
                BLUE.stroke_width(1),
            ))
            .map_err(|e| fail(&e))?
            .label("training loss (batch)")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE));
        let test: Vec<(u64, f64)> = finite
            .iter()
            .filter_map(|r| r.test_loss.map(|l| (r.step, l)))
            .collect();
        chart
            .draw_series(LineSeries::new(test.clone(), RED.stroke_width(2)))
            .map_err(|e| fail(&e))?
            .label("held-out loss (epoch end)")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RED));
        chart
            .draw_series(test.iter().map(|&p| Circle::new(p, 3, RED.filled())))
            .map_err(|e| fail(&e))?;
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| fail(&e))?;
        root.present().map_err(|e| fail(&e))?;
    }
    let temp = path.with_extension("svg.tmp");
    fs_err::write(&temp, svg)?;
    fs_err::rename(&temp, path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(step: u64) -> Row {
        Row {
            step,
            epoch: 0,
            loss: 1.0 / step as f64,
            lr: 1e-3,
            samples_per_sec: 100.0,
            test_loss: None,
            test_accuracy: None,
        }
    }

    #[test]
    fn resume_drops_rows_after_the_resumed_step() {
        for format in [LogFormat::Csv, LogFormat::Jsonl] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("metrics");
            let mut log = MetricsLog::open(&path, format, 0).unwrap();
            for step in 1..=10 {
                let mut row = row(step);
                if step == 10 {
                    row.test_loss = Some(0.5);
                    row.test_accuracy = Some(0.9);
                }
                log.push(row).unwrap();
            }
            drop(log);
            // A torn last line (killed mid-write) is dropped too.
            let mut text = fs_err::read_to_string(&path).unwrap();
            text.push_str("11,0,0.0");
            fs_err::write(&path, text).unwrap();
            let log = MetricsLog::open(&path, format, 10).unwrap();
            assert_eq!(log.rows().len(), 10);
            assert_eq!(log.rows()[9].test_accuracy, Some(0.9));
            let log = MetricsLog::open(&path, format, 6).unwrap();
            assert_eq!(log.rows().iter().map(|r| r.step).max(), Some(6));
            let text = fs_err::read_to_string(&path).unwrap();
            assert_eq!(
                text.lines().count(),
                6 + usize::from(format == LogFormat::Csv)
            );
        }
    }

    #[test]
    fn plot_writes_an_svg() {
        let dir = tempfile::tempdir().unwrap();
        let mut rows: Vec<Row> = (1..=50).map(row).collect();
        rows[49].test_loss = Some(0.3);
        let path = dir.path().join("loss.svg");
        plot_loss(&rows, &path, "demo").unwrap();
        let svg = fs_err::read_to_string(&path).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("training loss") && svg.contains("<polyline")
        );
    }
}

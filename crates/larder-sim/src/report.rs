//! The simulator's answer: curves per ρ and policy, as a table and as an SVG plot.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;
use serde::Serialize;

use crate::{Config, Run, SimError, CHECKPOINTS};

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub config: Config,
    pub runs: Vec<Run>,
}

impl Report {
    /// Cumulative regret of policy `key` at ρ `rho` after `impressions`.
    pub fn regret(&self, rho: f64, key: &str, impressions: u64) -> Option<f64> {
        self.point(rho, key, impressions).map(|p| p.regret)
    }

    /// Cumulative selections of policy `key` at ρ `rho` after `impressions`.
    pub fn clicks(&self, rho: f64, key: &str, impressions: u64) -> Option<f64> {
        self.point(rho, key, impressions).map(|p| p.clicks)
    }

    fn point(&self, rho: f64, key: &str, impressions: u64) -> Option<crate::Point> {
        self.runs
            .iter()
            .find(|r| r.rho == rho && r.policy == key)?
            .points
            .iter()
            .find(|p| p.impressions == impressions)
            .copied()
    }

    /// One table per ρ: cumulative regret at each checkpoint, selections and regret per
    /// impression at the horizon.
    pub fn table(&self) -> String {
        let c = &self.config;
        let checkpoints: Vec<u64> = CHECKPOINTS
            .iter()
            .copied()
            .filter(|n| *n < c.horizon)
            .chain(std::iter::once(c.horizon))
            .collect();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} items, top {} shown, {:?}, re-rank every {} users, mean of {} pools, seed {}",
            c.items, c.k, c.click_model, c.batch, c.pools, c.seed
        );
        let _ = writeln!(
            out,
            "regret = expected selections lost against the oracle, cumulative (lower is better)"
        );
        for rho in &c.rhos {
            let runs: Vec<&Run> = self.runs.iter().filter(|r| r.rho == *rho).collect();
            let spearman = runs.first().map_or(0.0, |r| r.spearman);
            let _ = writeln!(out, "\nrho = {rho:.1} (the pools' Spearman: {spearman:.2})");
            let _ = write!(out, "{:<32}", "policy");
            for n in &checkpoints {
                let _ = write!(out, "{:>12}", format!("regret@{}", short(*n)));
            }
            let _ = writeln!(
                out,
                "{:>14}{:>12}",
                format!("selected@{}", short(c.horizon)),
                "regret/impr"
            );
            for run in runs {
                let _ = write!(out, "{:<32}", run.name);
                for n in &checkpoints {
                    let regret = run.points.iter().find(|p| p.impressions == *n);
                    let _ = write!(out, "{:>12.1}", regret.map_or(f64::NAN, |p| p.regret));
                }
                let last = run.points.last();
                let _ = writeln!(
                    out,
                    "{:>14.0}{:>12.4}",
                    last.map_or(f64::NAN, |p| p.clicks),
                    last.map_or(f64::NAN, |p| p.regret / p.impressions as f64)
                );
            }
        }
        out
    }

    /// Regret per impression (cumulative regret / impressions) against impressions, one
    /// panel per ρ.
    pub fn plot(&self, path: &Path) -> Result<(), SimError> {
        let c = &self.config;
        let root = SVGBackend::new(path, (1200, 900)).into_drawing_area();
        root.fill(&WHITE).map_err(plot)?;
        let (title, body) = root.split_vertically(40);
        title
            .titled(
                &format!(
                    "Regret per impression against the oracle ({} items, top {}, {:?}, mean of {} pools)",
                    c.items, c.k, c.click_model, c.pools
                ),
                ("sans-serif", 20),
            )
            .map_err(plot)?;
        let columns = if c.rhos.len() > 1 { 2 } else { 1 };
        let rows = c.rhos.len().div_ceil(columns);
        let panels = body.split_evenly((rows, columns));
        let first = self.config.points().first().copied().unwrap_or(1) as f64;
        let last = c.horizon as f64;
        for (panel, rho) in panels.iter().zip(&c.rhos) {
            let runs: Vec<&Run> = self.runs.iter().filter(|r| r.rho == *rho).collect();
            let top = runs
                .iter()
                .flat_map(|r| r.points.iter().map(|p| p.regret / p.impressions as f64))
                .fold(0.0f64, f64::max)
                .max(1e-3)
                * 1.05;
            let mut chart = ChartBuilder::on(panel)
                .caption(
                    format!("evaluator Spearman rho = {rho:.1}"),
                    ("sans-serif", 16),
                )
                .margin(12)
                .x_label_area_size(36)
                .y_label_area_size(56)
                .build_cartesian_2d((first..last).log_scale(), 0.0..top)
                .map_err(plot)?;
            chart
                .configure_mesh()
                .x_desc("impressions (users shown a list)")
                .y_desc("regret per impression")
                .draw()
                .map_err(plot)?;
            for run in runs {
                let color = color(run.policy);
                chart
                    .draw_series(LineSeries::new(
                        run.points
                            .iter()
                            .map(|p| (p.impressions as f64, p.regret / p.impressions as f64)),
                        color.stroke_width(2),
                    ))
                    .map_err(plot)?
                    .label(run.name)
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                    });
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(plot)?;
        }
        root.present().map_err(plot)?;
        Ok(())
    }
}

fn color(policy: &str) -> RGBColor {
    match policy {
        "larder_explore" => RGBColor(0xd6, 0x27, 0x28),
        "larder_exploit" => RGBColor(0xff, 0x7f, 0x0e),
        "reference" => RGBColor(0x1f, 0x77, 0xb4),
        "evaluator_only" => RGBColor(0x2c, 0xa0, 0x2c),
        "random" => RGBColor(0x7f, 0x7f, 0x7f),
        _ => RGBColor(0x94, 0x67, 0xbd),
    }
}

fn plot(error: impl std::fmt::Display) -> SimError {
    SimError::Plot(error.to_string())
}

/// 100, 1k, 10k, 100k.
fn short(n: u64) -> String {
    if n >= 1000 && n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

//! SVG plots (plotters): latency against percentile on the usual
//! HdrHistogram axis, where each step right is another "9".

use std::path::Path;

use hdrhistogram::Histogram;
use plotters::prelude::*;

// x axis: log10(1 / (1 - q)), so 1 → p90, 2 → p99, 3 → p99.9, 4 → p99.99.
pub fn latency_distribution(
    path: &Path,
    title: &str,
    series: &[(&str, &Histogram<u64>)],
) -> Result<(), String> {
    let max_ms = series.iter().map(|(_, h)| h.max() as f64 / 1000.0).fold(0.1, f64::max) * 1.1;
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..4.0, 0.0..max_ms)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_label_formatter(&|x: &f64| match x.round() as i32 {
            0 => "0%".into(),
            1 => "90%".into(),
            2 => "99%".into(),
            3 => "99.9%".into(),
            4 => "99.99%".into(),
            _ => String::new(),
        })
        .x_labels(5)
        .draw()
        .map_err(|e| err(&e))?;
    for (i, (name, h)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let points: Vec<(f64, f64)> = (0..=400)
            .map(|k| {
                let x = k as f64 / 100.0;
                let q = 1.0 - 10f64.powf(-x);
                (x, h.value_at_quantile(q.min(0.99999)) as f64 / 1000.0)
            })
            .collect();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))
}

/// Deliveries/s against seconds since the run started, with a mark where
/// each rate step began.
pub fn throughput_over_time(
    path: &Path,
    title: &str,
    points: &[(f64, f64)],
    step_starts: &[f64],
) -> Result<(), String> {
    let t_max = points.last().map_or(1.0, |p| p.0).max(1.0);
    let t_min = points.first().map_or(0.0, |p| p.0).min(t_max - 0.5);
    let y_max = points.iter().map(|p| p.1).fold(1.0, f64::max) * 1.1;
    let root = SVGBackend::new(path, (900, 420)).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(t_min..t_max, 0.0..y_max)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("seconds since start")
        .y_desc("deliveries/s")
        .y_label_formatter(&|y: &f64| format!("{:.0}", y))
        .draw()
        .map_err(|e| err(&e))?;
    for s in step_starts {
        chart.draw_series(LineSeries::new([(*s, 0.0), (*s, y_max)], BLACK.mix(0.25))).map_err(|e| err(&e))?;
    }
    chart.draw_series(LineSeries::new(points.iter().copied(), BLUE.stroke_width(2))).map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))
}

/// Resident memory (MiB) of each server against seconds since the
/// workload started, with a mark where the warm-up ends.
pub fn rss_over_time(
    path: &Path,
    title: &str,
    series: &[(String, Vec<(f64, f64)>)],
    warmup: f64,
) -> Result<(), String> {
    let all = || series.iter().flat_map(|(_, p)| p.iter());
    let t_max = all().map(|p| p.0).fold(1.0, f64::max);
    let y_max = all().map(|p| p.1).fold(1.0, f64::max) * 1.2;
    let root = SVGBackend::new(path, (900, 420)).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..t_max, 0.0..y_max)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("seconds since the workload started")
        .y_desc("RSS (MiB)")
        .draw()
        .map_err(|e| err(&e))?;
    chart
        .draw_series(LineSeries::new([(warmup, 0.0), (warmup, y_max)], BLACK.mix(0.3)))
        .map_err(|e| err(&e))?
        .label("end of warm-up")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.3)));
    for (i, (name, points)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(points.iter().copied(), color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_an_svg() {
        let mut h = crate::report::latency_histogram();
        for v in 1..1000u64 {
            h.record(v * 10).unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.svg");
        latency_distribution(&path, "test", &[("a", &h)]).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("polyline") && svg.contains("99.9%"),
            "{}",
            &svg[..200]
        );
        let path = dir.path().join("t.svg");
        throughput_over_time(&path, "test", &[(0.0, 10.0), (0.1, 2000.0)], &[0.0]).unwrap();
        assert!(std::fs::read_to_string(&path).unwrap().contains("deliveries/s"));
        let path = dir.path().join("r.svg");
        rss_over_time(&path, "test", &[("a".into(), vec![(0.0, 10.0), (5.0, 12.0)])], 2.0).unwrap();
        assert!(std::fs::read_to_string(&path).unwrap().contains("RSS (MiB)"));
    }
}

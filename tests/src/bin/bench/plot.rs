//! The scaling curves as a PNG (`bench --png`): connection rate against the
//! direct floor, and p50 connect-to-first-byte latency, over the number of
//! excluded CIDRs, one curve per path.

use std::path::Path;

use anyhow::{Context as _, bail};
use plotters::prelude::*;

/// One path's figures over list sizes: (excluded CIDRs, value).
pub struct Curve {
    pub name: &'static str,
    pub ratio: Vec<(usize, f64)>,
    pub p50_us: Vec<(usize, f64)>,
}

/// A TrueType font for the labels, from the system (plotters draws text
/// with ab_glyph and brings no font of its own).
fn load_font() -> anyhow::Result<()> {
    const PREFERRED: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
    let path = if Path::new(PREFERRED).exists() {
        PREFERRED.into()
    } else {
        let out = std::process::Command::new("sh")
            .args(["-c", "find /usr/share/fonts -name '*.ttf' 2>/dev/null | head -n1"])
            .output()
            .context("looking for a font")?;
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    if path.is_empty() {
        bail!("--png needs a TrueType font under /usr/share/fonts (apt-get install fonts-dejavu-core)");
    }
    let bytes = std::fs::read(&path).with_context(|| format!("reading font {path}"))?;
    plotters::style::register_font("sans-serif", FontStyle::Normal, Box::leak(bytes.into_boxed_slice()))
        .map_err(|_| anyhow::anyhow!("{path}: not a usable TrueType font"))
}

pub fn draw(out: &Path, title: &str, curves: &[Curve]) -> anyhow::Result<()> {
    load_font()?;
    let mut sizes: Vec<usize> = curves.iter().flat_map(|c| c.ratio.iter().map(|(n, _)| *n)).collect();
    sizes.sort_unstable();
    sizes.dedup();
    // List sizes span four decades: evenly spaced categories read best.
    let x_of = |n: usize| sizes.iter().position(|s| *s == n).unwrap_or(0) as f64;
    let label = |x: &f64| {
        let i = x.round();
        if (x - i).abs() < 0.01 && i >= 0.0 { sizes.get(i as usize).map(|n| n.to_string()).unwrap_or_default() } else { String::new() }
    };
    let root = BitMapBackend::new(out, (1200, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 22))?;
    let panels = root.split_evenly((1, 2));
    let x_range = -0.3f64..(sizes.len() as f64 - 0.7);
    let max_p50 = curves.iter().flat_map(|c| c.p50_us.iter().map(|(_, v)| *v)).fold(0.0, f64::max) * 1.2;
    /// A panel: its axis label, the top of its axis, and which values of a curve.
    type Panel = (&'static str, f64, fn(&Curve) -> &Vec<(usize, f64)>);
    let panel_specs: [Panel; 2] =
        [("connection rate × direct", 1.3, |c| &c.ratio), ("p50 connect-to-first-byte, µs", max_p50.max(1.0), |c| &c.p50_us)];
    for (area, (y_desc, y_max, values)) in panels.iter().zip(panel_specs) {
        let mut chart = ChartBuilder::on(area)
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(56)
            .build_cartesian_2d(x_range.clone(), 0.0..y_max)?;
        chart.configure_mesh().x_labels(sizes.len() * 4).x_label_formatter(&label).x_desc("excluded CIDRs").y_desc(y_desc).draw()?;
        if y_desc.starts_with("connection rate") {
            let floor = vec![(x_range.start, 1.0), (x_range.end, 1.0)];
            chart
                .draw_series(LineSeries::new(floor, BLACK.stroke_width(1)))?
                .label("direct (the floor)")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(1)));
        }
        const COLORS: [RGBColor; 4] = [RGBColor(214, 39, 40), RGBColor(31, 119, 180), RGBColor(44, 160, 44), RGBColor(148, 103, 189)];
        for (i, curve) in curves.iter().enumerate() {
            let color = COLORS[i % COLORS.len()].to_rgba();
            let points: Vec<(f64, f64)> = values(curve).iter().map(|(n, v)| (x_of(*n), *v)).collect();
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(3)))?
                .label(curve.name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3)));
            chart.draw_series(points.into_iter().map(|p| Circle::new(p, 4, color.filled())))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerLeft)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

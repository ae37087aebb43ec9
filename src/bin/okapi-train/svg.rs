//! The report's charts as inline SVG, written by hand: a line chart (several series, each raw and
//! smoothed) and a grouped bar chart. No script, no external font or file: the page stays one
//! self-contained file that any browser draws.
//!
//! (A plotting crate was considered: plotters' SVG backend measures text through a font backend —
//! system fontconfig/freetype or an embedded TTF — for what a browser lays out itself here.)

use std::fmt::Write;

/// Series colours (colour-blind friendly, Okabe–Ito).
pub const COLORS: [&str; 8] = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"];

const W: f64 = 560.0;
const H: f64 = 300.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 28.0;
const BOTTOM: f64 = 44.0;

/// Text for SVG/HTML: `&`, `<`, `>`, `"` escaped, and the control characters XML forbids (a
/// random model's samples decode to them) shown as U+FFFD.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\n' | '\t' | '\r' => out.push(c),
            c if c.is_control() => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// One series of a line chart: its label, its colour (an index into [`COLORS`], so a run keeps
/// its colour on every chart) and its (x, y) points, finite and sorted by x.
pub struct Series {
    pub label: String,
    pub color: usize,
    pub points: Vec<(f64, f64)>,
}

/// About five round tick values covering `lo..hi`.
fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let span = (hi - lo).max(f64::MIN_POSITIVE);
    let raw = span / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0].iter().map(|m| m * mag).find(|s| span / s <= 6.0).unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() * step;
    (0..=12).map(|i| first + i as f64 * step).take_while(|t| *t <= hi + step * 1e-9).collect()
}

/// A tick label: short, without float noise.
fn fmt_tick(v: f64) -> String {
    let a = v.abs();
    if v == 0.0 {
        "0".into()
    } else if !(1e-3..1e5).contains(&a) {
        format!("{v:.1e}")
    } else {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// The exponential moving average TensorBoard draws (debiased like its smoothing): weight `w`.
pub fn smooth(points: &[(f64, f64)], w: f64) -> Vec<(f64, f64)> {
    let (mut last, mut n) = (0.0, 0);
    points
        .iter()
        .map(|&(x, y)| {
            last = last * w + (1.0 - w) * y;
            n += 1;
            let debias = 1.0 - w.powi(n);
            (x, if debias > 0.0 { last / debias } else { y })
        })
        .collect()
}

/// Axis bounds of all points, widened when flat.
fn bounds(series: &[Series]) -> Option<((f64, f64), (f64, f64))> {
    let pts = series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in pts {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if !x0.is_finite() {
        return None;
    }
    if x1 <= x0 {
        (x0, x1) = (x0 - 1.0, x1 + 1.0);
    }
    if y1 <= y0 {
        let pad = y0.abs().max(1.0) * 0.05;
        (y0, y1) = (y0 - pad, y1 + pad);
    }
    Some(((x0, x1), (y0, y1)))
}

/// Axes, grid and tick labels of a plot area mapping `xr` × `yr`.
fn axes(svg: &mut String, (x0, x1): (f64, f64), (y0, y1): (f64, f64), xlabel: &str) {
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    for t in ticks(y0, y1) {
        let y = TOP + ph * (1.0 - (t - y0) / (y1 - y0));
        let _ = write!(svg, r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#e4e4e4"/><text x="{}" y="{:.1}" text-anchor="end" font-size="11">{}</text>"##, W - RIGHT, LEFT - 6.0, y + 4.0, fmt_tick(t));
    }
    for t in ticks(x0, x1) {
        let x = LEFT + pw * (t - x0) / (x1 - x0);
        let _ = write!(svg, r##"<line x1="{x:.1}" x2="{x:.1}" y1="{TOP}" y2="{}" stroke="#f0f0f0"/><text x="{x:.1}" y="{}" text-anchor="middle" font-size="11">{}</text>"##, TOP + ph, TOP + ph + 16.0, fmt_tick(t));
    }
    let _ = write!(svg, r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#999"/><text x="{}" y="{}" text-anchor="middle" font-size="12">{}</text>"##, LEFT + pw / 2.0, H - 8.0, esc(xlabel));
}

/// A line chart: each series raw (thin, faded) and smoothed with weight `smoothing` (0: raw
/// only), a legend, `title` on top. Points must be finite; an empty chart says so.
pub fn line_chart(title: &str, xlabel: &str, series: &[Series], smoothing: f64) -> String {
    let mut svg = format!(r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-label="{}"><text x="{LEFT}" y="18" font-size="14" font-weight="bold">{}</text>"#, esc(title), esc(title));
    let Some((xr, yr)) = bounds(series) else {
        svg.push_str(r#"<text x="50%" y="50%" text-anchor="middle">no finite value</text></svg>"#);
        return svg;
    };
    axes(&mut svg, xr, yr, xlabel);
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let map = |(x, y): (f64, f64)| (LEFT + pw * (x - xr.0) / (xr.1 - xr.0), TOP + ph * (1.0 - (y - yr.0) / (yr.1 - yr.0)));
    let path = |pts: &[(f64, f64)]| pts.iter().map(|&p| map(p)).map(|(x, y)| format!("{x:.1},{y:.1}")).collect::<Vec<_>>().join(" ");
    for (k, s) in series.iter().enumerate() {
        let c = COLORS[s.color % COLORS.len()];
        let raw_opacity = if smoothing > 0.0 { 0.3 } else { 1.0 };
        if s.points.len() == 1 {
            let (x, y) = map(s.points[0]);
            let _ = write!(svg, r#"<circle cx="{x:.1}" cy="{y:.1}" r="3" fill="{c}"/>"#);
        } else {
            let _ = write!(svg, r#"<polyline fill="none" stroke="{c}" stroke-opacity="{raw_opacity}" stroke-width="1.2" points="{}"/>"#, path(&s.points));
            if smoothing > 0.0 {
                let _ = write!(svg, r#"<polyline fill="none" stroke="{c}" stroke-width="2" points="{}"><title>{} (smoothed {smoothing})</title></polyline>"#, path(&smooth(&s.points, smoothing)), esc(&s.label));
            }
        }
        let ly = TOP + 14.0 + 14.0 * k as f64;
        let _ = write!(svg, r#"<rect x="{}" y="{}" width="10" height="3" fill="{c}"/><text x="{}" y="{}" font-size="11">{}</text>"#, W - RIGHT - 150.0, ly - 4.0, W - RIGHT - 136.0, ly, esc(&s.label));
    }
    svg.push_str("</svg>");
    svg
}

/// A grouped bar chart: one group per category, one bar per series (values in 0..=1 shown in
/// percent), a legend.
pub fn bar_chart(title: &str, categories: &[String], series: &[(String, Vec<Option<f64>>)]) -> String {
    let width = (LEFT + RIGHT + categories.len() as f64 * (12.0 * series.len() as f64 + 14.0)).max(W);
    let mut svg = format!(r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {H}" width="{width}" height="{H}" role="img" aria-label="{}"><text x="{LEFT}" y="18" font-size="14" font-weight="bold">{}</text>"#, esc(title), esc(title));
    let (pw, ph) = (width - LEFT - RIGHT, H - TOP - BOTTOM);
    for t in [0.0, 0.25, 0.5, 0.75, 1.0] {
        let y = TOP + ph * (1.0 - t);
        let _ = write!(svg, r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#e4e4e4"/><text x="{}" y="{:.1}" text-anchor="end" font-size="11">{}%</text>"##, width - RIGHT, LEFT - 6.0, y + 4.0, (t * 100.0) as u32);
    }
    let group = pw / categories.len().max(1) as f64;
    let bar = (group - 10.0) / series.len().max(1) as f64;
    for (i, cat) in categories.iter().enumerate() {
        let gx = LEFT + group * i as f64 + 5.0;
        for (k, (label, values)) in series.iter().enumerate() {
            if let Some(v) = values.get(i).copied().flatten().filter(|v| v.is_finite()) {
                let h = ph * v.clamp(0.0, 1.0);
                let _ = write!(svg, r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="{}"><title>{} {}: {:.1}%</title></rect>"#, gx + bar * k as f64, TOP + ph - h, (bar - 1.0).max(1.0), COLORS[k % COLORS.len()], esc(label), esc(cat), 100.0 * v);
            }
        }
        let _ = write!(svg, r#"<text x="{:.1}" y="{}" text-anchor="middle" font-size="11">{}</text>"#, gx + (group - 10.0) / 2.0, TOP + ph + 16.0, esc(cat));
    }
    for (k, (label, _)) in series.iter().enumerate() {
        let ly = TOP + 14.0 + 14.0 * k as f64;
        let _ = write!(svg, r#"<rect x="{}" y="{}" width="10" height="10" fill="{}"/><text x="{}" y="{}" font-size="11">{}</text>"#, width - RIGHT - 150.0, ly - 9.0, COLORS[k % COLORS.len()], width - RIGHT - 136.0, ly, esc(label));
    }
    let _ = write!(svg, r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#999"/></svg>"##);
    svg
}

/// The families tried for a PNG's text, in order; any installed face is the last resort.
const PNG_FONTS: [&str; 5] = ["DejaVu Sans", "Noto Sans", "Liberation Sans", "Arial", "Helvetica"];

/// An SVG figure rasterised to PNG bytes at `scale`× its size (resvg), its text drawn with the
/// system's fonts: a sans-serif family from [`PNG_FONTS`] (other scripts fall back to any
/// installed face that has their glyphs). No font at all is an error, not a figure without labels.
pub fn to_png(svg: &str, scale: f32) -> Result<Vec<u8>, String> {
    let mut fonts = resvg::usvg::fontdb::Database::new();
    fonts.load_system_fonts();
    let installed: Vec<String> = fonts.faces().flat_map(|f| f.families.iter().map(|(name, _)| name.clone())).collect();
    let family = PNG_FONTS.iter().map(|f| f.to_string()).find(|f| installed.contains(f)).or_else(|| installed.first().cloned());
    let Some(family) = family else {
        return Err("no fonts installed for the figure's labels (install e.g. Debian's fonts-dejavu-core, or write an .svg)".into());
    };
    fonts.set_sans_serif_family(family.clone());
    fonts.set_serif_family(family.clone());
    let opt = resvg::usvg::Options { font_family: family, fontdb: std::sync::Arc::new(fonts), ..Default::default() };
    let tree = resvg::usvg::Tree::from_str(svg, &opt).map_err(|e| format!("the figure's SVG does not parse: {e}"))?;
    let size = tree.size().to_int_size().scale_by(scale).ok_or("the figure has no size")?;
    let mut pixmap = resvg::tiny_skia::Pixmap::new(size.width(), size.height()).ok_or("the figure has no size")?;
    pixmap.fill(resvg::tiny_skia::Color::WHITE);
    resvg::render(&tree, resvg::tiny_skia::Transform::from_scale(scale, scale), &mut pixmap.as_mut());
    pixmap.encode_png().map_err(|e| format!("PNG encoding: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(ticks(0.0, 1.0), [0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]);
        let t = ticks(2.31, 7.9);
        assert!(t[0] >= 2.31 && *t.last().unwrap() <= 7.9 && t.len() >= 3, "{t:?}");
        assert_eq!(fmt_tick(0.30000000000000004), "0.3");
        assert_eq!(fmt_tick(1e-6), "1.0e-6");
    }

    #[test]
    fn smoothing_is_debiased() {
        let s = smooth(&[(1.0, 2.0), (2.0, 2.0), (3.0, 4.0)], 0.5);
        assert_eq!(s[0], (1.0, 2.0));
        assert_eq!(s[1], (2.0, 2.0));
        assert!((s[2].1 - (0.125 * 2.0 + 0.25 * 2.0 + 0.5 * 4.0) / 0.875).abs() < 1e-12);
    }

    #[test]
    fn charts_escape_text_and_handle_empty_and_flat_data() {
        let svg = line_chart("a<b", "step", &[Series { label: "x&y".into(), color: 0, points: vec![(1.0, 3.0), (2.0, 3.0)] }], 0.6);
        assert!(svg.contains("a&lt;b") && svg.contains("x&amp;y") && svg.matches("<polyline").count() == 2, "{svg}");
        assert!(line_chart("t", "step", &[], 0.0).contains("no finite value"));
        assert_eq!(esc("a\u{1}b\nc"), "a\u{FFFD}b\nc");
        let bars = bar_chart("acc", &["vi".into(), "ar".into()], &[("sft".into(), vec![Some(0.5), None]), ("ppo".into(), vec![Some(0.25), Some(1.0)])]);
        assert_eq!(bars.matches("<rect").count(), 3 + 2 + 1, "three bars, two legend keys, the frame");
    }
}


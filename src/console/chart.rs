//! Charts drawn by the server as SVG (no script, no CSS from outside): bars of spend per
//! day or hour. Labels are dates and amounts the console formats itself; colours come from
//! the page's theme (`currentColor` and the `bar` class).

use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;

use super::frame::money;

/// Bars for `points` (label, amount), with the largest amount written at the top.
pub fn bars(points: &[(String, Decimal)], title: &str) -> String {
    const W: f64 = 720.0;
    const H: f64 = 180.0;
    const TOP: f64 = 18.0;
    const BOTTOM: f64 = 20.0;
    let max = points
        .iter()
        .map(|p| p.1)
        .max()
        .unwrap_or_default()
        .max(Decimal::ZERO);
    let mut svg = format!(
        "<svg class=\"chart\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"{}\" \
         preserveAspectRatio=\"none\"><title>{}</title>",
        escape(title),
        escape(title)
    );
    svg += &format!(
        "<text x=\"0\" y=\"12\" font-size=\"11\" fill=\"currentColor\">{}</text>",
        escape(&money(max))
    );
    let n = points.len().max(1) as f64;
    let slot = W / n;
    let scale = max.to_f64().unwrap_or(0.0);
    for (i, (label, amount)) in points.iter().enumerate() {
        let share = if scale > 0.0 {
            amount.to_f64().unwrap_or(0.0) / scale
        } else {
            0.0
        };
        let height = (H - TOP - BOTTOM) * share;
        let x = i as f64 * slot + slot * 0.1;
        let y = H - BOTTOM - height;
        svg += &format!(
            "<rect class=\"bar\" x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{height:.1}\">\
             <title>{} {}</title></rect>",
            slot * 0.8,
            escape(label),
            escape(&money(*amount))
        );
        // Every label when few, else every 5th: a month fits in 360 px.
        if points.len() <= 12 || i % 5 == 0 {
            let short = label.get(5..).unwrap_or(label);
            svg += &format!(
                "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" fill=\"currentColor\">{}</text>",
                x,
                H - 5.0,
                escape(short)
            );
        }
    }
    svg += "</svg>";
    svg
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_scale_to_the_largest_and_escape_their_text() {
        let d = |s: &str| s.parse::<Decimal>().unwrap();
        let svg = bars(
            &[
                ("2026-12-01".into(), d("1")),
                ("2026-12-02<x>".into(), d("4")),
            ],
            "a \"title\"",
        );
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("height=\"142.0\""), "{svg}");
        assert!(svg.contains("height=\"35.5\""), "{svg}");
        assert!(svg.contains("¥4.00"));
        assert!(!svg.contains("<x>") && svg.contains("&lt;x&gt;"));
        assert!(svg.contains("a &quot;title&quot;"));
    }
}

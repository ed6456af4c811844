//! The cost report as one self-contained HTML file: an SVG chart of cost over time by
//! model×chip, and the table. No scripts, no external assets; chart geometry is computed
//! in `Decimal` like every other number here.

use rust_decimal::Decimal;

use super::report::Report;

const WIDTH: i64 = 880;
const HEIGHT: i64 = 280;
const LEFT: i64 = 70;
const BOTTOM: i64 = 30;
const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// An instant as local time in the report's timezone.
fn local(t: chrono::DateTime<chrono::Utc>, zone: &str) -> String {
    match zone.parse::<chrono_tz::Tz>() {
        Ok(tz) => t.with_timezone(&tz).format("%Y-%m-%d %H:%M").to_string(),
        Err(_) => t.to_rfc3339(),
    }
}

fn coord(d: Decimal) -> String {
    d.round_dp(1).normalize().to_string()
}

fn chart(report: &Report) -> String {
    let buckets: Vec<&String> = report.series.keys().collect();
    let mut names: Vec<&String> = report.series.values().flat_map(|s| s.keys()).collect();
    names.sort();
    names.dedup();
    let max = report
        .series
        .values()
        .flat_map(|s| s.values())
        .copied()
        .max()
        .unwrap_or(Decimal::ZERO);
    if buckets.is_empty() || max.is_zero() {
        return "<p>No cost in this range.</p>".into();
    }
    let plot_w = Decimal::from(WIDTH - LEFT - 20);
    let plot_h = Decimal::from(HEIGHT - BOTTOM - 10);
    let step = if buckets.len() > 1 {
        plot_w / Decimal::from(buckets.len() as i64 - 1)
    } else {
        Decimal::ZERO
    };
    let x = |i: usize| Decimal::from(LEFT) + step * Decimal::from(i as i64);
    let y = |v: Decimal| Decimal::from(10) + plot_h - plot_h * v / max;
    let mut svg = format!(
        "<svg width=\"{WIDTH}\" height=\"{HEIGHT}\" role=\"img\" aria-label=\"cost over time\">\
         <line x1=\"{LEFT}\" y1=\"10\" x2=\"{LEFT}\" y2=\"{}\" stroke=\"#999\"/>\
         <line x1=\"{LEFT}\" y1=\"{0}\" x2=\"{}\" y2=\"{0}\" stroke=\"#999\"/>\
         <text x=\"{}\" y=\"16\" text-anchor=\"end\" font-size=\"11\">{} CNY</text>\
         <text x=\"{}\" y=\"{}\" text-anchor=\"end\" font-size=\"11\">0</text>",
        HEIGHT - BOTTOM,
        WIDTH - 20,
        LEFT - 4,
        escape(&max.round_dp(4).normalize().to_string()),
        LEFT - 4,
        HEIGHT - BOTTOM,
    );
    // The first date anchored at its start, the last at its end: neither is clipped.
    let last = buckets.len() - 1;
    let mut labels = vec![(0, "start")];
    if last > 0 {
        labels.push((last, "end"));
    }
    for (i, anchor) in labels {
        svg.push_str(&format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"{anchor}\" font-size=\"11\">{}</text>",
            coord(x(i)),
            HEIGHT - 10,
            escape(buckets[i])
        ));
    }
    for (n, name) in names.iter().enumerate() {
        let color = COLORS[n % COLORS.len()];
        let points: Vec<String> = buckets
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let v = report.series[*b]
                    .get(*name)
                    .copied()
                    .unwrap_or(Decimal::ZERO);
                format!("{},{}", coord(x(i)), coord(y(v)))
            })
            .collect();
        svg.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"><title>{}</title></polyline>",
            points.join(" "),
            escape(name)
        ));
        // Markers keep single-bucket series visible.
        for point in &points {
            let (cx, cy) = point.split_once(',').expect("x,y");
            svg.push_str(&format!(
                "<circle cx=\"{cx}\" cy=\"{cy}\" r=\"3\" fill=\"{color}\"/>"
            ));
        }
    }
    svg.push_str("</svg><ul class=\"legend\">");
    for (n, name) in names.iter().enumerate() {
        svg.push_str(&format!(
            "<li><span style=\"background:{}\"></span>{}</li>",
            COLORS[n % COLORS.len()],
            escape(name)
        ));
    }
    svg.push_str("</ul>");
    svg
}

pub fn render(report: &Report) -> String {
    let mut html = String::from(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>tollgate cost report</title><style>\
         body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin-top:1em}\
         th,td{border:1px solid #ccc;padding:4px 8px;text-align:right;white-space:nowrap}th:first-child,td.g{text-align:left}\
         tfoot td{font-weight:bold}.legend{list-style:none;padding:0;display:flex;flex-wrap:wrap;gap:1em}\
         .legend span{display:inline-block;width:12px;height:12px;margin-right:4px}</style></head><body>",
    );
    html.push_str(&format!(
        "<h1>Cost report</h1><p>From {} to {} ({}, end exclusive), currency {}. Total: <strong>{}</strong> (exact {}).</p>",
        local(report.from, &report.timezone),
        local(report.to, &report.timezone),
        escape(&report.timezone),
        report.currency,
        report.total,
        report.total_exact
    ));
    html.push_str(&chart(report));
    html.push_str("<table><thead><tr>");
    for d in &report.group_by {
        html.push_str(&format!("<th>{}</th>", d.as_str()));
    }
    html.push_str("<th>requests</th><th>prompt tokens</th><th>cached tokens</th><th>cache write tokens</th><th>completion tokens</th><th>cost (exact)</th><th>cost</th></tr></thead><tbody>");
    for r in &report.rows {
        html.push_str("<tr>");
        for g in &r.group {
            html.push_str(&format!("<td class=\"g\">{}</td>", escape(g)));
        }
        html.push_str(&format!(
            "<td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            r.requests,
            r.prompt_tokens,
            r.cached_tokens,
            r.cache_write_tokens,
            r.completion_tokens,
            r.cost_exact,
            r.cost
        ));
    }
    let span = report.group_by.len().max(1);
    html.push_str(&format!(
        "</tbody><tfoot><tr><td class=\"g\" colspan=\"{}\">Total</td><td colspan=\"5\"></td><td>{}</td><td>{}</td></tr></tfoot></table></body></html>",
        span, report.total_exact, report.total
    ));
    html
}

//! The drift report of a monitored version as JSON (`GET .../drift`) and as a page people can
//! read (`GET .../drift.html`): per column the reference and current distributions drawn as
//! SVG bars, the test, its score, threshold and verdict, and the data quality; the share of
//! drifted features and live performance over time. The page is one self-contained HTML file:
//! inline CSS and SVG, no scripts, nothing fetched.

use std::fmt::Write as _;

use nereid_monitor::performance::Metrics;
use nereid_monitor::report::{ColumnReport, DriftReport, Role};
use nereid_monitor::stattest::ScoreKind;
use serde_json::json;

use super::VersionMonitor;

/// Colours of the page; the screenshot test looks for the first two.
pub const REFERENCE_COLOUR: &str = "#4c78a8";
pub const CURRENT_COLOUR: &str = "#f58518";
const DRIFT_COLOUR: &str = "#d62728";
const OK_COLOUR: &str = "#2ca02c";

/// The JSON report: settings, counters, the latest window in full, a line per earlier window,
/// and live performance.
pub fn drift_json(monitor: &VersionMonitor) -> String {
    let (samples, dropped) = monitor.counts();
    let history: Vec<serde_json::Value> = monitor
        .history()
        .iter()
        .map(|r| {
            json!({
                "window": r.window.index,
                "start_ms": r.window.start_ms,
                "end_ms": r.window.end_ms,
                "rows": r.window.rows,
                "drifted": r.dataset_drift.drifted,
                "columns": r.dataset_drift.columns,
                "share": r.dataset_drift.share,
                "dataset_drift": r.dataset_drift.drift,
                "prediction_drift": r.prediction_drift,
                "quality_failures": r.quality_failures,
            })
        })
        .collect();
    json!({
        "model": monitor.model,
        "version": monitor.version.to_string(),
        "monitoring": monitor.info,
        "samples": samples,
        "dropped": dropped,
        "windows": monitor.windows(),
        "latest": monitor.latest().as_deref(),
        "history": history,
        "performance": monitor.performance(),
    })
    .to_string()
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "–".into()
    } else if v != 0.0 && (v.abs() < 1e-3 || v.abs() >= 1e5) {
        format!("{v:.3e}")
    } else {
        format!("{v:.4}")
    }
}

fn time(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

fn badge(drift: bool, yes: &str, no: &str) -> String {
    if drift {
        format!("<span class=\"badge drift\">{yes}</span>")
    } else {
        format!("<span class=\"badge ok\">{no}</span>")
    }
}

/// Grouped bars: reference and current share per bin or category.
fn bars(column: &ColumnReport) -> String {
    let h = &column.histogram;
    let labels: Vec<String> = if h.edges.is_empty() {
        h.labels.clone()
    } else {
        h.edges
            .windows(2)
            .map(|e| format!("[{}, {})", number(e[0]), number(e[1])))
            .collect()
    };
    let n = labels.len().max(1);
    let (width, height, pad) = (420.0, 130.0, 18.0);
    let top = h
        .reference
        .iter()
        .chain(&h.current)
        .copied()
        .fold(0.0f64, f64::max)
        .max(1e-9);
    let slot = (width - 2.0 * pad) / n as f64;
    let bar = (slot * 0.4).max(1.0);
    let mut svg = format!(
        "<svg class=\"bars\" width=\"{width}\" height=\"{}\" viewBox=\"0 0 {width} {}\" role=\"img\" aria-label=\"reference and current distribution of {}\">",
        height + 28.0,
        height + 28.0,
        escape(&column.name)
    );
    let _ = write!(
        svg,
        "<line x1=\"{pad}\" y1=\"{height}\" x2=\"{}\" y2=\"{height}\" stroke=\"#999\"/>",
        width - pad
    );
    for (i, label) in labels.iter().enumerate() {
        let x = pad + slot * i as f64 + slot * 0.1;
        for (k, (shares, colour)) in [
            (&h.reference, REFERENCE_COLOUR),
            (&h.current, CURRENT_COLOUR),
        ]
        .into_iter()
        .enumerate()
        {
            let share = shares.get(i).copied().unwrap_or(0.0);
            let bh = (share / top) * (height - 8.0);
            let _ = write!(
                svg,
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{bar:.1}\" height=\"{bh:.1}\" fill=\"{colour}\"><title>{}: {} {:.1}%</title></rect>",
                x + bar * k as f64,
                height - bh,
                escape(label),
                if k == 0 { "reference" } else { "current" },
                share * 100.0
            );
        }
    }
    if h.edges.is_empty() {
        // Categories: each label under its pair of bars.
        for (i, label) in h.labels.iter().enumerate() {
            let short: String = label.chars().take(14).collect();
            let _ = write!(
                svg,
                "<text x=\"{:.1}\" y=\"{}\" font-size=\"10\" text-anchor=\"middle\">{}</text>",
                pad + slot * i as f64 + slot / 2.0,
                height + 14.0,
                escape(&short)
            );
        }
    } else if let (Some(first), Some(last)) = (h.edges.first(), h.edges.last()) {
        let _ = write!(
            svg,
            "<text x=\"{pad}\" y=\"{}\" font-size=\"10\">{}</text><text x=\"{}\" y=\"{}\" font-size=\"10\" text-anchor=\"end\">{}</text>",
            height + 14.0,
            number(*first),
            width - pad,
            height + 14.0,
            number(*last)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// A line over windows (oldest left), with an optional threshold line.
fn line_chart(values: &[(f64, bool)], threshold: Option<f64>, max: f64, label: &str) -> String {
    let (width, height, pad) = (640.0, 140.0, 24.0);
    let mut svg = format!(
        "<svg class=\"line\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" role=\"img\" aria-label=\"{}\">",
        escape(label)
    );
    let max = max.max(1e-9);
    let y = |v: f64| height - pad - (v / max).clamp(0.0, 1.0) * (height - 2.0 * pad);
    let x = |i: usize| {
        if values.len() <= 1 {
            width / 2.0
        } else {
            pad + (width - 2.0 * pad) * i as f64 / (values.len() - 1) as f64
        }
    };
    let _ = write!(
        svg,
        "<line x1=\"{pad}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#999\"/>",
        height - pad,
        width - pad,
        height - pad
    );
    if let Some(t) = threshold {
        let _ = write!(
            svg,
            "<line x1=\"{pad}\" y1=\"{0:.1}\" x2=\"{1}\" y2=\"{0:.1}\" stroke=\"{DRIFT_COLOUR}\" stroke-dasharray=\"4 3\"/><text x=\"{1}\" y=\"{2:.1}\" font-size=\"10\" text-anchor=\"end\">threshold {3}</text>",
            y(t),
            width - pad,
            y(t) - 3.0,
            number(t)
        );
    }
    let points: Vec<String> = values
        .iter()
        .enumerate()
        .map(|(i, (v, _))| format!("{:.1},{:.1}", x(i), y(*v)))
        .collect();
    let _ = write!(
        svg,
        "<polyline fill=\"none\" stroke=\"{REFERENCE_COLOUR}\" stroke-width=\"2\" points=\"{}\"/>",
        points.join(" ")
    );
    for (i, (v, alarm)) in values.iter().enumerate() {
        let _ = write!(
            svg,
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3.5\" fill=\"{}\"><title>{}</title></circle>",
            x(i),
            y(*v),
            if *alarm { DRIFT_COLOUR } else { OK_COLOUR },
            number(*v)
        );
    }
    let _ = write!(
        svg,
        "<text x=\"{pad}\" y=\"14\" font-size=\"11\">{}</text></svg>",
        escape(label)
    );
    svg
}

fn metrics_rows(name: &str, m: &Metrics) -> String {
    let mut cells = vec![format!("<td>{}</td><td>{}</td>", escape(name), m.labelled)];
    for v in [m.accuracy, m.macro_f1, m.mae, m.rmse, m.r2] {
        cells.push(format!(
            "<td>{}</td>",
            v.map_or_else(|| "–".to_string(), number)
        ));
    }
    format!("<tr>{}</tr>", cells.concat())
}

/// The page.
pub fn drift_html(monitor: &VersionMonitor) -> String {
    let (samples, dropped) = monitor.counts();
    let title = format!("Drift: {} version {}", monitor.model, monitor.version);
    let mut page = String::with_capacity(64 << 10);
    let _ = write!(
        page,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body{{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:24px;color:#222;max-width:1100px}}
h1{{font-size:22px;margin-bottom:4px}} h2{{font-size:17px;margin-top:28px}}
.meta{{color:#555;font-size:13px}} table{{border-collapse:collapse;font-size:13px;margin-top:8px}}
td,th{{border-bottom:1px solid #ddd;padding:5px 8px;text-align:left;vertical-align:top}}
.badge{{padding:2px 8px;border-radius:10px;color:#fff;font-size:12px;white-space:nowrap}}
.drift{{background:{DRIFT_COLOUR}}} .ok{{background:{OK_COLOUR}}}
.summary{{font-size:15px;padding:10px 14px;border-radius:6px;background:#f4f4f4;margin-top:14px}}
.legend span{{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px;vertical-align:middle}}
.column{{display:flex;gap:18px;align-items:flex-start;border-top:1px solid #eee;padding-top:10px;margin-top:10px}}
.column .facts{{min-width:360px}} .muted{{color:#777}}
</style></head><body>
<h1>{title}</h1>
<div class="meta">reference dataset {} · window: {} · sample rate {} · {samples} samples monitored, {dropped} dropped · {} windows closed</div>
"#,
        escape(
            &monitor
                .info
                .reference_dataset
                .chars()
                .take(12)
                .collect::<String>()
        ),
        escape(&monitor.info.window),
        number(monitor.info.sample_rate),
        monitor.windows()
    );
    let Some(latest) = monitor.latest() else {
        let _ = write!(
            page,
            "<p class=\"summary\">No window has closed yet ({samples} samples so far). Reports appear here once the first window ({}) is complete.</p></body></html>",
            escape(&monitor.info.window)
        );
        return page;
    };
    latest_section(&mut page, &latest);
    let history = monitor.history();
    let shares: Vec<(f64, bool)> = history
        .iter()
        .map(|r| (r.dataset_drift.share, r.dataset_drift.drift))
        .collect();
    let _ = write!(
        page,
        "<h2>Drift over time</h2><p class=\"meta\">Share of drifted features per window (last {} windows); red points are dataset drift.</p>{}",
        history.len(),
        line_chart(&shares, Some(latest.dataset_drift.drift_share), 1.0, "share of drifted features")
    );
    performance_section(&mut page, monitor);
    page.push_str("</body></html>");
    page
}

fn latest_section(page: &mut String, r: &DriftReport) {
    let _ = write!(
        page,
        "<div class=\"summary\">Window {} ({} rows, {} to {}): dataset drift {} — {} of {} features drifted (share {}, threshold {}){}{}</div>",
        r.window.index,
        r.window.rows,
        time(r.window.start_ms),
        time(r.window.end_ms),
        badge(r.dataset_drift.drift, "DRIFT", "no drift"),
        r.dataset_drift.drifted,
        r.dataset_drift.columns,
        number(r.dataset_drift.share),
        number(r.dataset_drift.drift_share),
        match r.prediction_drift {
            Some(d) => format!(" · prediction {}", badge(d, "DRIFT", "no drift")),
            None => String::new(),
        },
        if r.quality_failures > 0 {
            format!(
                " · <span class=\"badge drift\">{} column{} fail{} data quality</span>",
                r.quality_failures,
                if r.quality_failures == 1 { "" } else { "s" },
                if r.quality_failures == 1 { "s" } else { "" }
            )
        } else {
            String::new()
        }
    );
    let _ = write!(
        page,
        "<h2>Columns</h2><div class=\"legend\"><span style=\"background:{REFERENCE_COLOUR}\"></span>reference<span style=\"background:{CURRENT_COLOUR}\"></span>current window</div>"
    );
    for c in &r.columns {
        column_section(page, c);
    }
}

fn column_section(page: &mut String, c: &ColumnReport) {
    let role = match c.role {
        Role::Feature => "feature",
        Role::Prediction => "prediction",
    };
    let verdict = match &c.test {
        Some(t) => {
            let kind = match t.score_kind {
                ScoreKind::PValue => "p-value",
                ScoreKind::Distance => "distance",
            };
            format!(
                "<tr><th>test</th><td>{} <span class=\"muted\">({})</span></td></tr><tr><th>score</th><td>{} {kind} (threshold {})</td></tr><tr><th>verdict</th><td>{}</td></tr>",
                escape(t.method.name()),
                escape(&c.method_description),
                number(t.score),
                number(t.threshold),
                badge(t.drift, "drift", "no drift")
            )
        }
        None => format!(
            "<tr><th>test</th><td class=\"muted\">not run: {}</td></tr>",
            escape(c.error.as_deref().unwrap_or("no data"))
        ),
    };
    let summary = c.summary.as_ref().map_or(String::new(), |s| {
        format!(
            "<tr><th>mean ± std</th><td>reference {} ± {} · current {} ± {}</td></tr>",
            number(s.reference_mean),
            number(s.reference_std),
            number(s.current_mean),
            number(s.current_std)
        )
    });
    let q = &c.quality;
    let mut checks = vec![format!("missing {}", number(q.missing.share))];
    if let Some(o) = &q.out_of_range {
        checks.push(format!("out of range {}", number(o.share)));
    }
    if let Some(u) = &q.unseen_categories {
        checks.push(format!("unseen categories {}", number(u.share)));
    }
    checks.push(format!("wrong type {}", q.wrong_type.count));
    let failures = q.failures();
    let quality = format!(
        "<tr><th>data quality</th><td>{} {}</td></tr>",
        if failures.is_empty() {
            badge(false, "", "ok")
        } else {
            badge(true, &escape(&failures.join(", ")), "")
        },
        escape(&checks.join(" · "))
    );
    let _ = write!(
        page,
        "<div class=\"column\" id=\"column-{}\"><div class=\"facts\"><h3>{} <span class=\"muted\">{role}, {:?}, {}</span></h3><table>{verdict}{summary}{quality}</table></div>{}</div>",
        escape(&c.name),
        escape(&c.name),
        c.column_type,
        escape(&c.source),
        bars(c)
    );
}

fn performance_section(page: &mut String, monitor: &VersionMonitor) {
    let p = monitor.performance();
    page.push_str("<h2>Live performance</h2>");
    if p.total.labelled == 0 {
        let _ = write!(
            page,
            "<p class=\"meta\">No feedback yet. Send true labels to <code>POST /v2/models/{}/versions/{}/feedback</code>.</p>",
            escape(&monitor.model),
            monitor.version
        );
        return;
    }
    let _ = write!(
        page,
        "<table><tr><th></th><th>labelled</th><th>accuracy</th><th>macro F1</th><th>MAE</th><th>RMSE</th><th>R²</th></tr>{}{}</table>",
        metrics_rows("since loaded", &p.total),
        p.latest_window
            .as_ref()
            .map_or(String::new(), |m| metrics_rows("latest window", m))
    );
    if !p.history.is_empty() {
        let (name, values): (&str, Vec<(f64, bool)>) = if p.total.accuracy.is_some() {
            (
                "accuracy per window",
                p.history
                    .iter()
                    .map(|m| (m.accuracy.unwrap_or(f64::NAN), false))
                    .collect(),
            )
        } else {
            (
                "RMSE per window",
                p.history
                    .iter()
                    .map(|m| (m.rmse.unwrap_or(f64::NAN), false))
                    .collect(),
            )
        };
        let max = values.iter().map(|v| v.0).fold(1.0f64, f64::max);
        let _ = write!(
            page,
            "<p class=\"meta\">{} (windows of {} labels)</p>{}",
            name,
            p.window_size,
            line_chart(&values, None, max, name)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_escapes() {
        assert_eq!(time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(time(1_796_428_800_000), "2026-12-05 00:00:00 UTC");
        assert_eq!(escape("<a href='x'>&"), "&lt;a href=&#39;x&#39;&gt;&amp;");
        assert_eq!(number(0.5), "0.5000");
        assert_eq!(number(1e-7), "1.000e-7");
    }
}

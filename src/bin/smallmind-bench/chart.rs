//! The benchmark's results beside llama-bench's, drawn as an SVG chart: tokens/s per test and
//! thread count for every engine, and the time to first token of each chat turn with the KV
//! cache on and off. Bars, lines and labels are all it needs, so it writes the SVG itself.

use std::fmt::Write;

/// One engine's throughput results.
pub struct Engine {
    pub name: String,
    /// (test, threads, tokens/s), e.g. ("pp512", 2, 1050.0).
    pub results: Vec<(String, usize, f64)>,
}

/// Reads llama-bench's markdown output (`-o md`): the header names the columns, so forks
/// with extra columns (ik_llama.cpp's `rtr`) read the same; "t/s" is "mean ± sd".
pub fn read_llama_bench(name: &str, markdown: &str) -> Result<Engine, String> {
    let mut header: Option<Vec<String>> = None;
    let mut results = Vec::new();
    for line in markdown.lines().filter(|l| l.trim_start().starts_with('|')) {
        let cells: Vec<String> = line
            .trim()
            .trim_matches('|')
            .split('|')
            .map(|c| c.trim().to_string())
            .collect();
        if cells
            .iter()
            .all(|c| c.chars().all(|ch| ch == '-' || ch == ':'))
        {
            continue;
        }
        let Some(columns) = &header else {
            header = Some(cells);
            continue;
        };
        let column = |title: &str| {
            columns
                .iter()
                .position(|c| c == title)
                .and_then(|i| cells.get(i))
                .ok_or_else(|| format!("{name}: a row without a '{title}' column: {line}"))
        };
        let threads = column("threads")?
            .parse()
            .map_err(|_| format!("{name}: threads is not a number in: {line}"))?;
        let rate = column("t/s")?
            .split('±')
            .next()
            .unwrap_or_default()
            .trim()
            .parse()
            .map_err(|_| format!("{name}: t/s is not a number in: {line}"))?;
        results.push((column("test")?.clone(), threads, rate));
    }
    if results.is_empty() {
        return Err(format!(
            "{name}: no llama-bench result rows (run llama-bench with -o md)"
        ));
    }
    Ok(Engine {
        name: name.to_string(),
        results,
    })
}

/// The time to first token of every turn of the scripted chat, KV cache on and off (ms).
pub struct Turns {
    pub cached: Vec<f64>,
    pub uncached: Vec<f64>,
}

const WIDTH: f64 = 860.0;
const PANEL_HEIGHT: f64 = 260.0;
const COLORS: [&str; 6] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
];

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// One panel of grouped bars per test kind (pp…, tg…): a group per (test, threads), a bar
/// per engine, each labelled with its value; then, with `turns`, the chat panel.
pub fn svg(title: &str, engines: &[Engine], turns: Option<&Turns>) -> String {
    let mut tests: Vec<(String, usize)> = Vec::new();
    for e in engines {
        for (test, threads, _) in &e.results {
            if !tests.contains(&(test.clone(), *threads)) {
                tests.push((test.clone(), *threads));
            }
        }
    }
    let mut kinds: Vec<String> = Vec::new();
    for (test, _) in &tests {
        let kind: String = test
            .chars()
            .take_while(|c| c.is_ascii_alphabetic())
            .collect();
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    let panels = kinds.len() + usize::from(turns.is_some());
    let height = 60.0 + panels as f64 * (PANEL_HEIGHT + 50.0) + 30.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{}" y="24" font-size="16" text-anchor="middle">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );
    // Legend.
    for (i, e) in engines.iter().enumerate() {
        let x = 70.0 + i as f64 * 190.0;
        let _ = writeln!(
            out,
            r#"<rect x="{x}" y="36" width="12" height="12" fill="{}"/><text x="{}" y="46">{}</text>"#,
            COLORS[i % COLORS.len()],
            x + 16.0,
            escape(&e.name)
        );
    }
    let mut top = 70.0;
    for kind in &kinds {
        let groups: Vec<&(String, usize)> = tests
            .iter()
            .filter(|(t, _)| t.starts_with(kind.as_str()))
            .collect();
        let max = engines
            .iter()
            .flat_map(|e| &e.results)
            .filter(|(t, _, _)| t.starts_with(kind.as_str()))
            .map(|r| r.2)
            .fold(0.0, f64::max)
            .max(1e-9);
        let (left, plot_w, plot_h) = (60.0, WIDTH - 80.0, PANEL_HEIGHT - 40.0);
        let base = top + plot_h;
        let _ = writeln!(
            out,
            r#"<text x="{left}" y="{}" font-size="13">{} tokens/s (higher is better)</text>"#,
            top - 6.0,
            escape(kind)
        );
        let _ = writeln!(
            out,
            r#"<line x1="{left}" y1="{base}" x2="{}" y2="{base}" stroke="black"/>"#,
            left + plot_w
        );
        let group_w = plot_w / groups.len().max(1) as f64;
        let bar_w = (group_w * 0.8) / engines.len().max(1) as f64;
        for (g, (test, threads)) in groups.iter().enumerate() {
            let gx = left + g as f64 * group_w + group_w * 0.1;
            for (i, e) in engines.iter().enumerate() {
                let Some(&(_, _, rate)) = e
                    .results
                    .iter()
                    .find(|(t, th, _)| t == test && th == threads)
                else {
                    continue;
                };
                let h = plot_h * rate / max;
                let x = gx + i as f64 * bar_w;
                let _ = writeln!(
                    out,
                    r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="{}"/>"#,
                    base - h,
                    bar_w * 0.9,
                    COLORS[i % COLORS.len()]
                );
                let _ = writeln!(
                    out,
                    r#"<text x="{:.1}" y="{:.1}" font-size="10" text-anchor="middle">{rate:.0}</text>"#,
                    x + bar_w * 0.45,
                    base - h - 3.0
                );
            }
            let _ = writeln!(
                out,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{} · {} thread{}</text>"#,
                gx + group_w * 0.4,
                base + 16.0,
                escape(test),
                threads,
                if *threads == 1 { "" } else { "s" }
            );
        }
        top += PANEL_HEIGHT + 50.0;
    }
    if let Some(turns) = turns {
        let (left, plot_w, plot_h) = (60.0, WIDTH - 80.0, PANEL_HEIGHT - 40.0);
        let base = top + plot_h;
        let n = turns.cached.len().max(turns.uncached.len()).max(2);
        let max = turns
            .cached
            .iter()
            .chain(&turns.uncached)
            .copied()
            .fold(0.0, f64::max)
            .max(1e-9);
        let _ = writeln!(
            out,
            r#"<text x="{left}" y="{}" font-size="13">smallmind chat: time to first token per turn, ms (lower is better)</text>"#,
            top - 6.0
        );
        let _ = writeln!(
            out,
            r#"<line x1="{left}" y1="{base}" x2="{}" y2="{base}" stroke="black"/><line x1="{left}" y1="{top}" x2="{left}" y2="{base}" stroke="black"/>"#,
            left + plot_w
        );
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" text-anchor="end">{max:.0}</text><text x="{}" y="{base}" text-anchor="end">0</text>"#,
            left - 4.0,
            top + 4.0,
            left - 4.0
        );
        for (series, label, color) in [
            (&turns.cached, "KV cache on", COLORS[0]),
            (&turns.uncached, "KV cache off", COLORS[3]),
        ] {
            let points: Vec<String> = series
                .iter()
                .enumerate()
                .map(|(i, &ms)| {
                    format!(
                        "{:.1},{:.1}",
                        left + plot_w * i as f64 / (n - 1) as f64,
                        base - plot_h * ms / max
                    )
                })
                .collect();
            let _ = writeln!(
                out,
                r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
                points.join(" ")
            );
            if let Some(&last) = series.last() {
                let _ = writeln!(
                    out,
                    r#"<text x="{:.1}" y="{:.1}" fill="{color}" text-anchor="end">{label}: turn {} {last:.1} ms</text>"#,
                    left + plot_w,
                    base - plot_h * last / max - 6.0,
                    series.len()
                );
            }
        }
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">turn 1 … {n}</text>"#,
            left + plot_w / 2.0,
            base + 16.0
        );
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama_bench_markdown_is_read_by_its_header() {
        let ik = "| model | size | params | backend | threads | rtr | test | t/s |\n\
                  | --- | ---: | ---: | --- | ---: | --: | ---: | ---: |\n\
                  | llama ?B Q4_1 | 120.79 MiB | 162.83 M | CPU | 2 | 1 | pp512 | 1093.46 ± 3.10 |\n\
                  | llama ?B Q4_1 | 120.79 MiB | 162.83 M | CPU | 1 | 1 | tg128 | 98.88 ± 0.00 |\n";
        let engine = read_llama_bench("ik", ik).unwrap();
        assert_eq!(
            engine.results,
            vec![
                ("pp512".to_string(), 2, 1093.46),
                ("tg128".to_string(), 1, 98.88)
            ]
        );
        assert!(read_llama_bench("empty", "no table here").is_err());
        let svg = svg(
            "t",
            &[engine],
            Some(&Turns {
                cached: vec![60.0, 40.0],
                uncached: vec![60.0, 90.0],
            }),
        );
        assert!(
            svg.starts_with("<svg")
                && svg.contains("pp512 · 2 threads")
                && svg.contains("KV cache off: turn 2 90.0 ms")
        );
    }
}

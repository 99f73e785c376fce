"""The HTML report of a CAC validation run: summary, 4x4 table, disagreements, and two plots.

Why PNG plots drawn with matplotlib (Agg backend, no display needed): a cardiologist reads a method
comparison from a Bland-Altman plot and a scatter plot with the risk categories marked; a static
folder (``index.html``, ``bland-altman.png``, ``scatter.png``, ``figures.json``) can be opened on any
workstation and archived with the site's validation file. Studies are named by study key and
reference-file line only, never by accession number. ``figures.json`` records what each plot drew
(points, lines, categories), so a test or a script can check the picture without reading pixels.

Both plots use a symmetric-log axis for scores (linear up to 10 AU, logarithmic above), so studies
with 0 and with thousands of Agatston units are both visible, and shade the four Agatston categories
(0, 1-100, 101-400, >400).
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any

from connector.infer.agatston import CATEGORIES
from connector.infer.validation import ValidationReport

AGREE_COLOUR = "#1f5fbf"  # blue: model and reference in the same category
DISAGREE_COLOUR = "#d62020"  # red: category differs
BAND_COLOURS = ("#eef6ee", "#fbf7e6", "#fcefe3", "#f9e4e4")  # 0, 1-100, 101-400, >400 (light)
BOUNDS = (0.0, 1.0, 100.0, 400.0)  # lower edge of each category's band on the plot
LINTHRESH = 10.0


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)  # headless: no display on a server
    import matplotlib.pyplot as plt

    return plt


def _axis_max(values: list[float]) -> float:
    return max([1000.0] + [v * 1.6 for v in values])


def _bands(ax: Any, top: float, vertical: bool) -> None:
    edges = list(BOUNDS) + [top]
    for k, name in enumerate(CATEGORIES):
        lo, hi = edges[k], edges[k + 1]
        if vertical:
            ax.axvspan(lo, hi, color=BAND_COLOURS[k], zorder=0, lw=0)
        else:
            ax.axhspan(lo, hi, color=BAND_COLOURS[k], zorder=0, lw=0)
    for edge in (100.0, 400.0):
        (ax.axvline if vertical else ax.axhline)(edge, color="#999999", lw=0.8, ls=":", zorder=1)


def scatter_png(report: ValidationReport, path: Path) -> dict[str, Any]:
    """Model against reference, categories shaded (agreement squares darker), identity line."""
    plt = _pyplot()
    scored = report.scored
    ref = [o.row.agatston for o in scored]
    mod = [float(o.agatston or 0.0) for o in scored]
    top = _axis_max(ref + mod)
    fig, ax = plt.subplots(figsize=(7.5, 6.5), dpi=110)
    edges = list(BOUNDS) + [top]
    for k in range(4):  # a study in a shaded square has the same category on both sides
        ax.fill_between([edges[k], edges[k + 1]], edges[k], edges[k + 1], color=BAND_COLOURS[k], zorder=0, lw=0)
        ax.text((edges[k] + edges[k + 1]) / 2 if k < 3 else edges[k] * 2.2, edges[k + 1] * 0.93 if k < 3 else top * 0.8,
                CATEGORIES[k], ha="center", va="top", fontsize=8, color="#666666", zorder=1)
    for edge in (1.0, 100.0, 400.0):
        ax.axvline(edge, color="#999999", lw=0.8, ls=":", zorder=1)
        ax.axhline(edge, color="#999999", lw=0.8, ls=":", zorder=1)
    ax.plot([0, top], [0, top], color="#444444", lw=1, ls="--", zorder=2, label="identity (model = reference)")
    agree = [(r, m) for o, r, m in zip(scored, ref, mod, strict=True) if o.model_category == o.reference_category]
    disagree = [(r, m, o) for o, r, m in zip(scored, ref, mod, strict=True) if o.model_category != o.reference_category]
    if agree:
        ax.scatter([a[0] for a in agree], [a[1] for a in agree], s=36, color=AGREE_COLOUR, zorder=3,
                   label=f"same category ({len(agree)})", edgecolors="white", linewidths=0.5)
    if disagree:
        ax.scatter([d[0] for d in disagree], [d[1] for d in disagree], s=48, color=DISAGREE_COLOUR, marker="D",
                   zorder=4, label=f"category differs ({len(disagree)})", edgecolors="white", linewidths=0.5)
        for r, m, o in disagree:
            ax.annotate(f"{(o.study_key or '')[:8]} (line {o.row.line})", (r, m), textcoords="offset points",
                        xytext=(6, 4), fontsize=7, color=DISAGREE_COLOUR, zorder=5)
    for axis in ("x", "y"):
        getattr(ax, f"set_{axis}scale")("symlog", linthresh=LINTHRESH)
    ax.set_xlim(-0.5, top)
    ax.set_ylim(-0.5, top)
    ax.set_xlabel("Reference Agatston score (site reading, AU)")
    ax.set_ylabel("Model Agatston score (AU)")
    stats = report.stats
    rho = "n/a" if stats is None or stats.rho is None else f"{stats.rho:.3f}"
    kappa = "n/a" if stats is None or stats.kappa is None else f"{stats.kappa:.3f}"
    ax.set_title(f"CAC: model against site reference (n = {len(scored)})\n"
                 f"Spearman's rho {rho}, linear-weighted kappa {kappa}", fontsize=10)
    ax.legend(loc="lower right", fontsize=8, framealpha=0.9)
    ax.grid(False)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return {"file": path.name, "points": len(scored), "agree": len(agree), "disagree": len(disagree),
            "x": ref, "y": mod, "x_label": "reference (AU)", "y_label": "model (AU)",
            "category_edges": [1.0, 100.0, 400.0], "scale": f"symlog, linear below {LINTHRESH:g}",
            "colours": {"agree": AGREE_COLOUR, "disagree": DISAGREE_COLOUR}}


def bland_altman_png(report: ValidationReport, path: Path) -> dict[str, Any]:
    """Difference (model - reference) against the mean of the two, bias and 95 % limits of agreement."""
    plt = _pyplot()
    scored = report.scored
    ref = [o.row.agatston for o in scored]
    mod = [float(o.agatston or 0.0) for o in scored]
    means = [(r + m) / 2 for r, m in zip(ref, mod, strict=True)]
    diffs = [m - r for r, m in zip(ref, mod, strict=True)]
    top = _axis_max(means)
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
    _bands(ax, top, vertical=True)
    for k, name in enumerate(CATEGORIES):
        lo, hi = (list(BOUNDS) + [top])[k:k + 2]
        ax.text(max(lo, 0.0) + (hi - lo) / 2 if k < 3 else lo * 2.2, 1.0, name, transform=ax.get_xaxis_transform(),
                ha="center", va="top", fontsize=8, color="#666666")
    ax.axhline(0, color="#444444", lw=0.8, zorder=2)
    lines: dict[str, float] = {}
    ba = report.stats.bland_altman if report.stats is not None else None
    if ba is not None:
        lines = {"bias": ba.bias, "lower": ba.lower, "upper": ba.upper}
        ax.axhline(ba.bias, color="#1a1a1a", lw=1.4, zorder=2)
        ax.axhline(ba.lower, color="#1a1a1a", lw=1, ls="--", zorder=2)
        ax.axhline(ba.upper, color="#1a1a1a", lw=1, ls="--", zorder=2)
        for name, value in (("bias", ba.bias), ("+1.96 SD", ba.upper), ("-1.96 SD", ba.lower)):
            ax.annotate(f"{name}: {value:.1f}", (1.0, value), xycoords=("axes fraction", "data"),
                        xytext=(-4, 3), textcoords="offset points", ha="right", fontsize=8)
    colours = [AGREE_COLOUR if o.model_category == o.reference_category else DISAGREE_COLOUR for o in scored]
    if scored:
        ax.scatter(means, diffs, s=36, c=colours, zorder=3, edgecolors="white", linewidths=0.5)
    ax.set_xscale("symlog", linthresh=LINTHRESH)
    ax.set_xlim(-0.5, top)
    span = max([abs(d) for d in diffs] + [abs(v) for v in lines.values()] + [10.0]) * 1.25
    ax.set_ylim(-span, span)
    ax.set_xlabel("Mean of model and reference Agatston score (AU)")
    ax.set_ylabel("Difference, model - reference (AU)")
    title = f"CAC Bland-Altman plot (n = {len(scored)})"
    if ba is not None:
        title += f"\nbias {ba.bias:.1f} AU, 95 % limits of agreement {ba.lower:.1f} to {ba.upper:.1f} AU"
    ax.set_title(title, fontsize=10)
    from matplotlib.lines import Line2D

    ax.legend(handles=[Line2D([], [], marker="o", ls="", color=AGREE_COLOUR, label="same category"),
                       Line2D([], [], marker="o", ls="", color=DISAGREE_COLOUR, label="category differs"),
                       Line2D([], [], color="#1a1a1a", lw=1.4, label="bias"),
                       Line2D([], [], color="#1a1a1a", lw=1, ls="--", label="95 % limits of agreement")],
              loc="lower left", fontsize=8, framealpha=0.9)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return {"file": path.name, "points": len(scored), "x": means, "y": diffs, "lines": lines,
            "x_label": "mean (AU)", "y_label": "model - reference (AU)",
            "disagree": sum(1 for c in colours if c == DISAGREE_COLOUR),
            "colours": {"agree": AGREE_COLOUR, "disagree": DISAGREE_COLOUR}}


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def write_html(report: ValidationReport, folder: Path) -> Path:
    """Write the report folder; returns the path of ``index.html``."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    figures = {"bland_altman": bland_altman_png(report, folder / "bland-altman.png"),
               "scatter": scatter_png(report, folder / "scatter.png")}
    (folder / "figures.json").write_text(json.dumps(figures, indent=1, sort_keys=True))
    e = html.escape
    m = report.model
    stats = report.stats
    ba = stats.bland_altman if stats is not None else None
    rows = []
    if stats is not None:
        head = "".join(f"<th>{e(c)}</th>" for c in CATEGORIES)
        rows.append(f"<table class=grid><caption>Categories: rows reference, columns model</caption>"
                    f"<tr><th>reference \\ model</th>{head}</tr>")
        for i, (name, counts) in enumerate(zip(CATEGORIES, stats.table.tolist(), strict=True)):
            cells = "".join(f"<td{' class=diag' if i == j else ''}>{v}</td>" for j, v in enumerate(counts))
            rows.append(f"<tr><th>{e(name)}</th>{cells}</tr>")
        rows.append("</table>")
    disagreements = "".join(
        f"<tr><td><code>{e(o.study_key or '')}</code></td><td>{o.row.line}</td><td>{o.row.agatston:.1f}</td>"
        f"<td>{e(o.reference_category)}</td><td>{float(o.agatston or 0):.1f}</td><td>{e(o.model_category or '')}</td></tr>"
        for o in report.disagreements)
    missing = "".join(
        f"<tr><td>{o.row.line}</td><td>{e(o.status.replace('_', ' '))}</td><td>{e(o.reason or '')}</td>"
        f"<td><code>{e(o.study_key or '')}</code></td></tr>" for o in report.outcomes if o.status != "scored")
    warning = "" if m.get("validated_for_clinical_use") else (
        f"<p class=warn>This model's manifest says it is NOT validated for clinical use: {e(report.intended_use)}</p>")
    doc = f"""<!doctype html><html lang=en><head><meta charset=utf-8><title>CAC validation: {e(m['name'])} {e(m['version'])}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto;color:#222}} table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #bbb;padding:.25em .6em;text-align:right}} th{{background:#f3f3f3}} .diag{{background:#e3f1e3}}
.warn{{background:#fdecea;padding:.6em;border-left:4px solid #d62020}} img{{max-width:100%;border:1px solid #ddd}}
caption{{text-align:left;font-weight:bold}} code{{font-size:.9em}}</style></head><body>
<h1>Coronary artery calcium: validation at the site</h1>
<p>Model <b>{e(m['name'])} {e(m['version'])}</b>, SHA-256 <code>{e(m['sha256'])}</code>; run
{e(_when(report.at))}, {report.seconds:.1f} s.</p>{warning}
<table><tr><th>References</th><td>{len(report.outcomes)}</td></tr>
<tr><th>Compared</th><td>{len(report.scored)}</td></tr>
<tr><th>Not found on this site</th><td>{report.count('not_found')}</td></tr>
<tr><th>Found, not scored</th><td>{report.count('not_scored')}</td></tr>
<tr><th>Linear-weighted kappa (0 / 1-100 / 101-400 / &gt;400)</th><td>{_fmt(stats.kappa if stats else None)}</td></tr>
<tr><th>Same category</th><td>{stats.exact_agreement if stats else 0} of {stats.n if stats else 0}</td></tr>
<tr><th>Bland-Altman bias, model - reference (AU)</th><td>{_fmt(ba.bias if ba else None, 1)}</td></tr>
<tr><th>95 % limits of agreement (AU)</th><td>{_fmt(ba.lower if ba else None, 1)} to {_fmt(ba.upper if ba else None, 1)}</td></tr>
<tr><th>Spearman's rho</th><td>{_fmt(stats.rho if stats else None)}</td></tr></table>
{''.join(rows)}
<h2>Scatter plot</h2><img src="scatter.png" alt="Model against reference Agatston score, categories shaded">
<h2>Bland-Altman plot</h2><img src="bland-altman.png" alt="Difference against mean of model and reference Agatston score">
<h2>Disagreements (category differs): {len(report.disagreements)}</h2>
<table><tr><th>Study key</th><th>Reference line</th><th>Reference (AU)</th><th>Category</th><th>Model (AU)</th><th>Category</th></tr>
{disagreements}</table>
{'<h2>Not compared</h2><table><tr><th>Reference line</th><th>Status</th><th>Reason</th><th>Study key</th></tr>' + missing + '</table>' if missing else ''}
<p>Studies are named by the connector's study key and the line of the site's reference file; accession
numbers are not included in this report.</p>
</body></html>
"""
    index = folder / "index.html"
    index.write_text(doc, encoding="utf-8")
    for name in ("index.html", "bland-altman.png", "scatter.png", "figures.json"):
        os.chmod(folder / name, 0o600)
    return index


def _when(ts: float) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(ts))

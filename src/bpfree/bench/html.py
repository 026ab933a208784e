"""``bpfree report DIR``: report.md (tables) and a self-contained report.html (inline SVG plots).

No CDN, no network, no plotting library: the SVG is written here. Figures per dataset: accuracy
vs training time, vs energy and vs peak memory with the Pareto front; validation learning curves;
per-rule bars of the cost ratios to the BP twin. Every figure carries the machine, the commit and
whether energy was measured or estimated. A tiny script checks on load that every plot has been
drawn and writes the result into ``#render-check`` (the browser test reads it).
"""

from __future__ import annotations

import html
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

from ..records import RunRecord, load_records, record_path, record_rule_key, write_record
from .report import Row, markdown_table, summarize

__all__ = ["write_report", "render_html", "render_markdown", "provenance"]

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
           "#17becf", "#bcbd22", "#7f7f7f", "#393b79", "#637939", "#8c6d31", "#843c39"]
BP_COLOR = "#222222"


# ------------------------------------------------------------------------------------------------
# provenance: machine, commit, energy method (printed on every figure)


def provenance(records: list[RunRecord], rows: list[Row]) -> dict[str, str]:
    machines = sorted({_machine(r.machine) for r in records})
    commits = sorted({(r.commit or "unknown")[:10] + ("+dirty" if r.dirty else "") for r in records})
    methods = sorted({r.energy_method for r in records if r.energy_method})
    if not methods:
        energy = "energy not measured"
    elif any("estimate" in m for m in methods):
        energy = "energy ESTIMATED (" + ", ".join(methods) + ")"
    else:
        energy = "energy measured (" + ", ".join(methods) + ")"
    return {"machine": (machines[0] if len(machines) == 1 else
                        f"MIXED MACHINES ({len(machines)}): " + "; ".join(machines)),
            "commit": ", ".join(commits) if commits else "unknown", "energy": energy}


def _machine(m: dict) -> str:
    if not m:
        return "unknown machine"
    dev = m.get("cuda_device") or m.get("cpu_model") or m.get("platform") or "unknown"
    threads = m.get("torch_threads")
    host = m.get("hostname")
    return f"{dev}" + (f", {threads} torch threads" if threads else "") + (f" ({host})" if host else "")


def _footer(p: dict[str, str]) -> str:
    return f"machine: {p['machine']} · commit {p['commit']} · {p['energy']}"


# ------------------------------------------------------------------------------------------------
# a minimal SVG plotter


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step - 1e-9) * step
    ticks, t = [], start
    while t <= hi + 1e-9 * step:
        ticks.append(round(t, 12))
        t += step
    return ticks


def _log_ticks(lo: float, hi: float) -> list[float]:
    if hi / lo < 4:  # less than a decade or so: plain ticks read better
        return [t for t in _nice_ticks(lo, hi, 4) if t > 0]
    a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    mults = (1, 2, 5) if b - a <= 3 else (1,)
    return [m * 10 ** e for e in range(a, b + 1) for m in mults if lo <= m * 10 ** e <= hi]


def _fmt_tick(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e4 or abs(v) < 1e-3:
        return f"{v:.0e}".replace("e+0", "e").replace("e-0", "e-")
    return f"{v:g}"


def _esc(s: Any) -> str:
    return html.escape(str(s), quote=True)


class Plot:
    """Axes with linear or log scales; marks are collected as SVG strings."""

    W, H = 620, 400
    L, R, T, B = 66, 150, 34, 72  # margins: right one holds the legend, bottom the footer

    def __init__(self, title: str, xlabel: str, ylabel: str, xs: Iterable[float],
                 ys: Iterable[float], *, logx: bool | None = None, logy: bool = False,
                 ypad: float = 0.08, y0: float | None = None) -> None:
        xs, ys = [x for x in xs if x is not None], [y for y in ys if y is not None]
        self.title, self.xlabel, self.ylabel = title, xlabel, ylabel
        xlo, xhi = (min(xs), max(xs)) if xs else (0.0, 1.0)
        ylo, yhi = (min(ys), max(ys)) if ys else (0.0, 1.0)
        if y0 is not None:
            ylo, yhi = min(ylo, y0), max(yhi, y0)
        self.logx = logx if logx is not None else (xlo > 0 and xhi / xlo > 20)
        self.logy = logy and ylo > 0
        self.x0, self.x1 = self._pad(xlo, xhi, self.logx, 0.06)
        self.y0, self.y1 = self._pad(ylo, yhi, self.logy, ypad)
        self.marks: list[str] = []
        self.legend: list[tuple[str, str, str]] = []

    @staticmethod
    def _pad(lo: float, hi: float, log: bool, frac: float) -> tuple[float, float]:
        if log:
            lo, hi = math.log10(lo), math.log10(hi)
        span = (hi - lo) or (abs(hi) * 0.1 or 1.0)
        lo, hi = lo - frac * span, hi + frac * span
        return (10 ** lo, 10 ** hi) if log else (lo, hi)

    def sx(self, x: float) -> float:
        f = ((math.log10(x) - math.log10(self.x0)) / (math.log10(self.x1) - math.log10(self.x0))
             if self.logx else (x - self.x0) / (self.x1 - self.x0))
        return self.L + f * (self.W - self.L - self.R)

    def sy(self, y: float) -> float:
        f = ((math.log10(y) - math.log10(self.y0)) / (math.log10(self.y1) - math.log10(self.y0))
             if self.logy else (y - self.y0) / (self.y1 - self.y0))
        return self.H - self.B - f * (self.H - self.T - self.B)

    # marks
    def point(self, x: float, y: float, color: str, tip: str, *, yerr: float | None = None,
              label: str | None = None, r: float = 5, hollow: bool = False) -> None:
        if x is None or y is None or (self.logx and x <= 0):
            return
        cx, cy = self.sx(x), self.sy(y)
        if yerr:
            self.marks.append(f'<line class="mark" x1="{cx:.1f}" x2="{cx:.1f}" '
                              f'y1="{self.sy(y - yerr):.1f}" y2="{self.sy(y + yerr):.1f}" '
                              f'stroke="{color}" stroke-width="1.5"/>')
        fill = "white" if hollow else color
        self.marks.append(f'<circle class="mark" cx="{cx:.1f}" cy="{cy:.1f}" r="{r}" fill="{fill}" '
                          f'stroke="{color}" stroke-width="1.5"><title>{_esc(tip)}</title></circle>')
        if label:
            self.marks.append(f'<text x="{cx + 7:.1f}" y="{cy - 6:.1f}" font-size="11" '
                              f'fill="{color}">{_esc(label)}</text>')

    def line(self, pts: list[tuple[float, float]], color: str, *, width: float = 1.8,
             dash: str | None = None, opacity: float = 1.0, tip: str | None = None) -> None:
        pts = [(x, y) for x, y in pts if x is not None and y is not None and not (self.logx and x <= 0)]
        if not pts:
            return
        d = " ".join(f"{self.sx(x):.1f},{self.sy(y):.1f}" for x, y in pts)
        title = f"<title>{_esc(tip)}</title>" if tip else ""
        self.marks.append(f'<polyline class="mark" points="{d}" fill="none" stroke="{color}" '
                          f'stroke-width="{width}" opacity="{opacity}"'
                          + (f' stroke-dasharray="{dash}"' if dash else "") + f'>{title}</polyline>')

    def bar(self, x_left: float, x_right: float, base: float, y: float, color: str, tip: str) -> None:
        top, bot = sorted((self.sy(y), self.sy(base)))
        self.marks.append(f'<rect class="mark" x="{x_left:.1f}" y="{top:.1f}" '
                          f'width="{max(1.0, x_right - x_left):.1f}" height="{max(1.0, bot - top):.1f}" '
                          f'fill="{color}"><title>{_esc(tip)}</title></rect>')

    def hline(self, y: float, color: str = "#888", dash: str = "4 3") -> None:
        yy = self.sy(y)
        self.marks.append(f'<line x1="{self.L}" x2="{self.W - self.R}" y1="{yy:.1f}" y2="{yy:.1f}" '
                          f'stroke="{color}" stroke-dasharray="{dash}"/>')

    def add_legend(self, color: str, text: str, style: str = "dot") -> None:
        if (color, text, style) not in self.legend:
            self.legend.append((color, text, style))

    # frame
    def _axes(self, xticks: list[tuple[float, str]] | None = None,
              pixel_x: bool = False) -> list[str]:
        L, R, T, B, W, H = self.L, self.R, self.T, self.B, self.W, self.H
        out = [f'<rect x="{L}" y="{T}" width="{W - L - R}" height="{H - T - B}" fill="#fcfcfc" '
               f'stroke="#999"/>']
        yt = (_log_ticks(self.y0, self.y1) if self.logy else _nice_ticks(self.y0, self.y1))
        for v in yt:
            if not self.y0 <= v <= self.y1:
                continue
            yy = self.sy(v)
            out.append(f'<line x1="{L}" x2="{W - R}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#eee"/>'
                       f'<text x="{L - 6}" y="{yy + 4:.1f}" font-size="11" text-anchor="end">'
                       f'{_fmt_tick(v)}</text>')
        if xticks is None:
            xs = _log_ticks(self.x0, self.x1) if self.logx else _nice_ticks(self.x0, self.x1)
            xticks = [(v, _fmt_tick(v)) for v in xs if self.x0 <= v <= self.x1]
        for v, lab in xticks:
            xx = v if pixel_x else self.sx(v)
            out.append(f'<line x1="{xx:.1f}" x2="{xx:.1f}" y1="{H - B}" y2="{H - B + 4}" stroke="#666"/>'
                       f'<text x="{xx:.1f}" y="{H - B + 16}" font-size="11" text-anchor="middle">'
                       f'{_esc(lab)}</text>')
        out.append(f'<text x="{(L + W - R) / 2:.0f}" y="{H - B + 34}" font-size="12" '
                   f'text-anchor="middle">{_esc(self.xlabel)}{" (log scale)" if self.logx else ""}</text>')
        out.append(f'<text transform="translate(16,{(T + H - B) / 2:.0f}) rotate(-90)" font-size="12" '
                   f'text-anchor="middle">{_esc(self.ylabel)}{" (log)" if self.logy else ""}</text>')
        out.append(f'<text x="{L}" y="{T - 12}" font-size="14" font-weight="bold">{_esc(self.title)}</text>')
        for i, (color, text, style) in enumerate(self.legend[:16]):
            y = T + 8 + 17 * i
            sym = (f'<circle cx="{W - R + 16}" cy="{y}" r="5" fill="{color}"/>' if style == "dot" else
                   f'<rect x="{W - R + 10}" y="{y - 5}" width="12" height="10" fill="{color}"/>' if style == "bar"
                   else f'<line x1="{W - R + 8}" x2="{W - R + 24}" y1="{y}" y2="{y}" stroke="{color}" '
                        f'stroke-width="2"' + (' stroke-dasharray="5 3"' if style == "dash" else "") + "/>")
            out.append(sym + f'<text x="{W - R + 30}" y="{y + 4}" font-size="11">{_esc(text)}</text>')
        return out

    def svg(self, footer: str, fig_id: str, xticks: list[tuple[float, str]] | None = None,
            pixel_x: bool = False) -> str:
        foot = _wrap(footer, 110)
        body = self._axes(xticks, pixel_x) + self.marks
        body += [f'<text x="8" y="{self.H - 20 + 12 * i}" font-size="9.5" fill="#555" '
                 f'class="provenance">{_esc(line)}</text>' for i, line in enumerate(foot[:2])]
        return (f'<svg class="plot" id="{_esc(fig_id)}" xmlns="http://www.w3.org/2000/svg" '
                f'viewBox="0 0 {self.W} {self.H}" width="{self.W}" height="{self.H}" role="img" '
                f'aria-label="{_esc(self.title)}" font-family="sans-serif">' + "".join(body) + "</svg>")


def _wrap(s: str, n: int) -> list[str]:
    words, lines, cur = s.split(" "), [], ""
    for w in words:
        if len(cur) + len(w) + 1 > n and cur:
            lines.append(cur)
            cur = w
        else:
            cur = f"{cur} {w}".strip()
    return lines + [cur] if cur else lines


# ------------------------------------------------------------------------------------------------
# figures


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not dominated (lower cost x and higher accuracy y are better), sorted by cost."""
    front, best = [], -math.inf
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            front.append((x, y))
            best = y
    return front


def _colors(rows: list[Row]) -> dict[str, str]:
    rules = sorted({r.name for r in rows if r.name != "bp"})
    out = {r: PALETTE[i % len(PALETTE)] for i, r in enumerate(rules)}
    out["bp"] = BP_COLOR
    return out


def _name(r: Row, many_models: bool) -> str:
    return f"{r.name} ({r.model})" if many_models else r.name


def fig_tradeoff(ds: str, rows: list[Row], cost: str, xlabel: str, scale: float, prov: dict,
                 colors: dict[str, str], fig_id: str) -> str | None:
    pts = [(r, getattr(r, cost) / scale) for r in rows
           if getattr(r, cost) is not None and r.test_acc_mean is not None and getattr(r, cost) > 0]
    if not pts:
        return None
    many = len({r.model for r in rows}) > 1
    p = Plot(f"{ds}: test accuracy vs {xlabel.split(' (')[0]}", xlabel, "test accuracy %",
             [x for _, x in pts], [100 * r.test_acc_mean + s * 100 * (r.test_acc_std or 0)
                                   for r, _ in pts for s in (-1, 1)])
    front = pareto_front([(x, 100 * r.test_acc_mean) for r, x in pts])
    if len(front) > 1:  # a staircase through the non-dominated points
        stairs = [front[0]] + [q for a, b in zip(front, front[1:]) for q in ((b[0], a[1]), b)]
        p.line(stairs, "#999", dash="5 3", width=1.4, tip="Pareto front")
    p.add_legend("#999", "Pareto front", "dash")
    on_front = set(front)
    for r, x in pts:
        c = colors.get(r.name, "#000")
        y = 100 * r.test_acc_mean
        p.point(x, y, c, f"{_name(r, True)}: {y:.2f} ± {100 * (r.test_acc_std or 0):.2f} % "
                f"at {x:.3g} ({r.n_ok} seeds){' · Pareto-optimal' if (x, y) in on_front else ''}",
                yerr=100 * (r.test_acc_std or 0) or None, label=_name(r, many),
                hollow=(x, y) not in on_front)
        p.add_legend(c, r.name)
    return p.svg(_footer(prov), fig_id)


def fig_curves(ds: str, records: list[RunRecord], prov: dict, colors: dict[str, str],
               fig_id: str) -> str | None:
    groups: dict[tuple[str, str], list[RunRecord]] = defaultdict(list)
    for r in records:
        if r.dataset == ds and r.curve:
            groups[(record_rule_key(r), r.model)].append(r)
    if not groups:
        return None
    xs = [c["epoch"] for rs in groups.values() for r in rs for c in r.curve]
    ys = [100 * c["val_acc"] for rs in groups.values() for r in rs for c in r.curve
          if c.get("val_acc") is not None]
    if not ys:
        return None
    p = Plot(f"{ds}: validation accuracy per epoch", "epoch", "validation accuracy %", xs, ys,
             logx=False)
    many = len({m for _, m in groups}) > 1
    for (rule, model), rs in sorted(groups.items(), key=lambda kv: (kv[0][0] != "bp", kv[0])):
        c = colors.get(rule, "#000")
        name = f"{rule} ({model})" if many else rule
        for r in rs:  # each seed, faint
            p.line([(e["epoch"], 100 * e["val_acc"]) for e in r.curve if e.get("val_acc") is not None],
                   c, width=1.0, opacity=0.3, tip=f"{name} seed {r.seed}")
        per_epoch: dict[int, list[float]] = defaultdict(list)
        for r in rs:
            for e in r.curve:
                if e.get("val_acc") is not None:
                    per_epoch[e["epoch"]].append(100 * e["val_acc"])
        p.line([(ep, statistics.fmean(v)) for ep, v in sorted(per_epoch.items())], c, width=2.2,
               tip=f"{name}: mean over {len(rs)} seed(s)")
        p.add_legend(c, name, "line")
    return p.svg(_footer(prov), fig_id)


RATIOS = (("time_ratio", "epoch time"), ("energy_ratio", "energy/epoch"),
          ("mem_ratio", "peak memory"), ("flops_ratio", "FLOPs/step"))
RATIO_COLORS = ("#4c72b0", "#dd8452", "#55a868", "#8172b3")


def fig_ratios(ds: str, rows: list[Row], prov: dict, fig_id: str) -> str | None:
    rs = [r for r in rows if r.name != "bp" and any(getattr(r, k) for k, _ in RATIOS)]
    if not rs:
        return None
    vals = [getattr(r, k) for r in rs for k, _ in RATIOS if getattr(r, k)]
    p = Plot(f"{ds}: cost relative to the BP twin (1 = same as BP, below = cheaper)", "",
             "ratio to BP", [0, 1], vals, logy=True, y0=1.0, ypad=0.12)
    many = len({r.model for r in rows}) > 1
    n, inner = len(rs), p.W - p.L - p.R
    slot = inner / n
    width = slot * 0.8 / len(RATIOS)
    ticks = []
    for i, r in enumerate(rs):
        left = p.L + i * slot + slot * 0.1
        for j, ((key, what), color) in enumerate(zip(RATIOS, RATIO_COLORS)):
            v = getattr(r, key)
            if v:
                p.bar(left + j * width, left + (j + 1) * width - 1, 1.0, v, color,
                      f"{_name(r, True)}: {what} × {v:.2f} of BP")
            p.add_legend(color, what, "bar")
        ticks.append((p.L + (i + 0.5) * slot, _name(r, many)[:24]))
    p.hline(1.0, "#333", "none")
    return p.svg(_footer(prov), fig_id, xticks=ticks, pixel_x=True)


# ------------------------------------------------------------------------------------------------
# documents


def _tuned(root: Path) -> list[dict[str, Any]]:
    out = []
    for p in sorted(root.rglob(".tuned.json")):
        try:
            out.append(json.loads(p.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    return out


def render_markdown(records: list[RunRecord], rows: list[Row], prov: dict, title: str,
                    tuned: list[dict]) -> str:
    parts = [f"# {title}", "",
             f"- machine: {prov['machine']}", f"- commit: {prov['commit']}", f"- {prov['energy']}",
             f"- runs: {len(records)} ({', '.join(f'{k} {v}' for k, v in sorted(_count(r.status for r in records).items()))})",
             "", markdown_table(rows) if rows else "_no records_"]
    if tuned:
        parts += ["", "## Tuned configs (same trial budget for every rule)", "",
                  "| study | best val acc % | params | trials counted | pruned |", "|---|---|---|---|---|"]
        for t in tuned:
            parts.append(f"| {t.get('study')} | {_pct(t.get('value'))} | `{json.dumps(t.get('params', {}))}` | "
                         f"{t.get('trials_counted')} / {t.get('trials_budget')} | {t.get('pruned')} |")
    return "\n".join(parts) + "\n"


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.2f}"


def _count(xs: Iterable[str]) -> dict[str, int]:
    d: dict[str, int] = defaultdict(int)
    for x in xs:
        d[x] += 1
    return d


_CSS = """body{font-family:sans-serif;margin:24px;color:#222;max-width:1320px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px}table{border-collapse:collapse;font-size:12px}
td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}td:nth-child(-n+3),th{text-align:left}
.figs{display:flex;flex-wrap:wrap;gap:14px}.figs svg{width:calc(50% - 8px);min-width:420px;height:auto}.prov{color:#555;font-size:13px}
.note{font-size:12px;color:#444;max-width:1200px}#render-check{font-size:11px;color:#888}"""

_JS = """window.__bpfreeErrors=[];
window.addEventListener('error',function(e){window.__bpfreeErrors.push(String(e.message||e));});
window.addEventListener('load',function(){
  var figs=document.querySelectorAll('svg.plot'),drawn=0;
  for(var i=0;i<figs.length;i++){var s=figs[i],bb=s.getBBox(),r=s.getBoundingClientRect();
    if(s.querySelectorAll('.mark').length>0&&bb.width>0&&bb.height>0&&r.width>0)drawn++;}
  var el=document.getElementById('render-check'),want=+el.getAttribute('data-expected');
  el.setAttribute('data-drawn',drawn);el.setAttribute('data-errors',window.__bpfreeErrors.length);
  el.setAttribute('data-ok',(drawn===want&&window.__bpfreeErrors.length===0)?'1':'0');
  el.textContent='plots drawn: '+drawn+'/'+want+(window.__bpfreeErrors.length?' · errors: '+window.__bpfreeErrors.join(' | '):'');
});"""


def _html_table(rows: list[Row]) -> str:
    md = markdown_table(rows).split("\n\n")
    lines = [ln for ln in md[0].splitlines() if not ln.startswith("|---")]
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
    head = "".join(f"<th>{_esc(c)}</th>" for c in cells[0])
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in row) + "</tr>" for row in cells[1:])
    notes = "".join(f'<p class="note">{_esc(n)}</p>' for n in md[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{notes}"


def render_html(records: list[RunRecord], rows: list[Row], prov: dict, title: str,
                tuned: list[dict]) -> tuple[str, int]:
    """The page and the number of figures in it."""
    colors = _colors(rows)
    sections, nfig = [], 0
    for ds in sorted({r.dataset for r in rows}):
        drs = [r for r in rows if r.dataset == ds]
        figs = [fig_tradeoff(ds, drs, "train_time_s", "training time (s)", 1.0, prov, colors, f"{ds}-time"),
                fig_tradeoff(ds, drs, "energy_total_j", "training energy (J)", 1.0, prov, colors, f"{ds}-energy"),
                fig_tradeoff(ds, drs, "peak_mem_bytes", "peak training memory (MB)", 2**20, prov, colors,
                             f"{ds}-memory"),
                fig_curves(ds, records, prov, colors, f"{ds}-curves"),
                fig_ratios(ds, drs, prov, f"{ds}-ratios")]
        figs = [f for f in figs if f]
        nfig += len(figs)
        sections.append(f"<h2>{_esc(ds)}</h2><div class=\"figs\">{''.join(figs)}</div>")
    tuned_html = ""
    if tuned:
        trs = "".join(f"<tr><td>{_esc(t.get('study'))}</td><td>{_pct(t.get('value'))}</td>"
                      f"<td>{_esc(json.dumps(t.get('params', {})))}</td>"
                      f"<td>{_esc(t.get('trials_counted'))} / {_esc(t.get('trials_budget'))}</td>"
                      f"<td>{_esc(t.get('pruned'))}</td></tr>" for t in tuned)
        tuned_html = ("<h2>Tuned configs (same trial budget for every rule)</h2><table><thead><tr>"
                      "<th>study</th><th>best val acc %</th><th>params</th><th>trials counted</th>"
                      f"<th>pruned</th></tr></thead><tbody>{trs}</tbody></table>")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{_CSS}</style><script>{_JS}</script></head>
<body><h1>{_esc(title)}</h1>
<p class="prov">machine: {_esc(prov['machine'])}<br>commit: {_esc(prov['commit'])}<br>{_esc(prov['energy'])}<br>
runs: {len(records)}</p>
{_html_table(rows) if rows else '<p>no records</p>'}
{''.join(sections)}
{tuned_html}
<p id="render-check" data-expected="{nfig}">plots not checked (JavaScript off)</p>
</body></html>
"""
    return page, nfig


def gather(dir: str | Path, storage: str, suite: str) -> int:
    """Copy the records of ``suite`` that other machines finished (SQL queue) into ``dir``."""
    from .queue import SqlQueue

    q = SqlQueue(storage, suite, out=dir)
    n = 0
    try:
        for rec in q.records():
            p = record_path(dir, suite=rec.suite, dataset=rec.dataset, model=rec.model,
                            rule=record_rule_key(rec), seed=rec.seed)
            if not p.exists():
                write_record(rec, p)
                n += 1
    finally:
        q.close()
    return n


def write_report(dir: str | Path, *, out: str | Path | None = None, storage: str | None = None,
                 suite: str | None = None, title: str | None = None) -> list[Path]:
    """Write ``report.md`` and ``report.html`` for the records under ``dir``."""
    from ..rule import ConfigError

    dir = Path(dir)
    if storage:
        if not suite:
            raise ConfigError("report --storage needs --suite NAME (whose records to gather)")
        dir.mkdir(parents=True, exist_ok=True)
        gather(dir, storage, suite)
    records = load_records(dir)
    rows = summarize(records)
    prov = provenance(records, rows)
    suites = sorted({r.suite for r in records})
    title = title or f"bpfree report: {', '.join(suites) or dir.name}"
    tuned = _tuned(dir)
    out_dir = Path(out) if out else dir
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / "report.md"
    md.write_text(render_markdown(records, rows, prov, title, tuned))
    page, _ = render_html(records, rows, prov, title, tuned)
    h = out_dir / "report.html"
    h.write_text(page)
    return [md, h]

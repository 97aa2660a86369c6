"""Self-contained HTML pages: sortable leaderboard tables, per-task heatmaps, embedded plots.

No external resources (styles, script and PNGs are inline) so the page works offline and can be
mailed or attached as a CI artefact.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from html import escape
from pathlib import Path

from matplotlib import colormaps

from clipsift import __version__
from clipsift.leaderboards.compare import Comparison
from clipsift.leaderboards.store import RunGroup
from clipsift.leaderboards.tables import (
    Leaderboard,
    fmt_score,
    fmt_size,
    md_columns,
    notes,
    score_columns,
)
from clipsift.leaderboards.tasks import DATACOMP, task_list
from clipsift.seedstats import gap_from_stats

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#222;background:#fff}
h1{margin:0 0 4px}h2{margin-top:36px;border-bottom:2px solid #ddd;padding-bottom:4px}
.meta{color:#666;font-size:13px}nav a{margin-right:12px}
table{border-collapse:collapse;font-size:13px;margin:10px 0}
th,td{border:1px solid #ddd;padding:4px 8px}th{background:#f4f4f4;text-align:left}
table.sortable th{cursor:pointer;user-select:none}table.sortable th:after{content:" \\2195";color:#aaa}
table.sortable th[aria-sort=ascending]:after{content:" \\2191";color:#333}
table.sortable th[aria-sort=descending]:after{content:" \\2193";color:#333}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}table.lb td:nth-child(2){white-space:nowrap}
tr.yours{background:#fff3cd;font-weight:600}tr.baseline{color:#555}tr.partial td{font-style:italic}
.plots{display:flex;flex-wrap:wrap;gap:16px}.plots figure{margin:0}.plots img{max-width:640px;width:100%;border:1px solid #eee}
figcaption{font-size:12px;color:#666}
table.heat td.cell{text-align:right;min-width:56px;font-variant-numeric:tabular-nums}
table.heat tr.grp td{font-weight:700}
.pos{color:#1a7f37}.neg{color:#cf222e}td.tie{color:#555;font-size:12px}
"""

_JS = """
(function () {
  function key(td, num) {
    var v = td.getAttribute('data-v');
    if (v === null) { v = td.textContent.trim(); }
    if (num) { var f = parseFloat(v); return isNaN(f) ? null : f; }
    return v.toLowerCase();
  }
  var tables = document.querySelectorAll('table.sortable');
  Array.prototype.forEach.call(tables, function (table) {
    var ths = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(ths, function (th, col) {
      th.addEventListener('click', function () {
        var num = th.getAttribute('data-type') === 'num';
        var asc = th.getAttribute('aria-sort') !== 'ascending';
        Array.prototype.forEach.call(ths, function (h) { h.removeAttribute('aria-sort'); });
        th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = key(a.cells[col], num), y = key(b.cells[col], num);
          if (x === null && y === null) { return 0; }
          if (x === null) { return 1; }
          if (y === null) { return -1; }
          return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1);
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
    table.setAttribute('data-sortable', 'ready');
  });
  window.addEventListener('load', function () {
    var ok = 0, imgs = document.images;
    for (var i = 0; i < imgs.length; i++) { if (imgs[i].complete && imgs[i].naturalWidth > 0) { ok++; } }
    document.body.setAttribute('data-images-loaded', ok + '/' + imgs.length);
  });
})();
"""

_CMAP = colormaps["YlGnBu"]


def _cell_style(v: float | None) -> str:
    if v is None:
        return "background:#f7f7f7;color:#999"
    r, g, b, _ = _CMAP(0.08 + 0.85 * max(0.0, min(1.0, v)))
    lum = 0.2126 * r + 0.7152 * g + 0.0722 * b
    fg = "#000" if lum > 0.5 else "#fff"
    return f"background:#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x};color:{fg}"


def _img(path: Path, alt: str, caption: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{escape(alt)}">'
        f"<figcaption>{escape(caption)}</figcaption></figure>"
    )


def _td(text: str, value=None, cls: str = "") -> str:
    attr = "" if value is None else f' data-v="{escape(str(value))}"'
    c = f' class="{cls}"' if cls else ""
    return f"<td{c}{attr}>{escape(text)}</td>"


def ties(board: Leaderboard) -> list[list[str]]:
    """Per row: the other methods whose Average is within seed noise of it (``clipsift.seedstats``).

    Only rows with a std (two or more seeds) are compared; published rows have none.
    """
    out: list[list[str]] = []
    for r in board.rows:
        names = []
        if r.average is not None and r.average_std is not None:
            for o in board.rows:
                if o is r or o.average is None or o.average_std is None:
                    continue
                if gap_from_stats(r.average, r.average_std, o.average, o.average_std).tied:
                    names.append(o.method)
        out.append(names)
    return out


def _tie_text(row, names: list[str]) -> str:
    if row.average_std is None:
        return "" if row.source != "yours" else "one seed: no std"
    return "tied with " + ", ".join(names) if names else "separated"


def leaderboard_table(board: Leaderboard) -> str:
    """The sortable leaderboard table of one scale; the last column names ties (|Δ| < 2 std)."""
    scores = score_columns(board)
    types = {"Rank": "num", "Dataset size": "num", "Average": "num"} | {n: "num" for n, _ in scores}
    cols = [(c, types.get(c, "text")) for c in md_columns(board)] + [("Tied (|Δ avg| < 2 std)", "text")]
    head = "".join(f'<th data-type="{t}">{escape(c)}</th>' for c, t in cols)
    body = []
    for r, tied in zip(board.rows, ties(board)):
        cls = r.source + ("" if r.complete else " partial")
        avg = fmt_score(r.average, r.average_std) + (
            "" if r.complete or r.average is None else " (partial)"
        )
        method = escape(r.method)
        if r.link.startswith("http"):
            method = f'<a href="{escape(r.link)}">{method}</a>'
        cells = [
            _td("" if r.rank is None else str(r.rank), r.rank if r.rank is not None else "", "num"),
            _td(r.date),
            f"<td>{method}</td>",
            _td(r.author),
            _td(
                fmt_size(r.dataset_size),
                r.dataset_size if r.dataset_size is not None else "",
                "num",
            ),
            *(
                _td(fmt_score(*get(r)), "" if get(r)[0] is None else get(r)[0], "num")
                for _, get in scores
            ),
            _td(avg, r.average if r.average is not None else "", "num"),
            _td(r.source),
            _td(notes(r)),
            _td(_tie_text(r, tied), None, "tie"),
        ]
        body.append(f'<tr class="{cls}">' + "".join(cells) + "</tr>")
    return f'<table class="sortable lb"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _run_title(group: RunGroup) -> str:
    """Hover text of a run column: filter, parameters, seeds and folders."""
    first = group.first
    params = ", ".join(f"{k}={v}" for k, v in sorted(first.params.items()))
    seeds = ", ".join(str(s) for s in group.seeds)
    paths = "; ".join(str(r.path) for r in group.runs)
    return f"filter {first.filter_name or '?'} ({params}); seeds {seeds}; {paths}"


def heatmap_table(groups: list[RunGroup], tasks_file=None) -> str:
    """Per-task heatmap of your run groups: tasks as rows, runs as columns, colour = main metric."""
    if not groups:
        return ""
    suite = groups[0].suite
    tasks = task_list(suite, None if suite == DATACOMP else tasks_file)
    head = "<th>Task</th><th>Group</th>" + "".join(
        f'<th title="{escape(_run_title(g))}">{escape(g.label)}</th>' for g in groups
    )
    rows = []
    for name in groups[0].groups:
        cells = "".join(
            f'<td class="cell" style="{_cell_style(m)}">{escape(fmt_score(m) or "—")}</td>'
            for m in (g.score(name)[0] for g in groups)
        )
        rows.append(f'<tr class="grp"><td>{escape(name)}</td><td></td>{cells}</tr>')
    averaged = set(tasks.averaged)
    for t in tasks.tasks:
        if t.key not in averaged:
            continue
        vals = [g.task_score(t.key) for g in groups]
        cells = "".join(
            f'<td class="cell" style="{_cell_style(m)}" title="{escape(t.key)}">{escape(fmt_score(m, s) or "—")}</td>'
            for m, s in vals
        )
        rows.append(
            f"<tr><td>{escape(t.name)}</td><td>{escape(', '.join(t.groups))}</td>{cells}</tr>"
        )
    return (
        f'<table class="heat"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
    )


LEADERBOARD_LEDE = (
    "Scores are main metrics; Average over the suite's tasks, 38 for DataComp (partial results are unranked and "
    "name their missing tasks); your runs are highlighted, seeds shown as mean ± std (sample std); methods whose "
    "Averages differ by less than 2 std are marked as tied: their order is within seed noise."
)

QUALITY_COLUMNS = (
    ("rows", "Rows"),
    ("mismatched", "Mismatched %"),
    ("duplicated", "Repeats %"),
    ("non_english", "Non-English %"),
    ("concepts", "Concepts covered"),
    ("tail", "Tail concepts %"),
)


def _data_quality(group: RunGroup) -> dict:
    """The seedless ground-truth figures a run recorded (run.json ``data_quality``), or {}."""
    for run in group.runs:
        p = run.path / "run.json"
        try:
            q = json.loads(p.read_text("utf-8")).get("data_quality") if p.is_file() else None
        except (OSError, ValueError):
            q = None
        if isinstance(q, dict) and q:
            return q
    return {}


def quality_table(groups: list[RunGroup]) -> str:
    """Ground-truth quality of each run group's subset (synthetic pools only); "" when none has it."""
    rows = [(g, _data_quality(g)) for g in groups]
    rows = [(g, q) for g, q in rows if q]
    if not rows:
        return ""
    head = '<th data-type="text">Method</th>' + "".join(f'<th data-type="num">{escape(t)}</th>' for _, t in QUALITY_COLUMNS)
    body = []
    for g, q in rows:
        cells = [f"<td>{escape(g.label)}</td>"]
        for key, _ in QUALITY_COLUMNS:
            v = q.get(key)
            if key == "concepts" and v is not None:
                text = f"{v}/{q.get('concepts_of', '?')}"
            elif key == "rows" and v is not None:
                text = f"{int(v):,}"
            else:
                text = "—" if v is None else f"{float(v):.1f}"
            cells.append(_td(text, "" if v is None else v, "num"))
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (
        "<h3>Data quality from the ground truth (seedless)</h3>"
        '<p class="meta">Read from the synthetic pool\'s truth file, no training involved: shares of the kept rows with a '
        "mismatched caption, repeating an item already kept (exact or near copies), with a non-English caption, and "
        "showing a tail concept (the rarest quarter by pool frequency); concepts with at least one kept row.</p>"
        f'<table class="sortable quality"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
    )


def _page(
    title: str, sections: list[str], nav: list[tuple[str, str]], lede: str = LEADERBOARD_LEDE
) -> str:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    nav_html = "".join(f'<a href="#{escape(a)}">{escape(t)}</a>' for a, t in nav)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,">'
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>"
        f'<h1>{escape(title)}</h1><p class="meta">clipsift {escape(__version__)} · generated {now}. '
        f"{escape(lede)}</p>"
        f"<nav>{nav_html}</nav>{''.join(sections)}<script>{_JS}</script></body></html>\n"
    )


def leaderboard_page(
    boards: list[tuple[Leaderboard, list[RunGroup], list[tuple[Path, str]]]],
    tasks_file=None,
    title: str = "clipsift leaderboard",
) -> str:
    """One page with a section per scale: table, plots (PNG paths + captions) and heatmap."""
    sections, nav = [], []
    for board, groups, plots in boards:
        anchor = f"scale-{board.name}"
        nav.append((anchor, board.name))
        parts = [
            f'<section id="{escape(anchor)}"><h2>{escape(board.name)} scale '
            f'<span class="meta">({escape(board.track)} track, {escape(board.suite)}, {len(board.yours)} of yours, '
            f"{len(board.rows) - len(board.yours)} published)</span></h2>",
            leaderboard_table(board),
        ]
        if plots:
            parts.append(
                '<div class="plots">' + "".join(_img(p, cap, cap) for p, cap in plots) + "</div>"
            )
        if groups:
            parts.append(quality_table(groups))
            parts.append(
                "<h3>Per-task results of your runs</h3>" + heatmap_table(groups, tasks_file)
            )
        parts.append("</section>")
        sections.append("".join(parts))
    return _page(title, sections, nav)


def compare_page(
    cmp: Comparison, plot_png: Path | None = None, title: str = "clipsift head-to-head"
) -> str:
    """Head-to-head page: per group and task values, differences to the first run, bar chart."""
    ref = cmp.labels[0]
    head = '<th data-type="text">Task</th><th data-type="text">Group</th>'
    for i, lab in enumerate(cmp.labels):
        head += f'<th data-type="num">{escape(lab)}</th>'
        if i:
            head += f'<th data-type="num">{escape(lab)} − {escape(ref)}</th>'
    body = []
    for r in cmp.rows:
        cells = [_td(r.name), _td(r.group)]
        for i, v in enumerate(r.values):
            cells.append(
                f'<td class="num cell" style="{_cell_style(v)}" data-v="{"" if v is None else v}">'
                f"{escape(fmt_score(v, r.stds[i]) or '—')}</td>"
            )
            if i:
                d = r.diffs[i - 1]
                cls = "num " + ("pos" if d and d > 0 else "neg" if d and d < 0 else "")
                cells.append(
                    _td("—" if d is None else f"{d:+.3f}", "" if d is None else d, cls.strip())
                )
        body.append(f'<tr class="{"grp" if r.kind == "group" else ""}">' + "".join(cells) + "</tr>")
    table = f'<table class="sortable heat"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
    summary = "".join(
        f"<li>{escape(lab)} vs {escape(ref)}: better on {w}, worse on {lo}, equal on {eq} tasks</li>"
        for lab, (w, lo, eq) in zip(cmp.labels[1:], cmp.wins())
    )
    summary += "".join(
        f"<li>{escape(lab)}: partial, missing {escape(', '.join(m))}</li>"
        for lab, m in zip(cmp.labels, cmp.missing)
        if m
    )
    parts = [
        f'<section id="h2h"><h2>{escape(" vs ".join(cmp.labels))}</h2><ul>{summary}</ul>{table}'
    ]
    if plot_png is not None:
        parts.append(
            '<div class="plots">'
            + _img(plot_png, "per-task bar chart", "Main metric per task and group")
            + "</div>"
        )
    parts.append("</section>")
    lede = (
        f"Main metric per task and score group; differences are run − {ref}; seeds as mean ± std. "
        "Groups are scored only when all their tasks are present."
    )
    return _page(title, ["".join(parts)], [("h2h", "head-to-head")], lede)


__all__ = ["compare_page", "heatmap_table", "leaderboard_page", "leaderboard_table", "quality_table", "ties"]

"""The report's HTML page: a summary list, tables of metrics, then the plots, in one file a
person can open from the lakehouse folder."""
from __future__ import annotations

import html
from pathlib import Path

# A report's note of the model section (`reports/models/<key>/`) it copied its model's plots from.
SECTION_FILE = "model_section.txt"


def write_report(out_dir: Path, title: str, summary: list[tuple[str, str]], tables: dict[str, list[dict]],
                 images: dict[str, Path]) -> Path:
    """Write `index.html` in `out_dir`: a summary list, tables of metrics, then the plots."""
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
             "text-align:right;font-size:13px}th{background:#f3f3f3}img{max-width:100%;margin:1em 0}</style>",
             f"</head><body><h1>{html.escape(title)}</h1><ul>"]
    parts += [f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in summary]
    parts.append("</ul>")
    for name, rows in tables.items():
        if not rows:
            continue
        cols = list(rows[0])
        parts.append(f"<h2>{html.escape(name)}</h2><table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in cols) + "</tr>")
        for r in rows:
            parts.append("<tr>" + "".join(f"<td>{html.escape(_fmt(r[c]))}</td>" for c in cols) + "</tr>")
        parts.append("</table>")
    for caption, img in images.items():
        parts.append(f"<h2>{html.escape(caption)}</h2><img src='{html.escape(Path(img).name)}' alt='{html.escape(caption)}'>")
    parts.append("</body></html>")
    page = out_dir / "index.html"
    page.write_text("\n".join(parts))
    return page


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)

"""The report page: one self-contained HTML string (inline CSS, PNGs as base64 data URIs)."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1300px;
color:#222;padding:0 16px}
h1{font-size:1.6em;margin-bottom:4px}h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:36px}
h3{margin-bottom:6px}.meta{color:#666;font-size:.9em}.note{color:#666;font-size:.85em;margin:4px 0 10px}
table{border-collapse:collapse;margin:8px 0 16px;font-size:.85em}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right;white-space:nowrap}
th{background:#f3f3f3}td.l,th.l{text-align:left}td.best{font-weight:700;background:#eef7ee}
.warn,td.warn{color:#c00000;font-weight:700}
img{max-width:100%;display:block;margin:6px 0 14px}.row{display:flex;flex-wrap:wrap;gap:18px;
align-items:flex-start}nav a{margin-right:14px}
"""


def image(png: bytes, alt: str) -> str:
    """An <img> with the PNG inlined as a data URI (no external file)."""
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def esc(text: object) -> str:
    """HTML-escaped text."""
    return html.escape(str(text))


def table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    best: Sequence[set] = (),
    flagged: Sequence[set] = (),
) -> str:
    """A table; the first column left-aligned; `best[i]` holds column indices to highlight,
    `flagged[i]` those to show as a warning (red)."""
    head = "".join(
        f'<th class="{"l" if i == 0 else ""}">{esc(h)}</th>' for i, h in enumerate(header)
    )
    body = []
    for r, row in enumerate(rows):
        marks = best[r] if r < len(best) else set()
        warns = flagged[r] if r < len(flagged) else set()
        cells = []
        for i, cell in enumerate(row):
            cls = "l" if i == 0 else ("warn" if i in warns else "best" if i in marks else "")
            cells.append(f'<td class="{cls}">{esc(cell)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def page(title: str, subtitle: str, sections: Sequence[tuple[str, str, str]]) -> str:
    """The whole document; sections are (anchor, heading, inner HTML)."""
    nav = " ".join(f'<a href="#{a}">{esc(h)}</a>' for a, h, _ in sections)
    parts = [f'<h2 id="{a}">{esc(h)}</h2>\n{body}' for a, h, body in sections]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f'<h1>{esc(title)}</h1><p class="meta">{esc(subtitle)}</p><nav>{nav}</nav>'
        + "\n".join(parts)
        + "</body></html>\n"
    )

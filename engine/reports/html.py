"""`--html FILE`: one self-contained page per report, charts embedded as PNG (matplotlib).

The page needs no network to be viewed and can be attached to an email: styles are inline and
every chart is a `data:` image. Charts are drawn with matplotlib's Agg backend (no display),
imported by `figure()`, so only when a page is drawn: a report printed as text or JSON, and the
CLI around it, never pay for (or depend on) matplotlib.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engine.clock import utcnow

STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em;
       color: #222; max-width: 1100px; }
h1 { font-size: 1.6em; } h2 { font-size: 1.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f2f2f2; }
.note { color: #555; font-size: 0.9em; }
img.chart { display: block; max-width: 100%; margin: 1em 0; }
"""


class HtmlPage:
    """A report page being assembled: headings, notes, tables and charts, in order."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.parts: list[str] = []

    def heading(self, text: str) -> None:
        """A section heading."""
        self.parts.append(f"<h2>{html.escape(text)}</h2>")

    def note(self, text: str) -> None:
        """A line of explanation (definitions, caveats)."""
        self.parts.append(f'<p class="note">{html.escape(text)}</p>')

    def table(self, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """A plain table; values are shown as given (format numbers before)."""
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row)
                       + "</tr>" for row in rows)
        self.parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")

    def chart(self, figure: Any, alt: str) -> None:
        """A matplotlib figure, embedded as a PNG `data:` image of class `chart`."""
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
        data = base64.b64encode(buffer.getvalue()).decode("ascii")
        self.parts.append(f'<img class="chart" alt="{html.escape(alt)}" '
                          f'src="data:image/png;base64,{data}">')

    def render(self) -> str:
        """The whole page as HTML text."""
        made = utcnow().strftime("%Y-%m-%d %H:%M UTC")
        return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<title>{html.escape(self.title)}</title><style>{STYLE}</style></head><body>"
                f"<h1>{html.escape(self.title)}</h1><p class=\"note\">Made by Retain, {made}."
                "</p>" + "\n".join(self.parts) + "</body></html>\n")

    def write(self, path: Path) -> None:
        """Write the page to `path` (whole, or not at all: a temporary file is renamed)."""
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(self.render(), encoding="utf-8")
        temporary.replace(path)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def figure(width: float = 8, height: float = 3.5) -> Any:
    """A new matplotlib Figure for one chart (no pyplot global state), the Agg backend chosen
    before the first one."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))

"""Static SVG bar charts for the batch reports: inline in an HTML file, no script, no network.

Each function returns one ``<svg>`` element. Labels are escaped; a label too long for its column
is shortened and keeps its full text in a tooltip (``<title>``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from html import escape

#: Colours: the day, the day before, a rise, a fall, budget thresholds passed.
TODAY, BEFORE, RISE, FALL = "#4c78a8", "#bab0ac", "#e45756", "#54a24b"
WARN, ALERT = "#f2a93b", "#e45756"

_WIDTH, _LABEL_W, _VALUE_W, _ROW, _TOP = 760, 230, 110, 24, 34
_BAR_W = _WIDTH - _LABEL_W - _VALUE_W - 20
_LABEL_CHARS = 34

Format = Callable[[float], str]


def usd(value: float) -> str:
    """A dollar amount, with cents below $1,000 and fractions of a cent below $1."""
    if abs(value) >= 1000:
        return f"${value:,.0f}"
    return f"${value:,.2f}" if abs(value) >= 1 else f"${value:.4f}"


def signed_usd(value: float) -> str:
    """A change in dollars, with its sign."""
    return ("+" if value >= 0 else "-") + usd(abs(value))


def bars(title: str, rows: Sequence[tuple[str, float]], fmt: Format = usd, *, colors: Sequence[str] | None = None,
         markers: Sequence[tuple[float, str]] = (), chart_id: str = "", empty: str = "no data") -> str:
    """Horizontal bars, one per ``(label, value)`` (values >= 0), each with its value; ``markers``
    are dashed vertical lines ``(value, label)`` (e.g. budget thresholds), drawn when there are
    bars; ``empty`` is the text shown when there are none."""
    top = max([v for _, v in rows] + [m for m, _ in markers] + [0.0]) or 1.0
    height = _TOP + _ROW * max(len(rows), 1) + 12
    parts = [_open(title, height, chart_id)]
    for i, (label, value) in enumerate(rows):
        y = _TOP + i * _ROW
        color = colors[i] if colors else TODAY
        parts.append(_label(label, y + _ROW / 2))
        parts.append(_rect(_LABEL_W, y + 3, _BAR_W * value / top, _ROW - 6, color, f"{label}: {fmt(value)}"))
        parts.append(_value(fmt(value), y + _ROW / 2))
    if not rows:
        parts.append(_empty(empty))
    for at, text in markers if rows else ():
        x = _LABEL_W + _BAR_W * at / top
        parts.append(f'<line x1="{x:.1f}" y1="{_TOP - 4}" x2="{x:.1f}" y2="{height - 8}" stroke="#666" '
                     f'stroke-dasharray="4 3"/><text x="{x:.1f}" y="{_TOP - 8}" font-size="10" '
                     f'text-anchor="middle" fill="#666">{escape(text)}</text>')
    return "".join(parts) + "</svg>"


def paired_bars(title: str, rows: Sequence[tuple[str, float, float]], labels: tuple[str, str], fmt: Format = usd,
                chart_id: str = "") -> str:
    """Two bars per ``(label, value, previous)``: the value over the previous one (the day over
    the day before), with a legend naming them."""
    top = max([max(v, p) for _, v, p in rows] + [0.0]) or 1.0
    row = _ROW + 8
    height = _TOP + row * max(len(rows), 1) + 12
    parts = [_open(title, height, chart_id), _legend([(TODAY, labels[0]), (BEFORE, labels[1])])]
    for i, (label, value, previous) in enumerate(rows):
        y = _TOP + i * row
        parts.append(_label(label, y + row / 2))
        parts.append(_rect(_LABEL_W, y + 3, _BAR_W * value / top, 13, TODAY, f"{label}, {labels[0]}: {fmt(value)}"))
        parts.append(_rect(_LABEL_W, y + 17, _BAR_W * previous / top, 8, BEFORE,
                           f"{label}, {labels[1]}: {fmt(previous)}"))
        parts.append(_value(fmt(value), y + row / 2))
    if not rows:
        parts.append(_empty())
    return "".join(parts) + "</svg>"


def change_bars(title: str, rows: Sequence[tuple[str, float]], fmt: Format = signed_usd, chart_id: str = "") -> str:
    """Bars left (a fall) or right (a rise) of a zero line, one per ``(label, change)``."""
    top = max([abs(v) for _, v in rows] + [0.0]) or 1.0
    half = _BAR_W / 2
    zero = _LABEL_W + half
    height = _TOP + _ROW * max(len(rows), 1) + 12
    parts = [_open(title, height, chart_id)]
    for i, (label, change) in enumerate(rows):
        y = _TOP + i * _ROW
        width = half * abs(change) / top
        parts.append(_label(label, y + _ROW / 2))
        parts.append(_rect(zero if change >= 0 else zero - width, y + 3, width, _ROW - 6,
                           RISE if change >= 0 else FALL, f"{label}: {fmt(change)}"))
        parts.append(_value(fmt(change), y + _ROW / 2))
    if not rows:
        parts.append(_empty())
    parts.append(f'<line x1="{zero:.1f}" y1="{_TOP - 4}" x2="{zero:.1f}" y2="{height - 8}" stroke="#333"/>')
    return "".join(parts) + "</svg>"


def _open(title: str, height: int, chart_id: str) -> str:
    ident = f' id="{escape(chart_id)}"' if chart_id else ""
    return (f'<svg{ident} xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" height="{height}" '
            f'viewBox="0 0 {_WIDTH} {height}" role="img" aria-label="{escape(title)}" font-family="sans-serif">'
            f'<text x="0" y="16" font-size="14" font-weight="bold">{escape(title)}</text>')


def _label(label: str, y: float) -> str:
    short = label if len(label) <= _LABEL_CHARS else label[: _LABEL_CHARS - 1] + "…"
    return (f'<text x="{_LABEL_W - 8}" y="{y + 4:.1f}" font-size="12" text-anchor="end">'
            f'<title>{escape(label)}</title>{escape(short)}</text>')


def _value(text: str, y: float) -> str:
    return f'<text x="{_WIDTH - 4}" y="{y + 4:.1f}" font-size="12" text-anchor="end">{escape(text)}</text>'


def _rect(x: float, y: float, width: float, height: float, color: str, tip: str) -> str:
    return (f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(width, 0.0):.1f}" height="{height}" fill="{color}">'
            f'<title>{escape(tip)}</title></rect>')


def _legend(items: Sequence[tuple[str, str]]) -> str:
    out, x = [], _WIDTH - 260
    for color, text in items:
        out.append(f'<rect x="{x}" y="6" width="12" height="12" fill="{color}"/>'
                   f'<text x="{x + 16}" y="16" font-size="12">{escape(text)}</text>')
        x += 130
    return "".join(out)


def _empty(text: str = "no data") -> str:
    return f'<text x="{_LABEL_W}" y="{_TOP + 14}" font-size="12" fill="#666">{escape(text)}</text>'

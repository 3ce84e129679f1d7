"""The report's blocks (see `build`) as Markdown and as self-contained HTML, and both files
written atomically.

Block text mixes the report's own markup (inline code in backticks, `**bold**`) with user
text: run, experiment, dataset, scheme and class names, filters, device names. Both renderers
keep that markup and escape the rest, so no user text reaches a browser as HTML, whether it
opens report.html or a Markdown viewer shows report.md.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from galmorph.core.io import atomic_write

_CODE = re.compile(r"`([^`]+)`")  # inline code, read the same way by both renderers
_ENTITY = re.compile(r"&(?=#?\w+;)")  # an `&` a Markdown viewer would read as a character reference


# ------------------------------------------------------------------------------ markdown
def render_markdown(blocks, root: Path) -> str:
    """report.md; image paths are written relative to `root`, the folder report.md goes in."""
    out = []
    for b in blocks:
        if b[0] in ("h1", "h2", "h3"):
            out.append("#" * int(b[0][1]) + " " + _md(b[1]))
        elif b[0] == "p":
            out.append(_md(b[1]))
        elif b[0] == "table":
            out.append(_md_table(b[1], b[2]))
        elif b[0] == "images":
            out.append(" ".join(f"![{_md_caption(cap)}]({Path(p).relative_to(root).as_posix()})" for p, cap in b[1]))
    return "\n\n".join(out) + "\n"


def _md(text: str) -> str:
    """`text` for Markdown: code spans as they are (their content is literal there); elsewhere
    `<`, `&` before an entity name, backslashes and unpaired backticks escaped, so that user text
    can neither open an HTML tag nor shift where a code span starts or ends."""
    out, pos = [], 0
    for m in _CODE.finditer(text):
        out += [_md_plain(text[pos:m.start()]), m.group(0)]
        pos = m.end()
    out.append(_md_plain(text[pos:]))
    return "".join(out)


def _md_plain(text: str) -> str:
    # the entity escape first: the `&lt;` added next must stay one
    text = _ENTITY.sub("&amp;", text.replace("\\", "\\\\").replace("`", "\\`"))
    return text.replace("<", "&lt;")


def _md_caption(text: str) -> str:
    # a bracket would end the image's alt text early and break the image link
    return _md(text).replace("[", "\\[").replace("]", "\\]")


def _md_table(header, rows) -> str:
    esc = lambda c: _md(str(c)).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(map(esc, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(esc, r)) + " |" for r in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------------------ html
def _inline(text: str) -> str:
    text = html.escape(text)
    text = _CODE.sub(r"<code>\1</code>", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", text)


def render_html(blocks, title: str) -> str:
    """report.html: one page with styles inline and every figure embedded as a data URI."""
    body = []
    for b in blocks:
        if b[0] in ("h1", "h2", "h3"):
            body.append(f"<{b[0]}>{_inline(b[1])}</{b[0]}>")
        elif b[0] == "p":
            body.append(f"<p>{_inline(b[1])}</p>")
        elif b[0] == "table":
            head = "".join(f"<th>{_inline(str(c))}</th>" for c in b[1])
            rows = "".join("<tr>" + "".join(f"<td>{_inline(str(c))}</td>" for c in r) + "</tr>" for r in b[2])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif b[0] == "images":
            figs = []
            for p, cap in b[1]:
                data = base64.b64encode(Path(p).read_bytes()).decode()
                figs.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(cap)}">'
                            f"<figcaption>{_inline(cap)}</figcaption></figure>")
            body.append('<div class="figs">' + "".join(figs) + "</div>")
    style = ("body{font-family:sans-serif;max-width:1400px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 7px}"
             "th{background:#f3f3f3}.figs{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0}"
             "img{max-width:100%}figcaption{font-size:12px;color:#555}code{background:#f3f3f3;padding:0 3px}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


# ------------------------------------------------------------------------------ files
def write(blocks, out: Path, title: str) -> list[Path]:
    """report.md and report.html in `out`, each written atomically; the figures must already
    be under `out`. Returns [report.md, report.html]."""
    md = atomic_write(out / "report.md", lambda fh: fh.write(render_markdown(blocks, out)))
    page = atomic_write(out / "report.html", lambda fh: fh.write(render_html(blocks, title)))
    return [md, page]

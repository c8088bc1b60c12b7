"""The report: one PNG grid per unit and a self-contained HTML page (every image inline as a base64 PNG).

A unit's panels: its top images with their activations (and classes), images from other quantiles of its activation,
its top words (rendered as the model saw them) with activations, its top texts through the text tower (embedding
units), and its feature visualisation. The page opens with the finder's ranking when there is one.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw

from clipforge.eval.neurons.featvis import FeatureVisualisation
from clipforge.eval.neurons.score import UnitScore

CELL = 96  # a grid cell's image side in pixels
CAPTION = 24  # room under each cell for its text


@dataclass
class Shown:
    """An image on a panel with its caption lines (``value``, class, quantile...)."""

    image: Image.Image
    lines: list[str]


@dataclass
class UnitPanel:
    """Everything the report shows of one unit.

    Attributes:
        unit: The unit.
        top: Its top images.
        quantiles: Images from other quantiles.
        words: Its top words, rendered.
        texts: Its top texts through the text tower, as ``(text, value)`` (embedding units), else empty.
        score: Its multimodal score, when computed.
        featvis: Its feature visualisation, when made.
        name: What the unit stands for, where units have names (an ``embedding.text`` direction's word).
    """

    unit: int
    top: list[Shown]
    quantiles: list[Shown]
    words: list[Shown]
    texts: list[tuple[str, float]] = field(default_factory=list)
    score: UnitScore | None = None
    featvis: FeatureVisualisation | None = None
    name: str | None = None

    def title(self, layer: str) -> str:
        """``layer unit N`` (with the unit's name in quotes, where it has one)."""
        return f"{layer} unit {self.unit}" + (f" ({self.name!r})" if self.name else "")


def _cell(image: Image.Image) -> Image.Image:
    """``image`` fitted into a CELL square (small images scaled up without blurring)."""
    image = image.convert("RGB")
    scale = CELL / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.BILINEAR
    out = Image.new("RGB", (CELL, CELL), (255, 255, 255))
    fitted = image.resize(size, resample)
    out.paste(fitted, ((CELL - size[0]) // 2, (CELL - size[1]) // 2))
    return out


def _row(title: str, items: list[Shown], columns: int) -> Image.Image:
    """One titled row of cells with two caption lines each."""
    row = Image.new("RGB", (columns * CELL, 14 + CELL + CAPTION), (255, 255, 255))
    draw = ImageDraw.Draw(row)
    draw.text((2, 1), title, fill=(0, 0, 0))
    for i, item in enumerate(items[:columns]):
        row.paste(_cell(item.image), (i * CELL, 14))
        for j, line in enumerate(item.lines[:2]):
            draw.text((i * CELL + 2, 14 + CELL + 1 + 11 * j), line[:16], fill=(40, 40, 40))
    return row


def unit_grid(panel: UnitPanel, layer: str) -> Image.Image:
    """The unit's panels as one PNG-ready image: a row each of top images, quantiles, top words and the
    feature visualisation (with the texts and score in its caption)."""
    columns = max(len(panel.top), len(panel.quantiles), len(panel.words), 4)
    rows = [_row("top images", panel.top, columns), _row("other quantiles", panel.quantiles, columns),
            _row("top rendered words", panel.words, columns)]
    extra: list[Shown] = []
    if panel.featvis is not None:
        extra.append(Shown(panel.featvis.image, [f"act {panel.featvis.end:.3g}", f"from {panel.featvis.start:.3g}"]))
    for text, value in panel.texts[: columns - len(extra)]:
        extra.append(Shown(Image.new("RGB", (CELL, CELL), (245, 245, 245)), [text, f"{value:.3g}"]))
    if extra:
        rows.append(_row("feature visualisation / top texts", extra, columns))
    head = 16
    grid = Image.new("RGB", (columns * CELL, head + sum(r.height for r in rows)), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    title = panel.title(layer)
    if panel.score is not None:
        s = panel.score
        title += (f"   score {s.score:.3f} (concept {s.concept}, purity {s.purity:.2f}, word rank {s.word_rank}, "
                  f"word z {_z(s)})")
    draw.text((2, 2), title, fill=(0, 0, 0))
    y = head
    for r in rows:
        grid.paste(r, (0, y))
        y += r.height
    return grid


def _data_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _figures(kind: str, items: list[Shown]) -> str:
    figures = "".join(
        f'<figure><img src="{_data_uri(_cell(s.image))}" alt="{html.escape(" ".join(s.lines))}">'
        f'<figcaption>{"<br>".join(html.escape(line) for line in s.lines)}</figcaption></figure>' for s in items)
    return f'<div class="panel {kind}"><h3>{kind.replace("-", " ")}</h3><div class="row">{figures}</div></div>'


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
section.unit { border-top: 1px solid #ccc; padding: 0.5em 0 1em; }
.row { display: flex; flex-wrap: wrap; gap: 6px; }
figure { margin: 0; width: 96px; font-size: 11px; }
figure img { width: 96px; height: 96px; image-rendering: pixelated; display: block; }
table { border-collapse: collapse; } td, th { padding: 2px 8px; border-bottom: 1px solid #eee; text-align: left; }
h3 { font-size: 13px; margin: 0.6em 0 0.2em; }
"""


def _z(score: UnitScore) -> str:
    return "-" if score.word_z is None else f"{score.word_z:.2f}"


def render_html(panels: list[UnitPanel], layer: str, title: str, summary: dict[str, str],
                ranking: list[UnitScore]) -> str:
    """The report page: a summary, the finder's ranking (when given) and one section of panels per unit."""
    facts = "".join(f"<li>{html.escape(k)}: {html.escape(v)}</li>" for k, v in summary.items())
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1><ul>{facts}</ul>"]
    if ranking:
        rows = "".join(
            f"<tr><td><a href='#unit-{s.unit}'>{s.unit}</a></td><td>{s.score:.3f}</td>"
            f"<td>{html.escape(str(s.concept))}</td><td>{s.purity:.2f}</td><td>{s.word_rank}</td>"
            f"<td>{_z(s)}</td><td>{html.escape(', '.join(s.top_words))}</td></tr>" for s in ranking)
        parts.append("<h2>Multimodal units</h2><table id='ranking'><tr><th>unit</th><th>score</th><th>concept</th>"
                     f"<th>purity</th><th>word rank</th><th>word z</th><th>top words</th></tr>{rows}</table>")
    for p in panels:
        head = p.title(layer)
        if p.score is not None:
            head += (f" — score {p.score.score:.3f}: concept {p.score.concept}, purity {p.score.purity:.2f}, "
                     f"word rank {p.score.word_rank}, word z {_z(p.score)}")
        body = [_figures("top-images", p.top), _figures("quantiles", p.quantiles), _figures("top-words", p.words)]
        if p.texts:
            items = "".join(f"<li>{html.escape(t)} ({v:.3g})</li>" for t, v in p.texts)
            body.append(f'<div class="panel top-texts"><h3>top texts</h3><ol>{items}</ol></div>')
        if p.featvis is not None:
            fv = p.featvis
            body.append(_figures("feature-visualisation",
                                 [Shown(fv.image, [f"activation {fv.end:.3g}", f"start {fv.start:.3g}"])]))
        parts.append(f'<section class="unit" id="unit-{p.unit}" data-unit="{p.unit}"><h2>{html.escape(head)}</h2>'
                     f'{"".join(body)}</section>')
    parts.append("</body></html>")
    return "".join(parts)


def write_report(output: str | Path, panels: list[UnitPanel], layer: str, summary: dict[str, str],
                 ranking: list[UnitScore]) -> Path:
    """Writes ``index.html`` and ``unit-<n>.png`` per unit into ``output``; returns the page's path."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    for p in panels:
        unit_grid(p, layer).save(output / f"unit-{p.unit}.png")
    page = output / "index.html"
    page.write_text(render_html(panels, layer, f"clipforge neurons: {layer}", summary, ranking), encoding="utf-8")
    return page

"""The report page: one self-contained ``index.html`` (inline CSS, an inline zoom/pan viewer, no
network access, nothing from a CDN) that links only to files in its own folder.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sscc_core.labelling.report.pyramid import Pyramid


@dataclass(frozen=True)
class Section:
    """One section of the page: its body, or a note saying why it is left out.

    Attributes:
        id: The section element's id (``map``, ``spectra``, ``training``, ...).
        title: Heading.
        body: HTML of the section ("" when left out).
        note: Why the section is left out, or a remark shown above the body.
    """

    id: str
    title: str
    body: str = ""
    note: str = ""

    def render(self) -> str:
        """The section as HTML."""
        note = f'<p class="note">{esc(self.note)}</p>' if self.note else ""
        cls = "" if self.body else ' class="omitted"'
        return f'<section id="{self.id}"{cls}><h2>{esc(self.title)}</h2>{note}{self.body}</section>'


def esc(value: Any) -> str:
    """HTML-escaped text of a value."""
    return html.escape(str(value))


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], *, cls: str = "",
          raw: bool = False) -> str:
    """An HTML table; cells are escaped unless ``raw`` (cells already HTML)."""
    cell = (lambda v: str(v)) if raw else esc
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def swatch(rgba: Sequence[int]) -> str:
    """A colour square for a legend cell."""
    return f'<span class="swatch" style="background:rgb({rgba[0]},{rgba[1]},{rgba[2]})"></span>'


def image(src: str, alt: str, element_id: str) -> str:
    """An ``<img>`` of a report asset."""
    return f'<img id="{element_id}" src="{esc(src)}" alt="{esc(alt)}">'


def viewer(pyramid: Pyramid, element_id: str, transform: Sequence[float] | None) -> str:
    """A zoomable map viewer of a tile pyramid (wheel or buttons to zoom, drag to pan)."""
    data = json.dumps({**pyramid.as_dict(), "transform": list(transform) if transform else None})
    return (
        f'<div class="viewer" id="{element_id}" data-pyramid="{esc(data)}">'
        '<div class="view"></div><div class="tools"><button data-zoom="1.5">+</button>'
        '<button data-zoom="0.6667">&minus;</button><button data-fit="1">fit</button>'
        '<span class="where"></span></div></div>'
    )


STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1280px;padding:0 16px 40px;color:#222}
h1{font-size:22px;margin:18px 0 4px}h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:3px}
.sub{color:#555;margin:0 0 10px}.note{background:#fff6df;border-left:4px solid #e0a800;padding:6px 10px}
table{border-collapse:collapse;margin:8px 0;font-size:13px}td,th{border:1px solid #ddd;padding:2px 7px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.swatch{display:inline-block;width:14px;height:14px;border:1px solid #555;vertical-align:middle}
.maprow{display:flex;gap:16px;align-items:flex-start;flex-wrap:wrap}.maprow .viewer{flex:1 1 640px}
.legend{max-height:72vh;overflow:auto}
.view{position:relative;height:68vh;min-height:320px;overflow:hidden;background:#fff;border:1px solid #bbb;cursor:grab;touch-action:none}
.view img{position:absolute;image-rendering:pixelated;user-select:none;pointer-events:none;max-width:none}
.tools{margin:4px 0}.tools button{min-width:34px}.where{margin-left:12px;color:#444;font-family:monospace}
img{max-width:100%}pre{background:#f7f7f7;padding:8px;overflow:auto;max-height:420px;font-size:12px}
.matrix td{min-width:28px}.hit{font-weight:bold;outline:2px solid #333}
"""

SCRIPT = """
(function () {
  function setup(el) {
    var p = JSON.parse(el.dataset.pyramid), view = el.querySelector('.view');
    var where = el.querySelector('.where'), top = p.levels - 1, cache = {}, s = 1, tx = 0, ty = 0;
    function img(z, r, c) {
      var key = z + '/' + r + '_' + c;
      if (!cache[key]) {
        var im = new Image(); im.alt = ''; im.draggable = false;
        im.src = p.path + '/' + key + '.png'; cache[key] = im;
      }
      return cache[key];
    }
    function draw() {
      var W = view.clientWidth, H = view.clientHeight, nodes = [];
      var d = Math.max(0, Math.min(top, Math.floor(Math.log2(1 / s) + 1e-9)));
      var zs = top - d > 0 ? [0, top - d] : [0];
      zs.forEach(function (z) {
        var span = p.tile * Math.pow(2, top - z);
        var c0 = Math.max(0, Math.floor(-tx / s / span));
        var c1 = Math.min(Math.ceil(p.width / span) - 1, Math.floor((W - tx) / s / span));
        var r0 = Math.max(0, Math.floor(-ty / s / span));
        var r1 = Math.min(Math.ceil(p.height / span) - 1, Math.floor((H - ty) / s / span));
        for (var r = r0; r <= r1; r++) for (var c = c0; c <= c1; c++) {
          var im = img(z, r, c), x = c * span, y = r * span;
          im.style.left = (tx + x * s) + 'px'; im.style.top = (ty + y * s) + 'px';
          im.style.width = (Math.min(span, p.width - x) * s) + 'px';
          im.style.height = (Math.min(span, p.height - y) * s) + 'px';
          nodes.push(im);
        }
      });
      view.replaceChildren.apply(view, nodes);
    }
    function fit() {
      var W = view.clientWidth, H = view.clientHeight;
      s = Math.min(W / p.width, H / p.height);
      tx = (W - p.width * s) / 2; ty = (H - p.height * s) / 2; draw();
    }
    function zoom(k, cx, cy) {
      var fitS = Math.min(view.clientWidth / p.width, view.clientHeight / p.height);
      var ns = Math.max(fitS / 4, Math.min(64, s * k));
      tx = cx - (cx - tx) * ns / s; ty = cy - (cy - ty) * ns / s; s = ns; draw();
    }
    view.addEventListener('wheel', function (e) {
      e.preventDefault();
      var b = view.getBoundingClientRect();
      zoom(e.deltaY < 0 ? 1.25 : 0.8, e.clientX - b.left, e.clientY - b.top);
    }, {passive: false});
    var drag = null;
    view.addEventListener('pointerdown', function (e) {
      drag = [e.clientX, e.clientY]; view.setPointerCapture(e.pointerId);
    });
    view.addEventListener('pointerup', function () { drag = null; });
    view.addEventListener('pointermove', function (e) {
      var b = view.getBoundingClientRect();
      var col = Math.floor((e.clientX - b.left - tx) / s), row = Math.floor((e.clientY - b.top - ty) / s);
      var text = 'row ' + row + ', col ' + col;
      if (p.transform) {
        var t = p.transform, X = t[2] + (col + 0.5) * t[0] + (row + 0.5) * t[1];
        var Y = t[5] + (col + 0.5) * t[3] + (row + 0.5) * t[4];
        text += '  (x ' + X.toFixed(1) + ', y ' + Y.toFixed(1) + ')';
      }
      where.textContent = (row >= 0 && col >= 0 && row < p.height && col < p.width) ? text : '';
      if (drag) { tx += e.clientX - drag[0]; ty += e.clientY - drag[1]; drag = [e.clientX, e.clientY]; draw(); }
    });
    el.querySelectorAll('button').forEach(function (b) {
      b.addEventListener('click', function () {
        if (b.dataset.fit) fit(); else zoom(parseFloat(b.dataset.zoom), view.clientWidth / 2, view.clientHeight / 2);
      });
    });
    window.addEventListener('resize', fit);
    fit();
  }
  document.querySelectorAll('.viewer').forEach(setup);
})();
"""


def page(title: str, subtitle: str, sections: Sequence[Section]) -> str:
    """The whole ``index.html``."""
    nav = " · ".join(f'<a href="#{s.id}">{esc(s.title)}</a>' for s in sections)
    body = "\n".join(s.render() for s in sections)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{esc(title)}</title><link rel=\"icon\" href=\"data:,\"><style>{STYLE}</style></head><body>"
        f"<h1>{esc(title)}</h1><p class=\"sub\">{esc(subtitle)}</p><nav>{nav}</nav>\n{body}\n"
        f"<script>{SCRIPT}</script></body></html>\n"
    )

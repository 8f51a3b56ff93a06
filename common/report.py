"""Reports to look at in a browser: ``test.py``'s per-image comparison and a training run's progress.

Each is one ``report.html`` that opens offline, from the disk (no server, no network: its CSS and
script are inline), with its pictures as files beside it in ``report_files/``.

- :class:`ResultsReport` (``test.py``, in its results folder): the checkpoint, the data, the device and
  the date; the mean metrics of the degraded input and of the restored images with the gain; one row
  per image (thumbnail, each metric for input and restored, the gain), sortable by any column, worst
  gain first; and a comparison view, a slider between input and restored (and between restored and
  ground truth where there is one) with a zoom that keeps both sides on the same pixels. Previews
  are at most :data:`PREVIEW_SIDE` pixels on their long side, each full-size restored PNG is
  linked, and the previews are written image by image as the test goes, so no image stays in
  memory. The table is built from data in the page, its thumbnails loaded lazily: 500 images
  open in about a second.
- :func:`write_training_report` (each run folder, refreshed at every validation): validation PSNR
  and SSIM per sigma against the degraded input's, the critic's Wasserstein estimate, the transport
  cost and the gradient penalty over steps (``common.figures.training_curves``, matplotlib), and
  each sigma's sample pictures as a strip over epochs.
"""
from __future__ import annotations

import html
import json
import os
import re
import time
import urllib.parse
from pathlib import Path

import cv2
import numpy as np

from .checkpoint import atomic_write
from .errors import printable
from .images import write_image

PREVIEW_SIDE = 1024  # the comparison view's images: at most this on their long side
THUMB_SIDE = 160     # the table's thumbnails
ASSETS = "report_files"
# The names ResultsReport.add gives the pictures in ASSETS: a folder of these alone is one test.py
# wrote, and may replace whole with --overwrite
ASSET_NAME = re.compile(r"\d{5,}-(input|restored|gt|thumb)\.(png|jpg)")


def _shrunk(img: np.ndarray, side: int) -> np.ndarray:
    h, w = img.shape[:2]
    if max(h, w) <= side:
        return img
    f = side / max(h, w)
    return cv2.resize(img, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)


def _href(name: str) -> str:
    """A file name as a relative URL: its bytes percent-encoded (names that are not UTF-8 included)."""
    return urllib.parse.quote(os.fsencode(name))


def _json_for_script(data) -> str:
    """JSON that can sit inside a <script> element: no ``</`` to end it early."""
    return json.dumps(data, ensure_ascii=True).replace("</", "<\\/")


def _facts_rows(facts: list[tuple[str, str]]) -> str:
    """A report header's (label, text) lines as table rows."""
    return "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(printable(v))}</td></tr>" for k, v in facts)


# ----------------------------------------------------------------------------- test.py's report
class ResultsReport:
    """``test.py``'s report.html in ``folder`` (the staging folder while the test runs)."""

    def __init__(self, folder: Path, title: str):
        self.folder, self.title = Path(folder), title
        self.items: list[dict] = []

    def add(self, row: dict, baseline: np.ndarray, restored: np.ndarray, gt: np.ndarray | None) -> None:
        """One image: its previews and thumbnail are written now (8-bit RGB arrays at the restored size)."""
        i = len(self.items)
        exact = max(restored.shape[:2]) <= PREVIEW_SIDE  # small enough: previews in PNG, pixel for pixel
        ext = "png" if exact else "jpg"
        files = {}
        for kind, img in (("input", baseline), ("restored", restored), ("gt", gt)):
            if img is None:
                continue
            files[kind] = f"{ASSETS}/{i:05d}-{kind}.{ext}"
            write_image(self.folder / files[kind], _shrunk(img, PREVIEW_SIDE))
        files["thumb"] = f"{ASSETS}/{i:05d}-thumb.jpg"
        write_image(self.folder / files["thumb"], _shrunk(restored, THUMB_SIDE))
        metrics = {k: (None if v is None or (isinstance(v, float) and not np.isfinite(v)) else v)
                   for k, v in row.items() if k != "name"}
        gain = (metrics["psnr"] - metrics["input_psnr"]) if metrics.get("psnr") is not None and \
            metrics.get("input_psnr") is not None else None
        self.items.append({"name": printable(row["name"]), "full": _href(f"{row['name']}.png"),
                           "size": [int(restored.shape[1]), int(restored.shape[0])], "files": files,
                           "metrics": metrics, "gain": gain})

    def write(self, facts: list[tuple[str, str]], means: dict) -> Path:
        """report.html, from what :meth:`add` collected; ``facts``: (label, text) lines of the header."""
        data = {"items": self.items, "means": means,
                "metrics": [m for m in ("psnr", "ssim", "lpips") if any(it["metrics"].get(m) is not None
                                                                         for it in self.items)],
                "has_gt": any("gt" in it["files"] for it in self.items)}
        page = (_PAGE.replace("{{TITLE}}", html.escape(printable(self.title))).replace("{{FACTS}}", _facts_rows(facts))
                .replace("{{STYLE}}", _STYLE).replace("{{DATA}}", _json_for_script(data)).replace("{{SCRIPT}}", _SCRIPT))
        path = self.folder / "report.html"
        atomic_write(path, lambda f: f.write(page.encode("utf-8")))
        return path


_STYLE = """
:root { --fg: #1d2228; --muted: #66707a; --line: #d9dde2; --accent: #2f6fb3; --bad: #b3372f; --good: #2a7d46; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg); }
header, section { padding: 12px 20px; }
h1 { font-size: 20px; margin: 4px 0 8px; }
h2 { font-size: 16px; margin: 8px 0; }
table { border-collapse: collapse; }
.facts th { text-align: left; color: var(--muted); font-weight: normal; padding: 1px 14px 1px 0; }
.facts td { padding: 1px 0; }
.means td, .means th, #images td, #images th { border-bottom: 1px solid var(--line); padding: 4px 10px; text-align: right; }
.means th:first-child, .means td:first-child, #images td.name, #images th.name { text-align: left; }
#images th { cursor: pointer; user-select: none; position: sticky; top: 0; background: #fff; }
#images th.sorted::after { content: " \\25B4"; } #images th.sorted.desc::after { content: " \\25BE"; }
#images tbody tr { cursor: pointer; } #images tbody tr:hover { background: #f2f6fb; }
#images tbody tr.current { background: #e3edf8; }
#images img { width: 64px; height: 64px; object-fit: cover; display: block; }
.gain-neg { color: var(--bad); } .gain-pos { color: var(--good); }
#viewer { display: grid; grid-template-columns: 1fr; gap: 8px; }
.controls { display: flex; flex-wrap: wrap; gap: 12px; align-items: center; }
.controls button { font: inherit; padding: 2px 10px; }
.stage { position: relative; overflow: hidden; width: 100%; height: 62vh; background: #222; border-radius: 4px; cursor: grab; }
.stage.dragging { cursor: grabbing; }
.layer { position: absolute; left: 0; top: 0; transform-origin: 0 0; }
.layer img { position: absolute; left: 0; top: 0; max-width: none; }
.layer.pixelated img { image-rendering: pixelated; }
.label { position: absolute; top: 6px; padding: 1px 6px; background: rgba(0,0,0,.6); color: #fff; font-size: 12px; border-radius: 3px; }
.label.left { left: 6px; } .label.right { right: 6px; }
.divider { position: absolute; top: 0; bottom: 0; width: 2px; background: #fff; pointer-events: none; }
.muted { color: var(--muted); }
"""

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,"><title>{{TITLE}}</title><style>{{STYLE}}</style></head>
<body>
<header><h1>{{TITLE}}</h1><table class="facts">{{FACTS}}</table></header>
<section><h2>Means</h2><table class="means" id="means"></table></section>
<section id="viewer"><h2 id="viewer-title">Comparison</h2>
<div class="controls">
<label>compare <select id="pair"></select></label>
<label>slider <input id="slider" type="range" min="0" max="100" value="50"></label>
<button id="zoom-out" title="zoom out">&minus;</button><span id="zoom-level">fit</span>
<button id="zoom-in" title="zoom in">+</button><button id="zoom-fit">fit</button>
<a id="full-link" href="#">full-size restored PNG</a>
<span class="muted">drag to pan, wheel to zoom; both sides stay on the same pixels</span></div>
<div class="stage" id="stage"><div class="layer" id="layer"><img id="right-img" alt=""><img id="left-img" alt=""></div>
<div class="divider" id="divider"></div><span class="label left" id="left-label"></span>
<span class="label right" id="right-label"></span></div></section>
<section><h2>Images <span class="muted">(click a column to sort, a row to compare)</span></h2>
<table id="images"><thead></thead><tbody></tbody></table></section>
<script type="application/json" id="data">{{DATA}}</script>
<script>{{SCRIPT}}</script>
</body></html>
"""

_SCRIPT = r"""
"use strict";
const data = JSON.parse(document.getElementById("data").textContent);
const $ = (id) => document.getElementById(id);
const fmt = (v, d) => (v === null || v === undefined) ? "n/a" : Number(v).toFixed(d);
const digits = { psnr: 2, ssim: 4, lpips: 4 };
const names = { psnr: "PSNR (dB)", ssim: "SSIM", lpips: "LPIPS" };

// the means: input, restored and the gain
(function means() {
  const t = $("means");
  const head = t.insertRow(); ["", "input", "restored", "gain"].forEach((h) => {
    const th = document.createElement("th"); th.textContent = h; head.appendChild(th); });
  for (const m of data.metrics) {
    const r = t.insertRow(), a = data.means["input_" + m], b = data.means[m];
    [names[m], fmt(a, digits[m]), fmt(b, digits[m]),
     (a == null || b == null) ? "n/a" : (b - a >= 0 ? "+" : "") + (b - a).toFixed(digits[m])]
      .forEach((v) => { r.insertCell().textContent = v; });
  }
  if (!data.metrics.length) { t.insertRow().insertCell().textContent = "no ground truth: restored only"; }
})();

// the table of images
const columns = [{ key: "thumb", label: "", sort: null }, { key: "name", label: "image", sort: (it) => it.name }];
for (const m of data.metrics) {
  columns.push({ key: "input_" + m, label: "input " + names[m], sort: (it) => it.metrics["input_" + m] });
  columns.push({ key: m, label: "restored " + names[m], sort: (it) => it.metrics[m] });
}
if (data.metrics.includes("psnr")) columns.push({ key: "gain", label: "gain (dB)", sort: (it) => it.gain });
let order = { key: data.metrics.includes("psnr") ? "gain" : "name", desc: false };
const tbody = document.querySelector("#images tbody");
(function header() {
  const tr = document.createElement("tr");
  for (const c of columns) {
    const th = document.createElement("th"); th.textContent = c.label; th.dataset.key = c.key;
    if (c.key === "name") th.className = "name";
    if (c.sort) th.addEventListener("click", () => {
      order = { key: c.key, desc: order.key === c.key ? !order.desc : false }; render(); });
    tr.appendChild(th);
  }
  document.querySelector("#images thead").appendChild(tr);
})();
function render() {
  const col = columns.find((c) => c.key === order.key);
  const items = data.items.map((it, i) => [it, i]);
  items.sort((a, b) => {
    const x = col.sort(a[0]), y = col.sort(b[0]);
    if (x === y) return a[1] - b[1];
    if (x === null || x === undefined) return 1;
    if (y === null || y === undefined) return -1;
    return (x < y ? -1 : 1) * (order.desc ? -1 : 1);
  });
  document.querySelectorAll("#images th").forEach((th) => {
    th.classList.toggle("sorted", th.dataset.key === order.key);
    th.classList.toggle("desc", th.dataset.key === order.key && order.desc);
  });
  const rows = document.createDocumentFragment();
  for (const [it, i] of items) {
    const tr = document.createElement("tr"); tr.dataset.index = i;
    if (i === current) tr.className = "current";
    const img = document.createElement("img"); img.loading = "lazy"; img.src = it.files.thumb; img.alt = it.name;
    tr.insertCell().appendChild(img);
    const name = tr.insertCell(); name.className = "name"; name.textContent = it.name;
    for (const c of columns.slice(2)) {
      const td = tr.insertCell(), v = c.sort(it);
      const d = c.key === "gain" ? 2 : digits[c.key.replace("input_", "")];
      td.textContent = (c.key === "gain" && v !== null && v >= 0 ? "+" : "") + fmt(v, d);
      if (c.key === "gain" && v !== null) td.className = v < 0 ? "gain-neg" : "gain-pos";
    }
    tr.addEventListener("click", () => show(i));
    rows.appendChild(tr);
  }
  tbody.replaceChildren(rows);
}

// the comparison view
const pairs = [["input", "restored"]];
if (data.has_gt) pairs.push(["restored", "gt"]);
const labels = { input: "input", restored: "restored", gt: "ground truth" };
for (const [a, b] of pairs) {
  const o = document.createElement("option"); o.value = a + "|" + b; o.textContent = labels[a] + " | " + labels[b];
  $("pair").appendChild(o);
}
let current = null, zoom = null, pan = [0, 0];
function show(i) {
  current = i;
  const it = data.items[i];
  let [a, b] = $("pair").value.split("|");
  if (!it.files[b]) { [a, b] = pairs[0]; $("pair").value = a + "|" + b; }
  $("left-img").src = it.files[a]; $("right-img").src = it.files[b];
  $("left-label").textContent = labels[a]; $("right-label").textContent = labels[b];
  $("viewer-title").textContent = "Comparison: " + it.name + " (" + it.size[0] + "x" + it.size[1] +
    (it.gain === null ? "" : ", " + (it.gain >= 0 ? "+" : "") + it.gain.toFixed(2) + " dB") + ")";
  $("full-link").href = it.full;
  document.querySelectorAll("#images tbody tr").forEach((tr) => tr.classList.toggle("current", Number(tr.dataset.index) === i));
  zoom = null; layout();
}
function fitZoom() {
  const it = data.items[current], st = $("stage");
  const w = $("left-img").naturalWidth || it.size[0], h = $("left-img").naturalHeight || it.size[1];
  return Math.min(st.clientWidth / w, st.clientHeight / h);
}
function layout() {
  if (current === null) return;
  const z = zoom === null ? fitZoom() : zoom;
  const iw = $("left-img").naturalWidth || data.items[current].size[0];
  const ih = $("left-img").naturalHeight || data.items[current].size[1];
  if (zoom === null) pan = [($("stage").clientWidth - iw * z) / 2, ($("stage").clientHeight - ih * z) / 2];
  const layer = $("layer");
  layer.style.transform = "translate(" + pan[0] + "px," + pan[1] + "px) scale(" + z + ")";
  layer.classList.toggle("pixelated", z >= 2);
  $("zoom-level").textContent = zoom === null ? "fit" : Math.round(100 * z) + "%";
  const w = iw * z;
  const s = Number($("slider").value) / 100;
  // the left image shows up to the slider, the right one beyond it: the same pixels under both
  $("left-img").style.clipPath = "inset(0 " + (100 - 100 * s) + "% 0 0)";
  $("divider").style.left = (pan[0] + w * s) + "px";
}
$("slider").addEventListener("input", layout);
$("pair").addEventListener("change", () => show(current));
$("zoom-in").addEventListener("click", () => { zoom = (zoom === null ? fitZoom() : zoom) * 2; layout(); });
$("zoom-out").addEventListener("click", () => { zoom = (zoom === null ? fitZoom() : zoom) / 2; layout(); });
$("zoom-fit").addEventListener("click", () => { zoom = null; layout(); });
$("stage").addEventListener("wheel", (e) => {
  e.preventDefault();
  const old = zoom === null ? fitZoom() : zoom, z = old * (e.deltaY < 0 ? 1.25 : 0.8);
  const r = $("stage").getBoundingClientRect(), x = e.clientX - r.left, y = e.clientY - r.top;
  pan = [x - (x - pan[0]) * z / old, y - (y - pan[1]) * z / old]; zoom = z; layout();
}, { passive: false });
let drag = null;
$("stage").addEventListener("mousedown", (e) => { drag = [e.clientX - pan[0], e.clientY - pan[1]]; $("stage").classList.add("dragging"); });
window.addEventListener("mouseup", () => { drag = null; $("stage").classList.remove("dragging"); });
window.addEventListener("mousemove", (e) => {
  if (!drag) return;
  if (zoom === null) zoom = fitZoom();
  pan = [e.clientX - drag[0], e.clientY - drag[1]]; layout();
});
$("left-img").addEventListener("load", layout);
window.addEventListener("resize", layout);
render();
if (data.items.length) show(Number(tbody.rows[0].dataset.index));
"""


# ----------------------------------------------------------------------------- a training run's report
def write_training_report(run_root: Path, title: str, facts: list[tuple[str, str]]) -> Path:
    """``<run>/report.html``: the curves of every sigma's metrics.jsonl and its sample pictures; rewritten
    whole (atomically) each time, so that a browser's reload always finds a complete page."""
    from .figures import training_curves
    from .run_folder import read_metrics

    sigmas = sorted(run_root.glob("sigma-*/metrics.jsonl"))
    logs = {path.parent.name: read_metrics(path) for path in sigmas}
    curves = f"{ASSETS}/curves.png"
    training_curves(run_root / curves, logs)
    strips = []
    for name in sorted(logs):
        pictures = sorted((run_root / name / "samples").glob("epoch-*.png"))[-12:]  # the newest twelve epochs
        cells = "".join(f'<figure><img loading="lazy" src="{_href(f"{name}/samples/{p.name}")}" alt="{p.stem}">'
                        f"<figcaption>{p.stem}</figcaption></figure>" for p in pictures)
        strips.append(f"<h3>{html.escape(name)}</h3><div class=\"strip\">{cells or 'no samples yet'}</div>")
    rows = _facts_rows(facts)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,"><title>{html.escape(title)}</title>
<style>{_STYLE}
.strip {{ display: flex; gap: 8px; overflow-x: auto; padding-bottom: 6px; }}
.strip figure {{ margin: 0; flex: none; }} .strip img {{ height: 220px; display: block; }}
.strip figcaption {{ color: var(--muted); font-size: 12px; }} .curves img {{ max-width: 100%; }}</style></head>
<body><header><h1>{html.escape(title)}</h1><table class="facts">{rows}
<tr><th>updated</th><td>{time.strftime("%Y-%m-%d %H:%M:%S")} (at each validation; reload to see the newest)</td></tr>
</table></header>
<section class="curves"><h2>Curves</h2><img src="{curves}" alt="training curves"></section>
<section><h2>Samples: input | output | an unpaired clean patch, per epoch</h2>{"".join(strips)}</section>
</body></html>
"""
    path = run_root / "report.html"
    atomic_write(path, lambda f: f.write(page.encode("utf-8")))
    return path


class ReportRefresher:
    """Redraws a training run's report.html beside the training, in a thread of its own (matplotlib
    takes a few tenths of a second a time): at most every ``every`` seconds, never two at once, and
    once more, waited for, at the end (:meth:`final`)."""

    def __init__(self, run_root: Path, title: str, facts: list[tuple[str, str]], every: float = 30.0):
        self.args, self.every = (Path(run_root), title, facts), every
        self.thread = None
        self.last = -float("inf")

    def request(self) -> None:
        import threading

        if (self.thread is not None and self.thread.is_alive()) or time.monotonic() - self.last < self.every:
            return
        self.last = time.monotonic()
        self.thread = threading.Thread(target=self._draw, daemon=True, name="report")
        self.thread.start()

    def _draw(self) -> None:
        try:
            write_training_report(*self.args)
        except Exception as exc:  # noqa: BLE001 - a report must never stop a run
            from .errors import note
            note(f"{self.args[0] / 'report.html'}: not updated ({type(exc).__name__}: {exc})")

    def final(self) -> None:
        if self.thread is not None:
            self.thread.join()
        self._draw()

"""Reports to look at in a browser: ``test.py``'s per-image comparison and a training run's progress.

Each is one ``report.html`` that opens offline, from the disk (no server, no network: its CSS and
script are inline), with its pictures as files beside it in ``report_files/``. Pages are rendered by
Jinja2 from ``common/evaluation/templates/`` with every value escaped: a name, a path or a checkpoint's field is
text on the page, whatever it holds.

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
  cost and the gradient penalty over steps (``common.evaluation.figures.training_curves``, matplotlib), and
  each sigma's sample pictures as a strip over epochs.
"""
from __future__ import annotations

import functools
import os
import re
import threading
import time
import urllib.parse
from pathlib import Path

import cv2
import jinja2
import numpy as np
from jinja2.utils import htmlsafe_json_dumps
from markupsafe import Markup

from ..data.images import write_image
from ..system.files import atomic_write
from ..system.text import note, printable
from ..training.choice import recommendation_line, recommended, sigma_choices
from ..training.run_folder import read_metrics
from .figures import training_curves

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


def json_for_script(data) -> Markup:
    """``data`` as JSON to sit inside ``<script type="application/json">``, where HTML escapes are not
    decoded: ``<``, ``>``, ``&`` and ``'`` as ``\\u003c``-style escapes (Jinja2's own), and every character
    past ASCII, U+2028 and U+2029 included, as ``\\u`` escapes too (``ensure_ascii``). Nothing in it can
    end the element or open a comment there, and ``JSON.parse`` gives back the same strings."""
    return htmlsafe_json_dumps(data, ensure_ascii=True)


@functools.cache
def _templates():
    """The pages' templates (``common/evaluation/templates``): Jinja2 escapes every value put into them, so a name, a
    path or a checkpoint's field is always text on the page, never markup."""
    return jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).with_name("templates")),
                              autoescape=True, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)


def _render(template: str, path: Path, **values) -> Path:
    """``template`` filled with ``values``, written to ``path`` atomically (a browser's reload never finds
    half a page)."""
    page = _templates().get_template(template).render(**values)
    atomic_write(path, lambda f: f.write(page.encode("utf-8")))
    return path


def _facts(facts: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """A report header's (label, text) lines as they are shown (see :func:`~common.system.text.printable`)."""
    return [(printable(k), printable(v)) for k, v in facts]


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
        def change(key: str) -> float | None:  # restored minus input
            have = metrics.get(key) is not None and metrics.get(f"input_{key}") is not None
            return metrics[key] - metrics[f"input_{key}"] if have else None
        self.items.append({"name": printable(row["name"]), "full": _href(f"{row['name']}.png"),
                           "size": [int(restored.shape[1]), int(restored.shape[0])], "files": files,
                           "metrics": metrics, "gain": change("psnr"), "score_change": change("score")})

    def write(self, facts: list[tuple[str, str]], means: dict) -> Path:
        """report.html, from what :meth:`add` collected; ``facts``: (label, text) lines of the header."""
        data = {"items": self.items, "means": means,
                "metrics": [m for m in ("psnr", "ssim", "lpips", "score") if any(it["metrics"].get(m) is not None
                                                                         for it in self.items)],
                "has_gt": any("gt" in it["files"] for it in self.items)}
        return _render("results_report.html", self.folder / "report.html", title=printable(self.title),
                       facts=_facts(facts), data=json_for_script(data))


# ----------------------------------------------------------------------------- a training run's report
def write_training_report(run_root: Path, title: str, facts: list[tuple[str, str]]) -> Path:
    """``<run>/report.html``: the curves of every sigma's metrics.jsonl and its sample pictures; rewritten
    whole (atomically) each time, so that a browser's reload always finds a complete page."""
    logs = {path.parent.name: read_metrics(path) for path in sorted(run_root.glob("sigma-*/metrics.jsonl"))}
    curves = f"{ASSETS}/curves.png"
    training_curves(run_root / curves, logs)
    strips = []  # each sigma's samples
    for name in sorted(logs):
        pictures = sorted((run_root / name / "samples").glob("epoch-*.png"))[-12:]  # the newest twelve epochs
        strips.append({"sigma": printable(name), "samples": [
            {"name": printable(p.stem), "href": _href(f"{name}/samples/{p.name}")} for p in pictures]})
    choices = sigma_choices(run_root, logs)
    pick = recommended(choices)
    table = [{"sigma": f"{c.sigma:g}", "step": c.step, "by": c.select_by or "", "recommended": c is pick,
              "score": "n/a" if c.score is None else f"{c.score:.3f}", "psnr": "n/a" if c.psnr is None else f"{c.psnr:.2f}"}
             for c in choices]
    return _render("training_report.html", run_root / "report.html", title=printable(title), facts=_facts(facts),
                   updated=time.strftime("%Y-%m-%d %H:%M:%S"), curves=curves, strips=strips, choices=table,
                   recommendation=printable(recommendation_line(choices) or ""))


class ReportRefresher:
    """Redraws a training run's report.html beside the training, in a thread of its own (matplotlib
    takes a few tenths of a second a time): at most every ``every`` seconds, never two at once, and
    once more, waited for, at the end (:meth:`final`)."""

    def __init__(self, run_root: Path, title: str, facts: list[tuple[str, str]], every: float = 30.0):
        self.args, self.every = (Path(run_root), title, facts), every
        self.thread = None
        self.last = -float("inf")

    def request(self) -> None:
        if (self.thread is not None and self.thread.is_alive()) or time.monotonic() - self.last < self.every:
            return
        self.last = time.monotonic()
        self.thread = threading.Thread(target=self._draw, daemon=True, name="report")
        self.thread.start()

    def _draw(self) -> None:
        try:
            write_training_report(*self.args)
        except Exception as exc:  # noqa: BLE001 - a report must never stop a run
            note(f"{self.args[0] / 'report.html'}: not updated ({type(exc).__name__}: {exc})")

    def final(self) -> None:
        if self.thread is not None:
            self.thread.join()
        self._draw()

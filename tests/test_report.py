"""The reports' HTML without a browser (tests/test_browser.py opens them in Chromium): names, paths and
checkpoint fields are text on the page, never markup, and the data block cannot be ended from inside."""
from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np

from common.evaluation.figures import measured_panels
from common.evaluation.report import ResultsReport, json_for_script
from common.system.text import printable

# the placeholders the page was once built from, markup, a comment opener, the end of the data block,
# quotes, and the line separators that end a string in older JavaScript
HOSTILE = ["{{DATA}}", "{{SCRIPT}}", "{{TITLE}}", "<img src=x onerror=alert(1)>", "<!--<script>", "</script>",
           "</SCRIPT >", "\"quote'", "&amp;", "line\u2028para\u2029graph", "-->"]


def test_json_for_script_cannot_end_its_element_or_open_a_comment():
    data = {"items": [{"name": n} for n in HOSTILE], "<key>": "&"}
    text = json_for_script(data)
    for character in "<>&'\u2028\u2029":
        assert character not in text, character
    assert "\\u003c" in text and "\\u2028" in text  # escaped, not dropped
    assert json.loads(text) == data
    assert text.__html__() == text  # safe markup: the template puts it in as it is


class Page(HTMLParser):
    """What an HTML parser makes of a page: its elements, comments, and the text of each script and title."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tags, self.comments, self.texts, self.open = [], [], {}, None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self.open = tag

    def handle_endtag(self, tag):
        self.open = None

    def handle_data(self, data):
        if self.open:
            self.texts.setdefault(self.open, []).append(data)

    def handle_comment(self, data):
        self.comments.append(data)


def test_the_test_report_keeps_every_name_and_field_as_text(tmp_path):
    report = ResultsReport(tmp_path, "{{DATA}}</title><script>alert(1)</script>")
    img = np.zeros((8, 8, 3), np.uint8)
    for name in HOSTILE:
        report.add({"name": name, "psnr": 20.0, "input_psnr": 19.0}, img, img, img)
    facts = [("model", f"cost {n}") for n in HOSTILE]
    page = Page(report.write(facts, {"psnr": 20.0, "input_psnr": 19.0}).read_text(encoding="utf-8"))
    assert page.comments == []
    assert [t for t, _ in page.tags].count("script") == 2 and [t for t, _ in page.tags].count("img") == 2
    assert not any(k.startswith("on") for _, attrs in page.tags for k in attrs)
    assert page.texts["title"] == ["{{DATA}}</title><script>alert(1)</script>"]
    # as on the terminal, a name's line separators show as escapes (common.system.text.printable)
    assert page.texts["td"] == [printable(f"cost {n}") for n in HOSTILE]
    data, code = page.texts["script"]
    assert [item["name"] for item in json.loads(data)["items"]] == [printable(n) for n in HOSTILE]
    # the page's own style and script, whole: nothing in them was read as template syntax
    templates = Path(__file__).resolve().parents[1] / "common" / "evaluation" / "templates"
    assert code == "\n" + (templates / "results_report.js").read_text()
    assert page.texts["style"] == ["\n" + (templates / "report.css").read_text()]


def test_the_training_curves_draw_only_what_was_measured():
    """Without ground truth a validation logs PSNR and SSIM as null: no empty panels for them."""
    train = {"kind": "train", "step": 1, "w_distance": 1.0, "transport": 0.1, "gp": 2.0}
    no_gt = {"kind": "val", "step": 5, "psnr": None, "ssim": None, "score": 0.2, "input_score": 0.3}
    titles = [title for _, _, title in measured_panels({"sigma-1": [train, no_gt]})]
    assert titles[0].startswith("no-reference score") and not any("PSNR" in t or "SSIM" in t for t in titles)
    with_gt = {**no_gt, "psnr": 20.0, "ssim": 0.5}
    assert [t for _, _, t in measured_panels({"sigma-1": [train, with_gt]})][:3] == [
        "validation PSNR (dB)", "validation SSIM", "no-reference score (lower: closer to clean)"]

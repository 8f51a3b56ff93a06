"use strict";
const data = JSON.parse(document.getElementById("data").textContent);
const $ = (id) => document.getElementById(id);
const fmt = (v, d) => (v === null || v === undefined) ? "n/a" : Number(v).toFixed(d);
const signed = (v, d) => (v !== null && v !== undefined && v >= 0 ? "+" : "") + fmt(v, d);
const digits = { psnr: 2, ssim: 4, lpips: 4, score: 3 };
const names = { psnr: "PSNR (dB)", ssim: "SSIM", lpips: "LPIPS", score: "no-reference score" };

// the means: input, restored and the gain
(function means() {
  const t = $("means");
  const head = t.insertRow(); ["", "input", "restored", "restored \u2212 input"].forEach((h) => {
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
// the no-reference score: lower is closer to clean, so a rise is the bad direction
if (data.metrics.includes("score")) columns.push({ key: "score_change", label: "score change", sort: (it) => it.score_change });
// worst first: the least PSNR gain with ground truth; without it, the largest rise of the score
let order = data.metrics.includes("psnr") ? { key: "gain", desc: false }
  : data.metrics.includes("score") ? { key: "score_change", desc: true } : { key: "name", desc: false };
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
      if (c.key === "gain" || c.key === "score_change") {
        td.textContent = signed(v, c.key === "gain" ? 2 : 3);
        const worse = c.key === "gain" ? v < 0 : v > 0;
        if (v !== null && v !== undefined) td.className = worse ? "gain-neg" : "gain-pos";
      } else {
        td.textContent = fmt(v, digits[c.key.replace("input_", "")]);
      }
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

// P2L console: plain JavaScript over the JSON API (/v1). No build step, no dependencies.
// Every request carries X-API-Key when one is stored; API images and downloads are fetched
// as blobs for the same reason (an <img src> or a link cannot send the header).
"use strict";

(() => {
  const body = document.body;
  const PAGE = body.dataset.page;
  const ID = body.dataset.id || "";
  const KEYS_REQUIRED = body.dataset.keysRequired === "true";
  const KEY_STORE = "p2l.apiKey";
  const TERMINAL = ["succeeded", "failed", "cancelled"];
  const ROLES = ["viewer", "member", "admin", "operator"]; // each includes the ones before
  const $ = (id) => document.getElementById(id);
  const MAX_COMPARED = 8; // jobs side by side: more would not fit a row, or tell apart in a chart

  // ---------------------------------------------------------------- API access

  class ApiError extends Error {
    constructor(status, detail, problem) {
      super(detail);
      this.status = status;
      this.problem = problem || {};
    }
  }

  const getKey = () => sessionStorage.getItem(KEY_STORE) || "";

  async function request(path, { method = "GET", json, form, headers = {}, signal } = {}) {
    const sent = new Headers(headers);
    const key = getKey();
    if (key) sent.set("X-API-Key", key);
    let payload;
    if (json !== undefined) {
      sent.set("Content-Type", "application/json");
      payload = JSON.stringify(json);
    } else if (form) {
      payload = form;
    }
    const response = await fetch(path, { method, headers: sent, body: payload, signal });
    if (!response.ok) {
      let detail = `${response.status} ${response.statusText}`;
      let problem = null;
      try {
        problem = await response.json();
        if (problem && problem.detail) detail = String(problem.detail);
      } catch (_) { /* not JSON: keep the status line */ }
      if (response.status === 401 && KEYS_REQUIRED) {
        askForKey(getKey() ? `The service refused this key (${detail}).` : detail);
      }
      throw new ApiError(response.status, detail, problem);
    }
    return response;
  }

  async function api(path, options) {
    const response = await request(path, options);
    return response.status === 204 ? null : response.json();
  }

  /** Every item of a paginated listing (bounded: at most `maxPages` pages of 200). */
  async function allPages(path, maxPages = 10) {
    const items = [];
    let token = null;
    for (let page = 0; page < maxPages; page++) {
      const sep = path.includes("?") ? "&" : "?";
      const url = `${path}${sep}page_size=200${token ? `&page_token=${encodeURIComponent(token)}` : ""}`;
      const data = await api(url);
      items.push(...data.items);
      token = data.next_page_token;
      if (!token) break;
    }
    return items;
  }

  /** Show an API image in `img` (fetched with the key); say why in `caption` if it fails.
   *  The <img> stays hidden until its picture is decoded (a placeholder meanwhile): never a
   *  broken-image icon or an empty frame while the request runs. */
  async function showImage(img, path, caption) {
    const figure = img.closest("figure");
    img.hidden = true;
    if (figure) figure.classList.add("loading");
    try {
      const blob = await (await request(path)).blob();
      await showBlob(img, blob);
      if (caption) caption.classList.remove("error");
      return true;
    } catch (error) {
      img.hidden = true;
      img.removeAttribute("src");
      if (caption) {
        caption.textContent = `Image not available: ${error.message}`;
        caption.classList.add("error");
      }
      return false;
    } finally {
      if (figure) figure.classList.remove("loading");
    }
  }

  /** Show a blob (an API image or a local file) in `img` once it is decoded. */
  async function showBlob(img, blob) {
    img.hidden = true;
    const url = URL.createObjectURL(blob);
    img.src = url;
    try {
      await img.decode();
    } catch (error) {
      URL.revokeObjectURL(url);
      throw new Error("not an image this browser can show");
    }
    if (img.dataset.objectUrl) URL.revokeObjectURL(img.dataset.objectUrl);
    img.dataset.objectUrl = url;
    img.hidden = false;
  }

  /** Download an API file (with the key) under the name the server gives it. */
  async function download(path, fallbackName) {
    const response = await request(path);
    const disposition = response.headers.get("Content-Disposition") || "";
    const match = /filename\*=UTF-8''([^;]+)|filename="?([^";]+)"?/i.exec(disposition);
    const name = match ? decodeURIComponent(match[1] || match[2]) : fallbackName;
    const url = URL.createObjectURL(await response.blob());
    const link = h("a", { href: url, download: name, hidden: true });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
    return name;
  }

  // ---------------------------------------------------------------- DOM helpers

  function h(tag, attrs, ...children) {
    const element = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "class") element.className = value;
      else if (name === "style") Object.assign(element.style, value); // CSSOM: allowed by the CSP
      else if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
      else element.setAttribute(name, value === true ? "" : value);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      element.append(child instanceof Node ? child : String(child));
    }
    return element;
  }

  /** A table: columns are {label, value(row) -> text|Node, num?}; `rowClass(row)` optional. */
  function table(columns, rows, { caption, rowClass } = {}) {
    return h(
      "table", {},
      caption ? h("caption", { class: "visually-hidden" }, caption) : null,
      h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col", class: c.num ? "num" : null }, c.label)))),
      h("tbody", {}, rows.map((row) => h(
        "tr", { class: rowClass ? rowClass(row) : null },
        columns.map((c) => h("td", { class: c.num ? "num" : null }, c.value(row))),
      ))),
    );
  }

  function fill(container, ...nodes) {
    container.replaceChildren(...nodes.flat().filter((n) => n !== null && n !== undefined));
  }

  function facts(pairs) {
    return h("dl", { class: "facts" }, pairs.filter(Boolean).flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
  }

  function notice(title, lines, kind = "") {
    return h("div", { class: `notice ${kind}` }, h("strong", {}, title),
      lines && lines.length ? h("ul", {}, lines.map((l) => h("li", {}, l))) : null);
  }

  function showError(element, error) {
    const problem = (error && error.problem) || {};
    const lines = [];
    for (const e of problem.errors || []) lines.push(`${(e.loc || []).join(".")}: ${e.msg}`);
    for (const r of (problem.rejected || []).slice(0, 10)) lines.push(`${r.path}: ${r.reason}`);
    fill(element, h("p", {}, error.message || String(error)),
      lines.length ? h("ul", {}, lines.map((l) => h("li", {}, l))) : null);
  }

  const dash = "—";
  const pct = (x) => (x === null || x === undefined ? dash : `${(100 * x).toFixed(1)} %`);
  const num = (x, digits = 3) => (x === null || x === undefined ? dash : Number(x).toFixed(digits));
  const int = (x) => (x === null || x === undefined ? dash : Number(x).toLocaleString("en"));
  const when = (iso) => (iso ? new Date(iso).toLocaleString() : dash);
  const words = (phase) => (phase ? String(phase).replaceAll("_", " ") : dash);
  const short = (id) => (id ? String(id).slice(0, 8) : dash);

  const rate = (x) => (Number(x) >= 0.001 || Number(x) === 0 ? String(Number(Number(x).toPrecision(3))) : Number(x).toExponential(2));

  function duration(seconds) {
    if (seconds === null || seconds === undefined || !Number.isFinite(Number(seconds))) return dash;
    let s = Math.max(0, Math.round(Number(seconds)));
    if (s < 60) return `${s} s`;
    const hours = Math.floor(s / 3600);
    s -= hours * 3600;
    const minutes = Math.floor(s / 60);
    s -= minutes * 60;
    return hours ? `${hours} h ${minutes} min` : `${minutes} min ${s} s`;
  }

  const link = (href, text) => h("a", { href }, text);
  const datasetLink = (id, text) => link(`/console/datasets/${id}`, text || short(id));
  const jobLink = (id, text) => link(`/console/jobs/${id}`, text || short(id));
  const modelLink = (id, text) => link(`/console/models/${id}`, text || short(id));
  const sourceLink = (id, text) => link(`/console/sources/${id}`, text || short(id));
  /** A model as people call it: its name where the service gives models one, else its id. */
  const modelName = (m) => (m && m.name) || short(m && m.id);
  const isId = (text) => /^[0-9a-f]{32}$/.test(String(text || ""));

  const datasetNames = new Map();
  const sourceNames = new Map();

  /** A link to a source's page, named once its name is known (the id's start until then). */
  function namedSource(id) {
    const anchor = sourceLink(id);
    if (!sourceNames.has(id)) {
      sourceNames.set(id, api(`/v1/sources/${id}`).then((x) => x.name).catch(() => null));
    }
    sourceNames.get(id).then((name) => { if (name) anchor.textContent = name; });
    return anchor;
  }

  /** A link to a dataset, named once its name is known (the id's start until then). */
  function namedDatasetLink(id) {
    const anchor = datasetLink(id);
    if (!datasetNames.has(id)) {
      datasetNames.set(id, api(`/v1/datasets/${id}`).then((d) => d.name).catch(() => null));
    }
    datasetNames.get(id).then((name) => { if (name) anchor.textContent = name; });
    return anchor;
  }

  function stash(key, value) {
    try { sessionStorage.setItem(key, JSON.stringify(value)); } catch (_) { /* full: skip */ }
  }

  function unstash(key) {
    try { return JSON.parse(sessionStorage.getItem(key) || "null"); } catch (_) { return null; }
  }

  function estimateNotice(estimate, warnings) {
    const nodes = [];
    if (estimate && typeof estimate === "object") {
      const parts = [
        `${int(estimate.epochs_planned)} epochs at most`,
        `${int(estimate.train_images)} training images per epoch`,
        estimate.images_per_second ? `${num(estimate.images_per_second, 0)} images/s (${estimate.basis || "estimate"})` : null,
        estimate.architecture ? `${estimate.architecture} at ${estimate.input_size} px` : null,
        estimate.workers_alive !== undefined ? `${estimate.workers_alive} worker(s) alive` : null,
      ].filter(Boolean);
      nodes.push(notice(`Estimated run time: ${duration(estimate.seconds)}`, parts, "info"));
    }
    const all = [...(warnings || []), ...((estimate && estimate.warnings) || [])];
    const unique = [...new Set(all)];
    if (unique.length) nodes.push(notice("Warnings", unique));
    return nodes;
  }

  // ---------------------------------------------------------------- curves (inline SVG)

  const SVG = "http://www.w3.org/2000/svg";
  const PALETTE = ["#2457c5", "#d95f02", "#1b9e77", "#7570b3", "#e7298a", "#66a61e", "#a6761d", "#444444"];

  function svg(tag, attrs, ...children) {
    const element = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value !== null && value !== undefined && value !== false) element.setAttribute(name, value);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      element.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return element;
  }

  /** Round tick steps (1, 2, 5 x 10^k) covering [lo, hi] with about `count` ticks. */
  function ticks(lo, hi, count) {
    const span = hi - lo || 1;
    const raw = span / count;
    const power = 10 ** Math.floor(Math.log10(raw));
    const step = [1, 2, 5, 10].map((m) => m * power).find((m) => m >= raw) || raw;
    const out = [];
    for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) out.push(Number(t.toPrecision(12)));
    return out;
  }

  /** A line chart: `lines` are {key, name, color, dash, faint, points: [[epoch, value]]}. */
  function lineChart(title, lines, { percent = false } = {}) {
    const W = 460, H = 230, left = 46, right = 10, top = 22, bottom = 34;
    const drawn = lines.filter((l) => l.points.length);
    const xs = drawn.flatMap((l) => l.points.map((p) => p[0]));
    const ys = drawn.flatMap((l) => l.points.map((p) => p[1]));
    const xMax = Math.max(2, ...xs);
    const yLo = percent ? 0 : Math.min(0, ...ys);
    const yHi = percent ? 1 : Math.max(1e-9, ...ys) * 1.08;
    const x = (v) => left + ((v - 1) / (xMax - 1)) * (W - left - right);
    const y = (v) => H - bottom - ((v - yLo) / (yHi - yLo)) * (H - top - bottom);
    const grid = [];
    for (const t of ticks(yLo, yHi, 4)) {
      grid.push(svg("line", { x1: left, x2: W - right, y1: y(t), y2: y(t), class: "grid" }),
        svg("text", { x: left - 6, y: y(t) + 4, class: "tick", "text-anchor": "end" }, percent ? `${Math.round(t * 100)}%` : String(t)));
    }
    for (const t of ticks(1, xMax, 6).filter((t) => Number.isInteger(t) && t >= 1)) {
      grid.push(svg("text", { x: x(t), y: H - bottom + 15, class: "tick", "text-anchor": "middle" }, String(t)));
    }
    const series = drawn.map((l) => {
      const d = l.points.map((p, k) => `${k ? "L" : "M"}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join("");
      return svg("g", { class: l.faint ? "series faint" : "series", "data-series": l.key },
        svg("path", { d, fill: "none", stroke: l.color, "stroke-width": l.faint ? 1 : 2, "stroke-dasharray": l.dash ? "5 4" : null }),
        l.points.length <= 80 && !l.faint ? l.points.map((p) => svg("circle", { cx: x(p[0]), cy: y(p[1]), r: 2.6, fill: l.color },
          svg("title", {}, `${l.name}, epoch ${p[0]}: ${percent ? pct(p[1]) : num(p[1])}`))) : null);
    });
    return svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "curve", role: "img", "aria-label": `${title}: ${drawn.map((l) => l.name).join(", ")}` },
      svg("title", {}, title),
      svg("text", { x: left, y: 14, class: "chart-title" }, title),
      grid,
      svg("line", { x1: left, x2: W - right, y1: H - bottom, y2: H - bottom, class: "axis" }),
      svg("line", { x1: left, x2: left, y1: top, y2: H - bottom, class: "axis" }),
      svg("text", { x: (left + W - right) / 2, y: H - 4, class: "tick", "text-anchor": "middle" }, "epoch"),
      series);
  }

  /** Curve groups of a history: one per phase (and per trial of a search or race). */
  function groupHistory(history) {
    const groups = new Map();
    let trial = 0;
    for (const m of history || []) {
      let key = m.phase || "fine_tune";
      if (key === "auto_search" || key === "race") {
        if (m.candidate_index) trial = m.candidate_index;
        else if (m.epoch === 1) trial += 1;
        key = `${key}#${trial}`;
      }
      if (!groups.has(key)) groups.set(key, []);
      groups.get(key).push(m);
    }
    return groups;
  }

  const PHASE_STYLE = {
    fine_tune: { name: "fine-tune", color: PALETTE[0] },
    baseline: { name: "from scratch (baseline)", color: PALETTE[1] },
  };

  /** Loss and accuracy charts of runs: {label, color, faint, epochs: [EpochMetrics]}. */
  function curves(runs) {
    const lines = { loss: [], accuracy: [] };
    for (const run of runs) {
      const at = (name) => run.epochs.filter((m) => m[name] !== null && m[name] !== undefined).map((m) => [m.epoch, Number(m[name])]);
      const base = { color: run.color, faint: run.faint };
      lines.loss.push({ ...base, key: `${run.key}:train_loss`, name: `${run.label}: training loss`, points: at("train_loss") });
      if (run.epochs.some((m) => m.val_loss !== undefined && m.val_loss !== null)) {
        lines.loss.push({ ...base, key: `${run.key}:val_loss`, name: `${run.label}: validation loss`, dash: true, points: at("val_loss") });
      }
      lines.accuracy.push({ ...base, key: `${run.key}:val_accuracy`, name: `${run.label}: validation accuracy`, points: at("val_accuracy") });
      lines.accuracy.push({ ...base, key: `${run.key}:train_accuracy`, name: `${run.label}: training accuracy`, dash: true, points: at("train_accuracy") });
    }
    const legend = h("ul", { class: "legend" }, runs.filter((r) => !r.faint || r.legend).map((r) =>
      h("li", {}, h("span", { class: "swatch", style: { background: r.color }, "aria-hidden": "true" }), r.label)));
    return [
      h("div", { class: "curve-pair" }, lineChart("Loss per epoch", lines.loss), lineChart("Accuracy per epoch", lines.accuracy, { percent: true })),
      legend,
      h("p", { class: "muted small" }, "Accuracy: solid lines on the validation split, dashed on the training images. Loss: training."),
    ];
  }

  /** The runs of a job's or a report's history, the baseline's epochs given apart. */
  function historyRuns(history, baselineHistory) {
    const runs = [];
    let faint = 0;
    for (const [key, epochs] of groupHistory([...(history || []), ...(baselineHistory || [])])) {
      const phase = key.split("#")[0];
      const style = PHASE_STYLE[phase];
      if (style) runs.push({ key, label: style.name, color: style.color, epochs });
      else {
        faint += 1;
        runs.push({ key, label: `${words(phase)} trials`, color: "#9aa5b1", faint: true, legend: faint === 1, epochs });
      }
    }
    return runs;
  }

  // ---------------------------------------------------------------- API key

  let started = false;

  function askForKey(message) {
    $("key-panel").hidden = false;
    $("key-error").textContent = message || "";
    if (!started) $("content").hidden = true;
    $("api-key").focus();
  }

  function setUpKey() {
    $("key-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const key = $("api-key").value.trim();
      if (!key) return;
      sessionStorage.setItem(KEY_STORE, key);
      $("api-key").value = "";
      $("key-panel").hidden = true;
      $("key-status").hidden = false;
      $("content").hidden = false;
      // A key refused mid-page: load the page again with the new one (simplest, and whole).
      if (started) location.reload();
      else start();
    });
    $("forget-key").addEventListener("click", () => {
      sessionStorage.removeItem(KEY_STORE);
      location.reload();
    });
    if (KEYS_REQUIRED && getKey()) $("key-status").hidden = false;
  }

  async function start() {
    started = true;
    try {
      await showWho();
    } catch (_) {
      return; // only a 401 comes here: the key form is up
    }
    const pages = {
      zoo: zooPage, dataset: datasetPage, job: jobPage, model: modelPage,
      source: sourcePage, compare: comparePage,
    };
    const run = pages[PAGE];
    if (run) {
      run().catch((error) => {
        if (error instanceof ApiError && error.status === 401) return; // the key form is up
        showError($("page-error"), error);
      });
    }
  }

  // ---------------------------------------------------------------- project and role

  /** The project and role of the key (GET /v1/whoami) in the top bar; what the role may
   *  not do is hidden. A service without /v1/whoami: everything stays shown. */
  async function showWho() {
    let me;
    try {
      me = await api("/v1/whoami");
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) throw error;
      return;
    }
    $("who-project").textContent = me.project_name;
    $("who-role").textContent = me.authenticated ? me.role : `${me.role} (open service)`;
    $("who").title = me.authenticated
      ? `Key ${me.key_name || me.key_id || ""}: ${me.role} of project ${me.project_name} (${me.project_id})`
      : "No API keys on this service: everyone acts as an operator of the default project.";
    $("who").hidden = false;
    body.dataset.role = me.role;
    applyRole(me.role);
  }

  /** Hide every element marked data-needs="ROLE" that `role` does not include, saying why. */
  function applyRole(role) {
    const level = ROLES.indexOf(role);
    for (const element of document.querySelectorAll("[data-needs]")) {
      const needed = element.dataset.needs;
      if (level < 0 || level >= ROLES.indexOf(needed)) continue;
      element.hidden = true;
      const what = element.dataset.needsWhat || "do this";
      element.after(h("p", { class: "muted role-note" },
        `Your key's role (${role}) may not ${what}: that needs ${needed} or above.`));
    }
  }

  // ---------------------------------------------------------------- pages: zoo

  async function zooPage() {
    const form = $("upload-form");
    // What will be uploaded: an archive as chosen, or files with their relative paths (a
    // folder chosen or dropped), zipped here first.
    let chosen = null;
    const choose = (next) => {
      chosen = next;
      $("drop-chosen").textContent = next ? next.describe : "";
      $("upload-error").replaceChildren();
    };
    $("upload-file").addEventListener("change", () => {
      const file = $("upload-file").files[0];
      $("upload-folder").value = "";
      choose(file ? archiveChoice(file) : null);
    });
    $("upload-folder").addEventListener("change", () => {
      const files = [...$("upload-folder").files].map((f) => ({ path: f.webkitRelativePath || f.name, file: f }));
      $("upload-file").value = "";
      choose(files.length ? folderChoice(files) : null);
    });
    onDrop($("drop-zone"), $("upload-error"), (files) => {
      $("upload-file").value = "";
      $("upload-folder").value = "";
      const archive = files.length === 1 && /\.(zip|tar|tgz|gz|bz2|xz)$/i.test(files[0].path) ? files[0].file : null;
      choose(archive ? archiveChoice(archive) : files.length ? folderChoice(files) : null);
      if (!files.length) $("drop-chosen").textContent = "Nothing usable was dropped (hidden files are left out).";
    });

    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      if (!chosen) {
        fill($("upload-error"), h("p", {}, "Choose an archive or a folder, or drop one on the box."));
        return;
      }
      $("upload-button").disabled = true;
      $("upload-error").replaceChildren();
      try {
        const { blob, filename } = await chosen.body((note) => { $("upload-status").textContent = note; });
        const data = new FormData();
        data.append("file", blob, filename);
        // Only a name the user typed is sent: the service names the rest after the file and
        // numbers it where taken (a name sent is refused when taken).
        const name = $("upload-name").value.trim();
        if (name) data.append("name", name);
        $("upload-status").textContent = `Uploading ${filename} (${bytes(blob.size)}) and computing its signature…`;
        const dataset = await api("/v1/datasets", { method: "POST", form: data });
        stash(`p2l.upload.${dataset.id}`, {
          rejected: dataset.rejected, rejected_counts: dataset.rejected_counts,
          rejected_total: dataset.rejected_total,
        });
        $("upload-status").textContent = `Uploaded ${dataset.name}: ${dataset.num_images} images.`;
        location.assign(`/console/datasets/${dataset.id}`);
      } catch (error) {
        $("upload-status").textContent = "";
        showError($("upload-error"), error);
      } finally {
        $("upload-button").disabled = false;
      }
    });

    $("compare-button").addEventListener("click", compareSelected);
    const zoo = loadZoo();
    const jobs = [
      zoo,
      showImage($("zoo-map"), "/v1/sources/map.png", $("zoo-map-caption")),
      section("datasets", async () => {
        const rows = await allPages("/v1/datasets", 2);
        for (const d of rows) datasetNames.set(d.id, Promise.resolve(d.name));
        if (!rows.length) return h("p", { class: "muted" }, "No dataset yet: upload one.");
        return table([
          { label: "Name", value: (d) => datasetLink(d.id, d.name) },
          { label: "Images", value: (d) => int(d.num_images), num: true },
          { label: "Classes", value: (d) => int(d.num_classes), num: true },
          { label: "Uploaded", value: (d) => when(d.created_at) },
        ], rows);
      }),
      section("models", async () => {
        const rows = (await api("/v1/models?page_size=20")).items;
        if (!rows.length) return h("p", { class: "muted" }, "No fine-tuned model yet.");
        await zoo; // the sources' names, without a request per model
        return table([
          { label: "Model", value: (m) => modelLink(m.id, modelName(m)) },
          { label: "Source", value: (m) => namedSource(m.source_id) },
          { label: "Test acc.", value: (m) => pct(m.report && m.report.test_accuracy), num: true },
          { label: "Target", value: (m) => namedDatasetLink(m.target_dataset_id) },
          { label: "Created", value: (m) => when(m.created_at) },
        ], rows);
      }),
      section("jobs", async () => {
        const rows = (await api("/v1/jobs?page_size=10")).items;
        if (!rows.length) return h("p", { class: "muted" }, "No job yet.");
        return table([
          {
            label: "Compare",
            value: (j) => (j.kind === "finetune" ? h("input", {
              type: "checkbox", class: "compare-pick", value: j.id,
              "aria-label": `Compare job ${short(j.id)}`, onchange: syncCompare,
            }) : ""),
          },
          { label: "Job", value: (j) => jobLink(j.id) },
          { label: "Kind", value: (j) => j.kind },
          { label: "Status", value: (j) => h("span", { class: `badge ${j.status}` }, j.status) },
          { label: "Phase", value: (j) => (j.progress && (j.progress.label || words(j.progress.phase))) || dash },
          { label: "Created", value: (j) => when(j.created_at) },
        ], rows);
      }),
    ];
    await Promise.all(jobs);
  }

  const bytes = (n) => (n >= 1048576 ? `${(n / 1048576).toFixed(1)} MiB` : `${Math.max(1, Math.round(n / 1024))} KiB`);

  function archiveChoice(file) {
    return {
      describe: `Archive ${file.name} (${bytes(file.size)}).`,
      body: async () => ({ blob: file, filename: file.name }),
    };
  }

  /** Files with relative paths (class/img.png, or top/class/img.png): zipped on upload. */
  function folderChoice(files) {
    const kept = files.filter((f) => !hiddenPath(f.path));
    const tops = new Set(kept.map((f) => f.path.split("/")[0]));
    const top = tops.size === 1 && kept.every((f) => f.path.includes("/")) ? [...tops][0] : "";
    const classes = new Set(kept.map((f) => {
      const parts = f.path.split("/");
      return parts.length > 2 || (!top && parts.length > 1) ? parts[top ? 1 : 0] : "";
    }));
    classes.delete("");
    const name = top || "dataset";
    return {
      describe: `${top ? `Folder ${top}: ` : ""}${kept.length} file(s) in ${classes.size} class folder(s), zipped on upload.`,
      body: async (say) => {
        say(`Zipping ${kept.length} file(s)…`);
        return { blob: await zipFiles(kept), filename: `${name}.zip` };
      },
    };
  }

  /** Hidden files and folders (.DS_Store, .git/, __MACOSX/) are not part of a dataset. */
  const hiddenPath = (path) => path.split("/").some((part) => part.startsWith(".") || part === "__MACOSX");

  /** Every file dropped, with its path below what was dropped (folders walked). */
  async function droppedFiles(transfer) {
    const entries = [...(transfer.items || [])]
      .map((item) => (item.webkitGetAsEntry ? item.webkitGetAsEntry() : null)).filter(Boolean);
    if (!entries.length) return [...(transfer.files || [])].map((file) => ({ path: file.name, file }));
    const out = [];
    async function walk(entry, prefix) {
      const path = prefix ? `${prefix}/${entry.name}` : entry.name;
      if (hiddenPath(entry.name)) return;
      if (entry.isFile) {
        out.push({ path, file: await new Promise((resolve, reject) => entry.file(resolve, reject)) });
        return;
      }
      const reader = entry.createReader();
      for (;;) { // readEntries answers in batches (100 in Chromium) until an empty one
        const batch = await new Promise((resolve, reject) => reader.readEntries(resolve, reject));
        if (!batch.length) break;
        for (const child of batch) await walk(child, path);
      }
    }
    for (const entry of entries) await walk(entry, "");
    return out;
  }

  // A zip with every file "stored" (no compression: images are compressed already), CRC-32
  // per file; no zip64, so at most 65,535 files and 4 GiB (the server's limits are lower).
  const CRC_TABLE = (() => {
    const table = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      table[n] = c >>> 0;
    }
    return table;
  })();

  function crc32(data) {
    let c = 0xffffffff;
    for (let i = 0; i < data.length; i++) c = CRC_TABLE[(c ^ data[i]) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  }

  async function zipFiles(files) {
    if (files.length > 65535) throw new Error(`${files.length} files: zip them yourself (at most 65,535 here)`);
    const encoder = new TextEncoder();
    const parts = [];
    const central = [];
    let offset = 0;
    // Without the zip64 extension offsets and sizes are 32-bit: past 4 GiB they would wrap.
    const total = files.reduce((n, { path, file }) => n + file.size + 76 + 2 * path.length * 3, 22);
    if (total >= 2 ** 32) throw new Error(`${bytes(total)} of files: zip them yourself (at most 4 GiB here)`);
    const DOS_TIME = 0; // 00:00:00
    const DOS_DATE = (2020 - 1980) << 9 | 1 << 5 | 1; // 2020-01-01: the date does not matter
    for (const { path, file } of files) {
      const name = encoder.encode(path);
      // Read once for its CRC, then sent from the file itself (a Blob part): the zip holds
      // no second copy of the images in memory.
      const crc = crc32(new Uint8Array(await file.arrayBuffer()));
      const length = file.size;
      const local = new DataView(new ArrayBuffer(30));
      local.setUint32(0, 0x04034b50, true);
      local.setUint16(4, 20, true); // version needed: 2.0
      local.setUint16(6, 0x0800, true); // names in UTF-8
      local.setUint16(8, 0, true); // stored
      local.setUint16(10, DOS_TIME, true);
      local.setUint16(12, DOS_DATE, true);
      local.setUint32(14, crc, true);
      local.setUint32(18, length, true);
      local.setUint32(22, length, true);
      local.setUint16(26, name.length, true);
      local.setUint16(28, 0, true);
      const entry = new DataView(new ArrayBuffer(46));
      entry.setUint32(0, 0x02014b50, true);
      entry.setUint16(4, 20, true);
      entry.setUint16(6, 20, true);
      entry.setUint16(8, 0x0800, true);
      entry.setUint16(10, 0, true);
      entry.setUint16(12, DOS_TIME, true);
      entry.setUint16(14, DOS_DATE, true);
      entry.setUint32(16, crc, true);
      entry.setUint32(20, length, true);
      entry.setUint32(24, length, true);
      entry.setUint16(28, name.length, true);
      entry.setUint32(42, offset, true); // extra, comment, disk, attributes: 0
      parts.push(local, name, file);
      central.push(entry, name);
      offset += 30 + name.length + length;
    }
    const size = central.reduce((n, part) => n + part.byteLength, 0);
    const end = new DataView(new ArrayBuffer(22));
    end.setUint32(0, 0x06054b50, true);
    end.setUint16(8, files.length, true);
    end.setUint16(10, files.length, true);
    end.setUint32(12, size, true);
    end.setUint32(16, offset, true);
    return new Blob([...parts, ...central, end], { type: "application/zip" });
  }

  /** Fill the element `id` with what `build` makes, or with the reason it failed. */
  async function section(id, build) {
    try {
      fill($(id), await build());
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) throw error;
      fill($(id), h("p", { class: "error" }, error.message));
    }
  }

  async function loadZoo() {
    await section("sources", async () => {
      const rows = await allPages("/v1/sources");
      rows.sort((a, b) => a.name.localeCompare(b.name));
      for (const s of rows) sourceNames.set(s.id, Promise.resolve(s.name));
      $("sources-count").textContent = `(${rows.length})`;
      if (!rows.length) return h("p", { class: "muted" }, "The zoo is empty.");
      return table([
        { label: "Name", value: (s) => sourceLink(s.id, s.name) },
        { label: "Architecture", value: (s) => `${s.architecture} · ${s.input_size} px` },
        { label: "Images", value: (s) => int(s.num_images), num: true },
        { label: "Classes", value: (s) => int(s.num_classes), num: true },
        { label: "Origin", value: (s) => s.origin },
      ], rows, { caption: "Sources in the zoo" });
    });
  }

  // ---------------------------------------------------------------- pages: dataset

  async function datasetPage() {
    const dataset = await api(`/v1/datasets/${ID}`);
    document.title = `${dataset.name} · P2L`;
    $("dataset-title").textContent = dataset.name;
    $("dataset-meta").textContent =
      `${int(dataset.num_images)} images in ${dataset.num_classes} classes · uploaded ${when(dataset.created_at)} · id ${dataset.id}`;

    const upload = unstash(`p2l.upload.${ID}`);
    if (upload && upload.rejected_total) {
      const counts = Object.entries(upload.rejected_counts || {}).map(([k, n]) => `${k}: ${n}`).join(", ");
      fill($("upload-report"), notice(
        `${upload.rejected_total} file(s) were left out of the upload (${counts})`,
        (upload.rejected || []).slice(0, 10).map((r) => `${r.path}: ${r.reason}`),
      ));
    }

    const most = Math.max(1, ...dataset.classes.map((c) => c.count));
    fill($("classes"), table([
      { label: "Class", value: (c) => c.name },
      { label: "Images", value: (c) => h("span", {}, int(c.count), h("span", { class: "countbar", style: { width: `${Math.round(60 * c.count / most)}px` }, "aria-hidden": "true" })), num: true },
    ], dataset.classes, { caption: "Classes and their image counts" }));

    $("compare-button").addEventListener("click", compareSelected);
    const estimate = setUpFinetuneForm();
    $("rank-form").addEventListener("submit", (event) => {
      event.preventDefault();
      rank().then(estimate).catch((error) => showError($("rank-error"), error));
    });

    await Promise.all([
      // A ranking made before (this visit's or another's): shown again, its top chosen.
      latestRanking().then((shown) => { if (!shown) return fillSourceChoices(null); }).then(estimate),
      showImage($("target-map"), `/v1/sources/map.png?target_dataset_id=${ID}`, $("target-map-caption")),
      section("dataset-models", async () => {
        const rows = (await allPages("/v1/models", 3)).filter((m) => m.target_dataset_id === ID);
        if (!rows.length) return h("p", { class: "muted" }, "None yet.");
        return table([
          {
            label: "Compare",
            value: (m) => h("input", {
              type: "checkbox", class: "compare-pick", value: m.job_id,
              "aria-label": `Compare the job of model ${modelName(m)}`, onchange: syncCompare,
            }),
          },
          { label: "Model", value: (m) => modelLink(m.id, modelName(m)) },
          { label: "Source", value: (m) => namedSource(m.source_id) },
          { label: "Schedule", value: (m) => (m.report && m.report.schedule && m.report.schedule.chosen_by) || dash },
          { label: "Test acc.", value: (m) => pct(m.report && m.report.test_accuracy), num: true },
          { label: "Time", value: (m) => duration(m.report && m.report.seconds), num: true },
          { label: "Job", value: (m) => jobLink(m.job_id) },
          { label: "Created", value: (m) => when(m.created_at) },
        ], rows, { caption: "Models fine-tuned on this dataset" });
      }),
    ]);
  }

  function compareSelected() {
    const jobs = [...document.querySelectorAll(".compare-pick:checked")].map((box) => box.value);
    location.assign(`/console/compare?jobs=${jobs.join(",")}`);
  }

  function syncCompare() {
    const picked = document.querySelectorAll(".compare-pick:checked").length;
    $("compare-button").disabled = picked < 2 || picked > MAX_COMPARED;
    $("compare-button").textContent = picked >= 2 ? `Compare ${picked} jobs` : "Compare selected jobs";
  }

  /** Show the dataset's newest stored ranking, if any; true when one was shown. */
  async function latestRanking() {
    try {
      const page = await api(`/v1/rankings?target_dataset_id=${ID}&page_size=1`);
      if (!page.items.length) return false;
      const ranking = await api(`/v1/rankings/${page.items[0].id}`);
      await showRanking(ranking, `Newest ranking, made ${when(ranking.created_at)}: `);
      return true;
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) throw error;
      return false; // an older service without the listing: rank anew
    }
  }

  /** The source select: after a ranking, its sources by rank with the top one chosen;
   *  before, every source by name and nothing chosen (not a silent "best"). */
  async function fillSourceChoices(ranking) {
    const select = $("ft-source");
    const options = [];
    const others = [
      h("option", { value: "best" }, "best: rank the zoo when the job starts, take the top"),
      h("option", { value: "race" }, "race: P2L's top 3 race in short fine-tunes"),
    ];
    if (ranking && ranking.results.length) {
      options.push(h("optgroup", { label: `Ranked by ${ranking.method}` },
        ranking.results.map((r) => h("option", { value: r.source_id }, `#${r.rank} ${r.name || short(r.source_id)} (score ${num(r.score)})`))));
      options.push(h("optgroup", { label: "Or let the service choose" }, others));
    } else {
      options.push(h("option", { value: "", disabled: true }, "Rank the zoo first, or choose a source"));
      options.push(h("optgroup", { label: "Let the service choose" }, others));
      try {
        const sources = await allPages("/v1/sources");
        sources.sort((a, b) => a.name.localeCompare(b.name));
        for (const s of sources) sourceNames.set(s.id, Promise.resolve(s.name));
        options.push(h("optgroup", { label: "Sources by name" },
          sources.map((s) => h("option", { value: s.id }, `${s.name} (${s.architecture})`))));
      } catch (error) {
        if (error instanceof ApiError && error.status === 401) throw error;
      }
    }
    const before = select.value;
    select.replaceChildren(...options);
    if (ranking && ranking.results.length) select.value = ranking.results[0].source_id;
    else if (before && [...select.options].some((o) => o.value === before)) select.value = before;
    else select.value = "";
  }

  async function rank() {
    $("rank-button").disabled = true;
    $("rank-error").replaceChildren();
    $("rank-status").textContent = "Ranking the zoo…";
    try {
      // The top 30 are what a person reads (and what the chart can label).
      const request = { target_dataset_id: ID, method: $("rank-method").value, top_k: 30 };
      if ($("rank-refine").value) request.refine = { method: $("rank-refine").value, top: 3 };
      const ranking = await api("/v1/rankings", { method: "POST", json: request });
      await showRanking(ranking, "");
    } catch (error) {
      $("rank-status").textContent = "";
      throw error;
    } finally {
      $("rank-button").disabled = false;
    }
  }

  async function showRanking(ranking, prefix) {
    const took = ranking.elapsed_ms !== null && ranking.elapsed_ms !== undefined ? ` in ${num(ranking.elapsed_ms, 1)} ms` : "";
    const refine = ranking.refine;
    const second = refine
      ? ` Second stage: ${refine.method} over the top ${refine.top}, ${refine.forward_passes} forward passes, ${num(refine.seconds, 2)} s.`
      : "";
    $("rank-status").textContent =
      `${prefix}${ranking.results.length} source(s) ranked by ${ranking.method} (${ranking.measure}, lambda ${ranking.params.lambda})${took}.${second}`;
    showCoverage(ranking);
    // The first stage is P2L's, or the learned ranker's; each result keeps P2L's rank then.
    const firstStage = ranking.method === "learned" ? "Learned" : "P2L";
    const p2lRanks = ranking.results.some((r) => r.p2l_rank);
    const nodes = [];
    if (!ranking.results.length) nodes.push(h("p", { class: "muted" }, "No source could be ranked."));
    else {
      // After a second stage its score sets the order: it comes first, beside the rank the
      // first stage gave, so the P2L score column is not read as the order's.
      nodes.push(table([
        { label: "Rank", value: (r) => r.rank, num: true },
        { label: "Source", value: (r) => sourceLink(r.source_id, r.name || short(r.source_id)) },
        ...(refine ? [
          { label: `${refine.method} score`, value: (r) => (r.refine_score === null || r.refine_score === undefined ? dash : num(r.refine_score)), num: true },
          { label: `${firstStage} rank`, value: (r) => r.first_stage_rank || dash, num: true },
        ] : []),
        ...(p2lRanks ? [{ label: "P2L rank", value: (r) => r.p2l_rank || dash, num: true }] : []),
        { label: refine ? `${firstStage} score` : "Score", value: (r) => num(r.score), num: true },
        { label: "Expected gain over scratch", value: (r) => gainText(r.gain) },
        { label: "Distance", value: (r) => num(r.distance), num: true },
        { label: "Similarity", value: (r) => num(r.similarity), num: true },
        { label: "Size term", value: (r) => num(r.size_term), num: true },
        { label: "Images", value: (r) => int(r.num_images), num: true },
      ], ranking.results, { caption: "Ranking", rowClass: (r) => (r.rank === 1 ? "best" : null) }));
    }
    if (ranking.excluded && ranking.excluded.length) {
      nodes.push(notice(`${ranking.excluded.length} source(s) left out`,
        ranking.excluded.map((e) => `${e.name}: ${e.reason}`)));
    }
    fill($("ranking"), nodes);
    $("ranking-figure").hidden = false;
    await Promise.all([
      showImage($("ranking-chart"), `/v1/rankings/${ranking.id}/plot.png`, $("ranking-caption")),
      fillSourceChoices(ranking),
    ]);
  }

  /** An expected gain over training from scratch, in accuracy points with its interval. */
  function gainText(gain) {
    if (!gain) return dash;
    const points = (x) => `${x >= 0 ? "+" : ""}${(100 * x).toFixed(1)}`;
    return `${points(gain.expected)} points [${points(gain.low)}, ${points(gain.high)}]`;
  }

  /** How well the zoo covers the target, what a learned ranking learned from; where the
   * zoo does not cover the target, the baseline is ticked, as "best" would turn it on. */
  function showCoverage(ranking) {
    const nodes = [];
    const learned = ranking.learned;
    if (learned) {
      nodes.push(learned.used
        ? h("p", {}, `Learned from ${learned.targets} past target(s): ${learned.bundled_targets} of the bundled benchmark, ${learned.targets - learned.bundled_targets} of this service (${learned.jobs} fine-tunes); ${learned.without_record} source(s) without a record scored from distance and size.`)
        : notice("P2L's ranking kept", [learned.fallback]));
    }
    if (learned && learned.bundled_pending) nodes.push(h("p", { class: "muted" }, learned.bundled_pending));
    const coverage = ranking.coverage;
    if (coverage && coverage.covered === true) {
      nodes.push(h("p", {}, `The zoo covers this target: its nearest source is closer than ${pct(1 - coverage.percentile)} of ${coverage.past_targets} past targets' nearest sources were.`));
    } else if (coverage && coverage.covered === false) {
      nodes.push(notice("The zoo does not cover this target well", [coverage.recommendation]));
      $("ft-baseline").checked = true;
    } else if (coverage) {
      nodes.push(h("p", { class: "muted" }, `Coverage not judged: ${coverage.past_targets} past target(s) to judge it against.`));
    }
    fill($("rank-coverage"), nodes);
  }

  /** What the fine-tune form asks for, as POST /v1/finetunes takes it. */
  function finetuneRequest() {
    const form = $("finetune-form");
    const schedule = form.elements.schedule.value;
    const request = {
      target_dataset_id: ID,
      source_id: $("ft-source").value,
      schedule,
      epochs: Number($("ft-epochs").value),
      baseline: $("ft-baseline").checked,
    };
    // Left empty, the service names the model after target and source.
    const modelName = $("ft-model-name").value.trim();
    if (modelName) request.model_name = modelName;
    // The auto schedule refuses manual settings (422) rather than ignore them.
    if (schedule === "auto") request.auto_epochs = Number($("ft-auto-epochs").value);
    else request.decay = Number($("ft-decay").value);
    return request;
  }

  /** Set the form up; returns the function that refreshes its estimate. */
  function setUpFinetuneForm() {
    const form = $("finetune-form");
    const sync = () => {
      const manual = form.elements.schedule.value === "manual";
      $("ft-decay-field").hidden = !manual;
      $("ft-auto-epochs-field").hidden = manual;
    };
    for (const radio of form.querySelectorAll("input[name=schedule]")) radio.addEventListener("change", sync);
    sync();

    // The estimate before the start: a dry run of the same request (nothing is stored),
    // once the form has been still for a moment; answers to older states are dropped.
    let asked = 0;
    let timer = null;
    const box = $("finetune-estimate");
    async function estimate() {
      const mine = ++asked;
      if (form.hidden) return; // a viewer: no form, nothing to estimate
      const request = finetuneRequest();
      if (!request.source_id) {
        fill(box, h("span", { class: "muted" }, "Choose a source to see the estimate."));
        return;
      }
      if (!form.checkValidity()) {
        fill(box, h("span", { class: "muted" }, "Fix the form to see the estimate."));
        return;
      }
      box.dataset.state = "asking";
      fill(box, h("span", { class: "muted" }, "Estimating…"));
      try {
        const answer = await api("/v1/finetunes?dry_run=true", { method: "POST", json: request });
        if (mine !== asked) return;
        box.dataset.state = "shown";
        const warnings = [...new Set(answer.warnings || [])];
        fill(box,
          h("strong", {}, `Expected run time: ${duration(answer.seconds)}`),
          h("span", { class: "muted" },
            ` · ${int(answer.epochs_planned)} epochs at most, ${int(answer.train_images)} training images, ${answer.architecture} at ${answer.input_size} px (${answer.basis})`),
          warnings.length ? h("ul", { class: "warnings" }, warnings.map((w) => h("li", {}, w))) : null);
      } catch (error) {
        if (mine !== asked) return;
        if (error instanceof ApiError && error.status === 401) return;
        box.dataset.state = "error";
        fill(box, h("span", { class: "error" }, `No estimate: ${error.message}`));
      }
    }
    const soon = () => {
      clearTimeout(timer);
      timer = setTimeout(() => { estimate().catch(() => {}); }, 400);
    };
    form.addEventListener("input", soon);
    form.addEventListener("change", soon);

    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const request = finetuneRequest();
      $("finetune-button").disabled = true;
      $("finetune-error").replaceChildren();
      $("finetune-status").textContent = "Checking the request and queueing the job…";
      try {
        const job = await api("/v1/finetunes", { method: "POST", json: request });
        stash(`p2l.job.${job.id}`, { estimate: job.estimate || null, warnings: job.warnings || [] });
        $("finetune-status").textContent = `Job ${short(job.id)} queued.`;
        location.assign(`/console/jobs/${job.id}`);
      } catch (error) {
        $("finetune-status").textContent = "";
        showError($("finetune-error"), error);
      } finally {
        $("finetune-button").disabled = false;
      }
    });
    return () => { clearTimeout(timer); return estimate().catch(() => {}); };
  }

  // ---------------------------------------------------------------- pages: job

  /** Read a server-sent event stream with fetch (EventSource cannot send the key). */
  async function readEvents(response, onEvent) {
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer = (buffer + value).replace(/\r\n?/g, "\n");
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        let name = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (!line || line.startsWith(":")) continue;
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          let text = colon < 0 ? "" : line.slice(colon + 1);
          if (text.startsWith(" ")) text = text.slice(1);
          if (field === "event") name = text;
          else if (field === "data") data.push(text);
        }
        if (!data.length) continue;
        let parsed;
        try { parsed = JSON.parse(data.join("\n")); } catch (_) { parsed = data.join("\n"); }
        if (onEvent(name, parsed) === false) {
          await reader.cancel();
          return;
        }
      }
    }
  }

  async function jobPage() {
    let job = await api(`/v1/jobs/${ID}`);
    let candidate = null;
    let updates = 0;
    let drawnEpochs = 0;
    const seen = []; // event names, in order (for people debugging, and the console test)
    window.p2lJobEvents = seen;

    const stashed = unstash(`p2l.job.${ID}`) || {};
    fill($("job-estimate"), estimateNotice(job.estimate || stashed.estimate, job.warnings || stashed.warnings));

    $("cancel-button").addEventListener("click", async () => {
      $("cancel-button").disabled = true;
      try {
        job = await api(`/v1/jobs/${ID}/cancel`, { method: "POST" });
        render();
      } catch (error) {
        showError($("job-error"), error);
        $("cancel-button").disabled = TERMINAL.includes(job.status);
      }
    });

    function render() {
      const p = job.progress || {};
      const ended = TERMINAL.includes(job.status);
      document.title = `Job ${short(job.id)} (${job.status}) · P2L`;
      $("job-title").textContent = `${job.kind === "evaluate" ? "Evaluation" : "Fine-tune"} job ${short(job.id)}`;
      $("job-crumb").textContent = `job ${short(job.id)}`;
      const badge = $("job-status");
      badge.textContent = job.status;
      badge.className = `badge ${job.status}`;
      let phase = p.label || words(p.phase);
      if (!p.label && candidate && p.phase === "auto_search" && !ended) phase += ` (candidate ${candidate})`;
      $("job-phase").textContent = phase || dash;
      const planned = p.epochs_planned;
      const done = p.epochs_done || 0;
      const bar = $("job-progress");
      if (planned) {
        bar.max = planned;
        bar.value = job.status === "succeeded" ? planned : Math.min(done, planned);
        $("job-epochs").textContent = `${done} of ${planned}${ended ? "" : " (at most; early stopping may end sooner)"}`;
      } else if (ended) {
        bar.max = 1;
        bar.value = job.status === "succeeded" ? 1 : 0;
        $("job-epochs").textContent = done ? String(done) : dash;
      } else {
        bar.removeAttribute("value"); // indeterminate until the plan is known
        $("job-epochs").textContent = done ? String(done) : dash;
      }
      bar.setAttribute("aria-valuetext", planned ? `${done} of ${planned} epochs` : job.status);
      $("job-elapsed").textContent = duration(p.elapsed_seconds);
      $("job-eta").textContent = ended ? dash : duration(p.eta_seconds);
      const phaseEpochs = plannedEpochs(job, p.phase) || p.epochs;
      const step = !ended && p.step && p.steps_per_epoch
        ? `${words(p.phase)}: epoch ${p.epoch || "?"}${phaseEpochs ? ` of ${phaseEpochs}` : ""}, step ${p.step} of ${p.steps_per_epoch}`
        : "";
      $("job-step").textContent = step;
      $("cancel-button").disabled = ended || job.cancel_requested;
      $("job-error").textContent = job.error || "";

      const history = numberCandidates(p.history || []);
      if (history.length) {
        fill($("job-metrics"), table([
          { label: "Phase", value: (m) => words(m.phase) + (m.candidate ? ` #${m.candidate}` : "") },
          { label: "Epoch", value: (m) => m.epoch, num: true },
          { label: "Train loss", value: (m) => num(m.train_loss), num: true },
          { label: "Train acc.", value: (m) => pct(m.train_accuracy), num: true },
          { label: "Val. acc.", value: (m) => pct(m.val_accuracy), num: true },
          { label: "Seconds", value: (m) => num(m.seconds, 2), num: true },
        ], history, { caption: "Per-epoch metrics" }));
        const wrap = $("job-metrics");
        wrap.scrollTop = wrap.scrollHeight; // follow the newest epoch
        if (history.length !== drawnEpochs) { // redrawn as epochs arrive, not every step
          drawnEpochs = history.length;
          fill($("job-curves"), curves(historyRuns(history)));
        }
      }

      const params = job.params || {};
      const options = params.options || {};
      const source = params.race ? params.source_name : isId(params.source_id)
        ? sourceLink(params.source_id, params.source_name || short(params.source_id)) : params.source_name || dash;
      const chosen = {
        p2l: "picked by P2L (best)", given: "chosen by hand", race: "the survivor is fine-tuned",
      }[params.chosen_by];
      const pairs = [
        ["Target", params.target_dataset_id ? namedDatasetLink(params.target_dataset_id) : dash],
        ["Source", chosen ? h("span", {}, source, `, ${chosen}`) : source],
        ["Schedule", options.schedule || dash],
      ];
      const shown = options.schedule === "manual"
        ? ["epochs", "decay", "freeze_below", "base_lr", "baseline"]
        : ["epochs", "auto_epochs", "base_lr", "baseline"];
      for (const name of shown) {
        if (options[name] !== undefined && options[name] !== null) pairs.push([name.replaceAll("_", " "), String(options[name])]);
      }
      pairs.push(["Created", when(job.created_at)], ["Started", when(job.started_at)],
        ["Finished", when(job.finished_at)], ["Attempts", String(job.attempts ?? dash)]);
      fill($("job-params"), facts(pairs));

      if (ended) {
        const nodes = [];
        if (job.status === "succeeded" && job.model_id) {
          const r = job.result || {};
          nodes.push(h("p", { class: "big" }, `Test accuracy ${pct(r.test_accuracy)}`),
            h("p", {}, modelLink(job.model_id, "Open the model and its report →")));
        } else if (job.status === "succeeded" && job.kind === "evaluate") {
          nodes.push(h("p", {}, `Accuracy ${pct((job.result || {}).accuracy)} on ${int((job.result || {}).images)} images.`));
        } else {
          nodes.push(h("p", {}, `The job ${job.status}.`));
        }
        fill($("job-end"), nodes);
      }
    }

    function fold(name, data) {
      seen.push(name);
      const p = (job.progress = job.progress || {});
      switch (name) {
        case "job":
        case "progress": // older servers: the whole job on every change
          if (data && data.id) job = data;
          break;
        case "status":
          Object.assign(job, pick(data, ["status", "attempts", "worker_id"]));
          refresh(); // started_at, error: rare enough to re-read the whole job
          break;
        case "phase":
          Object.assign(p, pick(data, ["phase", "label", "epochs", "epochs_done", "epochs_planned"]));
          p.step = null;
          candidate = data.candidate_index ? `${data.candidate_index} of ${data.candidates ?? "?"}` : null;
          break;
        case "epoch":
          p.history = [...(p.history || []), { phase: data.phase, epoch: data.epoch, ...(data.metrics || {}) }];
          Object.assign(p, pick(data, ["phase", "epoch", "epochs", "epochs_done", "epochs_planned", "elapsed_seconds", "eta_seconds"]));
          p.step = null;
          break;
        case "step":
          Object.assign(p, pick(data, ["phase", "epoch", "step", "steps_per_epoch", "epochs_done", "epochs_planned", "eta_seconds"]));
          break;
        case "end":
          if (data && data.id) job = data;
          else if (data && data.status) job.status = data.status;
          break;
        default:
          return;
      }
      if (name !== "job" && name !== "end") updates += 1;
      $("job-live").dataset.updates = String(updates);
      $("job-live").textContent = `Live: ${updates} update(s) received from the event stream.`;
      render();
    }

    async function refresh() {
      try {
        const fresh = await api(`/v1/jobs/${ID}`);
        if (TERMINAL.includes(job.status)) return; // ended meanwhile: that state is final
        // The stream may be ahead of this read: keep its progress unless the job ended.
        job = TERMINAL.includes(fresh.status) ? fresh : { ...fresh, progress: job.progress };
        render();
      } catch (_) { /* the stream goes on */ }
    }

    render();
    if (TERMINAL.includes(job.status)) {
      $("job-live").textContent = "The job had ended when this page opened.";
      return;
    }
    await follow();

    async function follow() {
      for (let attempt = 0; attempt < 20 && !TERMINAL.includes(job.status); attempt++) {
        let ended = false;
        try {
          const response = await request(`/v1/jobs/${ID}/events`, { headers: { Accept: "text/event-stream" } });
          await readEvents(response, (name, data) => {
            fold(name, data);
            if (name === "end") { ended = true; return false; }
            return name !== "timeout";
          });
        } catch (error) {
          if (fatal(error)) throw error;
          // Stream refused (503) or cut: poll instead, then try the stream again.
          await poll(10, 1000, `Event stream unavailable (${error.message}); polling.`);
        }
        if (ended) break;
      }
      // The final state, whatever the stream's `end` carried (older servers: only a status).
      await reread();
      // A job queued for long times out every stream, and a refusing service fails them:
      // after 20 tries, follow it by polling until it ends, however long that takes.
      await poll(Infinity, 5000, "The event stream keeps closing before the job ends; checking every 5 s.");
    }

    /** Re-read the job every `delay` ms, `rounds` times at most, until it ends. */
    async function poll(rounds, delay, note) {
      if (TERMINAL.includes(job.status)) return;
      $("job-live").textContent = note;
      for (let i = 0; i < rounds && !TERMINAL.includes(job.status); i++) {
        await new Promise((resolve) => setTimeout(resolve, delay));
        if (await reread()) $("job-live").textContent = note;
      }
    }

    /** GET the job; a passing failure (a restart, the network) is shown, and following goes on. */
    async function reread() {
      try {
        job = await api(`/v1/jobs/${ID}`);
        render();
        return true;
      } catch (error) {
        if (fatal(error)) throw error;
        $("job-live").textContent = `Cannot read the job (${error.message}); trying again.`;
        return false;
      }
    }
  }

  /** Errors that following a job cannot outlast: no key (the form is up), or no such job. */
  function fatal(error) {
    return error instanceof ApiError && (error.status === 401 || error.status === 404);
  }

  /** Epochs a fine-tune's phase plans, from what was asked (progress may lag a phase);
   *  an auto-search trial's own length comes with its progress (halving's trials differ). */
  function plannedEpochs(job, phase) {
    const options = (job.params && job.params.options) || {};
    if (phase === "fine_tune" || phase === "baseline") return options.epochs;
    return null;
  }

  /** Auto-search epochs restart at 1 for each trial: number the trials (older jobs did not
   *  store the number with each epoch). */
  function numberCandidates(history) {
    let candidate = 0;
    return history.map((m) => {
      if (m.phase !== "auto_search") return m;
      if (m.epoch === 1 || candidate === 0) candidate += 1;
      return { ...m, candidate: m.candidate_index || candidate };
    });
  }

  function pick(data, names) {
    const out = {};
    for (const name of names) if (data && data[name] !== undefined) out[name] = data[name];
    return out;
  }

  // ---------------------------------------------------------------- pages: model

  async function modelPage() {
    const model = await api(`/v1/models/${ID}`);
    const report = model.report || {};
    const evaluation = report.evaluation || null;
    document.title = `Model ${modelName(model)} · P2L`;
    $("model-title").textContent = `Model ${modelName(model)} · ${model.architecture}`;
    $("model-crumb").textContent = `model ${modelName(model)}`;

    const schedule = report.schedule || {};
    const scheduleText = schedule.chosen_by
      ? `${schedule.chosen_by}: base lr ${schedule.base_lr}, ${schedule.multipliers ? `multipliers ${schedule.multipliers.join(", ")}` : `decay ${schedule.decay}`}${schedule.freeze_below ? `, first ${schedule.freeze_below} group(s) frozen` : ""}`
      : dash;
    const baseline = report.baseline;
    fill($("model-summary"), facts([
      ["Test accuracy", h("strong", { class: "big" }, pct(report.test_accuracy))],
      ["Validation accuracy", pct(report.val_accuracy)],
      evaluation ? ["Macro F1", `${num(evaluation.macro_f1)} (on the ${evaluation.split} split, ${int(evaluation.images)} images)`] : null,
      ["Per-class figures on", report.evaluated_on || dash],
      ["Schedule", scheduleText],
      schedule.reason ? ["Why this schedule", schedule.reason] : null,
      report.race ? ["Why this source", `${report.race.reason}${report.race.cost ? `; the race cost ${Math.round(100 * report.race.cost.fraction_of_every_source)}% of fine-tuning all ${report.race.contestants.length} (planned epochs)` : ""}`] : null,
      baseline ? ["From scratch", `${pct(baseline.test_accuracy)} test accuracy; transfer gain ${baseline.transfer_gain === null || baseline.transfer_gain === undefined ? dash : `${baseline.transfer_gain >= 0 ? "+" : ""}${(100 * baseline.transfer_gain).toFixed(1)} points`}`] : null,
      ["Split", `${int(report.train_images)} train · ${int(report.val_images)} validation · ${int(report.test_images)} test images`],
      ["Training time", duration(report.seconds)],
      ["Source", sourceLabel(model.source_id)],
      ["Target dataset", namedDatasetLink(model.target_dataset_id)],
      ["Job", jobLink(model.job_id)],
      ["Input", `${model.input_size} px · ${model.class_names.length} classes`],
      ["Created", when(model.created_at)],
    ]));
    if (report.warnings && report.warnings.length) fill($("model-warnings"), notice("Warnings", report.warnings));

    if (report.groups && report.groups.length) {
      fill($("model-groups"), table([
        { label: "Group", value: (g) => g.group },
        { label: "Parameters", value: (g) => int(g.parameters), num: true },
        { label: "Learning rate", value: (g) => (g.frozen ? "frozen" : rate(g.lr)), num: true },
      ], report.groups, { caption: "Layer groups" }));
    }

    perClass(model, report, evaluation);
    confusion(model, report, evaluation);
    misclassified(model, evaluation);
    tryIt(model);
    const baselineEpochs = (baseline && baseline.history) || [];
    if ((report.history && report.history.length) || baselineEpochs.length) {
      fill($("model-curves"), curves(historyRuns(report.history, baselineEpochs)));
    }
    if (report.history && report.history.length) {
      fill($("model-history"), table([
        { label: "Phase", value: (m) => words(m.phase) },
        { label: "Epoch", value: (m) => m.epoch, num: true },
        { label: "Train loss", value: (m) => num(m.train_loss), num: true },
        { label: "Train acc.", value: (m) => pct(m.train_accuracy), num: true },
        { label: "Val. acc.", value: (m) => pct(m.val_accuracy), num: true },
        { label: "Seconds", value: (m) => num(m.seconds, 2), num: true },
      ], report.history, { caption: "Training history" }));
    }

    const buttons = [
      ["download-weights", `/v1/models/${ID}/weights`, `model-${ID}.safetensors`],
      ["export-onnx", `/v1/models/${ID}/export?format=onnx`, `model-${ID}-onnx.zip`],
      ["export-torchscript", `/v1/models/${ID}/export?format=torchscript`, `model-${ID}-torchscript.zip`],
    ];
    for (const [id, path, name] of buttons) {
      $(id).addEventListener("click", async () => {
        $(id).disabled = true;
        $("download-error").replaceChildren();
        $("download-status").textContent = "Preparing the download…";
        try {
          const saved = await download(path, name);
          $("download-status").textContent = `Downloaded ${saved}.`;
        } catch (error) {
          $("download-status").textContent = "";
          showError($("download-error"), error);
        } finally {
          $(id).disabled = false;
        }
      });
    }

    if (model.registered_source_id) registered(model.registered_source_id);
    $("register-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const name = $("register-name").value.trim();
      $("register-button").disabled = true;
      $("register-error").replaceChildren();
      try {
        const source = await api(`/v1/models/${ID}/register`, { method: "POST", json: name ? { name } : {} });
        registered(source.id, source.name);
      } catch (error) {
        showError($("register-error"), error);
        $("register-button").disabled = false;
      }
    });
  }

  function sourceLabel(sourceId) {
    const anchor = sourceLink(sourceId);
    const span = h("span", {}, anchor);
    api(`/v1/sources/${sourceId}`)
      .then((s) => {
        anchor.textContent = s.name;
        span.append(` (${s.architecture}, ${int(s.num_images)} images)`);
      })
      .catch(() => { span.replaceChildren(`${short(sourceId)} (no longer in the zoo)`); });
    return span;
  }

  /** The "try it" box: images dropped or chosen are classified by the model (top 3 each). */
  function tryIt(model) {
    const zone = $("try-zone");
    const LIMIT = 32; // per request: thumbnails and answers a person reads at once
    async function classify(files) {
      const images = [...files].filter((f) => !hiddenPath(f.name)).slice(0, LIMIT);
      if (!images.length) return;
      $("try-error").replaceChildren();
      $("try-status").textContent = `Classifying ${images.length} image(s)…`;
      const data = new FormData();
      for (const file of images) data.append("files", file, file.name);
      try {
        const answer = await api(`/v1/models/${model.id}/predict?top_k=3`, { method: "POST", form: data });
        $("try-status").textContent = `${answer.predictions.length} image(s) classified${files.length > LIMIT ? ` (the first ${LIMIT} of ${files.length})` : ""}.`;
        fill($("try-results"), answer.predictions.map((prediction, k) => {
          const img = h("img", { alt: prediction.filename, hidden: true });
          showBlob(img, images[k]).catch(() => { img.replaceWith(h("span", { class: "muted" }, "(no preview)")); });
          return h("figure", { class: "prediction" }, img, h("figcaption", {},
            h("span", { class: "muted" }, prediction.filename),
            h("ol", { class: "top-labels" }, prediction.top.map((t) => h("li", {},
              h("span", { class: "label" }, t.label), " ", h("span", { class: "prob" }, pct(t.probability)),
              h("span", { class: "probbar", style: { width: `${Math.round(100 * t.probability)}%` }, "aria-hidden": "true" }))))));
        }));
      } catch (error) {
        $("try-status").textContent = "";
        showError($("try-error"), error);
      }
    }
    $("try-files").addEventListener("change", () => classify($("try-files").files));
    onDrop(zone, $("try-error"), (files) => classify(files.map((f) => f.file)));
  }

  /** Make `zone` a drop target: what is dropped (folders walked, as {path, file}) goes to
   * `use`; a failure is shown in `errorBox`. */
  function onDrop(zone, errorBox, use) {
    for (const name of ["dragenter", "dragover"]) {
      zone.addEventListener(name, (event) => { event.preventDefault(); zone.classList.add("over"); });
    }
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", async (event) => {
      event.preventDefault();
      zone.classList.remove("over");
      try {
        await use(await droppedFiles(event.dataTransfer));
      } catch (error) {
        showError(errorBox, error);
      }
    });
  }

  function registered(sourceId, name) {
    $("register-button").disabled = true;
    $("register-name").disabled = true;
    $("register-status").textContent =
      `Registered as source ${name ? `${name} ` : ""}(${short(sourceId)}): it is in the zoo and will be ranked for new targets.`;
  }

  function perClass(model, report, evaluation) {
    if (evaluation && evaluation.per_class) {
      $("per-class-note").textContent = `Precision, recall and F1 on the ${evaluation.split} split (${int(evaluation.images)} images).`;
      const rows = Object.entries(evaluation.per_class).map(([name, m]) => ({ name, ...m }));
      fill($("per-class"), table([
        { label: "Class", value: (r) => r.name },
        { label: "Precision", value: (r) => num(r.precision), num: true },
        { label: "Recall", value: (r) => num(r.recall), num: true },
        { label: "F1", value: (r) => num(r.f1), num: true },
        { label: "Support", value: (r) => int(r.support), num: true },
      ], rows, { caption: "Per-class precision, recall and F1" }));
      return;
    }
    const accuracy = report.per_class_accuracy || {};
    $("per-class-note").textContent = `Accuracy per class on the ${report.evaluated_on || "held-out"} split.`;
    fill($("per-class"), table([
      { label: "Class", value: (r) => r[0] },
      { label: "Accuracy", value: (r) => pct(r[1]), num: true },
    ], Object.entries(accuracy), { caption: "Per-class accuracy" }));
  }

  async function confusion(model, report, evaluation) {
    const names = (evaluation && evaluation.class_names) || model.class_names || [];
    const matrix = (evaluation && evaluation.confusion_matrix) || report.confusion_matrix || [];
    const shown = await showImage($("confusion-image"), `/v1/models/${ID}/confusion.png`, null);
    if (shown) return;
    // No image from this server: the same matrix as a table.
    $("confusion-figure").hidden = true;
    if (!matrix.length) {
      fill($("confusion-table"), h("p", { class: "muted" }, "No confusion matrix (no held-out split)."));
      return;
    }
    fill($("confusion-table"), h("table", {},
      h("caption", { class: "muted" }, "Rows: true class; columns: predicted class."),
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "true \\ predicted"), names.map((n) => h("th", { scope: "col", class: "num" }, n)))),
      h("tbody", {}, matrix.map((row, i) => h("tr", {}, h("th", { scope: "row" }, names[i] ?? i),
        row.map((count, j) => h("td", { class: i === j ? "num diagonal" : "num" }, count)))))));
  }

  function misclassified(model, evaluation) {
    const items = (evaluation && evaluation.misclassified) || [];
    if (!evaluation) {
      $("mis-note").textContent = "This model's report has no list of misclassified images.";
      return;
    }
    if (!items.length) {
      $("mis-note").textContent = `None: every image of the ${evaluation.split} split was classified correctly.`;
      return;
    }
    const limit = 48;
    $("mis-note").textContent =
      `${evaluation.misclassified_total ?? items.length} image(s) of the ${evaluation.split} split were misclassified; the most confident mistakes first${items.length > limit ? ` (first ${limit} shown)` : ""}.`;
    fill($("misclassified"), items.slice(0, limit).map((item, k) => {
      const img = h("img", { alt: `${item.image}: a ${item.true_label} taken for ${item.predicted_label}`, hidden: true });
      const problem = h("span", {});
      const caption = h("figcaption", {},
        h("span", {}, item.true_label), " → ", h("span", { class: "wrong" }, item.predicted_label),
        h("br"), h("span", { class: "muted" }, `${pct(item.confidence)} · ${item.image}`), h("br"), problem);
      showImage(img, `/v1/models/${ID}/misclassified/${k}`, problem);
      return h("figure", {}, img, caption);
    }));
  }

  // ---------------------------------------------------------------- pages: source

  async function sourcePage() {
    const source = await api(`/v1/sources/${ID}`);
    sourceNames.set(source.id, Promise.resolve(source.name));
    document.title = `${source.name} · P2L`;
    $("source-title").textContent = source.name;
    $("source-crumb").textContent = `source ${source.name}`;
    $("source-meta").textContent = `${source.architecture} · ${source.input_size} px · ${source.origin} · registered ${when(source.created_at)} · id ${source.id}`;
    fill($("source-summary"), facts([
      ["Architecture", `${source.architecture} at ${source.input_size} px`],
      ["Classes", `${int(source.num_classes)} (its head's outputs)`],
      ["Training images", h("span", {}, h("strong", {}, int(source.num_images)),
        source.image_counts === "claimed" ? " (claimed by its uploader, not counted here)" : "")],
      ["Signature", `${int(source.feature_dim)} reference features`],
      ["In the zoo", source.shared ? "shared (every project ranks over it)" : "this project's own"],
      ["Registered", when(source.created_at)],
    ]));

    const counts = Object.entries(source.class_counts || {});
    const most = Math.max(1, ...counts.map(([, n]) => n));
    fill($("source-classes"), counts.length ? table([
      { label: "Class", value: ([name]) => name },
      { label: "Images", value: ([, n]) => h("span", {}, int(n), h("span", { class: "countbar", style: { width: `${Math.round(60 * n / most)}px` }, "aria-hidden": "true" })), num: true },
    ], counts, { caption: "Its training data's classes and image counts" })
      : h("p", { class: "muted" }, "No class counts stored."));

    await Promise.all([lineage(source), section("source-rankings", () => whereRanked(source))]);
  }

  async function lineage(source) {
    const pairs = [["Origin", {
      bundled: "bundled with the service (trained by bench/ tools on a public dataset)",
      upload: "registered by upload (weights and a signature)",
      finetune: "a fine-tuned model of this service, registered as a source",
    }[source.origin] || source.origin]];
    if (source.dataset_id) pairs.push(["Signature from dataset", namedDatasetLink(source.dataset_id)]);
    if (source.origin === "finetune") {
      try {
        const models = await allPages("/v1/models", 3);
        const model = models.find((m) => m.registered_source_id === source.id);
        if (model) {
          pairs.push(["Fine-tuned model", modelLink(model.id, modelName(model))],
            ["Fine-tuned from", namedSource(model.source_id)],
            ["On the target", namedDatasetLink(model.target_dataset_id)],
            ["By the job", jobLink(model.job_id)]);
        } else {
          pairs.push(["Fine-tuned model", "not visible here (deleted, or another project's)"]);
        }
      } catch (error) {
        if (error instanceof ApiError && error.status === 401) throw error;
        pairs.push(["Fine-tuned model", `cannot list models: ${error.message}`]);
      }
    }
    fill($("source-lineage"), facts(pairs));
  }

  async function whereRanked(source) {
    const rows = await allPages(`/v1/rankings?source_id=${source.id}`, 2);
    if (!rows.length) return h("p", { class: "muted" }, "In no stored ranking of this project yet.");
    return table([
      { label: "Target", value: (r) => namedDatasetLink(r.target_dataset_id) },
      { label: "Rank", value: (r) => h("strong", {}, `#${r.source_rank}`), num: true },
      { label: "Of", value: (r) => int(r.num_results), num: true },
      { label: "Method", value: (r) => `${r.method}${r.refine_method ? ` + ${r.refine_method}` : ""} (${r.measure})` },
      { label: "Top source", value: (r) => (r.top_source_id === source.id ? "this one" : r.top_source_id ? sourceLink(r.top_source_id, r.top_source_name || short(r.top_source_id)) : dash) },
      { label: "When", value: (r) => when(r.created_at) },
    ], rows, { caption: "Rankings this source appears in", rowClass: (r) => (r.source_rank === 1 ? "best" : null) });
  }

  // ---------------------------------------------------------------- pages: compare

  async function comparePage() {
    const asked = (new URLSearchParams(location.search).get("jobs") || "").split(",").map((x) => x.trim()).filter(Boolean);
    const ids = [...new Set(asked)];
    const bad = ids.filter((id) => !isId(id));
    if (bad.length || ids.length < 2 || ids.length > MAX_COMPARED) {
      throw new Error(`Give 2 to ${MAX_COMPARED} job ids: /console/compare?jobs=ID,ID${bad.length ? ` (not an id: ${bad.slice(0, 3).join(", ")})` : ""}`);
    }
    const jobs = await Promise.all(ids.map((id) => api(`/v1/jobs/${id}`)));
    document.title = `Compare ${jobs.length} jobs · P2L`;
    $("compare-title").textContent = `Compare ${jobs.length} jobs`;
    const color = (k) => PALETTE[k % PALETTE.length];
    const head = (job, k) => h("span", {}, h("span", { class: "swatch", style: { background: color(k) }, "aria-hidden": "true" }), jobLink(job.id));
    // An option where it applies: auto's budget under auto, the decay under manual.
    const APPLIES = { auto_epochs: "auto", decay: "manual" };
    const option = (name) => (job) => {
      const options = (job.params || {}).options || {};
      const value = options[name];
      if (APPLIES[name] && options.schedule !== APPLIES[name]) return dash;
      return value === undefined || value === null ? dash : String(value);
    };
    const CHOSEN = { p2l: "P2L's top (best)", given: "by hand", race: "a race" };
    const report = (job) => (job.result && job.result.model_id !== undefined ? job.result : {});
    const rows = [
      ["Status", (job) => h("span", { class: `badge ${job.status}` }, job.status)],
      ["Target", (job) => (job.params.target_dataset_id ? namedDatasetLink(job.params.target_dataset_id) : dash)],
      ["Source", (job) => (isId(job.params.source_id) ? sourceLink(job.params.source_id, job.params.source_name || short(job.params.source_id)) : job.params.source_name || dash)],
      ["Source chosen", (job) => CHOSEN[job.params.chosen_by] || job.params.chosen_by || dash],
      ["Schedule", option("schedule")],
      ["Epochs", option("epochs")],
      ["Auto budget per candidate", option("auto_epochs")],
      ["Decay", option("decay")],
      ["Base learning rate", option("base_lr")],
      ["Baseline", option("baseline")],
      ["Schedule that trained", (job) => {
        const sch = report(job).schedule;
        return sch ? (sch.multipliers ? `multipliers ${sch.multipliers.join(", ")}` : `decay ${sch.decay}`) : dash;
      }],
      ["Validation accuracy", (job) => pct(report(job).val_accuracy)],
      ["Test accuracy", (job) => h("strong", {}, pct(report(job).test_accuracy))],
      ["From scratch (test)", (job) => pct((report(job).baseline || {}).test_accuracy)],
      ["Epochs trained", (job) => int((job.progress || {}).epochs_done)],
      ["Run time", (job) => duration(report(job).seconds ?? (job.progress || {}).elapsed_seconds)],
      ["Model", (job) => (job.model_id ? modelLink(job.model_id) : dash)],
    ];
    fill($("compare-table"), h("table", {},
      h("caption", { class: "visually-hidden" }, "Jobs side by side"),
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Job"), jobs.map((job, k) => h("th", { scope: "col" }, head(job, k))))),
      h("tbody", {}, rows.map(([label, value]) => h("tr", {}, h("th", { scope: "row" }, label),
        jobs.map((job) => h("td", {}, value(job))))))));
    const runs = jobs.map((job, k) => {
      const history = ((job.progress || {}).history || []).filter((m) => (m.phase || "fine_tune") === "fine_tune");
      const label = `${short(job.id)} · ${job.params.source_name || short(job.params.source_id)}`;
      return { key: job.id, label, color: color(k), epochs: history };
    });
    fill($("compare-curves"), runs.some((r) => r.epochs.length)
      ? curves(runs) : h("p", { class: "muted" }, "No epoch has ended in these jobs yet."));
  }

  // ---------------------------------------------------------------- start

  setUpKey();
  if (KEYS_REQUIRED && !getKey()) askForKey("");
  else start();
})();

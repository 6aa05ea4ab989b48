// The web viewer: one file to /v1/denoise (JSON, with preview), both images on canvases with
// window/level in the image's own units, the metrics, and the denoised file to download.
// The server sends the preview as uint16 samples q over [low, high]: value = low + q * (high - low) / 65535.
// A service with API keys answers 401: the page then asks for a key, keeps it in sessionStorage
// (this tab only, gone when it closes) and sends it as X-API-Key.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { file: null, models: [], preview: null, center: 0, width: 1 };

const PRESETS = {
  ct: [["soft tissue", 40, 400], ["lung", -600, 1500], ["bone", 400, 1800], ["brain", 40, 80]],
};

const KEY_STORAGE = "denoise-api-key";

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function apiHeaders(headers = {}) {
  const key = sessionStorage.getItem(KEY_STORAGE);
  return key ? { ...headers, "X-API-Key": key } : headers;
}

function askForKey(body) {
  $("api-key-form").hidden = false;
  showError(`401 ${body.error}: ${body.detail}`);
  $("api-key").focus();
}

function useKey(event) {
  event.preventDefault();
  sessionStorage.setItem(KEY_STORAGE, $("api-key").value.trim());
  $("api-key").value = "";
  showError("");
  loadModels().then(denoise);
}

async function loadModels() {
  try {
    const response = await fetch("/v1/models", { headers: apiHeaders() });
    const body = await response.json();
    if (response.status === 401) {
      $("server-status").textContent = "API key needed";
      askForKey(body);
      return;
    }
    $("api-key-form").hidden = true;
    state.models = body.models || [];
    const ready = state.models.length;
    $("server-status").textContent = ready ? `${ready} model(s) on ${[...new Set(state.models.map((m) => m.execution_provider))].join(", ")}` : "no model loaded";
  } catch (error) {
    $("server-status").textContent = "server unreachable";
  }
  fillModels();
}

function fillModels() {
  const modality = $("modality").value;
  const select = $("model");
  const keep = select.value;
  select.replaceChildren(new Option("default for the modality", ""));
  for (const model of state.models) {
    if (!modality || model.modality === modality) {
      const label = `${model.id} (${model.architecture}${model.default ? ", default" : ""})`;
      select.add(new Option(label, model.id));
    }
  }
  select.value = [...select.options].some((o) => o.value === keep) ? keep : "";
}

function chooseFile(file) {
  if (!file) return;
  state.file = file;
  $("file-name").textContent = `${file.name} (${(file.size / 1024).toFixed(0)} KiB)`;
  $("denoise-button").disabled = false;
  showError("");
  denoise();
}

function decodePlane(block, count) {
  const bytes = Uint8Array.from(atob(block.data_base64), (c) => c.charCodeAt(0));
  const view = new DataView(bytes.buffer);
  const values = new Float32Array(count);
  const scale = (block.high - block.low) / 65535;
  for (let i = 0; i < count; i++) values[i] = block.low + view.getUint16(2 * i, true) * scale;
  return values;
}

function paint(canvas, values, rows, cols) {
  canvas.width = cols;
  canvas.height = rows;
  const context = canvas.getContext("2d");
  const image = context.createImageData(cols, rows);
  const low = state.center - state.width / 2;
  const gain = 255 / state.width;
  for (let i = 0, j = 0; i < values.length; i++, j += 4) {
    const grey = Math.max(0, Math.min(255, (values[i] - low) * gain));
    image.data[j] = image.data[j + 1] = image.data[j + 2] = grey;
    image.data[j + 3] = 255;
  }
  context.putImageData(image, 0, 0);
}

function render() {
  const p = state.preview;
  if (!p) return;
  paint($("original-canvas"), p.originalValues, p.rows, p.cols);
  paint($("denoised-canvas"), p.denoisedValues, p.rows, p.cols);
  paint($("overlay-canvas"), p.denoisedValues, p.rows, p.cols);
  $("overlay-canvas").style.clipPath = `inset(0 0 0 ${$("slider").value}%)`;
  $("window-center").value = +state.center.toPrecision(6);
  $("window-width").value = +state.width.toPrecision(6);
  $("denoised-canvas").dataset.rendered = "true";
}

function setWindow(center, width) {
  if (!Number.isFinite(center) || !Number.isFinite(width) || width <= 0) return;
  state.center = center;
  state.width = width;
  render();
}

function fillPresets(modality, window) {
  const select = $("window-preset");
  select.replaceChildren(new Option(`default (${+window.center.toPrecision(4)} / ${+window.width.toPrecision(4)})`, "default"));
  for (const [name, center, width] of PRESETS[modality] || []) select.add(new Option(`${name} (${center} / ${width})`, `${center}/${width}`));
  select.add(new Option("full range", "full"));
}

const fmt = (value, digits = 3) => (value === null || value === undefined ? "–" : typeof value === "number" ? +value.toPrecision(digits) : String(value));

function row(table, cells) {
  const tr = table.insertRow();
  cells.forEach((cell, index) => {
    const el = document.createElement(index === 0 ? "th" : "td");
    el.textContent = cell;
    tr.append(el);
  });
}

function selectedModelAcceptsStrength() {
  const chosen = $("model").value;
  const modality = $("modality").value;
  const model = state.models.find((m) => (chosen ? m.id === chosen : m.default && (!modality || m.modality === modality)));
  return model ? model.accepts_strength : false;
}

function showMetrics(body) {
  const table = $("metrics").tBodies[0];
  table.replaceChildren();
  const noref = (body.metrics || {}).noref;
  if (noref && !noref.skipped) {
    row(table, [`noise σ, Immerkaer (${noref.units})`, fmt(noref.noise_sigma_immerkaer.input), fmt(noref.noise_sigma_immerkaer.output)]);
    row(table, [`noise σ, wavelet MAD (${noref.units})`, fmt(noref.noise_sigma_wavelet_mad.input), fmt(noref.noise_sigma_wavelet_mad.output)]);
    row(table, ["noise reduction (dB), Immerkaer / MAD", fmt(noref.noise_reduction_db.immerkaer), fmt(noref.noise_reduction_db.wavelet_mad)]);
    row(table, ["residual–edge correlation", "", fmt(noref.residual_edge_correlation)]);
  } else {
    row(table, ["metrics", noref ? noref.skipped : "none asked for", ""]);
  }
  const details = $("details").tBodies[0];
  details.replaceChildren();
  row(details, ["model", body.model]);
  row(details, ["modality", body.modality]);
  row(details, ["provider", body.execution_provider]);
  if (body.noise_level) {
    const level = body.noise_level;
    row(details, ["noise level", `estimated ${fmt(level.estimated)}, applied ${fmt(level.applied)} (strength ${fmt(level.strength)}) ${level.units}`]);
  }
  row(details, ["image", `${body.preview.frames} frame(s), shown at 1/${body.preview.step} scale`]);
  for (const [phase, ms] of Object.entries(body.timings_ms)) row(details, [`${phase} (ms)`, fmt(ms)]);
  row(details, ["request id", body.request_id]);
}

function offerDownload(body) {
  const bytes = Uint8Array.from(atob(body.image_base64), (c) => c.charCodeAt(0));
  const link = $("download");
  if (link.href) URL.revokeObjectURL(link.href);
  link.href = URL.createObjectURL(new Blob([bytes], { type: body.media_type }));
  const stem = state.file.name.replace(/\.(png|dcm|dicom)$/i, "");
  link.download = `${stem}-denoised${body.media_type === "image/png" ? ".png" : ".dcm"}`;
}

async function denoise() {
  if (!state.file) return;
  const form = new FormData();
  form.append("file", state.file);
  if ($("modality").value) form.append("modality", $("modality").value);
  if ($("model").value) form.append("model", $("model").value);
  // Only models with a noise-level input take a strength; a blind model would answer 422.
  if (selectedModelAcceptsStrength()) form.append("strength", $("strength").value);
  form.append("preview", "true");
  $("denoise-button").disabled = true;
  $("denoise-button").textContent = "Denoising…";
  $("denoised-canvas").dataset.rendered = "false";
  try {
    const response = await fetch("/v1/denoise", { method: "POST", body: form, headers: apiHeaders({ Accept: "application/json" }) });
    const body = await response.json();
    if (response.status === 401) {
      askForKey(body);
      return;
    }
    if (!response.ok) {
      showError(`${response.status} ${body.error}: ${body.detail}`);
      return;
    }
    const p = body.preview;
    const count = p.rows * p.cols;
    state.preview = { ...p, originalValues: decodePlane(p.original, count), denoisedValues: decodePlane(p.denoised, count) };
    fillPresets(body.modality, p.window);
    $("window-units").textContent = p.units;
    $("original-caption").textContent = `original · ${state.file.name}`;
    $("denoised-caption").textContent = `denoised · ${body.model}`;
    showMetrics(body);
    offerDownload(body);
    $("result").hidden = false;
    setWindow(p.window.center, p.window.width);
  } catch (error) {
    showError(`The request failed: ${error.message}`);
  } finally {
    $("denoise-button").disabled = false;
    $("denoise-button").textContent = "Denoise";
  }
}

function dragWindow(canvas) {
  let start = null;
  canvas.addEventListener("pointerdown", (event) => {
    start = { x: event.clientX, y: event.clientY, center: state.center, width: state.width };
    canvas.setPointerCapture(event.pointerId);
  });
  canvas.addEventListener("pointermove", (event) => {
    if (!start) return;
    const per = start.width / 200; // a 200-pixel drag changes the window by its own width
    setWindow(start.center + (event.clientY - start.y) * per, Math.max(1e-6, start.width + (event.clientX - start.x) * per));
  });
  canvas.addEventListener("pointerup", () => { start = null; });
}

function wire() {
  const zone = $("drop-zone");
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    chooseFile(event.dataTransfer.files[0]);
  });
  $("file-input").addEventListener("change", (event) => chooseFile(event.target.files[0]));
  $("modality").addEventListener("change", fillModels);
  $("denoise-button").addEventListener("click", denoise);
  $("strength").addEventListener("input", () => { $("strength-value").textContent = Number($("strength").value).toFixed(2); });
  $("api-key-form").addEventListener("submit", useKey);
  $("view-mode").addEventListener("change", (event) => { $("views").className = `views mode-${event.target.value}`; });
  $("slider").addEventListener("input", render);
  $("window-center").addEventListener("change", () => setWindow(parseFloat($("window-center").value), state.width));
  $("window-width").addEventListener("change", () => setWindow(state.center, parseFloat($("window-width").value)));
  $("window-preset").addEventListener("change", (event) => {
    const p = state.preview;
    if (event.target.value === "default") setWindow(p.window.center, p.window.width);
    else if (event.target.value === "full") {
      const low = Math.min(p.original.low, p.denoised.low);
      const high = Math.max(p.original.high, p.denoised.high);
      setWindow((low + high) / 2, Math.max(high - low, 1e-6));
    } else {
      const [center, width] = event.target.value.split("/").map(Number);
      setWindow(center, width);
    }
  });
  ["original-canvas", "denoised-canvas", "overlay-canvas"].forEach((id) => dragWindow($(id)));
}

wire();
loadModels();

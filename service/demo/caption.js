// The caption tab: an image in, its caption, beam alternatives and each word's attention over it.

import { $, TINT, callApi, clampInt, decodingOptions, element, fixed, models, showBeamFields, withBusy } from "./common.js";

const CANVAS_SIZE = 384;
const TINT_STRENGTH = 0.45; // the same strength and dimming as service/overlay.py's PNG
const DIM = 0.7;
const state = { image: null, imageName: "", picture: null, caption: null, options: null, alternative: 0, pinned: null, shownToken: null };

async function pickImage(file, name) {
  state.image = file;
  state.imageName = name;
  for (const button of document.querySelectorAll("#examples button")) {
    button.setAttribute("aria-pressed", String(button.dataset.example === name));
  }
  state.picture = await pictureOf(file);
  state.caption = null;
  drawPicture(null);
  await runCaption();
}

/** The centre square of the image (what the encoder sees) as CANVAS_SIZE x CANVAS_SIZE pixels, or null. */
async function pictureOf(file) {
  const url = URL.createObjectURL(file);
  try {
    const image = new Image();
    image.src = url;
    await image.decode();
    const side = Math.min(image.naturalWidth, image.naturalHeight);
    const canvas = new OffscreenCanvas(CANVAS_SIZE, CANVAS_SIZE);
    const context = canvas.getContext("2d");
    context.fillStyle = "#ffffff"; // transparent pixels are white to the model too
    context.fillRect(0, 0, CANVAS_SIZE, CANVAS_SIZE);
    const left = (image.naturalWidth - side) / 2, top = (image.naturalHeight - side) / 2;
    context.drawImage(image, left, top, side, side, 0, 0, CANVAS_SIZE, CANVAS_SIZE);
    return context.getImageData(0, 0, CANVAS_SIZE, CANVAS_SIZE);
  } catch {
    return null; // the browser cannot show it; the API says why it cannot caption it
  } finally {
    URL.revokeObjectURL(url);
  }
}

/** Draw the picture, with one word's attention grid (H x W, any size) over it when given. */
function drawPicture(grid) {
  const canvas = $("#caption-canvas");
  const context = canvas.getContext("2d");
  canvas.dataset.shownToken = grid ? String(state.shownToken) : "";
  if (!state.picture) {
    context.clearRect(0, 0, canvas.width, canvas.height);
    return;
  }
  context.putImageData(grid ? overlay(state.picture, grid) : state.picture, 0, 0);
}

/** Dim where attention is low and tint where it is high, the grid upsampled bilinearly and scaled
 * to its own peak: the same picture the /caption_overlay PNG shows. */
function overlay(picture, grid) {
  const rows = grid.length, columns = grid[0].length;
  const peak = Math.max(...grid.flat());
  const out = new ImageData(new Uint8ClampedArray(picture.data), picture.width, picture.height);
  for (let y = 0; y < picture.height; y++) {
    const sy = Math.min(rows - 1, Math.max(0, ((y + 0.5) * rows) / picture.height - 0.5));
    const y0 = Math.floor(sy), y1 = Math.min(rows - 1, y0 + 1), fy = sy - y0;
    for (let x = 0; x < picture.width; x++) {
      const sx = Math.min(columns - 1, Math.max(0, ((x + 0.5) * columns) / picture.width - 0.5));
      const x0 = Math.floor(sx), x1 = Math.min(columns - 1, x0 + 1), fx = sx - x0;
      const top = grid[y0][x0] * (1 - fx) + grid[y0][x1] * fx;
      const bottom = grid[y1][x0] * (1 - fx) + grid[y1][x1] * fx;
      const heat = peak > 0 ? Math.min(1, (top * (1 - fy) + bottom * fy) / peak) : 0;
      const lit = 1 - DIM * (1 - heat), tint = TINT_STRENGTH * heat;
      const at = (y * picture.width + x) * 4;
      for (let c = 0; c < 3; c++) out.data[at + c] = picture.data[at + c] * lit * (1 - tint) + TINT[c] * tint;
    }
  }
  return out;
}

async function runCaption() {
  if (!state.image) return;
  const language = $("#caption-language").value;
  const captioner = language === "de" ? models.captionerDe : models.captioner;
  const wantsAttention = Boolean(captioner && captioner.attention !== "none");
  const options = { ...decodingOptions("caption"), max_length: clampInt($("#caption-max-length")), return_attention: wantsAttention };
  const form = new FormData();
  form.append("image", state.image, state.imageName);
  form.append("options", JSON.stringify(options));
  form.append("language", language);
  $("#caption-result").hidden = true;
  await withBusy("caption", async () => {
    state.caption = await callApi("../caption", { method: "POST", body: form });
    state.options = options;
    state.language = language;
    state.pinned = null;
    showCaption(0);
  });
}

function showCaption(alternative) {
  const result = state.caption;
  state.alternative = alternative;
  $("#caption-text").textContent = result.alternatives[alternative].text || "(empty caption)";
  const confidence = result.alternatives[alternative].confidence;
  $("#caption-confidence").textContent = `Confidence ${percent(confidence)}`;
  $("#caption-confidence").dataset.level = confidence >= 0.5 ? "high" : confidence >= 0.25 ? "medium" : "low";
  $("#caption-unsure").hidden = !result.out_of_domain;
  $("#caption-meta").textContent = `${result.model} · ${result.time_ms} ms${result.truncated ? " · cut at max words" : ""}`;
  const rows = result.alternatives.map((found, index) => {
    const row = element("tr", { "aria-selected": String(index === alternative), "data-index": String(index) });
    row.append(element("td", {}, String(index + 1)), element("td", {}, found.text),
      element("td", { class: "number" }, percent(found.confidence)),
      element("td", { class: "number" }, fixed(found.score)), element("td", { class: "number" }, fixed(found.log_prob)));
    row.addEventListener("click", () => showCaption(index));
    return row;
  });
  $("#caption-alternatives tbody").replaceChildren(...rows);
  showTokens(result.alternatives[alternative].tokens);
  $("#caption-result").hidden = false;
  drawPicture(null);
}

function percent(value) {
  return `${Math.round(100 * value)}%`;
}

function showTokens(tokens) {
  const withAttention = tokens.some((token) => token.attention.length > 0);
  $("#words-hint").textContent = withAttention
    ? "hover over a word to see where the model looked; click to pin it"
    : "this captioner has no attention to show";
  $("#caption-tokens").replaceChildren(...tokens.map((token, index) => {
    const chip = element("button", { type: "button", "aria-pressed": "false", "data-index": String(index),
      title: `log-prob ${fixed(token.log_prob)}` }, token.token);
    if (withAttention) {
      chip.addEventListener("mouseenter", () => showAttention(index));
      chip.addEventListener("focus", () => showAttention(index));
      chip.addEventListener("mouseleave", () => showAttention(state.pinned));
      chip.addEventListener("click", () => pinToken(index));
    }
    return chip;
  }));
  $("#attention-note").textContent = "";
  $("#overlay-link").hidden = true;
}

function pinToken(index) {
  state.pinned = state.pinned === index ? null : index;
  for (const chip of document.querySelectorAll("#caption-tokens button")) {
    chip.setAttribute("aria-pressed", String(Number(chip.dataset.index) === state.pinned));
  }
  showAttention(state.pinned);
  const link = $("#overlay-link"); // for the pinned word only: hovering towards it must not hide it
  link.hidden = state.pinned === null || state.language !== "en"; // the PNG route captions in English
  link.dataset.token = String(state.pinned);
}

function showAttention(index) {
  const note = $("#attention-note");
  if (index === null || !state.caption) {
    state.shownToken = null;
    drawPicture(null);
    note.textContent = "";
    return;
  }
  const token = state.caption.alternatives[state.alternative].tokens[index];
  const grid = token.attention;
  const cells = grid.length * grid[0].length;
  state.shownToken = index;
  drawPicture(grid);
  note.textContent = `“${token.token}”: ${grid.length} x ${grid[0].length} grid, peak weight ${fixed(Math.max(...grid.flat()))} `
    + `(uniform would be ${fixed(1 / cells)}); brightest = most attended, scaled to this word's peak.`;
}

/** The same overlay rendered by the API (POST /caption_overlay), downloaded as a PNG file. */
async function openOverlayPng(event) {
  event.preventDefault();
  const form = new FormData();
  form.append("image", state.image, state.imageName);
  form.append("options", JSON.stringify({ ...state.options, return_attention: false }));
  form.append("token", event.currentTarget.dataset.token);
  form.append("alternative", String(state.alternative));
  form.append("language", state.language);
  await withBusy("caption", async () => {
    const response = await callApi("../caption_overlay", { method: "POST", body: form });
    const url = URL.createObjectURL(await response.blob());
    const token = decodeURIComponent(response.headers.get("X-Token") || "word");
    const save = element("a", { href: url, download: `caption_overlay_${form.get("token")}_${token}.png` });
    save.click();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
  });
}

export function setUpCaption() {
  const input = $("#image-input");
  input.addEventListener("change", () => input.files[0] && pickImage(input.files[0], input.files[0].name));
  const zone = $("#drop-zone");
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("dragging"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    const file = event.dataTransfer.files[0];
    if (file) pickImage(file, file.name);
  });
  for (const button of document.querySelectorAll("#examples button")) {
    button.addEventListener("click", async () => {
      const name = button.dataset.example;
      await withBusy("caption", async () => {
        const blob = await (await callApi(`examples/${name}`)).blob();
        await pickImage(new File([blob], name, { type: blob.type }), name);
      });
    });
  }
  for (const id of ["#caption-decoding", "#caption-beam-size", "#caption-n-best", "#caption-max-length", "#caption-language"]) {
    $(id).addEventListener("change", () => { showBeamFields("caption"); runCaption(); });
  }
  $("#overlay-link").addEventListener("click", openOverlayPng);
  showBeamFields("caption");
}

// What every tab shares: API calls and their errors, small DOM helpers, the loaded models.

export const TINT = [255, 96, 0]; // the attention colour, as in service/overlay.py's PNG

/** What GET /models said: filled in by demo.js before any tab is used. */
export const models = { captioner: null, captionerDe: null, translators: [], defaultTranslator: null };

export const $ = (selector) => document.querySelector(selector);

export class ApiError extends Error {
  constructor(message, code = "", field = null) {
    super(message);
    this.code = code;
    this.field = field;
  }
}

/** fetch + the service's one error shape: resolves to the parsed body, or throws ApiError. */
export async function callApi(path, init = {}) {
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    throw new ApiError(`Could not reach the service (${error.message}). Is it running?`, "network");
  }
  const isJson = (response.headers.get("content-type") || "").includes("application/json");
  const text = isJson || !response.ok ? await response.text() : null;
  let body = null;
  try {
    body = text === null ? null : JSON.parse(text);
  } catch {
    body = null;
  }
  if (!response.ok) {
    const error = body && body.error;
    if (error && typeof error === "object") {
      throw new ApiError(error.message || `HTTP ${response.status}`, error.code, error.field);
    }
    if (typeof error === "string") throw new ApiError(error, `http_${response.status}`);
    const words = (text || response.statusText || "").trim().slice(0, 300);
    throw new ApiError(`The service answered HTTP ${response.status}${words ? `: ${words}` : ""}`, `http_${response.status}`);
  }
  if (!isJson) return response;
  if (body === null) throw new ApiError("The service answered something that is not JSON.", "bad_answer");
  return body;
}

export function showError(box, error) {
  box.replaceChildren();
  const title = document.createElement("strong");
  title.textContent = error.code ? `The request was refused (${error.code})` : "Something went wrong";
  const message = document.createElement("span");
  message.textContent = error.message;
  box.append(title, message);
  box.hidden = false;
}

/** Run `work` with the panel's busy line shown and its error box cleared; errors end up in words. */
export async function withBusy(prefix, work) {
  const busy = $(`#${prefix}-busy`);
  const errorBox = $(`#${prefix}-error`);
  busy.hidden = false;
  errorBox.hidden = true;
  try {
    await work();
  } catch (error) {
    showError(errorBox, error instanceof ApiError ? error : new ApiError(String(error.message || error)));
  } finally {
    busy.hidden = true;
  }
}

export function element(tag, attributes = {}, text = null) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (text !== null) node.textContent = text;
  return node;
}

export const fixed = (number, digits = 3) => Number(number).toFixed(digits);

export function clampInt(input) {
  const low = Number(input.min), high = Number(input.max);
  const value = Math.round(Number(input.value));
  const clamped = Number.isFinite(value) ? Math.min(high, Math.max(low, value)) : low;
  input.value = clamped;
  return clamped;
}

/** The decoding options of one panel's form, in the API's option names. */
export function decodingOptions(prefix) {
  const options = { decoding: $(`#${prefix}-decoding`).value };
  if (options.decoding === "beam") {
    options.beam_size = clampInt($(`#${prefix}-beam-size`));
    options.n_best = Math.min(clampInt($(`#${prefix}-n-best`)), options.beam_size);
  }
  return options;
}

export function showBeamFields(prefix) {
  const beam = $(`#${prefix}-decoding`).value === "beam";
  for (const label of document.querySelectorAll(`#panel-${prefix} .beam-only`)) label.hidden = !beam;
}

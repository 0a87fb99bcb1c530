// The language-model tab: shown only when the service has POST /generate; samples text, and with
// POST /inspect colours that text by one hidden unit of the model.

import { $, callApi, clampInt, element, fixed, withBusy } from "./common.js";

const MAX_INSPECT_CHARS = 4000; // /inspect's bound on its text

let generateSchema = null; // the request schema /generate declares in /docs.json

/** The language-model tab appears only when the service has POST /generate (in its OpenAPI document). */
export async function detectGenerate() {
  try {
    const spec = await callApi("../docs.json");
    const operation = spec.paths && spec.paths["/generate"] && spec.paths["/generate"].post;
    if (!operation) return;
    generateSchema = requestSchema(spec, operation);
    $("#tab-generate").hidden = false;
    const canInspect = Boolean(spec.paths["/inspect"]?.post);
    $("#lm-inspect").hidden = !canInspect;
    $("#inspect-button").hidden = !canInspect;
  } catch {
    // no OpenAPI document, or no /generate: the tab stays hidden, which is the point
  }
}

/** The JSON schema of an operation's request body, $ref resolved. */
function requestSchema(spec, operation) {
  let schema = operation.requestBody?.content?.["application/json"]?.schema || {};
  while (schema.$ref) schema = spec.components?.schemas?.[schema.$ref.split("/").pop()] || {};
  return schema;
}

/** The form's values under the field names /generate declares (it may nest them in `options`). */
function generateBody() {
  const values = {
    text: $("#lm-seed-text").value, temperature: Number($("#lm-temperature").value),
    length: clampInt($("#lm-length")), top_k: clampInt($("#lm-top-k")),
    seed: $("#lm-seed").value === "" ? null : Number($("#lm-seed").value),
  };
  const synonyms = { seed_text: "text", prompt: "text", prefix: "text", start: "text", max_length: "length",
    max_chars: "length", num_chars: "length", n_chars: "length" };
  const properties = Object.keys(generateSchema?.properties || {});
  const body = {};
  const options = {};
  for (const [name, value] of Object.entries(values)) {
    if (value === null) continue;
    const declared = properties.find((property) => property === name || synonyms[property] === name);
    if (declared) body[declared] = value;
    else options[name] = value;
  }
  if (properties.includes("options") && Object.keys(options).length) body.options = options;
  if (properties.includes("decoding")) body.decoding = "sample"; // the tab samples; greedy is the API default
  return body;
}

async function runGenerate() {
  $("#generated").textContent = "";
  await withBusy("generate", async () => {
    const result = await callApi("../generate", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(generateBody()),
    });
    const text = result.text ?? result.sample ?? result.generated ?? (result.samples && result.samples[0]);
    $("#generated").textContent = typeof text === "string" ? text : JSON.stringify(result, null, 2);
  });
}

/** POST /inspect over the seed and its continuation: the chosen unit, or the best one for the property. */
async function runInspect() {
  $("#inspected").hidden = true;
  $("#inspect-unit").textContent = "";
  await withBusy("inspect", async () => {
    const text = ($("#lm-seed-text").value + $("#generated").textContent).slice(-MAX_INSPECT_CHARS);
    const unit = $("#lm-unit").value.trim();
    const body = unit ? { text, units: [unit] } : { text, property: $("#lm-property").value, top: 1 };
    const result = await callApi("../inspect", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    const found = result.units[0];
    if (!found) {  // the property never changes in this text: no unit can track it
      $("#inspect-unit").textContent = `${result.property} never changes in this text; try a longer one`;
      return;
    }
    $("#inspect-unit").textContent = result.property
      ? `Unit ${found.unit}: r = ${fixed(found.correlation, 2)} with ${result.property}`
      : `Unit ${found.unit}`;
    showActivations(result.characters, found.activations);
  });
}

/** Each character on a background from blue (the text's lowest activation) through white to red
 * (its highest), as training/units_report.py colours its pages. */
function showActivations(characters, activations) {
  const low = Math.min(...activations), high = Math.max(...activations);
  const spans = characters.map((character, i) => {
    const strength = (2 * (activations[i] - low)) / (high - low || 1) - 1; // -1 .. 1
    const colour = strength >= 0 ? "255, 0, 0" : "0, 64, 255";
    const span = element("span", { title: fixed(activations[i]) }, character === "\n" ? "↵\n" : character);
    span.style.backgroundColor = `rgba(${colour}, ${fixed(Math.abs(strength) * 0.7, 2)})`;
    return span;
  });
  $("#inspected").replaceChildren(...spans);
  $("#inspected").hidden = false;
}

export function setUpGenerate() {
  const slider = $("#lm-temperature");
  slider.addEventListener("input", () => { $("#lm-temperature-value").textContent = slider.value; });
  $("#generate-button").addEventListener("click", runGenerate);
  $("#inspect-button").addEventListener("click", runInspect);
}

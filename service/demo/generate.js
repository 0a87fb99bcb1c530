// The language-model tab: shown only when the service has POST /generate; samples text.

import { $, callApi, clampInt, withBusy } from "./common.js";

let generateSchema = null; // the request schema /generate declares in /docs.json

/** The language-model tab appears only when the service has POST /generate (in its OpenAPI document). */
export async function detectGenerate() {
  try {
    const spec = await callApi("../docs.json");
    const operation = spec.paths && spec.paths["/generate"] && spec.paths["/generate"].post;
    if (!operation) return;
    generateSchema = requestSchema(spec, operation);
    $("#tab-generate").hidden = false;
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

export function setUpGenerate() {
  const slider = $("#lm-temperature");
  slider.addEventListener("input", () => { $("#lm-temperature-value").textContent = slider.value; });
  $("#generate-button").addEventListener("click", runGenerate);
}

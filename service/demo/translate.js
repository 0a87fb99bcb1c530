// The translate tab: sentences in, translations, alternatives and source-target attention grids.

import { $, TINT, callApi, decodingOptions, element, fixed, models, showBeamFields, withBusy } from "./common.js";

async function runTranslate() {
  // every line is a sentence, blank ones included: the service says which one is wrong
  const sentences = $("#sentences").value.replace(/\n+$/, "").split("\n");
  const body = { sentences, options: { ...decodingOptions("translate"), return_attention: hasTranslatorAttention() } };
  if (models.translators.length > 1) body.model = $("#translator").value;
  $("#translations").replaceChildren();
  await withBusy("translate", async () => {
    const result = await callApi("../translate", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    $("#translations").replaceChildren(...result.translations.map((found) => translationCard(found, result.model)));
  });
}

function hasTranslatorAttention() {
  const name = $("#translator").value;
  const model = models.translators.find((found) => found.name === name) || models.translators[0];
  return Boolean(model && model.attention !== "none");
}

function translationCard(found, model) {
  const card = element("article", { class: "translation" });
  const alternatives = element("ol");
  const grid = element("div", { class: "grid-wrap" });
  const choose = (index) => {
    for (const item of alternatives.children) item.setAttribute("aria-selected", String(item.dataset.index === String(index)));
    grid.replaceChildren(attentionTable(found.source_tokens, found.alternatives[index].tokens));
  };
  found.alternatives.forEach((alternative, index) => {
    const item = element("li", { "data-index": String(index) }, alternative.text || "(empty)");
    item.append(element("span", { class: "number" }, `score ${fixed(alternative.score)} · log-prob ${fixed(alternative.log_prob)}`));
    item.addEventListener("click", () => choose(index));
    alternatives.append(item);
  });
  card.append(element("p", { class: "source" }, found.source), element("p", { class: "target" }, found.translation),
    element("p", { class: "meta" }, `${model}${found.truncated ? " · cut at the length limit" : ""}`), alternatives, grid);
  choose(0);
  return card;
}

/** Rows: target tokens; columns: source tokens; each cell shaded by its attention weight (rows sum to 1). */
function attentionTable(sourceTokens, targetTokens) {
  if (!targetTokens.some((token) => token.attention.length > 0)) {
    return element("p", { class: "meta" }, "This translator has no attention to show.");
  }
  const table = element("table", { class: "attention", "aria-label": "attention of each target word over the source words" });
  const head = element("tr");
  head.append(element("th"), ...sourceTokens.map((token) => element("th", { scope: "col" }, token)));
  table.append(element("thead"));
  table.tHead.append(head);
  const body = element("tbody");
  for (const token of targetTokens) {
    const row = element("tr");
    row.append(element("th", { scope: "row" }, token.token));
    token.attention.forEach((weight, column) => {
      const cell = element("td", { title: `${token.token} ← ${sourceTokens[column]}: ${fixed(weight)}`, "data-weight": String(weight) });
      cell.style.backgroundColor = `rgba(${TINT.join(", ")}, ${Math.min(1, weight).toFixed(3)})`;
      row.append(cell);
    });
    body.append(row);
  }
  table.append(body);
  const legend = element("p", { class: "meta" },
    "Attention: each row is a target word, shaded by the weight it gave each source word (a row sums to 1).");
  const figure = element("div");
  figure.append(legend, table);
  return figure;
}

export function setUpTranslate() {
  $("#translate-button").addEventListener("click", runTranslate);
  $("#translate-decoding").addEventListener("change", () => showBeamFields("translate"));
  showBeamFields("translate");
}

/** The translator choice, shown when more than one is served. */
export function fillTranslators() {
  const select = $("#translator");
  select.replaceChildren(...models.translators.map((model) => element("option", { value: model.name }, model.tag)));
  select.value = models.defaultTranslator;
  $("#translator-choice").hidden = models.translators.length < 2;
}

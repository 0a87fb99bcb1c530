// The demo page's entry point: tabs, the models list, and each tab's set-up. No build step:
// plain ES modules, served by the service itself (service/demo_app.py).

import { setUpCaption } from "./caption.js";
import { $, callApi, models } from "./common.js";
import { detectGenerate, setUpGenerate } from "./generate.js";
import { fillTranslators, setUpTranslate } from "./translate.js";

function selectTab(name) {
  for (const tab of document.querySelectorAll("[role=tab]")) {
    const selected = tab.id === `tab-${name}`;
    tab.setAttribute("aria-selected", String(selected));
    $(`#${tab.getAttribute("aria-controls")}`).hidden = !selected;
  }
}

async function loadModels() {
  const status = $("#models-status");
  try {
    const info = await callApi("../models");
    models.captioner = info.models.find((model) => model.kind === "captioner") || null;
    const german = info.models.find((model) => model.kind === "captioner" && model.language === "de");
    models.captionerDe = german || null;
    if (german) {
      $("#caption-language-de").disabled = false;
      $("#caption-language-de").textContent = "German";
    }
    models.translators = info.models.filter((model) => model.kind === "translator");
    models.defaultTranslator = info.default_translator;
    const names = info.models.map((model) => `${model.tag} (${model.attention === "none" ? "no" : model.attention} attention)`);
    status.textContent = `${info.ready ? "Ready" : `Not ready: ${info.problem || info.state}`} · ${names.join(" · ")} · on ${info.device}`;
    status.classList.toggle("bad", !info.ready);
    fillTranslators();
  } catch (error) {
    status.textContent = `Could not list the models: ${error.message}`;
    status.classList.add("bad");
  }
}

for (const tab of document.querySelectorAll("[role=tab]")) {
  tab.addEventListener("click", () => {
    const name = tab.id.replace("tab-", "");
    selectTab(name);
    history.replaceState(null, "", `#${name}`);
  });
}
setUpCaption();
setUpTranslate();
setUpGenerate();
Promise.all([loadModels(), detectGenerate()]).then(() => {
  const wanted = location.hash.slice(1);
  if (wanted && !$(`#tab-${wanted}`)?.hidden) selectTab(wanted);
  document.body.dataset.ready = "true"; // for the browser tests: the models list has arrived
});

// The Easel playground: key, form, live task view, gallery. Plain ES modules, no build step.

import {
  ApiError, FINAL, createApi, keepSpelling, outageText, showError, taskError,
} from "./api.js";
import { costText, createGallery, snapshot } from "./gallery.js";
import { createImages } from "./images.js";
import * as store from "./store.js";

const $ = (id) => document.getElementById(id);
const MAX_PROMPT = 1024;
const MAX_NEGATIVE = 255;
const POLL_MS = 700;
const RETRY_MAX_MS = 5000; // the longest wait between tries while the server is away
const STATUS_WORDS = {
  running: "Running",
  success: "Done: the image is ready",
  failed: "Failed",
  banned: "Refused by the provider",
  expired: "Expired in the queue",
  cancelled: "Cancelled; its credits were refunded",
  unknown: "Unknown state",
};

const state = {
  key: store.loadKey(), models: [], defaultModel: "", templates: [], balance: null,
  textToImage: null, // what a text_to_image task runs on and costs: {model_version, credits}
};
const view = { task: null, watch: null, deadline: null, shownImage: "", outage: "" };
const api = createApi(() => state.key);
const priceOf = (version, type) => (type === "text_to_image"
  ? state.textToImage?.credits
  : state.models.find((m) => m.model_version === version)?.credits);
const gallery = createGallery({
  api, list: $("gallery"), empty: $("gallery-empty"), getKey: () => state.key, onOpen: openTask,
  priceOf, onFinal: () => refreshBalance().catch(() => {}),
});
const images = createImages({
  api, dropzone: $("dropzone"), input: $("file-input"), list: $("thumbs"),
  errorBox: $("images-error"), onChange: checkForm,
});

// -- key and balance ----------------------------------------------------------------------

async function useKey(event) {
  event.preventDefault();
  const key = $("key-input").value.trim();
  const box = $("key-error");
  if (!key.startsWith("tsk_")) {
    showError(box, new ApiError(0, "That is not an Easel API key.",
      "Keys start with tsk_. Print one with: easel keys create --credits 100"));
    $("key-input").focus();
    return;
  }
  state.key = key;
  try {
    showBalance(await api.balance());
  } catch (error) {
    state.key = "";
    showError(box, error);
    $("key-input").focus();
    return;
  }
  showError(box, null);
  store.saveKey(key);
  $("key-input").value = "";
  await enter();
  $("prompt").focus();
}

async function enter() {
  $("key-section").hidden = true;
  $("account").hidden = $("workspace").hidden = $("gallery-section").hidden = false;
  $("key-hint").textContent = `Key …${state.key.slice(-4)}`;
  $("key-hint").title = "The last characters of the API key in use";
  gallery.render();
  const results = await Promise.allSettled([loadModels(), loadTemplates(), refreshBalance()]);
  const failed = results.find((r) => r.status === "rejected");
  showError($("form-error"), failed ? failed.reason : null);
  checkForm();
  await gallery.refresh();
  const newest = store.loadTasks(state.key)[0];
  if (newest && !FINAL.has(newest.status)) openTask(newest.task_id, { scroll: false });
}

function showBalance({ balance, frozen }) {
  state.balance = balance;
  $("balance-amount").textContent = String(balance);
  $("balance-frozen").textContent = frozen ? `(${frozen} held)` : "";
  checkForm();
}

async function refreshBalance() {
  showBalance(await api.balance());
}

function forget() {
  view.watch?.abort();
  store.forgetKey();
  location.reload();
}

// -- models, templates and the form -------------------------------------------------------

async function loadModels() {
  const data = await api.models();
  state.models = data.models;
  state.defaultModel = data.default;
  state.textToImage = data.text_to_image;
  keepSpelling(data.models.map((m) => m.model_version));
  const select = $("model");
  select.replaceChildren(...data.models.map((m) => {
    const note = m.served ? ` · ${backendKinds(m)}` : " (not served here)";
    const option = new Option(`${m.model_version} · ${m.credits} credits${note}`, m.model_version);
    option.disabled = !m.served;
    return option;
  }));
  const served = data.models.filter((m) => m.served);
  const preferred = served.find((m) => m.model_version === data.default) || served[0];
  if (preferred) select.value = preferred.model_version;
  else {
    showError($("form-error"), new ApiError(0, "This server serves no model yet.",
      "Its operator must configure a backend (see docs/configuration.md)."));
  }
}

/** The kinds of a model's backends in fallback order, e.g. "openai → placeholder". */
function backendKinds(m) {
  const kinds = m.backends.map((b) => b.kind);
  return kinds.filter((kind, i) => kind !== kinds[i - 1]).join(" → ") || "a worker elsewhere";
}

/** Who serves a model here, by backend name and kind; the placeholder says what it is. */
function backendRule(m) {
  if (!m.served) return "";
  if (!m.backends.length) return " Served by a worker on another machine.";
  const names = m.backends.map((b) => `${b.name} (${b.kind}${b.ready ? "" : ", not ready"})`);
  const placeholder = m.backends.some((b) => b.kind === "placeholder")
    ? " The placeholder draws a test image that says PLACEHOLDER, not this model's image."
    : "";
  return ` Served by ${names.join(", then ")}.${placeholder}`;
}

async function loadTemplates() {
  const response = await fetch("/playground/templates.json");
  // The t_pose template would offer T-pose a second time: the T-pose option under Options
  // (the protocol's t_pose flag) does it for any template. The API still takes the template.
  state.templates = (await response.json()).filter((t) => t.slug !== "t_pose");
  $("template").append(...state.templates.map((t) => new Option(t.title, t.slug)));
}

const model = () => state.models.find((m) => m.model_version === $("model").value);
const template = () => state.templates.find((t) => t.slug === $("template").value);
const promptLength = () => [...$("prompt").value].length; // code points, as the server counts
const negativeLength = () => [...$("negative-prompt").value].length;
/** The text_to_image mode: a prompt and a negative prompt on the server's text-to-image model. */
const textOnly = () => document.querySelector("input[name=mode]:checked").value === "text_to_image";
/** What the task will run on and cost: the text_to_image model, or the form's model. */
function runner(imageCount) {
  if (!textOnly()) return effectiveModel(imageCount);
  const m = state.models.find((x) => x.model_version === state.textToImage?.model_version);
  return m && { ...m, credits: state.textToImage.credits };
}

/** The model that will run: a text-only "upgrade" model runs as the default with images. */
function effectiveModel(imageCount) {
  const chosen = model();
  if (chosen?.images === "upgrade" && imageCount > 0) {
    return state.models.find((m) => m.model_version === state.defaultModel) || chosen;
  }
  return chosen;
}

function imageRule(m) {
  if (m.images === "upgrade") return `Text only: with reference images it runs as ${state.defaultModel}.`;
  if (m.images === "refuses") return "Text only: it refuses reference images.";
  return `Takes up to ${m.max_files} reference images${m.accepts_webp ? "" : " (PNG or JPEG; no WebP)"}.`;
}

/** What stops this form from being sent, as an ApiError, or null. */
function formProblem() {
  const length = promptLength();
  if (length > MAX_PROMPT) {
    return new ApiError(0, `The prompt is ${length} characters long; the limit is ${MAX_PROMPT}.`,
      "Shorten the prompt.");
  }
  if (textOnly()) return textOnlyProblem();
  if (!$("prompt").value.trim() && !template()) {
    return new ApiError(0, "Write a prompt or choose a template.", "Describe the image you want.");
  }
  const count = images.count + (template()?.images || 0);
  const m = effectiveModel(count);
  if (!m || !m.served) {
    return new ApiError(0, "Choose a model this server serves.",
      "Models marked “not served here” have no backend on this server.");
  }
  const extra = template()?.images ? ` (yours plus the template's ${template().images})` : "";
  if (count > 0 && m.images === "refuses") {
    return new ApiError(0, `${m.model_version} takes no reference images; you have ${count}${extra}.`,
      "Remove the images or choose a model that takes them.");
  }
  if (count > m.max_files) {
    return new ApiError(0, `${m.model_version} takes at most ${m.max_files} images; you have ${count}${extra}.`,
      "Remove some images or choose a model that takes more (gpt_4o and gemini_* take 10).");
  }
  if (images.hasWebp && !m.accepts_webp) {
    return new ApiError(0, `${m.model_version} does not take WebP images.`,
      "Use PNG or JPEG images, or choose another model.");
  }
  return null;
}

function textOnlyProblem() {
  if (!$("prompt").value.trim()) {
    return new ApiError(0, "Write a prompt.", "Text to image draws from the prompt alone.");
  }
  if (negativeLength() > MAX_NEGATIVE) {
    return new ApiError(0, `The negative prompt is ${negativeLength()} characters long; the `
      + `limit is ${MAX_NEGATIVE}.`, "Shorten the negative prompt.");
  }
  const m = runner(0);
  if (!m || !m.served) {
    return new ApiError(0, "This server does not serve its text-to-image model.",
      "Use Generate image, or ask the operator to serve the text_to_image model.");
  }
  return null;
}

function checkMode() {
  const text = textOnly();
  $("generate-fields").hidden = text;
  $("prompt-help").textContent = text
    ? "Up to 1024 characters, no emoji."
    : "Up to 1024 characters, no emoji. Refer to reference images as image[1], image[2], …";
  $("mode-help").textContent = text
    ? "Tripo's basic text to image: a prompt and what the image must not show, at a flat price."
    : "Choose the model, a template and reference images.";
  $("negative-field").hidden = !text;
  const negative = negativeLength();
  $("negative-count").textContent = `${negative} / ${MAX_NEGATIVE}${negative > MAX_NEGATIVE ? " (too long)" : ""}`;
  $("negative-count").classList.toggle("over", negative > MAX_NEGATIVE);
  const t2i = state.textToImage;
  $("negative-help").textContent = t2i
    ? `What the image must not show, up to ${MAX_NEGATIVE} characters. Text to image runs on `
      + `${t2i.model_version} for ${t2i.credits} credits.`
    : "";
}

function checkForm() {
  checkMode();
  const length = promptLength();
  const counter = $("prompt-count");
  counter.textContent = `${length} / ${MAX_PROMPT}${length > MAX_PROMPT ? " (too long)" : ""}`;
  counter.classList.toggle("over", length > MAX_PROMPT);
  const m = model();
  $("model-help").textContent = m ? `${m.description}. ${imageRule(m)}${backendRule(m)}` : "";
  const t = template();
  $("template-help").textContent = t
    ? `${t.description}${t.images ? ` Adds ${t.images} reference image.` : ""}`
    : "Optional preset that adds its own instructions.";
  const count = images.count + (t?.images || 0);
  const runs = runner(count);
  $("submit-price").textContent = runs ? `· ${runs.credits} credits` : "";
  warnBalance(runs);
  const problem = state.models.length ? formProblem() : null;
  const limit = runs && runs.images !== "refuses" ? ` of at most ${runs.max_files}` : "";
  $("images-count").textContent = images.count ? `${images.count} chosen${limit}.` : "";
  $("images-count").classList.toggle("warn", Boolean(problem && images.count));
}

/** Warn, before a submit the server would refuse (2010), when the balance is below the price. */
function warnBalance(runs) {
  const short = Boolean(runs) && state.balance !== null && runs.credits > state.balance;
  $("balance-warning").hidden = !short;
  if (!short) return;
  $("balance-warning").textContent = `${runs.model_version} costs ${runs.credits} credits; the `
    + `balance is ${state.balance}, so the server will refuse this task. Ask the server's `
    + "operator for credits, or choose a cheaper model.";
}

async function submit(event) {
  event.preventDefault();
  const box = $("form-error");
  const problem = formProblem();
  showError(box, problem);
  if (problem) return;
  const button = $("submit");
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  try {
    const body = textOnly() ? textToImageBody() : await generateImageBody();
    const { task_id } = await api.submit(body);
    gallery.update({ task_id, status: "queued", input: body, create_time: Math.floor(Date.now() / 1000) });
    openTask(task_id);
    refreshBalance().catch(() => {});
  } catch (error) {
    showError(box, error);
  } finally {
    button.disabled = false;
    button.removeAttribute("aria-busy");
  }
}

function textToImageBody() {
  const body = { type: "text_to_image", prompt: $("prompt").value };
  if ($("negative-prompt").value.trim()) body.negative_prompt = $("negative-prompt").value;
  return body;
}

async function generateImageBody() {
  const body = { type: "generate_image", prompt: $("prompt").value, model_version: model().model_version };
  if (template()) body.template = template().slug;
  body.t_pose = $("t-pose").checked;
  body.sketch_to_render = $("sketch").checked;
  const files = await images.files();
  if (files.length) body.files = files;
  return body;
}

// -- the live task view -------------------------------------------------------------------

function openTask(taskId, { scroll = true } = {}) {
  view.watch?.abort();
  view.watch = new AbortController();
  view.task = null;
  view.deadline = null;
  view.shownImage = "";
  view.outage = "";
  $("task-empty").hidden = true;
  $("task-view").hidden = false;
  $("result").hidden = true;
  $("task-status").textContent = "Loading the task…";
  $("task-progress").value = 0;
  $("task-progress").hidden = $("task-detail").parentElement.hidden = false;
  showError($("task-error"), null);
  $("cancel").disabled = false;
  $("cancel").textContent = "Cancel task";
  if (scroll && matchMedia("(max-width: 899px)").matches) {
    const smooth = !matchMedia("(prefers-reduced-motion: reduce)").matches;
    $("task-panel").scrollIntoView({ behavior: smooth ? "smooth" : "auto", block: "start" });
  }
  watch(taskId, view.watch.signal);
}

const sleep = (ms, signal) => new Promise((resolve) => {
  const timer = setTimeout(resolve, ms);
  signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
});

/** Poll the task until it is final (GET /task/{id}; EventSource cannot send the key). While
 * the server is away the panel says so (the ETA would be a guess) and polling goes on, slower,
 * until it answers again. */
async function watch(taskId, signal) {
  let misses = 0;
  while (!signal.aborted) {
    try {
      const task = await api.task(taskId, { signal });
      if (signal.aborted) return;
      misses = 0;
      view.outage = "";
      showTask(task);
      if (FINAL.has(task.status)) return;
    } catch (error) {
      if (signal.aborted) return;
      view.outage = outageText(error);
      if (!view.outage) {
        showError($("task-error"), error);
        $("cancel").hidden = true;
        return;
      }
      misses += 1;
      renderDetail();
    }
    await sleep(misses ? Math.min(POLL_MS * 2 ** misses, RETRY_MAX_MS) : POLL_MS, signal);
  }
}

/** Show a task's latest state in the panel and the gallery; a final one moves the balance. */
function showTask(task) {
  const wasFinal = view.task && FINAL.has(view.task.status);
  renderTask(task);
  gallery.update(task);
  if (FINAL.has(task.status) && !wasFinal) refreshBalance().catch(() => {});
}

function renderTask(task) {
  view.task = task;
  const final = FINAL.has(task.status);
  const words = task.status === "queued"
    ? (task.queuing_num > 0 ? `Queued: ${task.queuing_num} ${task.queuing_num === 1 ? "task" : "tasks"} ahead` : "Queued: next in line")
    : STATUS_WORDS[task.status] || task.status;
  if ($("task-status").textContent !== words) $("task-status").textContent = words;
  $("task-status").className = `status status-${task.status}`;
  $("task-progress").value = task.progress || 0;
  $("task-progress").hidden = $("task-detail").parentElement.hidden = final && task.status !== "success";
  view.deadline = !final && task.running_left_time >= 0 ? Date.now() + task.running_left_time * 1000 : null;
  renderDetail();
  $("cancel").hidden = final;
  showError($("task-error"), taskError(task));
  const link = task.output?.generated_image;
  if (task.status === "success" && link && !view.shownImage) {
    view.shownImage = link;
    $("result-image").src = link;
    $("result-image").alt = `Generated image: ${task.input?.prompt || task.input?.template || ""}`;
    $("result-link").href = link;
    $("result-download").href = link;
    $("result-download").download = `easel-${task.task_id}.${imageExtension(link)}`;
    $("result-caption").textContent = "Open the full-size image in a new tab; the link expires.";
    $("result").hidden = false;
  }
  const entry = snapshot(task);
  const cost = costText(entry, priceOf(entry.model_version));
  $("task-meta").textContent = `${entry.model_version} · ${cost} · task ${task.task_id}`;
}

/** The output's file extension, from the link's path (".../{task_id}.png?expires=…"). */
function imageExtension(link) {
  const match = new URL(link, location.href).pathname.match(/\.(png|jpe?g|webp)$/i);
  return match ? match[1].toLowerCase() : "png";
}

function renderDetail() {
  const detail = $("task-detail");
  detail.classList.toggle("warn", Boolean(view.outage));
  if (view.outage) {
    if (detail.textContent !== view.outage) detail.textContent = view.outage;
    return;
  }
  const task = view.task;
  if (!task) return;
  let text = "";
  if (task.status === "running") text = `${task.progress || 0}% done`;
  if (view.deadline !== null) {
    const left = Math.max(0, Math.round((view.deadline - Date.now()) / 1000));
    const eta = left >= 90 ? `${Math.round(left / 60)} min` : `${left} s`;
    text += `${text ? " · " : ""}${left > 0 ? `about ${eta} left` : "finishing…"}`;
  } else {
    text += `${text ? " · " : ""}estimating…`; // no measured run of the model yet
  }
  if (FINAL.has(task.status)) text = task.status === "success" ? "100% done" : "";
  detail.textContent = text;
}

async function cancel() {
  const button = $("cancel");
  button.disabled = true;
  button.textContent = "Cancelling…";
  try {
    showTask(await api.cancel(view.task?.task_id));
  } catch (error) {
    showError($("task-error"), error);
    button.disabled = false;
    button.textContent = "Cancel task";
  }
}

// -- wiring -------------------------------------------------------------------------------

$("key-form").addEventListener("submit", useKey);
$("forget-key").addEventListener("click", forget);
$("task-form").addEventListener("submit", submit);
for (const id of ["prompt", "negative-prompt", "model", "template"]) {
  $(id).addEventListener("input", checkForm);
}
for (const radio of document.querySelectorAll("input[name=mode]")) {
  radio.addEventListener("change", () => { showError($("form-error"), null); checkForm(); });
}
for (const id of ["prompt", "negative-prompt"]) {
  $(id).addEventListener("input", () => showError($("form-error"), null));
}
$("cancel").addEventListener("click", cancel);
$("gallery-refresh").addEventListener("click", () => gallery.refresh());
setInterval(renderDetail, 500);
setInterval(() => {
  if (state.key && gallery.hasUnfinished()) gallery.refresh({ unfinishedOnly: true });
}, 4000);

async function start() {
  if (state.key) {
    try {
      showBalance(await api.balance());
      await enter();
      return;
    } catch (error) {
      if (error.code === 1002) {
        store.forgetKey();
        state.key = "";
      }
      showError($("key-error"), error);
    }
  }
  $("key-section").hidden = false;
  $("key-input").focus();
}

start();

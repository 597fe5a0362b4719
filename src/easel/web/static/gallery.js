// The gallery: the key's recent tasks from this browser (the API has no route listing them),
// refreshed with GET /task/{id} because output links expire.

import { FINAL } from "./api.js";
import { forgetTask, loadTasks, rememberTask } from "./store.js";

const AT_ONCE = 6;

export function snapshot(task) {
  return {
    task_id: task.task_id,
    type: task.type || task.input?.type || "generate_image",
    prompt: task.input?.prompt || "",
    template: task.input?.template || "",
    model_version: task.input?.model_version || "",
    status: task.status,
    credit: task.consumed_credit || 0,
    created: task.create_time || Math.floor(Date.now() / 1000),
  };
}

/** What a task costs: its consumed credits, nothing (refunded) or the price held for now. */
export function costText(entry, price) {
  if (entry.status === "success") return `${entry.credit} credits`;
  if (FINAL.has(entry.status)) return "No charge";
  return price ? `${price} credits held` : "Credits held";
}

export function createGallery({ api, list, empty, getKey, onOpen, priceOf, onFinal }) {
  const links = new Map(); // task_id → signed output link (kept in memory only: links expire)

  /** Record a task's latest state; re-render only when its tile would change. */
  function update(task) {
    const before = loadTasks(getKey()).find((t) => t.task_id === task.task_id);
    const after = snapshot(task);
    const newLink = task.output?.generated_image && !links.has(task.task_id);
    if (newLink) links.set(task.task_id, task.output.generated_image);
    if (before && before.status === after.status && before.credit === after.credit && !newLink) {
      return;
    }
    rememberTask(getKey(), after);
    render();
  }

  function tile(entry) {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "tile";
    button.dataset.taskId = entry.task_id;
    button.addEventListener("click", () => onOpen(entry.task_id));

    const frame = document.createElement("span");
    frame.className = "tile-image";
    const link = links.get(entry.task_id);
    if (link) {
      const img = document.createElement("img");
      img.src = link;
      img.alt = "";
      img.loading = "lazy";
      img.addEventListener("error", () => { links.delete(entry.task_id); img.remove(); });
      frame.append(img);
    } else {
      const done = FINAL.has(entry.status);
      frame.textContent = entry.status === "success" ? "…" : done ? "No image" : "In progress…";
    }
    const prompt = document.createElement("span");
    prompt.className = "tile-prompt";
    prompt.textContent = entry.prompt || `Template: ${entry.template || "none"}`;
    const meta = document.createElement("span");
    meta.className = "tile-meta";
    const badge = document.createElement("span");
    badge.className = `badge badge-${entry.status}`;
    badge.textContent = entry.status;
    const cost = document.createElement("span");
    cost.textContent = costText(entry, priceOf(entry.model_version, entry.type));
    meta.append(badge, cost);
    button.append(frame, prompt, meta);
    li.append(button);
    return li;
  }

  function render() {
    const tasks = loadTasks(getKey());
    const focused = document.activeElement?.dataset?.taskId;
    empty.hidden = tasks.length > 0;
    list.replaceChildren(...tasks.map(tile));
    if (focused) list.querySelector(`[data-task-id="${CSS.escape(focused)}"]`)?.focus();
  }

  /** Fetch the key's tasks again (only the unfinished ones with `unfinishedOnly`). */
  async function refresh({ unfinishedOnly = false } = {}) {
    const key = getKey();
    const tasks = loadTasks(key).filter((t) => !unfinishedOnly || !FINAL.has(t.status));
    for (let i = 0; i < tasks.length; i += AT_ONCE) {
      await Promise.all(tasks.slice(i, i + AT_ONCE).map(async (entry) => {
        try {
          const task = await api.task(entry.task_id);
          if (!FINAL.has(entry.status) && FINAL.has(task.status)) onFinal(task);
          rememberTask(key, snapshot(task));
          if (task.output?.generated_image) links.set(task.task_id, task.output.generated_image);
        } catch (error) {
          if (error.code === 2001) forgetTask(key, entry.task_id); // gone from the server
        }
      }));
    }
    if (key === getKey()) render();
  }

  const hasUnfinished = () => loadTasks(getKey()).some((t) => !FINAL.has(t.status));

  return { update, render, refresh, hasUnfinished };
}

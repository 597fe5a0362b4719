// Reference images: drop zone and file picker, each image uploaded through /upload at once,
// shown as a removable thumbnail.

import { ApiError, showError } from "./api.js";

const TYPES = { "image/png": "png", "image/jpeg": "jpg", "image/webp": "webp" };
const MAX_BYTES = 20 * 1024 * 1024;
const STATES = { uploading: "Uploading…", ready: "Uploaded", error: "Upload failed" };

export function createImages({ api, dropzone, input, list, errorBox, onChange }) {
  const items = []; // {file, type, url, token, state, error, promise, controller}

  function add(files) {
    const refused = [];
    for (const file of files) {
      const type = TYPES[file.type];
      if (!type || file.size === 0 || file.size > MAX_BYTES) {
        refused.push(file.name);
        continue;
      }
      const item = { file, type, url: URL.createObjectURL(file), token: null, state: "uploading" };
      item.controller = new AbortController();
      item.promise = api.upload(file, item.controller.signal).then(
        (data) => { item.token = data.image_token; item.state = "ready"; },
        (error) => {
          if (error.name === "AbortError") return;
          item.state = "error";
          item.error = error;
          showError(errorBox, error);
        },
      ).finally(render);
      items.push(item);
    }
    showError(errorBox, refused.length ? new ApiError(0,
      `Not added: ${refused.join(", ")}.`,
      "Choose PNG, JPEG or WebP images of at most 20 MB.") : null);
    render();
  }

  function remove(item) {
    const index = items.indexOf(item);
    if (index < 0) return;
    item.controller.abort();
    URL.revokeObjectURL(item.url);
    items.splice(index, 1);
    if (!items.some((i) => i.state === "error")) showError(errorBox, null);
    render();
    const buttons = list.querySelectorAll("button");
    (buttons[Math.min(index, buttons.length - 1)] || dropzone).focus();
  }

  function render() {
    list.replaceChildren(...items.map((item, index) => {
      const name = `image[${index + 1}]`;
      const li = document.createElement("li");
      li.className = `thumb thumb-${item.state}`;
      const img = document.createElement("img");
      img.src = item.url;
      img.alt = "";
      const label = document.createElement("span");
      label.className = "thumb-label";
      label.textContent = name;
      label.title = item.file.name;
      const state = document.createElement("span");
      state.className = "thumb-state";
      state.textContent = STATES[item.state];
      const button = document.createElement("button");
      button.type = "button";
      button.className = "thumb-remove";
      button.textContent = "×";
      button.setAttribute("aria-label", `Remove ${name} (${item.file.name})`);
      button.addEventListener("click", () => remove(item));
      li.append(img, label, state, button);
      return li;
    }));
    onChange();
  }

  const pick = () => input.click();
  dropzone.addEventListener("click", pick);
  dropzone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      pick();
    }
  });
  input.addEventListener("change", () => {
    add([...input.files]);
    input.value = "";
  });
  for (const name of ["dragenter", "dragover"]) {
    dropzone.addEventListener(name, (event) => {
      event.preventDefault();
      dropzone.classList.add("dragging");
    });
  }
  dropzone.addEventListener("dragleave", () => dropzone.classList.remove("dragging"));
  dropzone.addEventListener("drop", (event) => {
    event.preventDefault();
    dropzone.classList.remove("dragging");
    add([...(event.dataTransfer?.files || [])]);
  });
  // A file dropped beside the zone must not navigate away from the page.
  for (const name of ["dragover", "drop"]) {
    window.addEventListener(name, (event) => event.preventDefault());
  }

  return {
    get count() { return items.length; },
    get hasWebp() { return items.some((i) => i.type === "webp"); },
    /** The `files` of a task body, once every upload is done; throws if one failed. */
    async files() {
      await Promise.all(items.map((i) => i.promise));
      const failed = items.find((i) => i.state === "error");
      if (failed) {
        throw new ApiError(0, `${failed.file.name} was not uploaded: ${failed.error.message}`,
          "Remove it and add it again.");
      }
      return items.map((i) => ({ type: i.type, file_token: i.token }));
    },
  };
}

// The API client: the /v2/openapi envelope, errors with their code and suggestion.

const BASE = "/v2/openapi";

/** An error the way the protocol words it: code, message and what to do about it. */
export class ApiError extends Error {
  constructor(code, message, suggestion, status = 0) {
    super(message);
    this.code = code;
    this.suggestion = suggestion || "";
    this.status = status;
  }
}

const OFFLINE = () =>
  new ApiError(0, "Could not reach the Easel server.",
    "Check that `easel serve` is still running and that this page's address is right.");

/** Calls the API with the key `getKey()` returns. */
export function createApi(getKey) {
  async function call(method, path, { json, form, signal } = {}) {
    const headers = { Authorization: `Bearer ${getKey()}` };
    let body;
    if (json !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(json);
    } else if (form !== undefined) {
      body = form;
    }
    let response;
    try {
      response = await fetch(BASE + path, { method, headers, body, signal });
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw OFFLINE();
    }
    let payload = null;
    try {
      payload = await response.json();
    } catch {
      // not JSON (a proxy's error page): reported below from the HTTP status
    }
    if (response.ok && payload && payload.code === 0) return payload.data;
    if (payload && typeof payload.code === "number") {
      throw new ApiError(payload.code, payload.message, payload.suggestion, response.status);
    }
    throw new ApiError(1000, `The server answered HTTP ${response.status}.`,
      "Try again later; if it persists, contact the server's operator.", response.status);
  }

  return {
    balance: (opts) => call("GET", "/user/balance", opts),
    models: (opts) => call("GET", "/models", opts),
    task: (id, opts) => call("GET", `/task/${encodeURIComponent(id)}`, opts),
    submit: (body) => call("POST", "/task", { json: body }),
    cancel: (id) => call("POST", `/task/${encodeURIComponent(id)}/cancel`),
    upload(file, signal) {
      const form = new FormData();
      form.append("file", file, file.name);
      return call("POST", "/upload", { form, signal });
    },
  };
}

/** What to say while the server is away (no answer, or a proxy's 502–504 in its place, or
 * Easel's own 503), or "" for an answer that is final for this request. */
export function outageText(error) {
  if (error.code === 0) return "Connection lost: the server does not answer. Trying again…";
  if ([502, 503, 504].includes(error.status)) {
    return `The server is unavailable (HTTP ${error.status}). Trying again…`;
  }
  return "";
}

export const FINAL = new Set(["success", "failed", "banned", "expired", "cancelled", "unknown"]);

/** Suggestions for a failed task's error_code (the task object carries no suggestion). */
const TASK_HINTS = {
  1001: "The server could not make the image; your credits were refunded. Try again, or ask the operator to check the server log.",
  2004: "Use PNG or JPEG images (flux.1_kontext_pro takes no WebP).",
  2008: "The provider refused the prompt or images on policy grounds; your credits were refunded. Change them and try again.",
  2019: "A reference image could not be found or downloaded. Upload it again.",
};

/** The error to show for a task that ended without an image, or null. */
export function taskError(task) {
  if (task.status === "expired") {
    return new ApiError(task.error_code || 0, task.error_msg || "The task expired in the queue.",
      "Its credits were refunded. Submit it again when the server is less busy.");
  }
  if (task.status === "failed" || task.status === "banned" || task.status === "unknown") {
    const code = task.error_code || 1001;
    return new ApiError(code, task.error_msg || "The task failed.",
      TASK_HINTS[code] || TASK_HINTS[1001]);
  }
  return null;
}

const SPELLED = new Set(); // words shown as the protocol spells them: the model_versions

/** Names that an error message starting with them must not capitalise (`midjourney`). */
export function keepSpelling(words) {
  for (const word of words) SPELLED.add(word);
}

/** A message as a sentence: a plain first word gets its capital, but a protocol name stays
 * as it is spelled ("flux.1_kontext_pro costs…", "image[1] is…", "midjourney takes…"). */
function sentenceCase(message) {
  const first = message.match(/^[a-z]+(?![\w.[\]'-])/)?.[0];
  return first && !SPELLED.has(first) ? first.toUpperCase().charAt(0) + message.slice(1) : message;
}

/** Render an error into `box` (a role=alert element) in words; null hides it. */
export function showError(box, error) {
  box.replaceChildren();
  box.hidden = !error;
  if (!error) return;
  const title = document.createElement("p");
  title.className = "error-title";
  const message = String(error.message || error);
  title.textContent = sentenceCase(message);
  if (error.code) {
    const code = document.createElement("span");
    code.className = "error-code";
    code.textContent = ` (error ${error.code})`;
    title.append(code);
  }
  box.append(title);
  if (error.suggestion) {
    const hint = document.createElement("p");
    hint.className = "error-hint";
    const label = document.createElement("strong");
    label.textContent = "What to do: ";
    hint.append(label, error.suggestion);
    box.append(hint);
  }
}

// What the playground keeps in localStorage: the API key and, per key, its recent tasks.

const KEY = "easel.apiKey";
const MAX_TASKS = 48;

function read(name, fallback) {
  try {
    const value = localStorage.getItem(name);
    return value === null ? fallback : JSON.parse(value);
  } catch {
    return fallback;
  }
}

function write(name, value) {
  try {
    localStorage.setItem(name, JSON.stringify(value));
  } catch {
    // storage full or disabled: the page still works for this visit
  }
}

export const loadKey = () => read(KEY, "");
export const saveKey = (key) => write(KEY, key);
export const forgetKey = () => localStorage.removeItem(KEY);

/** A short, stable name for a key's task list (FNV-1a; the key itself is not repeated). */
function tasksName(key) {
  let hash = 0x811c9dc5;
  for (let i = 0; i < key.length; i++) {
    hash ^= key.charCodeAt(i);
    hash = Math.imul(hash, 0x01000193) >>> 0;
  }
  return `easel.tasks.${hash.toString(16)}`;
}

/** Recent tasks of `key`, newest first: {task_id, prompt, model_version, status, credit, created}. */
export const loadTasks = (key) => read(tasksName(key), []);

/** Add or update the snapshot of one task. */
export function rememberTask(key, snapshot) {
  const tasks = loadTasks(key);
  const index = tasks.findIndex((t) => t.task_id === snapshot.task_id);
  if (index >= 0) tasks[index] = { ...tasks[index], ...snapshot };
  else tasks.unshift(snapshot);
  write(tasksName(key), tasks.slice(0, MAX_TASKS));
}

export function forgetTask(key, taskId) {
  write(tasksName(key), loadTasks(key).filter((t) => t.task_id !== taskId));
}

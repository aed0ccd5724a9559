// The gateway's public API, as the dashboard uses it: REST with an optional bearer token, the
// job WebSocket, and the /openapi.json read once to learn which optional features exist.

const TOKEN_KEY = "pm.token";
// Subprotocols of the job WebSocket (pm/http/auth.py): the token travels in the
// Sec-WebSocket-Protocol header, base64url-encoded, never in the URL (URLs get logged).
const WATCH_SUBPROTOCOL = "pm.watch";
const TOKEN_SUBPROTOCOL_PREFIX = "pm.bearer.";

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

let tokenWanted = null;

/** Show the token form once and resolve when a token was entered. */
function askForToken() {
  if (tokenWanted) return tokenWanted;
  const form = document.getElementById("token-form");
  const input = document.getElementById("token-input");
  form.hidden = false;
  input.focus();
  tokenWanted = new Promise((resolve) => {
    form.addEventListener(
      "submit",
      (event) => {
        event.preventDefault();
        sessionStorage.setItem(TOKEN_KEY, input.value.trim());
        input.value = "";
        form.hidden = true;
        tokenWanted = null;
        resolve();
      },
      { once: true },
    );
  });
  return tokenWanted;
}

/**
 * One API call. Returns {body, headers, status}. A 401 asks for a token and retries; any
 * other error answer throws ApiError with the API's own message ({"message": "..."}).
 */
export async function api(path, { method = "GET", body, query } = {}) {
  for (;;) {
    const headers = {};
    const current = token();
    if (current) headers.Authorization = `Bearer ${current}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const url = query ? `${path}?${new URLSearchParams(query)}` : path;
    const response = await fetch(url, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
    });
    if (response.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      await askForToken();
      continue;
    }
    let parsed = null;
    const text = await response.text();
    if (text) {
      try {
        parsed = JSON.parse(text);
      } catch {
        parsed = { message: text };
      }
    }
    if (!response.ok) {
      throw new ApiError(response.status, parsed?.message ?? `${response.status} ${response.statusText}`);
    }
    return { body: parsed, headers: response.headers, status: response.status };
  }
}

let openapiDocument = null;

/** /openapi.json, read once per page load. */
export async function openapi() {
  if (!openapiDocument) openapiDocument = api("/openapi.json").then((answer) => answer.body);
  return openapiDocument;
}

/** Whether the API offers `method` on `path` (as /openapi.json spells it). */
export async function offers(path, method) {
  const document = await openapi();
  return Boolean(document.paths?.[path]?.[method]);
}

function base64url(text) {
  return btoa(text).replaceAll("+", "-").replaceAll("/", "_").replaceAll("=", "");
}

/**
 * Follow a job over its WebSocket (`query`: {tasks, interval}); `onMessage` gets each
 * decoded message. Returns the socket
 * (close it to stop). `onClose(code)` is called when it ends.
 */
export function watchJob(jobId, query, onMessage, onClose) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const protocols = [WATCH_SUBPROTOCOL];
  const current = token();
  if (current) protocols.push(TOKEN_SUBPROTOCOL_PREFIX + base64url(current));
  const socket = new WebSocket(`${scheme}://${location.host}/jobs/${jobId}/ws?${new URLSearchParams(query)}`, protocols);
  socket.addEventListener("message", (event) => onMessage(JSON.parse(event.data)));
  socket.addEventListener("close", (event) => onClose?.(event.code));
  return socket;
}

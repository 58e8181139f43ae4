// Chat page of the dialogue service: keeps the conversation in the page and sends it, oldest turn
// first, to POST /respond with a session id (the A/B arm is sticky per session). Each reply shows
// the backend that answered, its A/B arm, the model, and the server and round-trip latency.
"use strict";

// The service refuses more than DIALOGUE_MAX_TURNS turns (default 16): send only the latest ones.
const MAX_CONTEXT_TURNS = 8;

const state = { sessionId: newSessionId(), turns: [] };

// crypto.randomUUID needs a secure context; getRandomValues works over plain http too.
function newSessionId() {
  const bytes = crypto.getRandomValues(new Uint8Array(12));
  return "chat-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text; // textContent: replies are never HTML
  return node;
}

function addMessage(role, text, meta) {
  const item = el("li", "message " + role);
  item.append(el("div", "text", text));
  if (meta) item.append(meta);
  const list = document.getElementById("conversation");
  list.append(item);
  // To the very bottom: the composer sits there, right below the newest message.
  window.scrollTo({ top: document.documentElement.scrollHeight });
  return item;
}

function replyMeta(body, roundTripMs) {
  const meta = el("div", "meta");
  const backend = el("span", "backend", body.backend);
  backend.dataset.backend = body.backend;
  meta.append(backend);
  // The arm differs from the backend on an override or a fallback.
  if (body.arm !== body.backend) meta.append(el("span", "arm", `arm ${body.arm}`));
  meta.append(el("span", "latency", `${body.latency_ms.toFixed(1)} ms`));
  meta.append(el("span", "round-trip", `round trip ${roundTripMs.toFixed(0)} ms`));
  meta.append(el("span", "model", body.model));
  return meta;
}

async function send(text) {
  state.turns.push(text);
  addMessage("user", text);
  const payload = {
    context: state.turns.slice(-MAX_CONTEXT_TURNS),
    session_id: state.sessionId,
  };
  const forced = document.getElementById("backend").value;
  if (forced) payload.backend = forced;

  const started = performance.now();
  let response, body;
  try {
    response = await fetch("/respond", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(payload),
    });
    body = await response.json();
  } catch (err) {
    state.turns.pop(); // the turn was never answered: leave it out of the next context
    addMessage("error", `network error: ${err.message}`);
    return;
  }
  const roundTripMs = performance.now() - started;
  if (!response.ok) {
    state.turns.pop();
    const error = (body && body.error) || { type: "http_error", message: response.statusText };
    addMessage("error", `${response.status} ${error.type}: ${error.message}`);
    return;
  }
  // The service refuses empty turns: an empty reply is shown but left out of the context.
  if (body.response.trim()) state.turns.push(body.response);
  const item = addMessage("bot", body.response || "(empty reply)", replyMeta(body, roundTripMs));
  if (!body.response.trim()) item.classList.add("empty");
}

function startSession() {
  state.sessionId = newSessionId();
  state.turns = [];
  document.getElementById("conversation").replaceChildren();
  document.getElementById("session-id").textContent = state.sessionId;
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("session-id").textContent = state.sessionId;
  document.getElementById("new-session").addEventListener("click", startSession);
  const form = document.getElementById("composer");
  const input = document.getElementById("message");
  const button = document.getElementById("send");
  const status = document.getElementById("status");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = input.value.trim();
    if (!text) return;
    input.value = "";
    button.disabled = true;
    status.textContent = "waiting for a reply…";
    try {
      await send(text);
    } finally {
      button.disabled = false;
      status.textContent = "";
      input.focus();
    }
  });
  input.focus();
});

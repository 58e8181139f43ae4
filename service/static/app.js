// Chat page of the dialogue service: keeps the conversation in the page and sends it, oldest turn
// first, to POST /respond with a session id (the A/B arm is sticky per session). Each reply shows
// the backend that answered, its A/B arm, the model, and the server and round-trip latency, and
// thumbs up/down buttons that rate it (POST /feedback with its request_id; rating it again
// replaces the rating). A new conversation, or leaving the page, ends the session (POST /feedback
// {"session_id", "event": "end", "turns"}).
"use strict";

// The service refuses more than DIALOGUE_MAX_TURNS turns (default 16): send only the latest ones.
const MAX_CONTEXT_TURNS = 8;

// replies: answered requests in this session (the "turns" its end event reports, counted as the
// exposure log counts them)
const state = { sessionId: newSessionId(), turns: [], replies: 0 };

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

// Thumbs up/down under a reply: buttons (keyboard reachable), aria-pressed on the chosen one, and
// a status line that says whether the rating was recorded.
function feedbackControls(requestId) {
  const box = el("div", "feedback");
  box.setAttribute("role", "group");
  box.setAttribute("aria-label", "Rate this reply");
  const status = el("span", "feedback-status");
  status.setAttribute("role", "status");
  const buttons = [
    ["up", "\u{1F44D}", "Good reply"],
    ["down", "\u{1F44E}", "Bad reply"],
  ].map(([rating, symbol, label]) => {
    const button = el("button", "rate rate-" + rating, symbol);
    button.type = "button";
    button.dataset.rating = rating;
    button.title = label;
    button.setAttribute("aria-label", label);
    button.setAttribute("aria-pressed", "false");
    button.addEventListener("click", () => rate(requestId, rating, buttons, status));
    return button;
  });
  box.append(...buttons, status);
  return box;
}

async function rate(requestId, rating, buttons, status) {
  status.textContent = "sending…";
  let response;
  try {
    response = await fetch("/feedback", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ request_id: requestId, rating: rating }),
    });
  } catch (err) {
    status.textContent = `not recorded: ${err.message}`;
    return;
  }
  if (!response.ok) {
    status.textContent = `not recorded (${response.status})`;
    return;
  }
  for (const button of buttons) {
    button.setAttribute("aria-pressed", String(button.dataset.rating === rating));
  }
  status.textContent = rating === "up" ? "thanks: rated good" : "thanks: rated bad";
}

// The session's end, with its number of answered turns, so the A/B report can compare how long
// conversations last. sendBeacon survives the page being closed.
function endSession() {
  if (!state.replies) return;
  const body = JSON.stringify({ session_id: state.sessionId, event: "end", turns: state.replies });
  state.replies = 0;
  navigator.sendBeacon("/feedback", new Blob([body], { type: "application/json" }));
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
  state.replies += 1;
  // The service refuses empty turns: an empty reply is shown but left out of the context.
  if (body.response.trim()) state.turns.push(body.response);
  const item = addMessage("bot", body.response || "(empty reply)", replyMeta(body, roundTripMs));
  if (!body.response.trim()) item.classList.add("empty");
  item.append(feedbackControls(body.request_id));
}

function startSession() {
  endSession();
  state.sessionId = newSessionId();
  state.turns = [];
  state.replies = 0;
  document.getElementById("conversation").replaceChildren();
  document.getElementById("session-id").textContent = state.sessionId;
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("session-id").textContent = state.sessionId;
  document.getElementById("new-session").addEventListener("click", startSession);
  window.addEventListener("pagehide", endSession);
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

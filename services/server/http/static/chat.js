// The built-in chat page: a reference client of the public HTTP API (docs/api.md).
// No build step, no dependencies. Model output is only ever set with textContent.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const KEY = "personalize-chat";
  const state = {
    authOn: false, // learnt from a 401 on GET /v1/models without a token
    token: "",     // auth on: the bearer token (the OpenAI api key)
    user: "",      // the user id (auth off: what requests send as `user`)
    turns: [],     // {role: "user", content} | {role: "assistant", texts: [], chosen}
    busy: null,    // the AbortController of the answer being streamed
  };

  class ApiError extends Error {}

  // --- small helpers --------------------------------------------------------------------

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
    for (const child of children) {
      node.append(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return node;
  }

  function say(text) { $("message").textContent = text; }

  function headers(json) {
    const h = {};
    if (json) h["Content-Type"] = "application/json";
    if (state.token) h.Authorization = "Bearer " + state.token;
    return h;
  }

  async function failure(response) {
    let text = `${response.status} ${response.statusText}`;
    try {
      const body = await response.json();
      if (body && body.error && body.error.message) text = body.error.message;
    } catch (_) { /* not JSON */ }
    return new ApiError(text);
  }

  async function api(path, body, signal) {
    const init = body === undefined
      ? { headers: headers(false), signal }
      : { method: "POST", headers: headers(true), body: JSON.stringify(body), signal };
    const response = await fetch(path, init);
    if (!response.ok) throw await failure(response);
    return response;
  }

  // With auth off the request names its user; with auth on the token does.
  function withUser(body) { if (!state.authOn) body.user = state.user; return body; }

  // --- sign in --------------------------------------------------------------------------

  async function detectAuth() {
    const response = await fetch("/v1/models");
    state.authOn = response.status === 401;
    $("credential-label").textContent = state.authOn ? "API token" : "User name";
    $("credential").type = state.authOn ? "password" : "text";
    $("auth-hint").textContent = state.authOn
      ? "Authentication is on: paste your token (personalize token --user NAME)."
      : "Authentication is off: any user name (letters, digits, . _ -) signs you in.";
  }

  async function signIn(credential) {
    state.token = state.authOn ? credential : "";
    state.user = state.authOn ? "" : credential;
    const status = await loadStatus();
    state.user = status.user_id;
    const models = await (await api("/v1/models")).json();
    const select = $("model");
    select.replaceChildren(...models.data.map((m) => el("option", { value: m.id },
      m.id.endsWith(":base") ? `${m.id} (no adapter)` : `${m.id} (your adapter)`)));
    sessionStorage.setItem(KEY, JSON.stringify({ token: state.token, user: state.user }));
    $("who").textContent = `Signed in as ${state.user}` + (state.authOn ? "" : " (auth off)");
    $("sign-in").hidden = true;
    $("chat").hidden = false;
    $("status-panel").hidden = false;
    $("sign-out").hidden = false;
    say("");
    $("prompt").focus();
  }

  function signOut() {
    if (state.busy) state.busy.abort();
    sessionStorage.removeItem(KEY);
    Object.assign(state, { token: "", user: "", turns: [] });
    $("turns").replaceChildren();
    $("status").replaceChildren();
    $("who").textContent = "";
    $("chat").hidden = true;
    $("status-panel").hidden = true;
    $("sign-out").hidden = true;
    $("sign-in").hidden = false;
    $("credential").value = "";
  }

  // --- status ---------------------------------------------------------------------------

  const pct = (x) => `${(100 * x).toFixed(1)}%`;

  async function loadStatus() {
    const query = state.authOn ? "" : "?user=" + encodeURIComponent(state.user);
    const status = await (await api("/v1/status" + query)).json();
    const t = status.trainer;
    const rows = [
      ["User", "user_id", status.user_id],
      ["Adapter serving you", "adapter_version", status.adapter_version || "base model"],
      ["Feedback counted", "feedback_accepted", String(status.feedback_accepted)],
      ["Answers served", "generations_served", String(status.generations_served)],
    ];
    if (t) {
      const measured = t.reward_model_heldout_pairs > 0;
      rows.push(
        ["Feedback trained on", "feedback_events", String(t.feedback_events)],
        ["Preference pairs", "preference_pairs", String(t.preference_pairs)],
        ["Reward-model accuracy", "reward_model_accuracy", measured
          ? `${pct(t.reward_model_accuracy)} on ${t.reward_model_heldout_pairs} held-out pairs`
          : "not measured yet"],
        ["Last decision", "last_publish_decision", t.last_publish_decision || "none yet"],
      );
      if (t.training_state) rows.push(["Training", "training_state", t.training_state]);
    } else {
      rows.push(["Trainer", "trainer", "no report yet"]);
    }
    $("status").replaceChildren(...rows.flatMap(([label, field, value]) =>
      [el("dt", {}, label), el("dd", { "data-field": field }, value)]));
    return status;
  }

  function refreshStatus() { loadStatus().catch((e) => say(e.message)); }

  // --- feedback -------------------------------------------------------------------------

  async function sendFeedback(body) {
    const ack = await (await api("/v1/feedback", withUser(body))).json();
    refreshStatus();
    return ack;
  }

  function thumbs(turn, i, up, buttons, note) {
    buttons.forEach((b) => { b.disabled = true; });
    sendFeedback({ thumbs: { response_id: turn.ids[i], up } })
      .then(() => {
        buttons[up ? 0 : 1].setAttribute("aria-pressed", "true");
        note.textContent = up ? "Thanks: rated up." : "Thanks: rated down.";
      })
      .catch((e) => { note.textContent = e.message; buttons.forEach((b) => { b.disabled = false; }); });
  }

  function renderRanks(turn) {
    turn.views.forEach((view, i) => {
      const at = turn.ranking.indexOf(i);
      view.rank.textContent = at < 0 ? "Rank" : `#${at + 1}`;
      view.rank.setAttribute("aria-pressed", at < 0 ? "false" : "true");
      view.place.textContent = at < 0 ? "" : ` (ranked #${at + 1})`;
      view.box.classList.toggle("best", at === 0);
    });
    turn.submit.disabled = turn.sent || turn.ranking.length !== turn.views.length;
  }

  function clickRank(turn, i) {
    const at = turn.ranking.indexOf(i);
    if (at < 0) turn.ranking.push(i); else turn.ranking.splice(at, 1);
    renderRanks(turn);
  }

  function submitRanking(turn) {
    turn.submit.disabled = true;
    turn.sent = true;
    sendFeedback({ ranking: { response_ids: turn.ranking.map((i) => turn.ids[i]) } })
      .then((ack) => {
        turn.chosen = turn.ranking[0]; // the conversation goes on with the best answer
        turn.views.forEach((v) => { v.rank.disabled = true; });
        turn.clear.disabled = true;
        turn.note.textContent = `Ranking sent (feedback ${ack.feedback_id}).`;
      })
      .catch((e) => { turn.sent = false; turn.note.textContent = e.message; renderRanks(turn); });
  }

  // --- one answer, streamed -------------------------------------------------------------

  let views = 0; // unique element ids

  function candidateView(turn, i, n) {
    const text = el("p", { class: "text" });
    const place = el("span", { id: `place-${++views}` });
    const up = el("button", { type: "button", "aria-label": `Thumbs up for answer ${i + 1}` }, "Good");
    const down = el("button", { type: "button", "aria-label": `Thumbs down for answer ${i + 1}` }, "Bad");
    const note = el("span", { class: "hint", role: "status" });
    up.addEventListener("click", () => thumbs(turn, i, true, [up, down], note));
    down.addEventListener("click", () => thumbs(turn, i, false, [up, down], note));
    const controls = el("div", { class: "controls" }, up, down);
    const rank = el("button", { type: "button", "aria-label": `Rank answer ${i + 1}`,
      "aria-pressed": "false", "aria-describedby": place.id }, "Rank");
    if (n > 1) {
      rank.addEventListener("click", () => clickRank(turn, i));
      controls.prepend(rank);
    }
    [up, down, rank].forEach((b) => { b.disabled = true; });
    controls.append(note);
    const box = el("article", { class: "candidate", "aria-label": `Answer ${i + 1}` },
      el("h3", {}, n > 1 ? `Answer ${i + 1}` : "Answer", place), text, controls);
    return { box, text, buttons: [up, down, rank], rank, place };
  }

  function assistantTurn(n) {
    const turn = { role: "assistant", texts: Array(n).fill(""), ids: Array(n).fill(""),
                   chosen: 0, ranking: [], sent: false };
    turn.meta = el("p", { class: "meta" }, "answering…");
    turn.views = Array.from({ length: n }, (_, i) => candidateView(turn, i, n));
    turn.note = el("span", { class: "hint", role: "status" });
    const node = el("li", { class: "turn assistant" }, turn.meta,
      el("div", { class: "candidates" }, ...turn.views.map((v) => v.box)));
    if (n > 1) {
      turn.submit = el("button", { type: "button", disabled: "" }, "Submit ranking");
      turn.clear = el("button", { type: "button" }, "Clear ranking");
      turn.submit.addEventListener("click", () => submitRanking(turn));
      turn.clear.addEventListener("click", () => { turn.ranking = []; renderRanks(turn); });
      node.append(el("div", { class: "row" }, turn.submit, turn.clear, turn.note));
    }
    turn.node = node;
    return turn;
  }

  // The data of each Server-Sent Event of a streamed response.
  async function* sseData(response) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true }).replace(/\r/g, "");
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const data = buffer.slice(0, cut).split("\n").filter((l) => l.startsWith("data:"))
          .map((l) => l.slice(5).replace(/^ /, "")).join("\n");
        buffer = buffer.slice(cut + 2);
        if (data) yield data;
      }
    }
  }

  function describe(versions) {
    const names = [...new Set(versions.filter(Boolean))].map((v) =>
      v === "base" ? "the base model" : `adapter ${v}`);
    return names.length ? "answered by " + names.join(" and ") : "answered";
  }

  async function ask(prompt, n) {
    const history = state.turns.map((t) => (t.role === "user" ? t
      : { role: "assistant", content: t.texts[t.chosen] }));
    const user = { role: "user", content: prompt };
    $("turns").append(el("li", { class: "turn user" }, el("p", { class: "text" }, prompt)));
    const turn = assistantTurn(n);
    $("turns").append(turn.node);
    const fingerprints = Array(n).fill("");
    const controller = new AbortController();
    state.busy = controller;
    setBusy(true);
    try {
      const response = await api("/v1/chat/completions", withUser({
        model: $("model").value, messages: [...history, user], n, stream: true,
      }), controller.signal);
      for await (const data of sseData(response)) {
        if (data === "[DONE]") break;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new ApiError(chunk.error.message);
        for (const choice of chunk.choices || []) {
          const i = choice.index;
          turn.ids[i] = choice.response_id;
          fingerprints[i] = chunk.system_fingerprint;
          if (choice.delta && choice.delta.content) {
            turn.texts[i] += choice.delta.content;
            turn.views[i].text.textContent = turn.texts[i];
          }
        }
        turn.meta.textContent = describe(fingerprints) + "…";
      }
      turn.meta.textContent = describe(fingerprints);
      turn.views.forEach((v, i) => {
        if (turn.ids[i]) v.buttons.forEach((b) => { b.disabled = false; });
      });
      state.turns.push(user, turn);
    } catch (e) {
      turn.meta.textContent = controller.signal.aborted ? "stopped" : "failed: " + e.message;
      turn.meta.classList.toggle("error", !controller.signal.aborted);
    } finally {
      state.busy = null;
      setBusy(false);
      refreshStatus();
    }
  }

  function setBusy(busy) {
    $("send").disabled = busy;
    $("stop").disabled = !busy;
  }

  // --- wiring ---------------------------------------------------------------------------

  $("sign-in-form").addEventListener("submit", (event) => {
    event.preventDefault();
    say("");
    signIn($("credential").value.trim()).catch((e) => say("Could not sign in: " + e.message));
  });
  $("sign-out").addEventListener("click", signOut);
  $("ask-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const prompt = $("prompt").value.trim();
    if (!prompt || state.busy) return;
    $("prompt").value = "";
    say("");
    ask(prompt, Number($("candidates").value));
  });
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      $("ask-form").requestSubmit();
    }
  });
  $("stop").addEventListener("click", () => { if (state.busy) state.busy.abort(); });
  $("new-chat").addEventListener("click", () => {
    state.turns = [];
    $("turns").replaceChildren();
    $("prompt").focus();
  });
  $("refresh-status").addEventListener("click", refreshStatus);

  // Start: learn whether auth is on, then resume this tab's session if there is one.
  detectAuth().then(() => {
    const saved = JSON.parse(sessionStorage.getItem(KEY) || "null");
    const credential = saved && (state.authOn ? saved.token : saved.user);
    if (!credential) return;
    signIn(credential).catch((e) => {
      sessionStorage.removeItem(KEY);
      say("Please sign in again: " + e.message);
    });
  }, (e) => say("The server did not answer: " + e.message));
})();

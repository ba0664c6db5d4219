"use strict";
// The mesh's live status: /status/events (server-sent events), else /mesh/status every second.
// Every string out of the snapshot reaches the page as a text node (model ids are the clients' own):
// no HTML is ever parsed from data, and attributes are set only by name from this file.
(() => {
  const EVENTS = "/status/events";
  const SNAPSHOT = "/mesh/status";
  const POLL_MS = 1000;
  const EVENTS_RETRY_MS = [5000, 60000]; // while polling, try the stream again: first after 5 s, doubling to 60 s
  const LISTED_PER_POD = 200; // the snapshot lists this many of a pod's models (mesh/registry/snapshot.py)
  const MODELS = "/mesh/models";
  const MODELS_LISTED = 500; // the models table shows this many, by id
  const MODELS_REFRESH_MS = 10000; // and asks again this often when nothing it shows seems to have changed
  const STATE_COUNTS = { LOADED: "loaded", LOADING: "loading", NOT_LOADED: "not_loaded", LOADING_FAILED: "loading_failed" };

  let clockOffsetMs = 0; // the mesh's clock minus ours, from the last snapshot
  let source = null;
  let polling = false;
  let pollTimer = null;
  let retryTimer = null;
  let retryMs = EVENTS_RETRY_MS[0];
  let lastCounts = {};
  let modelsBusy = false;
  let modelsAgain = false;
  let modelsSignature = "";
  let modelsAt = 0;

  // --- building the page out of text --------------------------------------------------------------

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(props || {})) {
      if (name === "class") node.className = value;
      else if (name === "dataset") Object.assign(node.dataset, value);
      else node.setAttribute(name, String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function byId(id) {
    return document.getElementById(id);
  }

  function setText(id, value) {
    byId(id).textContent = String(value);
  }

  function bytes(n) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let value = Number(n) || 0;
    let unit = 0;
    while (Math.abs(value) >= 1024 && unit < units.length - 1) {
      value /= 1024;
      unit += 1;
    }
    return (unit === 0 ? String(value) : value.toFixed(value < 10 ? 1 : 0)) + " " + units[unit];
  }

  function duration(ms) {
    const s = Math.max(0, ms) / 1000;
    if (s < 60) return s.toFixed(1) + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + Math.floor(s % 60) + " s";
    return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  }

  function meshNow() {
    return Date.now() + clockOffsetMs;
  }

  function since(ms) {
    // a cell that says how long ago ``ms`` (the mesh's clock) was, kept current by tick()
    return el("span", { class: "since", dataset: { since: String(ms) } }, duration(meshNow() - ms));
  }

  function clock(ms) {
    return el("time", { datetime: new Date(ms).toISOString() }, new Date(ms).toLocaleTimeString());
  }

  function badge(text, kind) {
    return el("span", { class: "badge " + kind, dataset: { badge: text } }, text);
  }

  function fillTable(id, columns, rows, build) {
    const body = byId(id).tBodies[0];
    if (rows.length === 0) {
      body.replaceChildren(el("tr", { class: "empty" }, el("td", { colspan: columns }, "none")));
      return;
    }
    body.replaceChildren(...rows.map(build));
  }

  // --- the sections ---------------------------------------------------------------------------------

  function podCard(pod) {
    const used = Number(pod.used_bytes) || 0;
    const capacity = Number(pod.capacity_bytes) || 0;
    const percent = capacity > 0 ? (100 * used) / capacity : 0;
    const fill = el("div", { class: "fill" });
    fill.style.width = Math.min(100, percent).toFixed(2) + "%"; // CSSOM, not a style attribute
    const bar = el(
      "div",
      {
        class: percent > 100 ? "bar over" : "bar",
        role: "progressbar",
        "aria-label": "memory in use",
        "aria-valuemin": 0,
        "aria-valuemax": capacity,
        "aria-valuenow": used,
        dataset: { used: String(used), capacity: String(capacity) },
      },
      fill,
    );
    const badges = [
      pod.alive ? badge("alive", "ok") : badge("gone", "bad"),
      pod.leader ? badge("leader", "lead") : null,
      pod.shutting_down ? badge("shutting down", "warn") : null,
      pod.runtime_ready ? badge("runtime ready", "ok") : badge("runtime not ready", "bad"),
    ];
    const held = pod.models || [];
    const loading = pod.loading || [];
    const more = pod.model_count - held.length;
    return el(
      "article",
      { class: pod.alive ? "pod" : "pod gone", dataset: { pod: pod.id } },
      el("h3", { class: "pod-id" }, pod.id),
      el("div", { class: "badges" }, badges),
      el(
        "dl",
        { class: "facts" },
        el("dt", {}, "pool"),
        el("dd", { class: "pool" }, pod.pool || "(default)"),
        el("dt", {}, "address"),
        el("dd", { class: "address" }, pod.address),
        el("dt", {}, "runtime"),
        el("dd", { class: "runtime" }, (pod.runtime_types || []).join(", ") || "\u2014"),
        el("dt", {}, "requests/min"),
        el("dd", { class: "rpm" }, pod.requests_per_min),
        el("dt", {}, "up for"),
        el("dd", {}, pod.start_ms ? since(pod.start_ms) : "\u2014"),
      ),
      bar,
      el(
        "div",
        { class: "usage" },
        bytes(used) + " of " + bytes(capacity) + " (" + percent.toFixed(1) + " %)",
      ),
      el("h4", {}, "holds ", el("span", { class: "model-count" }, pod.model_count), " models"),
      el(
        "ul",
        { class: "models" },
        held.map((id) => el("li", { class: "model" }, id)),
        held.length >= LISTED_PER_POD && more > 0 ? el("li", { class: "more" }, "and " + more + " more") : null,
      ),
      loading.length
        ? [
            el("h4", {}, "loading"),
            el(
              "ul",
              { class: "loading" },
              loading.map((id) => el("li", { class: "model" }, id)),
            ),
          ]
        : null,
      pod.unplaced_models ? el("p", { class: "warn" }, pod.unplaced_models + " models could not be placed") : null,
    );
  }

  function show(snapshot) {
    clockOffsetMs = Number(snapshot.time_ms) - Date.now();
    const models = snapshot.models || {};
    lastCounts = models;
    // The models table only when what it shows may have moved (a request rate changing is not that).
    const signature = JSON.stringify([
      models,
      (snapshot.pods || []).map((pod) => [pod.id, pod.alive, pod.models, pod.loading]),
      snapshot.loads_in_progress,
      snapshot.recent_failures,
      snapshot.vmodels,
    ]);
    if (signature !== modelsSignature || Date.now() - modelsAt > MODELS_REFRESH_MS) {
      modelsSignature = signature;
      refreshModels();
    }
    for (const name of ["registered", "loaded", "loading", "not_loaded", "loading_failed"]) {
      setText("count-" + name, models[name] ?? 0);
    }
    setText("leader", snapshot.leader || "none");
    byId("snapshot-time").replaceChildren(clock(snapshot.time_ms));

    const pods = snapshot.pods || [];
    const alive = pods.filter((pod) => pod.alive).length;
    setText("pod-total", alive + " alive of " + pods.length);
    const podList = byId("pods");
    if (pods.length === 0) podList.replaceChildren(el("p", { class: "empty" }, "no pods"));
    else podList.replaceChildren(...pods.map(podCard));

    const pools = Object.entries(snapshot.pools || {}).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    fillTable("pools", 7, pools, ([name, pool]) =>
      el(
        "tr",
        { dataset: { pool: name } },
        el("td", {}, name || "(default)"),
        el("td", {}, pool.pods),
        el("td", {}, bytes(pool.capacity_bytes)),
        el("td", {}, bytes(pool.used_bytes)),
        el("td", {}, pool.loaded_models),
        el("td", {}, pool.requests_per_min),
        el("td", {}, pool.unplaced_models),
      ),
    );
    fillTable("loads", 3, snapshot.loads_in_progress || [], (load) =>
      el(
        "tr",
        { dataset: { model: load.model, pod: load.pod } },
        el("td", { class: "model" }, load.model),
        el("td", { class: "pod" }, load.pod),
        el("td", {}, since(load.since_ms)),
      ),
    );
    fillTable("failures", 4, snapshot.recent_failures || [], (failure) =>
      el(
        "tr",
        { dataset: { model: failure.model, pod: failure.pod } },
        el("td", { class: "model" }, failure.model),
        el("td", { class: "pod" }, failure.pod),
        el("td", { class: "message" }, failure.message),
        el("td", {}, clock(failure.time_ms), " (", since(failure.time_ms), " ago)"),
      ),
    );
    fillTable("vmodels", 6, snapshot.vmodels || [], (vmodel) => {
      const moving = vmodel.active !== vmodel.target;
      const state = vmodel.failed ? badge("target failed", "bad") : moving ? badge("moving", "busy") : badge("settled", "ok");
      return el(
        "tr",
        { dataset: { vmodel: vmodel.id } },
        el("td", { class: "vmodel" }, vmodel.id),
        el("td", { class: "active" }, vmodel.active),
        el("td", {}, moving ? "\u2192" : ""),
        el("td", { class: "target" }, vmodel.target),
        el("td", { class: "owner" }, vmodel.owner || ""),
        el("td", {}, state),
      );
    });
  }

  // the models table: /mesh/models after every snapshot (one request at a time; the last one asked wins)
  async function refreshModels() {
    if (modelsBusy) {
      modelsAgain = true;
      return;
    }
    modelsBusy = true;
    const state = byId("model-state").value;
    const query = new URLSearchParams({ limit: String(MODELS_LISTED) });
    if (state) query.set("state", state);
    try {
      const response = await fetch(MODELS + "?" + query.toString(), { cache: "no-store" });
      if (response.ok) {
        showModels(await response.json(), state);
        modelsAt = Date.now();
      }
    } catch (e) {
      // the next snapshot asks again
    } finally {
      modelsBusy = false;
      if (modelsAgain) {
        modelsAgain = false;
        setTimeout(refreshModels, 200);
      }
    }
  }

  function showModels(models, state) {
    const total = state ? lastCounts[STATE_COUNTS[state]] : lastCounts.registered;
    setText("models-shown", models.length < (total ?? 0) ? "first " + models.length + " of " + total : "");
    fillTable("model-list", 7, models, (model) =>
      el(
        "tr",
        { dataset: { model: model.id, status: model.status } },
        el("td", { class: "model" }, model.id),
        el("td", { class: "type" }, model.type),
        el("td", { class: "status" }, badge(model.status.toLowerCase().replace("_", " "), statusKind(model.status))),
        el("td", { class: "holders" }, (model.holders || []).join(", ")),
        el("td", { class: "loading-on" }, (model.loading || []).join(", ")),
        el("td", {}, model.last_used_ms ? [since(model.last_used_ms), " ago"] : "\u2014"),
        el("td", { class: "message" }, (model.errors || [])[0] || ""),
      ),
    );
  }

  function statusKind(status) {
    return { LOADED: "ok", LOADING: "busy", LOADING_FAILED: "bad" }[status] || "off-dim";
  }

  function tick() {
    const now = meshNow();
    for (const cell of document.querySelectorAll("[data-since]")) {
      cell.textContent = duration(now - Number(cell.dataset.since));
    }
  }

  // --- keeping it live --------------------------------------------------------------------------------

  function connection(state, text) {
    const node = byId("connection");
    node.dataset.state = state;
    node.className = "badge " + ({ live: "ok", polling: "busy", reconnecting: "warn" }[state] || "bad");
    node.textContent = text;
  }

  async function pollOnce() {
    try {
      const response = await fetch(SNAPSHOT, { cache: "no-store" });
      if (!response.ok) throw new Error("HTTP " + response.status);
      show(await response.json());
      if (polling) connection("polling", "live (polling)");
    } catch (e) {
      if (polling) connection("offline", "offline");
    }
    if (polling) pollTimer = setTimeout(pollOnce, POLL_MS);
  }

  function startPolling() {
    if (polling) return;
    polling = true;
    pollOnce();
  }

  function stopPolling() {
    polling = false;
    if (pollTimer !== null) clearTimeout(pollTimer);
    pollTimer = null;
  }

  function startEvents() {
    retryTimer = null;
    const events = new EventSource(EVENTS);
    source = events;
    events.addEventListener("snapshot", (event) => {
      stopPolling();
      retryMs = EVENTS_RETRY_MS[0];
      connection("live", "live");
      show(JSON.parse(event.data));
    });
    events.addEventListener("error", () => {
      if (events.readyState !== EventSource.CLOSED) {
        connection("reconnecting", "reconnecting");
        return;
      }
      // refused (too many streams, or no stream here at all): poll, and try the stream again later
      if (source === events) source = null;
      startPolling();
      if (retryTimer === null) {
        retryTimer = setTimeout(startEvents, retryMs);
        retryMs = Math.min(2 * retryMs, EVENTS_RETRY_MS[1]);
      }
    });
  }

  function connect() {
    const pollOnly = new URLSearchParams(window.location.search).get("mode") === "poll";
    if (pollOnly || typeof window.EventSource !== "function") startPolling();
    else startEvents();
  }

  function disconnect() {
    // A page left for another keeps running in the back/forward cache, its stream open: give the
    // mesh's stream slot back now, and connect again if the page is shown again.
    if (source !== null) source.close();
    source = null;
    if (retryTimer !== null) clearTimeout(retryTimer);
    retryTimer = null;
    stopPolling();
    connection("connecting", "paused");
  }

  function start() {
    connect();
    window.addEventListener("pagehide", disconnect);
    window.addEventListener("pageshow", (event) => {
      if (event.persisted) connect();
    });
    byId("model-state").addEventListener("change", refreshModels);
    setInterval(tick, 1000);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();

// The status page: reads the API with the token its user entered (kept in
// this closure only), or given in the address's fragment (`/#token=…`, which
// no browser sends to a server; the page drops it from the address at
// once), or with none when a proxy in front adds one. Every value is
// written with textContent: rejections hold what strangers sent.
"use strict";
(function () {
  let token = null;
  const fragment = new URLSearchParams(window.location.hash.slice(1));
  if (fragment.get("token")) {
    token = fragment.get("token");
    history.replaceState(null, "", window.location.pathname);
  }
  const REFRESH_MS = 5000;
  const $ = (id) => document.getElementById(id);

  async function get(path) {
    const headers = token ? { Authorization: "Bearer " + token } : {};
    const r = await fetch(path, { headers, cache: "no-store", credentials: "same-origin" });
    if (r.status === 401) {
      const e = new Error("unauthorized");
      e.unauthorized = true;
      throw e;
    }
    if (!r.ok) throw new Error(path + ": " + r.status);
    return r.json();
  }

  function cell(row, value, cls) {
    const td = document.createElement("td");
    td.textContent = value === null || value === undefined ? "—" : String(value);
    if (cls) td.className = cls;
    row.appendChild(td);
    return td;
  }

  function fill(tableId, rows, columns) {
    const body = $(tableId).querySelector("tbody");
    body.replaceChildren();
    for (const r of rows) {
      const tr = document.createElement("tr");
      for (const c of columns) {
        const v = typeof c === "function" ? c(r) : r[c];
        cell(tr, v, typeof v === "number" ? "num" : "");
      }
      body.appendChild(tr);
    }
  }

  function pairs(tableId, obj) {
    fill(tableId, Object.entries(obj).filter(([, v]) => typeof v !== "object" || v === null), [(p) => p[0], (p) => p[1]]);
  }

  function render(stats, sources, dead, rejections) {
    const q = stats.queue;
    if (q) {
      pairs("queue", {
        stream: stats.stream, partitions: stats.partitions, length: q.length, pending: q.pending,
        lag: q.lag, "oldest unacked (s)": q.oldestUnackedSeconds, "dead letters in Redis": q.deadLettersInRedis,
      });
      fill("partitions", q.partitions.map((p, i) => Object.assign({ i }, p || {})),
        ["i", "length", "pending", "lag", "oldestUnackedSeconds", "deadLettersInRedis"]);
    } else {
      pairs("queue", { redis: "did not answer" });
    }
    fill("workers", stats.workers, ["name", "partition", "pending", "idleMs"]);
    const held = $("held");
    held.replaceChildren();
    for (const [condition, description] of stats.held) {
      const li = document.createElement("li");
      li.textContent = condition + ": " + description;
      held.appendChild(li);
    }
    if (stats.store) pairs("store", stats.store);
    fill("sources", sources.data.concat([sources.unrouted]), [
      "source", (s) => s.kind || "",
      (s) => s.lastAcceptedAt,
      (s) => s.last5m.accepted, (s) => s.last5m.rejected,
      (s) => s.last1h.accepted, (s) => s.last1h.rejected,
      (s) => s.lastRejection ? s.lastRejection.status + " " + s.lastRejection.reason + " at " + s.lastRejection.at : null,
      (s) => s.silent === undefined || s.silent === null ? "" : (s.silent ? "SILENT" : "no"),
    ]);
    fill("dead-letters", dead.data, ["id", "deadAt", "provider", "eventId", "sqlstate", "error",
      (d) => d.replayedAt ? "since " + d.replayedAt : ""]);
    fill("rejections", rejections.data, ["at", "source", "status", "reason", "client", "request"]);
  }

  async function refresh() {
    try {
      const [stats, sources, dead, rejections] = await Promise.all([
        get("/v1/stats"), get("/v1/sources"), get("/v1/dead-letters?limit=10"), get("/v1/rejections?limit=10"),
      ]);
      render(stats, sources, dead, rejections);
      $("login").hidden = true;
      $("status").hidden = false;
      $("updated").textContent = "updated " + new Date().toISOString();
      $("updated").className = "muted";
    } catch (e) {
      if (e.unauthorized) {
        $("status").hidden = true;
        $("login").hidden = false;
        $("login-error").textContent = token ? "that token was refused" : "";
        token = null;
        return;
      }
      $("updated").textContent = "update failed: " + e.message;
      $("updated").className = "bad";
    }
  }

  $("login-form").addEventListener("submit", (e) => {
    e.preventDefault();
    token = $("token").value.trim() || null;
    $("token").value = "";
    refresh();
  });
  refresh();
  setInterval(() => { if (!$("status").hidden) refresh(); }, REFRESH_MS);
})();

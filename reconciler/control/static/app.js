// tidegate dashboard: live fragments over SSE, the log tail, action buttons. No framework, no build.
"use strict";

function bindActions(root) {
  root.querySelectorAll("button[data-action]").forEach(function (button) {
    if (button.dataset.bound) return;
    button.dataset.bound = "1";
    button.addEventListener("click", async function () {
      const out = document.querySelector(".action-result");
      button.disabled = true;
      try {
        // The custom header is the CSRF proof: a cross-site page cannot send it without a preflight.
        const r = await fetch(button.dataset.action, {method: "POST", credentials: "same-origin",
                                                      headers: {"X-Tidegate-Request": "1"}});
        const body = await r.json();
        if (out) out.textContent = r.ok ? body.detail : (body.error ? body.error.message : r.statusText);
      } catch (e) {
        if (out) out.textContent = String(e);
      } finally {
        button.disabled = false;
      }
    });
  });
}

function live() {
  document.querySelectorAll("[data-live]").forEach(function (el) {
    const source = new EventSource(el.dataset.live);
    source.addEventListener("fragment", function (e) {
      el.innerHTML = e.data;
      el.dataset.updated = String(Date.now());
    });
  });
}

function logTail() {
  const select = document.getElementById("log-replica");
  const pre = document.getElementById("log");
  if (!select || !pre) return;
  let source = null;
  function follow() {
    if (source) source.close();
    pre.textContent = "";
    if (!select.value) return;
    const url = "/api/v1/services/" + encodeURIComponent(select.dataset.service) +
      "/logs/stream?lines=100&replica=" + encodeURIComponent(select.value);
    source = new EventSource(url);
    source.addEventListener("line", function (e) {
      const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      pre.textContent += e.data + "\n";
      const lines = pre.textContent.split("\n");
      if (lines.length > 2000) pre.textContent = lines.slice(-2000).join("\n");
      if (atEnd) pre.scrollTop = pre.scrollHeight;
    });
    source.addEventListener("end", function (e) {
      pre.textContent += "-- " + e.data + "\n";
      source.close();
    });
  }
  select.addEventListener("change", follow);
  follow();
}

document.addEventListener("DOMContentLoaded", function () {
  bindActions(document);
  live();
  logTail();
});

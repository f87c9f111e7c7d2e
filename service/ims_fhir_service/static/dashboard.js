// Progressive enhancement of the dashboard: every form works without this script.
// With it, forms marked data-async are sent in the background, and the part of the
// page marked #live[data-refresh] is refreshed from the server every few seconds.
(function () {
  "use strict";

  function refresh() {
    var live = document.getElementById("live");
    if (!live || document.visibilityState === "hidden") { return Promise.resolve(); }
    return fetch(window.location.href, { credentials: "same-origin", headers: { "X-Requested-With": "fetch" } })
      .then(function (response) { return response.ok ? response.text() : null; })
      .then(function (html) {
        if (!html) { return; }
        var fresh = new DOMParser().parseFromString(html, "text/html").getElementById("live");
        if (fresh) { live.innerHTML = fresh.innerHTML; }
      })
      .catch(function () { /* the next tick tries again */ });
  }

  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!form.hasAttribute || !form.hasAttribute("data-async")) { return; }
    event.preventDefault();
    var button = form.querySelector("button");
    if (button) { button.disabled = true; button.textContent = "Queued…"; }
    fetch(form.action, { method: "POST", body: new FormData(form), credentials: "same-origin" })
      .then(function () { return refresh(); })
      .catch(function () { form.submit(); });
  });

  document.addEventListener("DOMContentLoaded", function () {
    var live = document.getElementById("live");
    var every = live && parseInt(live.getAttribute("data-refresh"), 10);
    if (every > 0) { window.setInterval(refresh, every); }
  });
})();

// prism-admin's fleet status page: live rows on top of pages that read
// without this file. Each table body with data-live follows its feed
// (Server-Sent Events of WatchEvents) and puts new rows on top.
"use strict";
(function () {
  var MAX_ROWS = 500;
  function follow(body) {
    var status = document.querySelector("[data-live-status]");
    var say = function (text) { if (status) { status.textContent = text; } };
    var source = new EventSource(body.getAttribute("data-live"));
    source.addEventListener("open", function () {
      say("Live: new events appear at the top as they happen.");
    });
    source.addEventListener("row", function (e) {
      body.insertAdjacentHTML("afterbegin", e.data);
      while (body.rows.length > MAX_ROWS) { body.deleteRow(-1); }
    });
    source.addEventListener("error", function () {
      if (source.readyState === EventSource.CLOSED) {
        say("The live feed stopped (signed out, or too far behind): reload the page.");
      } else {
        say("Reconnecting the live feed…");
      }
    });
  }
  document.addEventListener("DOMContentLoaded", function () {
    var bodies = document.querySelectorAll("[data-live]");
    for (var i = 0; i < bodies.length; i++) { follow(bodies[i]); }
  });
})();

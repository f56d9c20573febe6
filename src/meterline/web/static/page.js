// Every page: tell the server the browser's time zone (bills are dated in it), and show
// every <time datetime=...> in the browser's own zone and language.
(function () {
  "use strict";
  var zone = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
  document.cookie = "meterline_tz=" + encodeURIComponent(zone) + "; path=/; SameSite=Strict; Secure";

  var stamp = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });
  var day = new Intl.DateTimeFormat(undefined, { dateStyle: "medium" });

  function showTimes(root) {
    root.querySelectorAll("time[datetime]").forEach(function (node) {
      var value = node.getAttribute("datetime");
      if (!value) { return; }
      var when = new Date(value);
      if (isNaN(when.getTime())) { return; }
      node.textContent = (node.hasAttribute("data-date") ? day : stamp).format(when);
      node.title = value;
    });
  }

  function clock(seconds) {
    if (seconds === null || seconds === undefined || isNaN(seconds)) { return "–"; }
    seconds = Math.max(0, Math.floor(seconds));
    var h = Math.floor(seconds / 3600), m = Math.floor((seconds % 3600) / 60), s = seconds % 60;
    var mm = (h ? String(m).padStart(2, "0") : String(m)), ss = String(s).padStart(2, "0");
    return (h ? h + ":" : "") + mm + ":" + ss;
  }

  window.meterline = { showTimes: showTimes, clock: clock };
  document.addEventListener("DOMContentLoaded", function () {
    showTimes(document);
    document.querySelectorAll("[data-seconds]").forEach(function (node) {
      node.textContent = clock(Number(node.getAttribute("data-seconds")));
    });
  });
})();

// The "Now" page: balance, running sessions and notices, live from the server's events
// (server-sent events fed by the service manager's WatchAccount stream; nothing polls).
// Amounts come formatted by the server, in the account's currency; durations tick here.
(function () {
  "use strict";

  var finalNoticed = {};  // sessions whose final-unit notice is shown

  function byId(id) { return document.getElementById(id); }

  function setState(root, state, text) {
    root.setAttribute("data-state", state);
    byId("live-state").textContent = text;
  }

  function setAccount(account) {
    if (!account) { return; }
    var balance = byId("balance"), available = byId("available");
    balance.textContent = account.balance;
    balance.setAttribute("data-micros", account.balance_micros);
    available.textContent = account.available;
    available.setAttribute("data-micros", account.available_micros);
  }

  function notice(text, kind) {
    var list = byId("notices");
    var none = list.querySelector(".none");
    if (none) { none.remove(); }
    var item = document.createElement("li");
    item.className = "notice " + kind;
    var when = document.createElement("time");
    var now = new Date();
    when.setAttribute("datetime", now.toISOString());
    when.textContent = now.toLocaleTimeString();
    item.appendChild(when);
    item.appendChild(document.createTextNode(" " + text));
    list.insertBefore(item, list.firstChild);
    while (list.children.length > 10) { list.lastChild.remove(); }
  }

  function row(sessionId, details) {
    var list = byId("sessions");
    var found = list.querySelector('[data-session="' + CSS.escape(sessionId) + '"]');
    if (found || !details) { return found; }
    var item = byId("session-template").content.firstElementChild.cloneNode(true);
    item.setAttribute("data-session", sessionId);
    item.setAttribute("data-started", details.started_at || "");
    item.querySelector(".service").textContent = details.service;
    item.querySelector(".endpoint").textContent = details.endpoint;
    item.querySelector(".units").textContent = details.units;
    list.appendChild(item);
    byId("no-sessions").hidden = true;
    tick();
    return item;
  }

  function showSessions(sessions) {
    var list = byId("sessions");
    var keep = {};
    sessions.forEach(function (s) { keep[s.session_id] = true; row(s.session_id, s); });
    list.querySelectorAll("[data-session]").forEach(function (item) {
      if (!keep[item.getAttribute("data-session")]) { item.remove(); }
    });
    byId("no-sessions").hidden = list.children.length > 0;
  }

  function usage(data) {
    if (data.available !== undefined) {
      var available = byId("available");
      available.textContent = data.available;
      available.setAttribute("data-micros", data.available_micros);
    }
    var item = data.session_id ? row(data.session_id, data.session) : null;
    if (item) {
      item.querySelector(".charge").textContent = data.charged;
      item.querySelector(".units").textContent = data.units;
      item.setAttribute("data-used-units", data.used_units);
      item.setAttribute("data-charged-micros", data.charged_micros);
      var left = item.querySelector(".time-left");
      left.textContent = data.seconds_left === null ? "–" : window.meterline.clock(data.seconds_left);
    }
    var what = data.session ? data.session.service + " to " + data.session.endpoint : "A session";
    if (data.final_units && !data.ended && !finalNoticed[data.session_id]) {
      finalNoticed[data.session_id] = true;
      notice(what + ": final units — top up to keep it running.", "final-units");
    }
    if (data.low_balance) {
      if (!document.querySelector("#notices .low-balance")) {
        notice("Low balance: " + data.available + " left.", "low-balance");
      }
    }
    if (data.ended) {
      if (item) { item.remove(); }
      byId("no-sessions").hidden = byId("sessions").children.length > 0;
      notice(what + " ended (" + data.reason + "): " + data.charged + ".", "ended");
      setAccount(data.account);
    }
    document.dispatchEvent(new CustomEvent("meterline:shown", { detail: data }));
  }

  function tick() {
    var now = Date.now();
    document.querySelectorAll("#sessions [data-started]").forEach(function (item) {
      var started = Date.parse(item.getAttribute("data-started"));
      if (!isNaN(started)) {
        item.querySelector(".duration").textContent = window.meterline.clock((now - started) / 1000);
      }
    });
  }

  function connect(root) {
    var source = new EventSource(root.getAttribute("data-events"));
    source.addEventListener("hello", function (message) {
      var data = JSON.parse(message.data);
      setAccount(data.account);
      showSessions(data.sessions);
      setState(root, "live", "Live: charges update as they happen.");
    });
    source.addEventListener("usage", function (message) { usage(JSON.parse(message.data)); });
    source.addEventListener("trouble", function (message) {
      setState(root, "paused", JSON.parse(message.data).message);
    });
    source.onerror = function () {
      setState(root, "paused", "Live updates paused; reconnecting…");
    };
  }

  document.addEventListener("DOMContentLoaded", function () {
    var root = byId("live");
    if (!root) { return; }
    window.meterline.setAccount = setAccount;
    tick();
    setInterval(tick, 1000);
    connect(root);
  });
})();

// Top-up on the "Now" page: redeem a voucher without leaving the page; the new balance
// comes in the answer. The form's CSRF token goes with it (the form works without
// this script too).
(function () {
  "use strict";
  document.addEventListener("DOMContentLoaded", function () {
    var form = document.getElementById("top-up");
    if (!form) { return; }
    var result = document.getElementById("top-up-result");
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var button = form.querySelector("button");
      button.disabled = true;
      result.textContent = "Redeeming…";
      fetch(form.action, {
        method: "POST",
        body: new FormData(form),
        headers: { "Accept": "application/json" },
        credentials: "same-origin"
      }).then(function (response) {
        return response.json().then(function (data) { return { ok: response.ok, data: data }; });
      }).then(function (answer) {
        if (answer.ok) {
          result.textContent = answer.data.message;
          if (window.meterline.setAccount) { window.meterline.setAccount(answer.data.account); }
          form.reset();
        } else {
          result.textContent = answer.data.error || "The voucher was not redeemed.";
        }
      }).catch(function () {
        result.textContent = "The page cannot reach the server; try again.";
      }).finally(function () {
        button.disabled = false;
      });
    });
  });
})();

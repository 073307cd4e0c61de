// Cargohold dashboard: copy buttons and delete/revoke confirmation. Everything works without it, but for the
// clipboard. Loaded from /ui/static/ (the Content-Security-Policy allows no inline script).
"use strict";
document.addEventListener("click", function (event) {
  var button = event.target.closest("button.copy");
  if (!button) return;
  var text = button.getAttribute("data-copy");
  var done = function () { button.textContent = "Copied"; setTimeout(function () { button.textContent = "Copy"; }, 1500); };
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(text).then(done, function () { button.textContent = "Copy failed"; });
  } else {
    button.textContent = "Select and copy";
  }
  document.body.setAttribute("data-copied", text);
});
document.addEventListener("submit", function (event) {
  var message = event.target.getAttribute("data-confirm");
  if (message && !window.confirm(message)) event.preventDefault();
});

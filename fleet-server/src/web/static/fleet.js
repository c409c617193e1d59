// Fleet's dashboard: progressive enhancement only. Every page works without this file; with
// it, regions marked `data-live` follow the server's Server-Sent Events instead of waiting for
// a reload. No inline script anywhere (the Content-Security-Policy forbids it), no eval.
(function () {
  'use strict';

  // Styles may tell pages with this script from pages without it.
  document.documentElement.classList.add('js');

  // One polite announcement at a time, in the page's live region (never the whole table).
  function announce(text) {
    var el = document.getElementById('announce');
    if (!el) return;
    el.textContent = '';
    window.setTimeout(function () { el.textContent = text; }, 50);
  }

  // <div data-live="/rollouts/7/live">: the server sends `region` with the region's new HTML
  // (rendered and escaped on the server) and `status` with a sentence worth announcing.
  function follow(region) {
    if (!window.EventSource) return;
    var source = new EventSource(region.getAttribute('data-live'));
    source.addEventListener('region', function (e) {
      // Keep the visitor's place: the focused control is found again by its id.
      var focused = document.activeElement && document.activeElement.id;
      region.innerHTML = e.data;
      region.setAttribute('data-updated', String(Date.now()));
      if (focused) {
        var again = document.getElementById(focused);
        if (again) again.focus();
      }
    });
    source.addEventListener('status', function (e) { announce(e.data); });
    source.addEventListener('end', function () { source.close(); });
  }

  document.querySelectorAll('[data-live]').forEach(follow);
})();

// ralph-web status page: live numbers. The pages work without this file; with it, counts update
// in place from server-sent events (api/events), or by polling api/queues when those fail.
(function () {
  'use strict';
  var body = document.body;
  var base = body.getAttribute('data-base') || './';
  var refresh = parseInt(body.getAttribute('data-refresh-ms'), 10) || 2000;
  var badge = document.getElementById('live');
  var cells = document.querySelectorAll('[data-queue][data-field]');
  if (!cells.length) { return; }

  function status(text, cls) {
    if (!badge) { return; }
    badge.textContent = text;
    badge.className = cls;
  }

  function apply(overview) {
    var byName = {};
    (overview.queues || []).forEach(function (q) { byName[q.queue] = q; });
    Array.prototype.forEach.call(cells, function (cell) {
      var q = byName[cell.getAttribute('data-queue')];
      var field = cell.getAttribute('data-field');
      if (!q) {
        // The queue has no jobs left (or vanished): its counts are zero.
        if (field !== 'paused') { cell.textContent = field === 'oldest_pending_age' ? '\u2013' : '0'; }
        cell.classList.remove('capped');
        return;
      }
      if (field === 'paused') {
        cell.textContent = q.paused ? 'paused' : 'active';
        cell.classList.toggle('paused', q.paused);
      } else if (field === 'oldest_pending_age') {
        cell.textContent = q.oldest_pending_age || '\u2013';
      } else if (q[field] && typeof q[field].display === 'string') {
        cell.textContent = q[field].display;
        cell.classList.toggle('capped', !!q[field].capped);
      }
    });
  }

  var polling = false;
  function poll() {
    if (polling) { return; }
    polling = true;
    var denied = false;
    var tick = function () {
      window.fetch(base + 'api/queues', { credentials: 'same-origin', headers: { Accept: 'application/json' } })
        .then(function (r) {
          // Access withdrawn (the session ended): stop asking; a reload shows the login.
          if (r.status === 401 || r.status === 403) { denied = true; }
          if (!r.ok) { throw new Error(r.status); }
          return r.json();
        })
        .then(function (o) { apply(o); status('live (polling)', 'on'); })
        .catch(function () { status(denied ? 'signed out' : 'offline', 'off'); })
        .then(function () { if (!denied) { window.setTimeout(tick, refresh); } });
    };
    tick();
  }

  if (!window.EventSource) { poll(); return; }
  var source = new window.EventSource(base + 'api/events');
  source.addEventListener('overview', function (e) {
    try { apply(JSON.parse(e.data)); status('live', 'on'); } catch (err) { status('offline', 'off'); }
  });
  source.addEventListener('store-error', function () { status('store unavailable', 'off'); });
  source.onerror = function () {
    // A proxy that buffers or cuts streams, or a refused stream: poll the JSON instead.
    source.close();
    poll();
  };
})();

// kfsec: a fragment is never sent to the server, and a form's POST starts a new URL without it,
// so the fragment a user arrived with (the KFP UI's /pipeline/#/runs/details/ID) would be lost at
// the login form. Browsers keep a URL's fragment through the redirects that follow a request to
// it, so this copies the page's fragment onto the targets of its forms and of its links to this
// origin: the login lands back on the original page, fragment included. Targets are parsed and
// rebuilt with the URL API (only the fragment changes, and only on same-origin targets); an
// empty or oversized fragment is left alone.
(function () {
  var hash = window.location.hash;
  if (!hash || hash === '#' || hash.length > 2048) { return; }
  var here = window.location.origin;
  function withHash(target) {
    var u;
    try { u = new URL(target, window.location.href); } catch (e) { return null; }
    if (u.origin !== here || u.hash) { return null; }
    u.hash = hash;
    return u.origin === here ? u.href : null;
  }
  var i, t;
  for (i = 0; i < document.forms.length; i++) {
    var f = document.forms[i];
    t = withHash(f.getAttribute('action') || window.location.href.split('#')[0]);
    if (t) { f.setAttribute('action', t); }
  }
  var links = document.querySelectorAll('a[href]');
  for (i = 0; i < links.length; i++) {
    t = withHash(links[i].getAttribute('href'));
    if (t) { links[i].setAttribute('href', t); }
  }
})();

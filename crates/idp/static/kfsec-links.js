// kfsec: the Kubeflow Pipelines UI keeps its place in the fragment (/pipeline/#/runs/details/ID,
// as the KFP SDK prints); kfsec's read-only view has a path per item. Only known kinds and
// plain ids are followed, and only to this origin's /pipeline/ paths.
(function () {
  var m = /^#\/(runs|experiments|pipelines|recurringruns?)\/details\/([A-Za-z0-9_-]{1,64})(?:[/?].*)?$/.exec(window.location.hash);
  if (!m) { return; }
  var kind = m[1] === 'recurringrun' ? 'recurringruns' : m[1];
  window.location.replace('/pipeline/' + kind + '/details/' + m[2]);
})();

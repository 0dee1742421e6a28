// The participant's side: fetch trials, show them, time the answers, post them to the server.
(function () {
  const colors = window.STROOP_COLORS;
  const $ = (id) => document.getElementById(id);
  let participant = null, trials = [], index = 0, shownAt = 0, correct = 0;

  async function post(url, body) {
    const res = await fetch(url, { method: "POST", headers: { "Content-Type": "application/json" },
                                   body: JSON.stringify(body || {}) });
    if (!res.ok) throw new Error(`${url}: ${res.status}`);
    return res.json();
  }

  function fail(err) { $("error").hidden = false; $("error").textContent = "Something went wrong: " + err.message; }

  function show() {
    const t = trials[index];
    $("trial-no").textContent = index + 1;
    const s = $("stimulus");
    s.textContent = t.word;
    s.style.color = colors[t.ink];
    s.dataset.ink = t.ink;
    shownAt = performance.now();
  }

  async function answer(color, key) {
    if (!participant || index >= trials.length) return;
    const t = trials[index];
    const rt = performance.now() - shownAt;
    index += 1;
    try {
      const r = await post(`api/participants/${participant}/responses`,
        { trial: t.trial, word: t.word, ink: t.ink, answer: color, rt_ms: rt, key: key || null,
          screen: `${window.innerWidth}x${window.innerHeight}` });
      if (r.correct) correct += 1;
      if (index < trials.length) { show(); return; }
      const done = await post(`api/participants/${participant}/finish`);
      $("task").hidden = true; $("done").hidden = false;
      $("accuracy").textContent = `${Math.round(100 * (done.accuracy ?? correct / trials.length))}%`;
    } catch (err) { fail(err); }
  }

  $("start").addEventListener("click", async () => {
    try {
      const params = new URLSearchParams(location.search);
      const p = await post("api/participants", { worker_id: params.get("worker_id") });
      participant = p.id; trials = p.trials; index = 0;
      $("intro").hidden = true; $("task").hidden = false;
      show();
    } catch (err) { fail(err); }
  });
  document.querySelectorAll(".choice").forEach((b) =>
    b.addEventListener("click", () => answer(b.dataset.color)));
  document.addEventListener("keydown", (e) => {
    const names = Object.keys(colors), n = parseInt(e.key, 10);
    if (n >= 1 && n <= names.length) answer(names[n - 1], e.key);
  });
})();

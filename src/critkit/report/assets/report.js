// critkit report.html: the per-sample browser. Plain JavaScript, no library, no network (the page's
// Content-Security-Policy forbids it), except that the page `critkit view` serves asks that same
// server for rows. Text from the run is only ever set with textContent, never parsed as HTML.
// The filters follow critkit/report/samples.py (RunSamples.matches, _outcome, search_text).
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("critkit-data").textContent);
  var PAGE = 50;
  var CLIP_CHARS = 700, CLIP_LINES = 10;
  var LIVE = DATA.mode === "live";
  var state = { offset: 0, total: 0, more: false, single: null, seq: 0, request: 0 };

  function $(id) { return document.getElementById(id); }
  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }
  function option(select, value, label) {
    var o = el("option", null, label);
    o.value = value;
    select.appendChild(o);
  }

  // ------------------------------------------------------------------------------ filters

  function filters() {
    var flags = [];
    document.querySelectorAll("input.flag:checked").forEach(function (box) { flags.push(box.value); });
    return { set: $("f-set").value, model: $("f-model").value, outcome: $("f-outcome").value, flags: flags,
             q: $("f-q").value.trim() };
  }

  function outcomeOf(score, base, model, outcome) {
    if (typeof score !== "number") return false;
    if (outcome === "right") return score >= 0.5;
    if (outcome === "wrong") return score < 0.5;
    if (model === DATA.base || typeof base !== "number") return false;
    return outcome === "gained" ? score > base : score < base;
  }

  function searchText(row) {
    var parts = [row.id, row.question, row.gold];
    var s = row.synth || {};
    ["response", "critique", "refined", "teacher_solution"].forEach(function (k) { parts.push(s[k]); });
    Object.keys(row.models || {}).forEach(function (m) {
      ["responses", "extracted"].forEach(function (k) {
        var v = row.models[m][k];
        parts = parts.concat(Array.isArray(v) ? v : [v]);
      });
    });
    return parts.filter(function (p) { return p !== null && p !== undefined; }).map(String).join("\n").toLowerCase();
  }

  function matches(row, f) {
    var models = row.models || {};
    var synth = row.synth || {};
    if (f.set && row.set !== f.set) return false;
    if (f.model && !(f.model in models)) return false;
    var names = f.model ? [f.model] : Object.keys(models);
    var base = models[DATA.base] ? models[DATA.base].score : null;
    if (f.outcome && !names.some(function (m) { return outcomeOf(models[m].score, base, m, f.outcome); })) return false;
    for (var i = 0; i < f.flags.length; i++) {
      var flag = f.flags[i];
      if (flag === "disagree" && synth.agrees !== false) return false;
      if (flag === "unparsed" && synth.verdict !== "unparsed") return false;
      if (flag === "critique_format" && !names.some(function (m) { return models[m].critique_format; })) return false;
      if (flag === "failed" && !row.failed) return false;
    }
    return !f.q || searchText(row).indexOf(f.q.toLowerCase()) >= 0;
  }

  function query(f, extra) {
    var params = new URLSearchParams({ set: f.set, model: f.model, outcome: f.outcome, flags: f.flags.join(","), q: f.q });
    Object.keys(extra).forEach(function (k) { params.set(k, extra[k]); });
    return params.toString();
  }

  // ------------------------------------------------------------------------------ rendering

  // LaTeX stays source (readable, nothing fetched); the final \boxed{...} answers are marked.
  function appendLatex(parent, text) {
    var at = 0, i;
    while ((i = text.indexOf("\\boxed{", at)) >= 0) {
      var depth = 0, j = i + 6;
      for (; j < text.length; j++) {
        if (text[j] === "{") depth++;
        else if (text[j] === "}" && --depth === 0) break;
      }
      if (j >= text.length) break;
      parent.appendChild(document.createTextNode(text.slice(at, i)));
      parent.appendChild(el("mark", null, text.slice(i, j + 1)));
      at = j + 1;
    }
    parent.appendChild(document.createTextNode(text.slice(at)));
  }

  function textBlock(label, text, badges) {
    var block = el("div", "block");
    var head = el("div", "label", label);
    (badges || []).forEach(function (b) { if (b) head.appendChild(b); });
    block.appendChild(head);
    if (text === null || text === undefined || text === "") {
      block.appendChild(el("div", "muted", "—"));
      return block;
    }
    text = typeof text === "string" ? text : JSON.stringify(text);
    var body = el("div", "txt");
    appendLatex(body, text);
    block.appendChild(body);
    if (text.length > CLIP_CHARS || text.split("\n").length > CLIP_LINES) {
      body.classList.add("clip");
      var more = el("button", "more", "show all (" + text.length.toLocaleString() + " characters)");
      more.type = "button";
      more.addEventListener("click", function () {
        var clipped = body.classList.toggle("clip");
        more.textContent = clipped ? "show all (" + text.length.toLocaleString() + " characters)" : "show less";
      });
      block.appendChild(more);
    }
    return block;
  }

  function inline(label, text) {
    var line = el("div", "inline");
    line.appendChild(el("span", "label", label));
    line.appendChild(el("span", text === null || text === undefined || text === "" ? "muted" : "txt",
                        text === null || text === undefined || text === "" ? "—" : String(text)));
    return line;
  }

  function badge(text, cls, title) {
    var b = el("span", "badge " + (cls || ""), text);
    if (title) b.title = title;
    return b;
  }

  function raw(value, label) {
    if (!value || typeof value !== "object" || !Object.keys(value).length) return null;
    var d = el("details", "raw");
    d.appendChild(el("summary", null, label));
    d.appendChild(el("pre", null, JSON.stringify(value, null, 1)));
    return d;
  }

  function questionCell(row) {
    var td = el("td", "question");
    var head = el("div", "label");
    head.appendChild(badge(row.set, "set"));
    var link = el("a", "permalink", String(row.id === null || row.id === undefined ? row.key : row.id));
    link.href = "#row=" + encodeURIComponent(row.key);
    link.title = "open this sample alone (a link to share)";
    head.appendChild(link);
    if (row.failed) head.appendChild(badge("failed", "bad"));
    td.appendChild(head);
    td.appendChild(textBlock("question", row.question));
    td.appendChild(inline("gold", row.gold));
    return td;
  }

  function synthCell(s) {
    var td = el("td", "synth");
    if (!s) {
      td.appendChild(el("div", "muted", "not in the synthesis"));
      return td;
    }
    var verdict = s.verdict ? badge("verdict: " + s.verdict, s.verdict === "right" ? "good" : s.verdict === "wrong" ? "bad" : "warn") : null;
    var grade = s.graded ? badge("verifier: " + s.graded, "plain", "math-verify's grade of the student's answer") : null;
    var agree = s.agrees === true ? badge("agree", "good") : s.agrees === false ? badge("disagree", "warn", "teacher verdict ≠ verifier grade") : null;
    td.appendChild(textBlock("student answer", s.response));
    td.appendChild(textBlock("teacher critique", s.critique, [verdict, grade, agree]));
    if (s.refined) td.appendChild(textBlock("refined answer", s.refined));
    if (s.teacher_solution) td.appendChild(textBlock("teacher solution", s.teacher_solution));
    if (s.reference) td.appendChild(textBlock("reference solution", s.reference));
    var other = raw(s.other, "other fields (raw JSON)");
    if (other) td.appendChild(other);
    return td;
  }

  function modelCell(row, model) {
    var td = el("td", "model");
    var out = (row.models || {})[model];
    if (!out) {
      td.appendChild(el("div", "muted", "not evaluated"));
      return td;
    }
    var correct = Array.isArray(out.correct) ? out.correct : [];
    var score = typeof out.score === "number" ? out.score : null;
    var head = el("div", "label");
    if (score !== null) {
      var right = score >= 0.5;
      head.appendChild(badge((right ? "✓ right" : "✗ wrong") + (correct.length > 1 ? " " + correct.filter(Boolean).length + "/" + correct.length : ""),
                             right ? "good" : "bad"));
    } else head.appendChild(badge("no grade", "warn"));
    var base = row.models[DATA.base];
    if (model !== DATA.base && base && typeof base.score === "number" && score !== null && score !== base.score)
      head.appendChild(badge(score > base.score ? "gained" : "lost", score > base.score ? "good" : "bad", "against " + DATA.base));
    if (out.critique_format) head.appendChild(badge("critique-format", "warn", "the output looks like a critique"));
    td.appendChild(head);
    var extracted = Array.isArray(out.extracted) ? out.extracted : [out.extracted];
    td.appendChild(inline("extracted", extracted.map(function (x) { return x === null || x === undefined ? "(none)" : String(x); }).join(" | ")));
    var responses = Array.isArray(out.responses) ? out.responses : [out.responses];
    responses.forEach(function (r, i) { td.appendChild(textBlock(responses.length > 1 ? "output " + (i + 1) : "output", r)); });
    var other = raw(out.other, "other fields (raw JSON)");
    if (other) td.appendChild(other);
    return td;
  }

  function shownModels() {
    var m = $("f-model").value;
    if (!m) return DATA.models;
    return m === DATA.base || DATA.models.indexOf(DATA.base) < 0 ? [m] : [DATA.base, m];
  }

  // Columns for what the rows on screen have: a page of synthesized records has no model outputs,
  // a page of benchmark questions (the usual test split) no synthesis.
  function render(rows, info) {
    var anySynth = rows.some(function (r) { return r.synth; });
    var anyModel = rows.some(function (r) { return r.models && Object.keys(r.models).length; });
    var models = anyModel || !anySynth ? shownModels() : [];
    var thead = $("samples").tHead, tbody = $("samples").tBodies[0];
    thead.textContent = "";
    tbody.textContent = "";
    var tr = el("tr");
    var heads = [["question", "question"]].concat(anySynth ? [["synthesis: student → teacher", "synth"]] : [])
      .concat(models.map(function (m) { return [m, "model"]; }));
    heads.forEach(function (h) { tr.appendChild(el("th", h[1], h[0])); });
    thead.appendChild(tr);
    rows.forEach(function (row) {
      var r = el("tr", "sample");
      r.dataset.key = row.key;
      r.appendChild(questionCell(row));
      if (anySynth) r.appendChild(synthCell(row.synth));
      models.forEach(function (m) { r.appendChild(modelCell(row, m)); });
      tbody.appendChild(r);
    });
    $("status").textContent = info;
    $("prev").disabled = state.single !== null || state.offset === 0;
    $("next").disabled = state.single !== null || !state.more;
    document.body.dataset.rendered = String(++state.seq);
    if (!document.body.dataset.firstRowsMs) document.body.dataset.firstRowsMs = String(Math.round(performance.now()));
  }

  function pageInfo(count, total) {
    $("pageinfo").textContent = count ? "rows " + (state.offset + 1) + "–" + (state.offset + count) +
      (total === null ? "" : " of " + total.toLocaleString()) : "";
  }

  function show() {
    var hash = /^#row=(.*)$/.exec(location.hash);
    state.single = hash ? decodeURIComponent(hash[1]) : null;
    var f = filters();
    if (state.single !== null) return showOne(state.single);
    if (!LIVE) {
      var found = DATA.rows.filter(function (row) { return matches(row, f); });
      state.total = found.length;
      state.more = state.offset + PAGE < found.length;
      var rows = found.slice(state.offset, state.offset + PAGE);
      pageInfo(rows.length, found.length);
      return render(rows, found.length.toLocaleString() + " of the " + DATA.rows.length.toLocaleString() +
                    " rows on this page match");
    }
    document.body.dataset.loading = "1";
    var ticket = ++state.request;
    fetch("api/rows?" + query(f, { offset: state.offset, limit: PAGE }))
      .then(function (r) { return r.json(); })
      .then(function (page) {
        if (ticket !== state.request) return;  // a newer request was made meanwhile
        state.more = page.more;
        pageInfo(page.rows.length, page.total);
        render(page.rows, page.total === null ? "more rows match than this page shows" :
               page.total.toLocaleString() + " rows match");
        document.body.dataset.loading = "0";
      })
      .catch(function (err) { $("status").textContent = "could not load rows: " + err; document.body.dataset.loading = "0"; });
  }

  function showOne(key) {
    var done = function (row) {
      var info = row ? "one sample (" + key + ")" : "sample " + key + " is not on this page" +
        (LIVE ? "" : ": it holds a seeded sample; critkit view shows every row");
      pageInfo(0, null);
      render(row ? [row] : [], info);
      document.querySelectorAll("#samples .clip").forEach(function (n) { n.classList.remove("clip"); });
      var back = el("a", null, " show all rows");
      back.href = "#";
      $("status").appendChild(back);
      $("browser").scrollIntoView();
    };
    if (!LIVE) return done(DATA.rows.filter(function (r) { return r.key === key; })[0] || null);
    fetch("api/row?" + new URLSearchParams({ key: key }).toString())
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(done)
      .catch(function (err) { $("status").textContent = "could not load the sample: " + err; });
  }

  function refilter() { state.offset = 0; if (state.single !== null) history.replaceState(null, "", "#browser"); show(); }

  DATA.sets.forEach(function (s) { option($("f-set"), s, s + " (" + (DATA.counts[s] || 0).toLocaleString() + ")"); });
  DATA.models.forEach(function (m) { option($("f-model"), m, m); });
  ["f-set", "f-model", "f-outcome"].forEach(function (id) { $(id).addEventListener("change", refilter); });
  document.querySelectorAll("input.flag").forEach(function (box) { box.addEventListener("change", refilter); });
  var typing = null;
  $("f-q").addEventListener("input", function () { clearTimeout(typing); typing = setTimeout(refilter, 250); });
  $("f-q").addEventListener("change", function () { clearTimeout(typing); refilter(); });
  $("f-reset").addEventListener("click", function () {
    ["f-set", "f-model", "f-outcome", "f-q"].forEach(function (id) { $(id).value = ""; });
    document.querySelectorAll("input.flag").forEach(function (box) { box.checked = false; });
    refilter();
  });
  $("prev").addEventListener("click", function () { state.offset = Math.max(0, state.offset - PAGE); show(); });
  $("next").addEventListener("click", function () { state.offset += PAGE; show(); });
  window.addEventListener("hashchange", function () { if (location.hash.indexOf("#row=") === 0 || state.single !== null) show(); });
  show();
})();

/* edgefleet dashboard: hash-routed pages over the hub's JSON API, refreshed by polling. */
(function () {
  "use strict";
  var main = document.getElementById("main");
  var state = {role: null, timer: null, route: null, busy: false};
  var REFRESH_MS = 2000;

  // ---- helpers ---------------------------------------------------------------------
  function h(tag, attrs) {
    var e = document.createElement(tag);
    attrs = attrs || {};
    for (var k in attrs) {
      var v = attrs[k];
      if (v === undefined || v === null || v === false) continue;
      if (k === "text") e.textContent = v;
      else if (k === "onclick" || k === "oninput" || k === "onchange" || k === "onsubmit") e[k] = v;
      else e.setAttribute(k, v === true ? "" : v);
    }
    for (var i = 2; i < arguments.length; i++) add(e, arguments[i]);
    return e;
  }
  function add(e, c) {
    if (c === null || c === undefined || c === false) return;
    if (Array.isArray(c)) { c.forEach(function (x) { add(e, x); }); return; }
    e.appendChild(typeof c === "object" ? c : document.createTextNode(String(c)));
  }
  function cookie(name) {
    var m = document.cookie.match(new RegExp("(?:^|; )" + name + "=([^;]*)"));
    return m ? decodeURIComponent(m[1]) : null;
  }
  function api(method, path, body) {
    var opts = {method: method, credentials: "same-origin", headers: {"Accept": "application/json"}};
    if (method !== "GET") {
      opts.headers["X-CSRF-Token"] = cookie("edgefleet_csrf") || "";
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body || {});
    }
    return fetch(path, opts).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (j) {
        if (!r.ok) { var err = new Error(j.error || ("HTTP " + r.status)); err.status = r.status; throw err; }
        return j;
      });
    });
  }
  function badge(text, cls) { return h("span", {"class": "badge " + (cls || String(text).toLowerCase())}, text); }
  function ago(ts) {
    if (!ts) return "never";
    var s = Math.max(0, Date.now() / 1000 - ts);
    if (s < 60) return s.toFixed(0) + " s ago";
    if (s < 3600) return (s / 60).toFixed(0) + " min ago";
    return (s / 3600).toFixed(1) + " h ago";
  }
  function short(sha) { return sha ? String(sha).slice(0, 12) : "–"; }
  function fmt(v, digits) {
    if (v === null || v === undefined || (typeof v === "number" && isNaN(v))) return "–";
    if (typeof v === "number") return digits === undefined ? Charts.fmt(v) : v.toFixed(digits);
    return String(v);
  }
  function pct(v) { return v === null || v === undefined ? "–" : (v * 100).toFixed(2) + " %"; }
  function table(headers, rows, label) {
    return h("div", {"class": "scroll"},
      h("table", {"aria-label": label},
        h("thead", {}, h("tr", {}, headers.map(function (x) { return h("th", {scope: "col"}, x); }))),
        h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", {colspan: headers.length, "class": "muted"}, "none")))));
  }
  function toast(msg) {
    var t = document.getElementById("toast");
    t.textContent = msg; t.hidden = false;
    clearTimeout(t._h); t._h = setTimeout(function () { t.hidden = true; }, 4000);
  }
  function render(nodes) {
    // panels filled after the page (data-keep: the serving panel of each model) keep what they
    // showed until their own answer arrives, instead of blinking empty on every refresh: a button
    // must not vanish under the pointer
    var kept = {};
    main.querySelectorAll("[data-keep][id]").forEach(function (e) { kept[e.id] = e; });
    while (main.firstChild) main.removeChild(main.firstChild);
    add(main, nodes);
    main.querySelectorAll("[data-keep][id]").forEach(function (e) {
      var old = kept[e.id];
      if (old && !e.firstChild) while (old.firstChild) e.appendChild(old.firstChild);
    });
  }
  function card(n, label, id) { return h("div", {"class": "card", id: id}, h("div", {"class": "n"}, n), h("div", {"class": "l"}, label)); }

  // ---- auth ------------------------------------------------------------------------
  function whoami() {
    return fetch("/ui/data/whoami", {credentials: "same-origin"}).then(function (r) {
      return r.json().then(function (j) { return {status: r.status, body: j}; });
    });
  }
  function showLogin(message) {
    stopTimer();
    var input = h("input", {id: "api-key", name: "api_key", type: "password", autocomplete: "current-password", required: true});
    var err = h("p", {"class": "err", role: "alert"}, message || "");
    var form = h("form", {"class": "card login", "aria-label": "Log in"},
      h("h1", {}, "Log in"),
      h("p", {"class": "muted"}, "Use an API key of the hub (read-only keys see everything; admin keys can act on rollouts)."),
      h("label", {"for": "api-key"}, "API key"), input, err,
      h("p", {}, h("button", {type: "submit", id: "login-button"}, "Log in")));
    form.onsubmit = function (ev) {
      ev.preventDefault();
      api("POST", "/ui/login", {api_key: input.value}).then(function (j) {
        state.role = j.role; state.authRequired = true; setWho(); route();
      }).catch(function (e) { err.textContent = e.message; });
    };
    render(form);
    input.focus();
  }
  function setWho() {
    document.getElementById("whoami").textContent = state.role ? "role: " + state.role : "";
    document.getElementById("logout").hidden = !state.authRequired;
  }
  document.getElementById("logout").onclick = function () {
    api("POST", "/ui/logout").then(function () { state.role = null; setWho(); showLogin(); });
  };

  // ---- pages -----------------------------------------------------------------------
  // Fleet table state: filters, sort and page are sent to /v1/devices (paged on the server).
  var PAGE = 50;
  var filters = {selector: "", profile: "", version: "", online: "", problems: false, sort: "id", order: "asc", offset: 0};
  var filterTimer = null;

  function deviceQuery() {
    var q = ["limit=" + PAGE, "offset=" + filters.offset, "sort=" + filters.sort, "order=" + filters.order];
    if (filters.selector) q.push("selector=" + encodeURIComponent(filters.selector));
    if (filters.profile) q.push("profile=" + encodeURIComponent(filters.profile));
    if (filters.version) q.push("version=" + encodeURIComponent(filters.version));
    if (filters.online) q.push("online=" + (filters.online === "online"));
    if (filters.problems) q.push("problems=true");
    return "/v1/devices?" + q.join("&");
  }
  function setFilter(key, value, now) {
    filters[key] = value; filters.offset = 0;
    clearTimeout(filterTimer);
    filterTimer = setTimeout(function () { refresh(true); }, now ? 0 : 300);
  }
  function filterInput(key, label, placeholder) {
    var id = "filter-" + key;
    var inp = h("input", {type: "search", id: id, value: filters[key], placeholder: placeholder, "aria-label": label});
    inp.oninput = function () { setFilter(key, inp.value.trim()); };
    return h("label", {"class": "field", "for": id}, h("span", {}, label), inp);
  }
  function sortHeader(label, key) {
    if (!key) return h("th", {scope: "col"}, label);
    var on = filters.sort === key;
    var b = h("button", {type: "button", "class": "sort", id: "sort-" + key,
                         "aria-label": "Sort by " + label + (on ? (filters.order === "asc" ? ", now ascending" : ", now descending") : "")},
              label + (on ? (filters.order === "asc" ? " ▲" : " ▼") : ""));
    b.onclick = function () {
      if (on) filters.order = filters.order === "asc" ? "desc" : "asc"; else { filters.sort = key; filters.order = "asc"; }
      filters.offset = 0; refresh(true);
    };
    return h("th", {scope: "col", "aria-sort": on ? (filters.order === "asc" ? "ascending" : "descending") : "none"}, b);
  }
  function tagText(tags) { return Object.keys(tags || {}).sort().map(function (k) { return k + "=" + tags[k]; }).join(", "); }
  function parseTags(text) {
    var out = {};
    String(text || "").split(",").forEach(function (part) {
      part = part.trim(); if (!part) return;
      var i = part.indexOf("=");
      if (i <= 0) throw new Error("tag " + JSON.stringify(part) + " must be key=value");
      out[part.slice(0, i).trim()] = part.slice(i + 1).trim();
    });
    return out;
  }

  function registerForm() {
    var id = h("input", {id: "reg-id", required: true, pattern: "[A-Za-z0-9_.:\\-]{1,128}", autocomplete: "off"});
    var tags = h("input", {id: "reg-tags", placeholder: "region=eu,ring=canary", autocomplete: "off"});
    var prof = h("input", {id: "reg-profile", placeholder: "rpi4", autocomplete: "off"});
    var gen = h("input", {id: "reg-password", type: "checkbox", checked: true});
    var err = h("p", {"class": "err", role: "alert", id: "reg-error"});
    [id, tags, prof].forEach(function (e) { e.oninput = function () { state.hold = true; }; });
    var form = h("form", {"class": "card form", id: "register-form", "aria-label": "Register a device"},
      h("h2", {}, "Register a device"),
      h("label", {"for": "reg-id"}, "Device id"), id,
      h("label", {"for": "reg-tags"}, "Tags (key=value, comma separated)"), tags,
      h("label", {"for": "reg-profile"}, "Profile"), prof,
      h("label", {"class": "check", "for": "reg-password"}, gen, " create an MQTT password (shown once)"),
      err, h("p", {}, h("button", {type: "submit", id: "reg-submit"}, "Register")));
    form.onsubmit = function (ev) {
      ev.preventDefault();
      var body;
      try { body = {id: id.value.trim(), tags: parseTags(tags.value), profile: prof.value.trim(), generate_password: gen.checked}; }
      catch (e) { err.textContent = e.message; return; }
      api("POST", "/v1/devices", body).then(function (d) {
        state.hold = false; state.registered = d; toast("Registered " + d.id); refresh(true);
      }).catch(function (e) { err.textContent = "Not registered: " + e.message; });
    };
    return form;
  }
  function registeredNotice() {
    var d = state.registered;
    if (!d) return null;
    var done = h("button", {type: "button", id: "password-done", "class": "secondary"}, "I have saved it");
    done.onclick = function () { state.registered = null; refresh(true); };
    return h("div", {"class": "card notice", role: "alert", id: "registered"},
      h("p", {}, "Registered device ", h("strong", {}, d.id), "."),
      d.password ? [h("p", {}, "MQTT user ", h("code", {}, d.id), " password: ", h("code", {id: "new-password"}, d.password)),
                    h("p", {"class": "muted"}, "This password is shown once; the hub stores only its hash.")]
                 : h("p", {"class": "muted"}, "No MQTT password was created."),
      done);
  }

  function fleetPage() {
    return Promise.all([api("GET", "/ui/data/overview"), api("GET", deviceQuery())]).then(function (r) {
      var ov = r[0], page = r[1], devs = page.devices;
      var status = h("select", {id: "filter-online", "aria-label": "Status"},
        ["", "online", "offline"].map(function (v) { return h("option", {value: v, selected: filters.online === v}, v || "any status"); }));
      status.onchange = function () { setFilter("online", status.value, true); };
      var probs = h("input", {type: "checkbox", id: "filter-problems", checked: filters.problems});
      probs.onchange = function () { setFilter("problems", probs.checked, true); };
      var rows = devs.map(function (d) {
        var a = (d.bundles || []).filter(function (b) { return b.slot === "active"; })[0];
        var s = (d.bundles || []).filter(function (b) { return b.slot === "shadow"; })[0];
        var des = d.desired && d.desired.bundles ? d.desired.bundles.active : null;
        var bad = (d.problems || []).length > 0;
        return h("tr", {"class": bad ? "problem" : null},
          h("td", {}, h("a", {href: "#/device/" + encodeURIComponent(d.id)}, d.id)),
          h("td", {}, badge(d.online ? "online" : "offline")),
          h("td", {}, d.profile || "–"),
          h("td", {"class": "wrap"}, tagText(d.tags)),
          h("td", {}, a ? a.name + ":" + a.version : "–", a ? h("div", {"class": "mono muted"}, short(a.sha256)) : null),
          h("td", {}, s ? s.name + ":" + s.version : "–"),
          h("td", {}, des ? des.name + ":" + des.version : "–"),
          h("td", {}, d.desired ? (d.converged ? badge("converged", "ok") : badge("pending", "warn")) : "–"),
          h("td", {"class": "wrap"}, bad ? d.problems.map(function (p) { return [badge(p, "bad"), " "]; }) : "–"),
          h("td", {}, ago(d.last_seen)));
      });
      var first = devs.length ? page.offset + 1 : 0, last = page.offset + devs.length;
      var prev = h("button", {type: "button", "class": "secondary", id: "page-prev", disabled: page.offset <= 0}, "← Previous");
      prev.onclick = function () { filters.offset = Math.max(0, filters.offset - PAGE); refresh(true); };
      var next = h("button", {type: "button", "class": "secondary", id: "page-next", disabled: last >= page.total}, "Next →");
      next.onclick = function () { filters.offset += PAGE; refresh(true); };
      var tags = Object.keys(ov.by_tag).sort().map(function (k) { return h("tr", {}, h("td", {}, k), h("td", {}, ov.by_tag[k])); });
      var profiles = Object.keys(ov.by_profile).sort().map(function (k) { return h("tr", {}, h("td", {}, k), h("td", {}, ov.by_profile[k])); });
      var versions = Object.keys(ov.running_versions).sort().map(function (k) { return h("tr", {}, h("td", {}, k), h("td", {}, ov.running_versions[k])); });
      var heads = [["device", "id"], ["status", "online"], ["profile", "profile"], ["tags", null], ["active", "version"],
                   ["shadow", null], ["desired active", null], ["desired", null], ["attention", "rejected"], ["last seen", "last_seen"]];
      return [
        h("h1", {}, "Fleet"),
        h("div", {"class": "cards"},
          card(ov.devices.total, "devices", "count-devices"), card(ov.devices.online, "online", "count-online"),
          card(ov.devices.offline, "offline", "count-offline"), card(ov.models, "models", "count-models"),
          card(ov.rollouts.active, "active rollouts", "count-rollouts")),
        registeredNotice(),
        h("div", {"class": "grid2"},
          h("div", {}, h("h2", {}, "By cohort tag"), table(["tag", "devices"], tags.slice(0, 50), "Devices by tag")),
          h("div", {}, h("h2", {}, "By profile"), table(["profile", "devices"], profiles, "Devices by profile")),
          h("div", {}, h("h2", {}, "Running (active slot)"), table(["model:version", "devices"], versions, "Versions running"))),
        h("h2", {id: "devices-heading"}, "Devices (" + page.total + " match" + (page.total === 1 ? "es" : "") + ")"),
        h("div", {"class": "toolbar", role: "search", "aria-label": "Filter devices"},
          filterInput("selector", "Tags", "region=eu,ring=canary"), filterInput("profile", "Profile", "rpi4"),
          filterInput("version", "Running", "model:version"),
          h("label", {"class": "field", "for": "filter-online"}, h("span", {}, "Status"), status),
          h("label", {"class": "check", "for": "filter-problems"}, probs, " needs attention only")),
        h("div", {"class": "toolbar", role: "navigation", "aria-label": "Device pages"}, prev,
          h("span", {id: "page-info", "aria-live": "polite"}, "rows " + first + "–" + last + " of " + page.total), next),
        h("div", {"class": "scroll"}, h("table", {"aria-label": "Devices", "aria-describedby": "page-info"},
          h("thead", {}, h("tr", {}, heads.map(function (x) { return sortHeader(x[0], x[1]); }))),
          h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", {colspan: heads.length, "class": "muted"}, "no device matches"))))),
        state.role === "admin" ? registerForm() : null
      ];
    });
  }

  function tagsForm(d) {
    var inp = h("input", {id: "edit-tags", value: state.hold && state.tagsDraft !== undefined ? state.tagsDraft : tagText(d.tags),
                          autocomplete: "off", "aria-describedby": "edit-tags-help"});
    inp.oninput = function () { state.hold = true; state.tagsDraft = inp.value; };
    var err = h("span", {"class": "err", role: "alert", id: "edit-tags-error"});
    var form = h("form", {"class": "toolbar", id: "tags-form", "aria-label": "Edit tags of " + d.id},
      h("label", {"for": "edit-tags"}, "Tags"), inp,
      h("span", {"class": "muted", id: "edit-tags-help"}, "key=value, comma separated"),
      h("button", {type: "submit", id: "save-tags"}, "Save tags"), err);
    form.onsubmit = function (ev) {
      ev.preventDefault();
      var tags;
      try { tags = parseTags(inp.value); } catch (e) { err.textContent = e.message; return; }
      api("POST", "/v1/devices", {id: d.id, tags: tags, profile: d.profile || ""}).then(function () {
        state.hold = false; state.tagsDraft = undefined; toast("Tags of " + d.id + " saved"); refresh(true);
      }).catch(function (e) { err.textContent = "Not saved: " + e.message; });
    };
    return form;
  }

  function devicePage(id) {
    return Promise.all([api("GET", "/v1/devices/" + encodeURIComponent(id) + "?events=50"),
                        api("GET", "/ui/data/devices/" + encodeURIComponent(id))]).then(function (r) {
      var d = r[0], pts = r[1].points;
      function ser(key) { return pts.map(function (p) { return {x: p.t, y: p[key]}; }); }
      var running = (d.bundles || []).map(function (b) {
        var want = d.desired && d.desired.bundles ? d.desired.bundles[b.slot] : null;
        return h("tr", {}, h("td", {}, b.slot), h("td", {}, b.name + ":" + b.version), h("td", {"class": "mono"}, short(b.sha256)),
                 h("td", {}, want ? want.name + ":" + want.version : "–"),
                 h("td", {}, want ? (want.sha256 === b.sha256 ? badge("match", "ok") : badge("differs", "warn")) : "–"));
      });
      var events = (d.events || []).map(function (e) {
        return h("tr", {}, h("td", {}, new Date(e.ts * 1000).toLocaleTimeString()), h("td", {}, badge(e.step, e.step === "failed" ? "bad" : "")),
                 h("td", {}, e.slot || "–"), h("td", {}, e.bundle ? e.bundle.name + ":" + e.bundle.version : "–"),
                 h("td", {"class": "wrap"}, e.reason || ""));
      });
      return [
        h("p", {}, h("a", {href: "#/fleet"}, "← Fleet")),
        h("h1", {}, "Device " + d.id + " ", badge(d.online ? "online" : "offline")),
        h("p", {"class": "muted"}, "profile " + (d.profile || "–") + " · tags " +
          (Object.keys(d.tags || {}).map(function (k) { return k + "=" + d.tags[k]; }).join(", ") || "–") +
          " · runtime " + (d.runtime_version || "–") + " · last seen " + ago(d.last_seen) +
          " · windows " + fmt(d.windows) + " · dropped windows " + fmt(d.dropped_windows)),
        (d.missing_windows || d.rejected_windows) ? h("p", {"class": "reason", role: "note", id: "device-problems"},
          (d.missing_windows ? d.missing_windows + " telemetry window(s) missing (seqs " +
            (d.missing_seqs || []).slice(0, 10).map(function (g) { return g[0] === g[1] ? g[0] : g[0] + "–" + g[1]; }).join(", ") + ")" : ""),
          (d.missing_windows && d.rejected_windows ? " · " : ""),
          (d.rejected_windows ? d.rejected_windows + " window(s) rejected at ingest: " + (d.rejected_reason || "") : "")) : null,
        state.role === "admin" ? tagsForm(d) : null,
        h("h2", {}, "Running vs desired"),
        table(["slot", "running", "sha256", "desired", ""], running, "Running bundles"),
        h("h2", {}, "Telemetry"),
        h("div", {"class": "grid2"},
          Charts.line({"active p50": ser("active_p50_ms"), "active p99": ser("active_p99_ms"), "shadow p99": ser("shadow_p99_ms")},
                      {title: "Latency (ms)", xTime: true}),
          Charts.line({"requests": ser("active_requests"), "errors": ser("active_errors")}, {title: "Requests and errors per window", xTime: true}),
          Charts.line({"decision change rate": ser("shadow_change_rate")}, {title: "Shadow decision-change rate", xTime: true}),
          Charts.line({"RSS MB": ser("rss_mb")}, {title: "Resident memory (MB)", xTime: true})),
        h("h2", {}, "Recent events"),
        table(["time", "step", "slot", "bundle", "reason"], events, "Device events")
      ];
    });
  }

  function aliasForm(m, versions) {
    var key = m.name.replace(/[^A-Za-z0-9_-]/g, "_");
    var alias = h("input", {id: "alias-name-" + key, value: "champion", autocomplete: "off", list: "alias-list-" + key,
                            pattern: "[A-Za-z0-9][A-Za-z0-9_.\\-]*"});
    alias.oninput = function () { state.hold = true; };
    var list = h("datalist", {id: "alias-list-" + key}, Object.keys(m.aliases).map(function (a) { return h("option", {value: a}); }));
    var ver = h("select", {id: "alias-version-" + key},
      versions.slice().reverse().map(function (v) { return h("option", {value: v.version}, v.version); }));
    ver.onchange = function () { state.hold = true; };
    var err = h("span", {"class": "err", role: "alert", id: "alias-error-" + key});
    var form = h("form", {"class": "toolbar", id: "alias-form-" + key, "aria-label": "Move an alias of " + m.name},
      h("label", {"for": alias.id}, "Alias"), alias, list, h("label", {"for": ver.id}, "→ version"), ver,
      h("button", {type: "submit", id: "alias-move-" + key}, "Move alias"), err);
    form.onsubmit = function (ev) {
      ev.preventDefault();
      var a = alias.value.trim(), now = m.aliases[a];
      if (!a) { err.textContent = "alias: give a name"; return; }
      if (now === ver.value) { err.textContent = m.name + "@" + a + " already points at " + now; return; }
      if (!window.confirm("Point " + m.name + "@" + a + " at version " + ver.value + (now ? " (now " + now + ")" : " (new alias)") +
                          "? Devices and clients that follow @" + a + " get " + ver.value + ".")) return;
      api("PUT", "/v1/models/" + encodeURIComponent(m.name) + "/aliases/" + encodeURIComponent(a), {version: ver.value})
        .then(function () { state.hold = false; toast(m.name + "@" + a + " → " + ver.value); refresh(true); })
        .catch(function (e) { err.textContent = "Not moved: " + e.message; });
    };
    return form;
  }

  function modelsPage() {
    return api("GET", "/v1/models").then(function (j) {
      var models = j.models;
      return Promise.all(models.map(function (m) {
        return Promise.all([api("GET", "/v1/models/" + encodeURIComponent(m.name) + "/versions"),
                            api("GET", "/ui/data/timeseries?model=" + encodeURIComponent(m.name)),
                            api("GET", "/ui/data/distributions?model=" + encodeURIComponent(m.name))]);
      })).then(function (all) {
        var out = [h("h1", {}, "Models (" + models.length + ")")];
        models.forEach(function (m, i) {
          var versions = all[i][0].versions, ts = all[i][1], dist = all[i][2];
          var rows = versions.map(function (v) {
            var prov = v.provenance || {};
            var check = prov.check ? " · check: " + JSON.stringify(prov.check).slice(0, 160) : "";
            return h("tr", {}, h("td", {}, v.version), h("td", {}, (v.aliases || []).map(function (a) { return badge(a, "ok"); })),
                     h("td", {}, v.format), h("td", {}, (v.size / 1024).toFixed(1) + " KiB"),
                     h("td", {}, v.signer_key_id ? badge("signed " + v.signer_key_id.slice(0, 8), "ok") : badge("hub-signed", "warn")),
                     h("td", {"class": "mono"}, short(v.sha256)),
                     h("td", {"class": "wrap"}, Object.keys(prov).filter(function (k) { return k !== "check"; })
                       .map(function (k) { return k + ": " + (typeof prov[k] === "object" ? JSON.stringify(prov[k]) : prov[k]); }).join(" · ") + check));
          });
          function s(key) {
            var o = {};
            Object.keys(ts.series).forEach(function (v) { o[v] = ts.series[v].map(function (p) { return {x: p.t, y: p[key]}; }); });
            return o;
          }
          var shadowDiv = {};
          Object.keys(dist.shadow).forEach(function (v) { if (dist.shadow[v].divergence) shadowDiv[v + " vs active"] = dist.shadow[v].divergence; });
          out.push(h("section", {"aria-label": "Model " + m.name},
            h("h2", {}, m.name + " "),
            h("p", {}, "aliases: ", Object.keys(m.aliases).map(function (a) { return [badge(a + " → " + m.aliases[a], "ok"), " "]; })),
            table(["version", "aliases", "format", "size", "signature", "sha256", "provenance"], rows, "Versions of " + m.name),
            state.role === "admin" ? aliasForm(m, versions) : null,
            h("div", {id: "serving-" + m.name.replace(/[^A-Za-z0-9_-]/g, "_"), "class": "serving", "data-model": m.name,
                   "data-keep": "1"}),
            h("div", {"class": "grid2"},
              Charts.line(s("p99_ms"), {title: "Fleet p99 latency (ms) per version, from merged sketches", xTime: true}),
              Charts.line(s("error_rate"), {title: "Fleet error rate per version", xTime: true}),
              Charts.histogram(dist.scores, {title: "Score distribution per version (champion vs challenger)"}),
              Charts.histogram(shadowDiv, {title: "Shadow |divergence| histogram"}))));
        });
        setTimeout(function () { models.forEach(function (m, i) { servingPanel(m, all[i][0].versions); }); }, 0);
        return out;
      });
    });
  }

  // Shadow and champion/challenger split of a model (online serving), with admin actions.
  function servingPanel(m, versions) {
    var key = m.name.replace(/[^A-Za-z0-9_-]/g, "_"), q = encodeURIComponent(m.name);
    var box = document.getElementById("serving-" + key);
    if (!box) return;
    Promise.all([api("GET", "/v1/models/" + q + "/shadows"),
                 api("GET", "/v1/models/" + q + "/split").catch(function (e) { if (e.status === 404) return null; throw e; })])
      .then(function (r) {
        var shadows = r[0].shadows || [], split = r[1];
        var evalP = split ? api("GET", "/v1/models/" + q + "/evaluation").catch(function (e) { return {verdict: "unavailable", reason: e.message}; })
                          : Promise.resolve(null);
        return evalP.then(function (ev) {
          var admin = state.role === "admin";
          var rows = shadows.map(function (sh) {
            return h("tr", {}, h("td", {}, sh.version), h("td", {}, fmt(sh.sample_rate)),
              admin ? h("td", {}, actDelete("Detach", "/v1/models/" + q + "/shadows/" + encodeURIComponent(sh.version),
                                            "shadow " + sh.version + " of " + m.name, "shadow-detach-" + key + "-" + sh.version)) : null);
          });
          var verdict = ev ? (ev.verdict || ev.decision || "unknown") : null;
          var nodes = [h("h3", {}, "Online serving"),
            table(["shadow version", "sample rate"].concat(admin ? ["action"] : []), rows, "Shadows of " + m.name),
            h("p", {id: "split-" + key}, split ? "Split: " + (split.challenger_fraction * 100).toFixed(1) + " % to @challenger" +
              (split.enabled === false ? " (disabled)" : "") + " · evaluation verdict: " : "No champion/challenger split.",
              split ? badge(verdict, verdict === "PROMOTE" ? "ok" : "warn") : null, ev && ev.reason ? " " + ev.reason : "")];
          if (admin) {
            var ver = h("select", {id: "shadow-version-" + key, "aria-label": "Shadow version of " + m.name},
              versions.slice().reverse().map(function (v) { return h("option", {value: v.version}, v.version); }));
            var rate = h("input", {id: "shadow-rate-" + key, value: "1.0", inputmode: "decimal", "aria-label": "Sample rate", size: 5});
            var attach = h("button", {type: "button", id: "shadow-attach-" + key}, "Attach shadow");
            attach.onclick = function () {
              api("POST", "/v1/models/" + q + "/shadows", {version: ver.value, sample_rate: Number(rate.value)})
                .then(function () { state.hold = false; toast("Shadow " + ver.value + " attached"); servingPanel(m, versions); })
                .catch(function (e) { toast("Not attached: " + e.message); });
            };
            var frac = h("input", {id: "split-fraction-" + key, value: split ? String(split.challenger_fraction) : "0.1",
                                   inputmode: "decimal", "aria-label": "Challenger fraction (0-1)", size: 5});
            var put = h("button", {type: "button", id: "split-put-" + key}, split ? "Change split" : "Start split");
            put.onclick = function () {
              if (!window.confirm("Send " + (Number(frac.value) * 100) + " % of " + m.name + "'s entities to @challenger?")) return;
              api("PUT", "/v1/models/" + q + "/split", {challenger_fraction: Number(frac.value)})
                .then(function () { state.hold = false; toast("Split set"); servingPanel(m, versions); })
                .catch(function (e) { toast("Split not set: " + e.message); });
            };
            ver.onchange = rate.oninput = frac.oninput = function () { state.hold = true; };
            nodes = nodes.concat([
              h("div", {"class": "toolbar", role: "group", "aria-label": "Shadow actions for " + m.name}, ver, rate, attach),
              h("div", {"class": "toolbar", role: "group", "aria-label": "Split actions for " + m.name}, frac, put,
                split ? actDelete("Stop split", "/v1/models/" + q + "/split", "the split of " + m.name, "split-stop-" + key) : null,
                split ? promoteBtn(m, key, verdict) : null)]);
          }
          while (box.firstChild) box.removeChild(box.firstChild);
          add(box, nodes);
        });
      }).catch(function (e) { box.textContent = "Serving: " + e.message; });
  }
  function actDelete(label, path, what, id) {
    var b = h("button", {type: "button", "class": "danger", id: id, "aria-label": label + " " + what}, label);
    b.onclick = function () {
      if (!window.confirm(label + ": " + what + "?")) return;
      api("DELETE", path).then(function () { toast(label + ": done"); refresh(true); })
        .catch(function (e) { toast(label + " failed: " + e.message); });
    };
    return b;
  }
  function promoteBtn(m, key, verdict) {
    var b = h("button", {type: "button", id: "promote-" + key, "aria-label": "Promote the challenger of " + m.name}, "Promote challenger");
    b.onclick = function () {
      if (!window.confirm("Promote " + m.name + "@challenger to @champion? Evaluation verdict: " + verdict +
                          (verdict === "PROMOTE" ? "." : " (the hub refuses without a PROMOTE verdict)."))) return;
      api("POST", "/v1/models/" + encodeURIComponent(m.name) + "/promote", {})
        .then(function () { toast(m.name + ": challenger promoted"); refresh(true); })
        .catch(function (e) { toast("Not promoted: " + e.message); });
    };
    return b;
  }

  function durText(s) { return s >= 3600 && s % 3600 === 0 ? s / 3600 + " h" : s >= 60 && s % 60 === 0 ? s / 60 + " min" : s + " s"; }
  function planSummary(plan) {
    return h("ol", {"aria-label": "Stages"}, plan.stages.map(function (st) {
      return h("li", {}, st.name + ": " + st.percent + " % of the cohort (" + st.kind + "), at least " + durText(st.min_duration_s) +
               " and " + st.min_samples + " samples; pause when not enough data after " + durText(st.timeout_s));
    }));
  }
  var GATE_KEYS = ["max_error_rate", "confidence", "max_p99_ms", "min_latency_samples", "max_decision_change",
                   "max_psi", "max_js", "max_tv", "min_compared", "max_failed_fraction", "max_unknown_fraction", "install_timeout_s"];

  function startForm(candidates, defaults) {
    var field = function (id, label, value, attrs) {
      var inp = h("input", Object.assign({id: id, value: value, autocomplete: "off"}, attrs || {}));
      inp.oninput = function () { state.hold = true; };
      return [h("label", {"for": id}, label), inp];
    };
    var model = h("select", {id: "ro-model", required: true},
      candidates.map(function (c) { return h("option", {value: c}, c); }));
    model.onchange = function () { state.hold = true; };
    var cohort = h("input", {id: "ro-cohort", value: "*", autocomplete: "off", "aria-describedby": "cohort-preview"});
    var preview = h("div", {id: "cohort-preview", "class": "muted", "aria-live": "polite"}, "…");
    var previewTimer = null;
    function updatePreview() {
      api("GET", "/ui/data/cohort?first=10&selector=" + encodeURIComponent(cohort.value || "*")).then(function (p) {
        preview.textContent = p.count + " device" + (p.count === 1 ? "" : "s") + " match " + p.selector + " (" + p.online + " online)" +
          (p.count ? ": " + p.devices.map(function (d) { return d.id; }).join(", ") + (p.count > p.devices.length ? ", …" : "") : "");
        preview.className = p.count ? "muted" : "err";
      }).catch(function (e) { preview.textContent = "Selector: " + e.message; preview.className = "err"; });
    }
    cohort.oninput = function () { state.hold = true; clearTimeout(previewTimer); previewTimer = setTimeout(updatePreview, 250); };
    var shadow = h("input", {id: "ro-shadow", type: "checkbox"});
    shadow.onchange = function () { state.hold = true; };
    var g = defaults.gates;
    var gateFields = GATE_KEYS.map(function (k) { return field("gate-" + k, k, g[k] === null ? "" : String(g[k]), {inputmode: "decimal", placeholder: "off"}); });
    var err = h("p", {"class": "err", role: "alert", id: "ro-error"});
    var review = h("div", {id: "ro-review", "aria-live": "polite"});
    var form = h("form", {"class": "card form", id: "start-form", "aria-label": "Start a rollout"},
      h("h2", {}, "Start a rollout"),
      h("label", {"for": "ro-model"}, "Candidate (model:version)"), model,
      h("label", {"for": "ro-cohort"}, "Cohort selector (region=eu,profile=rpi4 · id in (a,b) · * for all)"), cohort, preview,
      h("fieldset", {}, h("legend", {}, "Plan (defaults shown)"),
        h("label", {"class": "check", "for": "ro-shadow"}, shadow, " shadow stage first (100 %, compares against the champion)"),
        field("ro-stages", "Canary stages, % (increasing, last 100)", "1,5,25,50,100"),
        field("ro-duration", "Minimum duration per stage", "10m"),
        field("ro-samples", "Minimum samples per stage", "100", {inputmode: "numeric"}),
        field("ro-timeout", "Pause after (not enough data)", "2h"),
        field("ro-min-devices", "Minimum devices per stage", String(defaults.min_devices), {inputmode: "numeric"})),
      h("fieldset", {}, h("legend", {}, "Gates (empty = off, only for max_psi / max_js / max_tv)"), gateFields),
      err, h("p", {}, h("button", {type: "submit", id: "ro-review-button"}, "Review")), review);
    function num(v) { return v.trim() === "" ? null : Number(v); }
    function doc() {
      var gates = {};
      GATE_KEYS.forEach(function (k) {
        var v = document.getElementById("gate-" + k).value;
        if (v.trim() === "" && k.indexOf("max_") === 0 && ["max_psi", "max_js", "max_tv"].indexOf(k) >= 0) gates[k] = null;
        else if (k === "install_timeout_s") gates[k] = v.trim();
        else gates[k] = isNaN(num(v)) ? v : num(v);
      });
      var stages = document.getElementById("ro-stages").value.split(",").map(function (x) { return x.trim(); })
        .filter(Boolean).map(function (x) { return isNaN(Number(x)) ? x : Number(x); });
      var samples = document.getElementById("ro-samples").value.trim(), md = document.getElementById("ro-min-devices").value.trim();
      return {shadow: shadow.checked, stages: stages,
              defaults: {min_duration: document.getElementById("ro-duration").value.trim(),
                         min_samples: isNaN(Number(samples)) || !samples ? samples : Number(samples),
                         timeout: document.getElementById("ro-timeout").value.trim()},
              gates: gates, min_devices: isNaN(Number(md)) || !md ? md : Number(md)};
    }
    form.onsubmit = function (ev) {
      ev.preventDefault();
      err.textContent = ""; while (review.firstChild) review.removeChild(review.firstChild);
      var plan = doc(), sel = cohort.value.trim() || "*";
      Promise.all([api("POST", "/ui/data/plan", {plan: plan}), api("GET", "/ui/data/cohort?first=0&selector=" + encodeURIComponent(sel))])
        .then(function (r) {
          var p = r[0].plan, c = r[1];
          if (!c.count) throw new Error("cohort " + c.selector + " matches no device");
          var gates = Object.keys(p.gates).filter(function (k) { return p.gates[k] !== null; }).map(function (k) { return k + " " + p.gates[k]; }).join(" · ");
          var go = h("button", {type: "button", id: "ro-confirm", "class": "danger"}, "Confirm: start the rollout");
          var cancel = h("button", {type: "button", id: "ro-cancel", "class": "secondary"}, "Cancel");
          cancel.onclick = function () { while (review.firstChild) review.removeChild(review.firstChild); model.focus(); };
          go.onclick = function () {
            go.disabled = true;
            api("POST", "/v1/rollouts", {model: model.value, cohort: sel, plan: plan}).then(function (ro) {
              state.hold = false; toast("Rollout " + ro.id + " started"); location.hash = "#/rollout/" + encodeURIComponent(ro.id);
            }).catch(function (e) { err.textContent = "Not started: " + e.message; go.disabled = false; });
          };
          add(review, h("div", {"class": "card notice", role: "region", "aria-label": "Confirm the rollout", id: "ro-summary"},
            h("h3", {}, "This will start a rollout of " + model.value + " to cohort " + c.selector + " (" + c.count + " devices now, " + c.online + " online)."),
            planSummary(p),
            h("p", {}, "Each stage advances only when every gate passes on enough data: " + gates +
              "; it rolls back to the champion when a gate provably fails. At least " + p.min_devices + " device(s) per stage."),
            h("div", {"class": "toolbar"}, go, cancel)));
          go.focus();
        }).catch(function (e) { err.textContent = "Plan not valid: " + e.message; });
    };
    setTimeout(updatePreview, 0);
    return form;
  }

  function candidates() {
    return api("GET", "/v1/models").then(function (j) {
      return Promise.all(j.models.map(function (m) { return api("GET", "/v1/models/" + encodeURIComponent(m.name) + "/versions"); }))
        .then(function (all) {
          var out = [];
          j.models.forEach(function (m, i) { all[i].versions.slice().reverse().forEach(function (v) { out.push(m.name + ":" + v.version); }); });
          return out;
        });
    });
  }

  function rolloutsPage() {
    var admin = state.role === "admin";
    return Promise.all([api("GET", "/v1/rollouts"), admin ? candidates() : null,
                        admin ? api("POST", "/ui/data/plan", {plan: {}}) : null]).then(function (all) {
      var j = all[0];
      var form = admin ? startForm(all[1], all[2].plan) : null;
      return rolloutsList(j).concat([form]);
    });
  }

  function rolloutsList(j) {
    return (function () {
      var rows = j.rollouts.map(function (r) {
        return h("tr", {}, h("td", {}, h("a", {href: "#/rollout/" + encodeURIComponent(r.id)}, r.id)),
                 h("td", {}, r.model + ":" + r.candidate.version), h("td", {}, r.champion ? r.champion.version : "–"),
                 h("td", {}, badge(r.status)), h("td", {}, r.stage.name), h("td", {}, JSON.stringify(r.cohort || {})),
                 h("td", {"class": "wrap"}, r.reason || ""), h("td", {}, ago(r.created_at)));
      });
      return [h("h1", {}, "Rollouts (" + j.rollouts.length + ")"),
              table(["id", "candidate", "champion", "status", "stage", "cohort", "reason", "started"], rows, "Rollouts")];
    })();
  }

  function actionButton(label, cls, rid, action, enabled) {
    var b = h("button", {type: "button", "class": cls, id: "rollout-" + action,
                         "aria-label": label + " rollout " + rid, disabled: !enabled}, label);
    b.onclick = function () {
      if (!window.confirm(label + " rollout " + rid + "?")) return;
      b.disabled = true;
      api("POST", "/v1/rollouts/" + encodeURIComponent(rid) + "/" + action, {reason: "from the dashboard"})
        .then(function (r) { toast(label + ": rollout is now " + r.status); refresh(true); })
        .catch(function (e) { toast(label + " failed: " + e.message); b.disabled = false; });
    };
    return b;
  }

  function rolloutPage(id) {
    var rid = encodeURIComponent(id);
    return Promise.all([api("GET", "/v1/rollouts/" + rid), api("GET", "/v1/rollouts/" + rid + "/events")]).then(function (r) {
      var ro = r[0], events = r[1].events;
      var since = ro.created_at - 60;
      return Promise.all([api("GET", "/ui/data/timeseries?model=" + encodeURIComponent(ro.model) + "&since=" + since),
                          api("GET", "/ui/data/distributions?model=" + encodeURIComponent(ro.model) + "&since=" + since)])
        .then(function (c) {
          var ts = c[0], dist = c[1];
          var admin = state.role === "admin";
          var cur = ro.stage.index;
          var failed = ro.status === "rolled_back" || ro.status === "rolling_back";
          var tl = h("ol", {"class": "timeline", "aria-label": "Stage timeline"}, ro.stages.map(function (name, i) {
            var when = events.filter(function (e) { return e.stage === name && (e.kind === "stage_started" || e.kind === "advanced" || e.kind === "started"); })[0];
            var cls = ro.status === "completed" || i < cur ? "done" : (i === cur ? (failed ? "failed" : "current") : "");
            return h("li", {"class": cls, "aria-current": i === cur ? "step" : null},
                     name, when ? h("div", {"class": "muted"}, new Date(when.ts * 1000).toLocaleTimeString()) : null);
          }));
          var counts = ro.devices || {};
          var countRows = Object.keys(counts).map(function (k) { return h("tr", {}, h("td", {}, k), h("td", {}, counts[k])); });
          var gates = (ro.gates || []).map(function (g) {
            return h("tr", {}, h("td", {}, g.name), h("td", {}, badge(g.status)), h("td", {}, fmt(g.value)),
                     h("td", {}, fmt(g.threshold)), h("td", {"class": "wrap"}, g.message));
          });
          var evRows = events.slice(-60).reverse().map(function (e) {
            return h("tr", {}, h("td", {}, new Date(e.ts * 1000).toLocaleTimeString()), h("td", {}, badge(e.kind, e.kind)),
                     h("td", {}, e.stage || "–"), h("td", {"class": "wrap"}, e.message));
          });
          function s(key) {
            var o = {};
            Object.keys(ts.series).forEach(function (v) { o[v] = ts.series[v].map(function (p) { return {x: p.t, y: p[key]}; }); });
            return o;
          }
          var shadowDiv = {};
          Object.keys(dist.shadow).forEach(function (v) { if (dist.shadow[v].divergence) shadowDiv[v] = dist.shadow[v].divergence; });
          var nd = ro.next_decision || {};
          return [
            h("p", {}, h("a", {href: "#/rollouts"}, "← Rollouts")),
            h("h1", {}, "Rollout " + ro.id + " ", h("span", {id: "rollout-status"}, badge(ro.status))),
            h("p", {}, ro.model + ": candidate " + ro.candidate.version + (ro.champion ? " vs champion " + ro.champion.version : "") +
              " · cohort " + JSON.stringify(ro.cohort || {}) + " · stage ", h("strong", {}, ro.stage.name)),
            ro.reason ? h("p", {"class": "reason", role: "note"}, "Reason: " + ro.reason) : null,
            h("div", {"class": "toolbar", role: "group", "aria-label": "Rollout actions"},
              admin ? [actionButton("Pause", "secondary", ro.id, "pause", ro.status === "running"),
                       actionButton("Resume", "", ro.id, "resume", ro.status === "paused"),
                       actionButton("Abort", "danger", ro.id, "abort", ro.status === "running" || ro.status === "paused")]
                    : h("span", {"class": "muted"}, "Read-only: an admin key is needed to pause, resume or abort.")),
            h("p", {}, h("a", {href: "/ui/data/rollouts/" + rid + "/report", download: "rollout-" + ro.id + ".html", id: "rollout-report"},
              "Download the report (self-contained HTML)")),
            h("h2", {}, "Stage timeline"), tl,
            h("p", {}, "Next decision: ", badge(nd.decision || "none"), " ", nd.reason || ""),
            h("div", {"class": "grid2"},
              h("div", {}, h("h2", {}, "Devices per state"), table(["state", "devices"], countRows, "Devices per state")),
              h("div", {}, h("h2", {}, "Gates (value vs threshold)"), table(["gate", "status", "value", "threshold", "numbers"], gates, "Gates"))),
            h("div", {"class": "grid2"},
              Charts.line(s("p99_ms"), {title: "Fleet p99 latency (ms) per version", xTime: true}),
              Charts.line(s("error_rate"), {title: "Fleet error rate per version", xTime: true}),
              Charts.histogram(dist.scores, {title: "Scores: champion vs candidate"}),
              Charts.histogram(shadowDiv, {title: "Shadow |divergence| histogram"})),
            h("h2", {}, "Decision log"),
            table(["time", "kind", "stage", "message"], evRows, "Rollout decision log")
          ];
        });
    });
  }

  // ---- jobs, streams, schedules -----------------------------------------------------
  function actBtn(label, path, what, id, enabled, cls) {
    var b = h("button", {type: "button", "class": cls || "secondary", id: id, disabled: !enabled, "aria-label": label + " " + what}, label);
    b.onclick = function () {
      if (!window.confirm(label + " " + what + "?")) return;
      b.disabled = true;
      api("POST", path, {}).then(function () { toast(label + ": " + what); refresh(true); })
        .catch(function (e) { toast(label + " failed: " + e.message); b.disabled = false; });
    };
    return b;
  }
  function jobsPage() {
    var admin = state.role === "admin";
    return Promise.all([api("GET", "/v1/jobs?limit=200"), api("GET", "/v1/streams"), api("GET", "/v1/schedules")]).then(function (r) {
      var jobs = r[0].jobs.map(function (j) {
        var q = encodeURIComponent(j.id);
        return h("tr", {}, h("td", {"class": "mono"}, j.id), h("td", {}, badge(j.status)), h("td", {}, j.model),
          h("td", {}, j.progress === null ? "–" : (j.progress * 100).toFixed(1) + " %",
            h("div", {"class": "muted"}, fmt(j.rows_done) + " / " + fmt(j.rows_total) + " rows")),
          h("td", {}, fmt(j.rows_rejected), j.rejects ? h("div", {"class": "mono muted"}, j.rejects) : null),
          h("td", {"class": "wrap"}, j.error || ""), h("td", {}, j.created_at || "–"),
          admin ? h("td", {}, actBtn("Cancel", "/v1/jobs/" + q + "/cancel", "job " + j.id, "job-cancel-" + j.id,
                                     j.status === "queued" || j.status === "running", "danger"), " ",
                    actBtn("Resume", "/v1/jobs/" + q + "/resume", "job " + j.id, "job-resume-" + j.id,
                           j.status !== "queued" && j.status !== "running" && j.status !== "succeeded")) : null);
      });
      var streams = r[1].streams.map(function (st) {
        var q = encodeURIComponent(st.id), stats = st.stats || {};
        return h("tr", {}, h("td", {}, st.name), h("td", {}, badge(st.status)), h("td", {}, st.model),
          h("td", {"class": "wrap mono"}, st.source + " → " + st.sink),
          h("td", {"class": "wrap"}, Object.keys(stats).map(function (k) { return k + " " + fmt(stats[k]); }).join(" · ") || "–"),
          h("td", {"class": "wrap"}, st.error || ""),
          admin ? h("td", {}, actBtn("Stop", "/v1/streams/" + q + "/stop", "stream " + st.name, "stream-stop-" + st.id,
                                     st.desired !== "stopped", "danger"), " ",
                    actBtn("Start", "/v1/streams/" + q + "/start", "stream " + st.name, "stream-start-" + st.id,
                           st.desired === "stopped")) : null);
      });
      var scheds = r[2].schedules.map(function (sc) {
        var q = encodeURIComponent(sc.id);
        return h("tr", {}, h("td", {}, sc.name), h("td", {"class": "mono"}, sc.cron + " " + sc.timezone), h("td", {}, sc.model),
          h("td", {}, sc.paused ? badge("paused") : badge("active", "ok")), h("td", {}, fmt(sc.next_fire_at)),
          h("td", {}, fmt(sc.last_fire_at)),
          admin ? h("td", {}, actBtn(sc.paused ? "Resume" : "Pause", "/v1/schedules/" + q + (sc.paused ? "/resume" : "/pause"),
                                     "schedule " + sc.name, "schedule-toggle-" + sc.id, true)) : null);
      });
      var act = admin ? ["actions"] : [];
      return [h("h1", {}, "Jobs and streams"),
        h("h2", {}, "Batch jobs (" + jobs.length + ")"),
        table(["id", "status", "model", "progress", "rejected", "error", "created"].concat(act), jobs, "Batch jobs"),
        h("h2", {}, "Managed streams (" + streams.length + ")"),
        table(["name", "status", "model", "source → sink", "counters", "error"].concat(act), streams, "Managed streams"),
        h("h2", {}, "Schedules (" + scheds.length + ")"),
        table(["name", "cron", "model", "state", "next firing", "last firing"].concat(act), scheds, "Schedules")];
    });
  }

  // ---- routing ---------------------------------------------------------------------
  function parse() {
    var hsh = (location.hash || "#/fleet").slice(2).split("/");
    return {page: hsh[0] || "fleet", arg: hsh[1] ? decodeURIComponent(hsh.slice(1).join("/")) : null};
  }
  function stopTimer() { if (state.timer) { clearInterval(state.timer); state.timer = null; } }
  function refresh(force) {
    if ((state.busy || state.hold) && !force) return;
    var r = parse();
    var fn = {fleet: fleetPage, device: function () { return devicePage(r.arg); }, models: modelsPage,
              rollouts: rolloutsPage, rollout: function () { return rolloutPage(r.arg); }, jobs: jobsPage}[r.page] || fleetPage;
    state.busy = true;
    var seq = state.seq = (state.seq || 0) + 1;  // a slower, older answer must not replace a newer page
    return fn().then(function (nodes) {
      if (seq !== state.seq) return;
      // what has the focus now, not when the request left: the user may have moved on meanwhile
      // (typing in a filter while a refresh was in flight must not send the focus back)
      var focused = document.activeElement && document.activeElement.id;
      var caret = focused && document.activeElement.selectionStart;
      render(nodes);
      if (focused) {
        var e = document.getElementById(focused);
        if (e) { e.focus(); if (caret !== undefined && caret !== null && e.setSelectionRange) { try { e.setSelectionRange(caret, caret); } catch (x) {} } }
      }
    }).catch(function (e) {
      if (seq !== state.seq) return;
      if (e.status === 401) return showLogin("Your session has ended; log in again.");
      render(h("p", {"class": "err", role: "alert"}, "Error: " + e.message));
    }).then(function () { state.busy = false; });
  }
  function route() {
    var r = parse();
    document.querySelectorAll("[data-nav]").forEach(function (a) {
      var on = a.getAttribute("data-nav") === r.page || (r.page === "device" && a.getAttribute("data-nav") === "fleet") ||
               (r.page === "rollout" && a.getAttribute("data-nav") === "rollouts");
      a.classList.toggle("active", on);
      if (on) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
    });
    stopTimer();
    state.hold = false;
    refresh(true);
    state.timer = setInterval(function () { if (!document.hidden) refresh(false); }, REFRESH_MS);
  }
  window.addEventListener("hashchange", function () { if (state.role) route(); });

  whoami().then(function (w) {
    if (w.status === 401) { state.authRequired = true; setWho(); return showLogin(); }
    state.role = w.body.role; state.authRequired = w.body.auth_required; setWho(); route();
  }).catch(function () { render(h("p", {"class": "err"}, "Cannot reach the hub.")); });
})();

/* Sphincter viewer page: watch one room live. Uses sphincter.js (loaded before this file). */
(function () {
  "use strict";

  var MAX_KEPT = 500;          // messages kept on screen (and while paused)
  var HEX_BYTES = 256;         // bytes of a binary message shown as hex
  var PREVIEW_CHARS = 160;     // one-line preview of a collapsed JSON message
  var OPEN_JSON_LINES = 12;    // pretty JSON up to this many lines starts expanded
  var RATE_WINDOW_MS = 5000;   // message rate is averaged over this window
  var STALE_AFTER_MS = 30000;  // "quiet" notice after this long without a message

  var $ = function (id) { return document.getElementById(id); };
  var ui = {
    form: $("room-form"), room: $("room"), watch: $("watch"), stop: $("stop"),
    status: $("status"), statusText: $("status-text"), countdown: $("countdown"),
    retryNow: $("retry-now"), count: $("stat-count"), rate: $("stat-rate"),
    bytes: $("stat-bytes"), pause: $("pause"), clear: $("clear"), copy: $("copy"),
    pretty: $("pretty"), pausedNote: $("paused-note"), copyNote: $("copy-note"),
    list: $("messages"), empty: $("empty")
  };

  var conn = null, room = "";
  var kept = [];               // {data, meta} oldest first, at most MAX_KEPT
  var pending = [];            // received while paused
  var droppedWhilePaused = 0;
  var paused = false;
  var total = 0, totalBytes = 0, recent = [];
  var retryAt = 0;

  var REASONS = {
    "unknown-room": "Unknown room: no source is using this code (yet).",
    "room-closed": "Room closed: the source left.",
    "room-full": "Room full: too many viewers.",
    "forbidden": "Refused: the relay does not accept connections from this page's origin.",
    "too-slow": "Cut off: this browser fell too far behind.",
    "server-shutdown": "The relay is shutting down or restarting.",
    "network": "Disconnected."
  };

  function setStatus(state, text, reason) {
    ui.status.setAttribute("data-state", state);
    ui.status.setAttribute("data-reason", reason || "");
    if (ui.statusText.textContent !== text) { ui.statusText.textContent = text; }
    document.title = (room ? room + " · " + state + " — " : "") + "Sphincter viewer";
  }

  function onState(state, info) {
    retryAt = 0;
    ui.countdown.textContent = "";
    ui.retryNow.hidden = true;
    switch (state) {
      case "connecting": setStatus(state, "Connecting to room " + room + "…"); break;
      case "open": setStatus(state, "Connected to room " + room + ", waiting for messages."); break;
      case "live": setStatus(state, "Live: room " + room + "."); break;
      case "stale":
        setStatus(state, "Connected to room " + room + ", but no message for " +
                  Math.round(STALE_AFTER_MS / 1000) + " s.");
        break;
      case "retrying":
        retryAt = info.retryAt;
        setStatus(state, (REASONS[info.reason] || REASONS.network) + " Retrying automatically.",
                  info.reason);
        ui.retryNow.hidden = false;
        tickCountdown();
        break;
      case "stopped": setStatus(state, "Stopped. Enter a room code to watch."); break;
      default: setStatus(state, state);
    }
  }

  function tickCountdown() {
    if (!retryAt) { return; }
    var s = Math.max(0, Math.ceil((retryAt - Date.now()) / 1000));
    ui.countdown.textContent = "Retrying in " + s + " s";
  }

  function formatBytes(n) {
    if (n < 1024) { return n + " B"; }
    if (n < 1048576) { return (n / 1024).toFixed(1) + " KiB"; }
    return (n / 1048576).toFixed(1) + " MiB";
  }

  function formatTime(ms) {
    var d = new Date(ms);
    var pad = function (v, w) { v = String(v); while (v.length < w) { v = "0" + v; } return v; };
    return pad(d.getHours(), 2) + ":" + pad(d.getMinutes(), 2) + ":" + pad(d.getSeconds(), 2) +
      "." + pad(d.getMilliseconds(), 3);
  }

  function hexDump(bytes, limit) {
    var lines = [], n = Math.min(bytes.length, limit);
    for (var off = 0; off < n; off += 16) {
      var hex = [], ascii = "";
      for (var i = off; i < Math.min(off + 16, n); i++) {
        var b = bytes[i];
        hex.push((b < 16 ? "0" : "") + b.toString(16));
        ascii += b >= 32 && b < 127 ? String.fromCharCode(b) : ".";
      }
      lines.push(("0000" + off.toString(16)).slice(-4) + "  " +
                 (hex.join(" ") + new Array(49).join(" ")).slice(0, 48) + " " + ascii);
    }
    if (bytes.length > n) { lines.push("… " + (bytes.length - n) + " more bytes"); }
    return lines.join("\n");
  }

  function parseJson(text) {
    var t = text.replace(/^\s+/, "");
    if (t.charAt(0) !== "{" && t.charAt(0) !== "[") { return undefined; }
    try { return JSON.parse(text); } catch (e) { return undefined; }
  }

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) { node.className = cls; }
    if (text !== undefined) { node.textContent = text; }
    return node;
  }

  function renderBody(msg) {
    if (msg.meta.binary) {
      return el("pre", "body hex", hexDump(msg.data, HEX_BYTES));
    }
    var json = parseJson(msg.data);
    if (json === undefined) { return el("pre", "body text", msg.data); }
    if (!ui.pretty.checked) { return el("pre", "body json", msg.data); }
    var pretty = JSON.stringify(json, null, 2);
    var details = el("details", "body json");
    var summary = el("summary", null, JSON.stringify(json).slice(0, PREVIEW_CHARS));
    details.appendChild(summary);
    details.appendChild(el("pre", null, pretty));
    if (pretty.split("\n").length <= OPEN_JSON_LINES) { details.open = true; }
    return details;
  }

  function renderItem(msg) {
    var li = el("li", "msg" + (msg.meta.binary ? " binary" : ""));
    var head = el("div", "msg-meta");
    var time = el("time", null, formatTime(msg.meta.receivedAt));
    time.dateTime = new Date(msg.meta.receivedAt).toISOString();
    head.appendChild(time);
    head.appendChild(el("span", "kind", msg.meta.binary ? "binary" : "text"));
    head.appendChild(el("span", "size", formatBytes(msg.meta.bytes)));
    li.appendChild(head);
    li.appendChild(renderBody(msg));
    return li;
  }

  function show(msg) {
    kept.push(msg);
    ui.list.insertBefore(renderItem(msg), ui.list.firstChild);
    while (kept.length > MAX_KEPT) {
      kept.shift();
      ui.list.removeChild(ui.list.lastChild);
    }
    ui.empty.hidden = true;
  }

  function onMessage(data, meta) {
    total += 1;
    totalBytes += meta.bytes;
    recent.push(meta.receivedAt);
    var msg = { data: data, meta: meta };
    if (paused) {
      pending.push(msg);
      if (pending.length > MAX_KEPT) { pending.shift(); droppedWhilePaused += 1; }
      updatePausedNote();
    } else {
      show(msg);
    }
    ui.count.textContent = String(total);
    ui.bytes.textContent = formatBytes(totalBytes);
    updateRate();
  }

  function updateRate() {
    var now = Date.now();
    while (recent.length && recent[0] < now - RATE_WINDOW_MS) { recent.shift(); }
    ui.rate.textContent = (recent.length / (RATE_WINDOW_MS / 1000)).toFixed(1);
  }

  function updatePausedNote() {
    ui.pausedNote.hidden = !paused;
    ui.pausedNote.textContent = "Paused: " + (pending.length + droppedWhilePaused) +
      " new message(s) waiting" + (droppedWhilePaused ? " (only the last " + MAX_KEPT + " kept)" : "") + ".";
  }

  function setPaused(p) {
    paused = p;
    ui.pause.setAttribute("aria-pressed", p ? "true" : "false");
    ui.pause.textContent = p ? "Resume" : "Pause";
    if (!p) {
      var batch = pending; pending = []; droppedWhilePaused = 0;
      batch.forEach(show);
    }
    updatePausedNote();
  }

  function clearMessages() {
    kept = []; pending = []; droppedWhilePaused = 0;
    while (ui.list.firstChild) { ui.list.removeChild(ui.list.firstChild); }
    ui.empty.hidden = false;
    updatePausedNote();
  }

  function messagesAsText() {
    return kept.map(function (m) {
      var body = m.meta.binary ? hexDump(m.data, m.data.length) : m.data;
      return formatTime(m.meta.receivedAt) + " " + body;
    }).join("\n");
  }

  function copyMessages() {
    var text = messagesAsText();
    var done = function () { ui.copyNote.textContent = "Copied " + kept.length + " message(s)."; };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, function () { fallbackCopy(text); done(); });
    } else {
      fallbackCopy(text); done();
    }
  }

  function fallbackCopy(text) {
    var ta = el("textarea"); ta.value = text;
    ta.setAttribute("readonly", ""); ta.className = "visually-hidden";
    document.body.appendChild(ta); ta.select();
    try { document.execCommand("copy"); } catch (e) { /* nothing more to try */ }
    document.body.removeChild(ta);
    ui.copy.focus();
  }

  function normaliseCode(value) {
    return value.replace(/[\s-]+/g, "").toUpperCase();
  }

  function watch(code) {
    if (conn) { conn.close(); conn = null; }
    room = code;
    total = 0; totalBytes = 0; recent = [];
    ui.count.textContent = "0"; ui.bytes.textContent = "0 B";
    clearMessages();
    var url = new URL(location.href);
    url.searchParams.set("room", code);
    history.replaceState(null, "", url.toString());
    ui.stop.hidden = false;
    conn = Sphincter.connect({ room: code, onMessage: onMessage, onState: onState,
                               staleAfterMs: STALE_AFTER_MS });
    window.sphincterViewer.conn = conn;
  }

  ui.form.addEventListener("submit", function (ev) {
    ev.preventDefault();
    var code = normaliseCode(ui.room.value);
    if (!/^[A-Z0-9]{1,32}$/.test(code)) {
      ui.room.setAttribute("aria-invalid", "true");
      setStatus("idle", "A room code is letters and digits, like K7PQ2X.");
      ui.room.focus();
      return;
    }
    ui.room.removeAttribute("aria-invalid");
    ui.room.value = code;
    watch(code);
  });
  ui.stop.addEventListener("click", function () {
    if (conn) { conn.close(); conn = null; }
    ui.stop.hidden = true;
    ui.room.focus();
  });
  ui.retryNow.addEventListener("click", function () { if (conn) { conn.retryNow(); } });
  ui.pause.addEventListener("click", function () { setPaused(!paused); });
  ui.clear.addEventListener("click", clearMessages);
  ui.copy.addEventListener("click", copyMessages);

  setInterval(function () { updateRate(); tickCountdown(); }, 500);

  window.sphincterViewer = { conn: null, watch: watch };
  var initial = new URLSearchParams(location.search).get("room");
  if (initial) {
    ui.room.value = normaliseCode(initial);
    if (ui.room.value) { watch(ui.room.value); }
  }
})();

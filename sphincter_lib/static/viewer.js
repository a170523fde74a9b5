/* Sphincter viewer page: watch one room live. Uses sphincter.js (loaded before this file). */
(function () {
  "use strict";

  var MAX_KEPT = 500;          // messages kept on screen (and while paused)
  var MAX_KEPT_BYTES = 8 << 20; // ... and at most this many bytes of them
  var MAX_SHOWN_CHARS = 65536; // a longer text message is cut on screen (Copy has it whole)
  var FLUSH_MS = 50;           // new messages reach the page in batches, at most this often
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
    list: $("messages"), empty: $("empty"),
    sendForm: $("send-form"), sendText: $("send-text"), sendNote: $("send-note")
  };

  var conn = null, room = "";
  var kept = [];               // {data, meta} oldest first, at most MAX_KEPT
  var pending = [];            // received while paused
  var droppedWhilePaused = 0;
  var paused = false;
  var keptBytes = 0, pendingBytes = 0;
  var incoming = [];           // received, not yet on the page (flushed every FLUSH_MS)
  var flushTimer = null;
  var total = 0, totalBytes = 0, recent = [];  // recent: [time bucket, count]
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
      case "source-offline":
        setStatus(state, "Connected to room " + room + "; its source is away. Waiting for it to come back.");
        break;
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
    if (json === undefined) { return el("pre", "body text", cut(msg.data)); }
    if (!ui.pretty.checked || msg.data.length > MAX_SHOWN_CHARS) { return el("pre", "body json", cut(msg.data)); }
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

  function cut(text) {
    if (text.length <= MAX_SHOWN_CHARS) { return text; }
    return text.slice(0, MAX_SHOWN_CHARS) + "\n… " + (text.length - MAX_SHOWN_CHARS) +
      " more characters (Copy has them all)";
  }

  /** Put a batch (oldest first) on the page, newest on top; keep the list bounded. */
  function show(batch) {
    if (batch.length > MAX_KEPT) { batch = batch.slice(batch.length - MAX_KEPT); }
    var frag = document.createDocumentFragment();
    for (var i = batch.length - 1; i >= 0; i--) {
      frag.appendChild(renderItem(batch[i]));
    }
    kept = kept.concat(batch);
    batch.forEach(function (m) { keptBytes += m.meta.bytes; });
    ui.list.insertBefore(frag, ui.list.firstChild);
    while (kept.length > 1 && (kept.length > MAX_KEPT || keptBytes > MAX_KEPT_BYTES)) {
      keptBytes -= kept.shift().meta.bytes;
      ui.list.removeChild(ui.list.lastChild);
    }
    ui.empty.hidden = kept.length > 0;
  }

  function rerender() {
    var all = kept;
    kept = []; keptBytes = 0;
    while (ui.list.firstChild) { ui.list.removeChild(ui.list.firstChild); }
    show(all);
  }

  function flush() {
    flushTimer = null;
    var batch = incoming;
    incoming = [];
    if (batch.length) { show(batch); }
  }

  function onMessage(data, meta) {
    total += 1;
    totalBytes += meta.bytes;
    var bucket = Math.floor(meta.receivedAt / 250);
    if (recent.length && recent[recent.length - 1][0] === bucket) { recent[recent.length - 1][1] += 1; }
    else { recent.push([bucket, 1]); }
    var msg = { data: data, meta: meta };
    if (paused) {
      pending.push(msg);
      pendingBytes += meta.bytes;
      while (pending.length > 1 && (pending.length > MAX_KEPT || pendingBytes > MAX_KEPT_BYTES)) {
        pendingBytes -= pending.shift().meta.bytes;
        droppedWhilePaused += 1;
      }
    } else {
      incoming.push(msg);
      if (incoming.length > MAX_KEPT) { incoming.shift(); }
      if (!flushTimer) { flushTimer = setTimeout(flush, FLUSH_MS); }
    }
    if (!statsTimer) { statsTimer = setTimeout(updateCounters, FLUSH_MS); }
  }

  var statsTimer = null;
  function updateCounters() {
    statsTimer = null;
    ui.count.textContent = String(total);
    ui.bytes.textContent = formatBytes(totalBytes);
    if (paused) { updatePausedNote(); }
    updateRate();
  }

  function updateRate() {
    var oldest = Math.floor((Date.now() - RATE_WINDOW_MS) / 250);
    while (recent.length && recent[0][0] < oldest) { recent.shift(); }
    var n = 0;
    recent.forEach(function (b) { n += b[1]; });
    ui.rate.textContent = (n / (RATE_WINDOW_MS / 1000)).toFixed(1);
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
      var batch = pending; pending = []; pendingBytes = 0; droppedWhilePaused = 0;
      flush();
      show(batch);
    }
    updatePausedNote();
  }

  function clearMessages() {
    kept = []; pending = []; incoming = []; keptBytes = 0; pendingBytes = 0; droppedWhilePaused = 0;
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
    var v = value.replace(/\s+/g, "").toUpperCase();
    var code = v.replace(/-/g, "");              // "K7P-Q2X" typed for a code
    return /^[2-9A-HJKMNP-Z]{6}$/.test(code) && v !== code ? code : v;
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
    var key = new URLSearchParams(location.search).get("key") || "";
    conn = Sphincter.connect({ room: code, onMessage: onMessage, onState: onState,
                               staleAfterMs: STALE_AFTER_MS, key: key });
    ui.sendForm.hidden = !key;
    window.sphincterViewer.conn = conn;
  }

  ui.sendForm.addEventListener("submit", function (ev) {
    ev.preventDefault();
    var text = ui.sendText.value;
    if (!text || !conn) { return; }
    if (conn.send(text)) {
      ui.sendText.value = "";
      ui.sendNote.textContent = "Sent to the source.";
    } else {
      ui.sendNote.textContent = "Not connected: not sent.";
    }
  });

  ui.form.addEventListener("submit", function (ev) {
    ev.preventDefault();
    var code = normaliseCode(ui.room.value);
    if (!/^[A-Z0-9_-]{3,32}$/.test(code)) {
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
  ui.pretty.addEventListener("change", rerender);

  setInterval(function () { updateRate(); tickCountdown(); }, 500);

  window.sphincterViewer = { conn: null, watch: watch };
  var initial = new URLSearchParams(location.search).get("room");
  if (initial) {
    ui.room.value = normaliseCode(initial);
    if (ui.room.value) { watch(ui.room.value); }
  }
})();

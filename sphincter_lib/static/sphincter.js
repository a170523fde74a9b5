/*! sphincter.js — tiny browser client for a Sphincter relay room.
 *
 *   var conn = Sphincter.connect({
 *     room: "ABC234",                 // room code (required)
 *     url: "wss://relay.example/ws",  // optional; default: the /ws next to where this script was loaded
 *     json: true,                     // parse text messages as JSON (parse errors are reported, not thrown)
 *     staleAfterMs: 10000,            // state "stale" when no message arrived for this long (0 = off)
 *     presence: true,                 // ask the relay's /status whether the source is there
 *     key: "…",                       // the room's write key: conn.send() then reaches the source
 *     onMessage: function (data, meta) {},  // meta: {text, binary, bytes, receivedAt, parseError}
 *     onState: function (state, info) {}    // see STATES below
 *   });
 *   conn.send("text" | ArrayBuffer);   // with a key: to the source (false when not connected)
 *   conn.close();                      // stop for good (no more reconnects)
 *
 * States: "connecting", "open" (socket open, waiting for data), "live" (messages arriving),
 * "stale" (no message for staleAfterMs), "source-offline" (connected, but the room's source is
 * away: a named room without its source, or a room waiting for its source to resume),
 * "retrying" (closed; info.retryInMs, info.reason), "stopped" (close() was called).
 * conn.source is "online", "offline" or null (unknown). Presence comes from a long-poll of
 * GET /status?room=CODE next to the WebSocket URL, never from the data stream.
 * info.reason for "retrying": "unknown-room" (4404), "room-closed" (4410), "room-full" (4429),
 * "forbidden" (4403), "too-slow" (4408), "server-shutdown" (1001), "relay-unavailable" (1013: that
 * relay node cannot reach Redis now), "network" (anything else).
 *
 * Reconnects forever with capped exponential backoff and jitter. 4404/4410 keep retrying (the
 * room may come back); 4429/4403 wait at least backoff.slowMinMs. No dependencies, ES5.
 */
(function (root) {
  "use strict";

  var VERSION = "1";

  var CLOSE_REASONS = {
    1001: "server-shutdown",
    1013: "relay-unavailable",
    4403: "forbidden",
    4404: "unknown-room",
    4408: "too-slow",
    4410: "room-closed",
    4429: "room-full"
  };

  var DEFAULT_BACKOFF = {
    initialMs: 500,     // first retry after about this long
    factor: 2,          // growth per failed attempt
    maxMs: 30000,       // cap for ordinary failures
    jitter: 0.5,        // fraction of the delay that is randomised (0..1)
    slowMinMs: 15000,   // floor for 4429 (room full) and 4403 (forbidden origin)
    slowMaxMs: 120000,  // cap for those
    stableMs: 5000      // an open connection this old (or one message) resets the attempt count
  };

  // Where this script came from: the default relay is the one that served it.
  var scriptSrc = (typeof document !== "undefined" && document.currentScript &&
                   document.currentScript.src) || "";

  function closeReason(code) {
    return CLOSE_REASONS[code] || "network";
  }

  function merge(base, extra) {
    var out = {}, k;
    for (k in base) { if (Object.prototype.hasOwnProperty.call(base, k)) { out[k] = base[k]; } }
    for (k in (extra || {})) {
      if (Object.prototype.hasOwnProperty.call(extra, k) && extra[k] !== undefined) { out[k] = extra[k]; }
    }
    return out;
  }

  /** Delay before retry number `attempt` (0-based) after a close with `code`. Pure. */
  function backoffDelay(attempt, code, backoff, random) {
    var b = merge(DEFAULT_BACKOFF, backoff);
    var rnd = random || Math.random;
    var slow = code === 4429 || code === 4403;
    var cap = slow ? b.slowMaxMs : b.maxMs;
    var base = Math.min(cap, b.initialMs * Math.pow(b.factor, Math.max(0, attempt)));
    if (slow) { base = Math.max(base, b.slowMinMs); }
    // "Equal jitter": keep (1 - jitter) of the delay, randomise the rest.
    var delay = base * (1 - b.jitter) + base * b.jitter * rnd();
    return Math.round(Math.min(delay, cap));
  }

  /** The WebSocket URL for a room. `base` may be ws(s)://, http(s)://, a path, or empty. */
  function roomUrl(room, base, loc) {
    loc = loc || (typeof location !== "undefined" ? location : null);
    var url;
    if (base) {
      url = new URL(base, loc ? loc.href : undefined);
    } else if (scriptSrc && /^https?:/.test(scriptSrc)) {
      url = new URL("ws", scriptSrc);          // next to /sphincter.js, works under a path prefix
    } else if (loc && /^https?:/.test(loc.protocol)) {
      url = new URL("ws", loc.href);
    } else {
      throw new Error("Sphincter: no url given and none can be derived (page opened from " +
                      (loc ? loc.protocol : "nowhere") + ")");
    }
    if (url.protocol === "https:") { url.protocol = "wss:"; }
    if (url.protocol === "http:") { url.protocol = "ws:"; }
    if (url.protocol !== "ws:" && url.protocol !== "wss:") {
      throw new Error("Sphincter: cannot connect to " + url.protocol + " URL " + url.href);
    }
    url.searchParams.set("room", String(room).trim().toUpperCase());
    return url.toString();
  }

  function withKey(url, key) {
    if (!key) { return url; }
    var u = new URL(url);
    u.searchParams.set("key", String(key));
    return u.toString();
  }

  /** The /status URL for a ws(s):// room URL (same host, /status beside /ws). Pure. */
  function statusUrl(wsUrl, extra) {
    var url = new URL(wsUrl);
    url.searchParams.delete("key");            // never sent where it is not needed
    url.protocol = url.protocol === "wss:" ? "https:" : "http:";
    url.pathname = url.pathname.replace(/ws$/, "status");
    return url.toString() + (extra || "");
  }

  function Connection(opts) {
    if (!opts || !opts.room) { throw new Error("Sphincter.connect: room is required"); }
    this.opts = opts;
    this.url = withKey(roomUrl(opts.room, opts.url), opts.key);
    this.backoff = merge(DEFAULT_BACKOFF, opts.backoff);
    this.random = opts.random || Math.random;
    this.WebSocket = opts.WebSocket || root.WebSocket;
    this.state = "idle";
    this.attempt = 0;
    this.lastMessageAt = 0;
    this.messages = 0;
    this.ws = null;
    this._retryTimer = null;
    this._staleTimer = null;
    this._stableTimer = null;
    this._stopped = false;
    this.source = null;
    this._pollGen = 0;
    var self = this;
    this._onOnline = function () { if (self.state === "retrying") { self.retryNow(); } };
    if (root.addEventListener) { root.addEventListener("online", this._onOnline); }
    this._open();
  }

  Connection.prototype._setState = function (state, info) {
    this.state = state;
    if (this.opts.onState) {
      try { this.opts.onState(state, info || {}); } catch (e) { this._report(e); }
    }
  };

  Connection.prototype._report = function (err) {
    if (this.opts.onError) { this.opts.onError(err); }
    else if (root.console) { root.console.error("sphincter:", err); }
  };

  Connection.prototype._open = function () {
    var self = this;
    this._clearTimers();
    this._setState("connecting", { attempt: this.attempt, url: this.url });
    var ws;
    try {
      ws = new this.WebSocket(this.url);
    } catch (e) {
      this._report(e);
      this._scheduleRetry(1006, "");
      return;
    }
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    ws.onopen = function () {
      if (ws !== self.ws) { return; }
      self._setState("open", { url: self.url });
      self._armStale();
      self._pollPresence();
      self._stableTimer = setTimeout(function () { self.attempt = 0; }, self.backoff.stableMs);
    };
    ws.onmessage = function (ev) {
      if (ws !== self.ws) { return; }
      self._deliver(ev.data);
    };
    ws.onclose = function (ev) {
      if (ws !== self.ws) { return; }
      self.ws = null;
      self._pollGen += 1;              // stop polling presence
      if (self._stopped) { return; }
      self._scheduleRetry(ev.code, ev.reason);
    };
    ws.onerror = function () { /* onclose follows with the details */ };
  };

  Connection.prototype._deliver = function (data) {
    var now = Date.now();
    var meta = { binary: typeof data !== "string", receivedAt: now, text: null, bytes: 0 };
    var value = data;
    this.attempt = 0;
    this.messages += 1;
    this.lastMessageAt = now;
    if (meta.binary) {
      value = new Uint8Array(data);
      meta.bytes = value.byteLength;
    } else {
      meta.text = data;
      meta.bytes = utf8Length(data);
      if (this.opts.json) {
        try { value = JSON.parse(data); } catch (e) { value = data; meta.parseError = e.message; }
      }
    }
    this.source = "online";            // data comes from a source
    if (this.state !== "live") { this._setState("live", {}); }
    this._armStale();
    if (this.opts.onMessage) {
      try { this.opts.onMessage(value, meta); } catch (e) { this._report(e); }
    }
  };

  /** Long-poll the relay's /status while the socket is open (one request at a time). */
  Connection.prototype._pollPresence = function () {
    var self = this, gen = ++this._pollGen;
    if (this.opts.presence === false || typeof root.fetch !== "function") { return; }
    var url = statusUrl(this.url, this.source ? "&source=" + this.source + "&wait=25" : "");
    var asked = this.source;
    root.fetch(url, { cache: "no-store" }).then(function (r) { return r.json(); }).then(function (body) {
      if (gen !== self._pollGen || !self.ws) { return; }
      if (body && (body.source === "online" || body.source === "offline")) { self._presence(body.source); }
      if (body && body.waited === false && self.source === asked) {
        // the relay has too many long-polls waiting: ask again a little later
        setTimeout(function () { if (gen === self._pollGen && self.ws) { self._pollPresence(); } }, 5000);
        return;
      }
      self._pollPresence();
    }, function () {
      if (gen !== self._pollGen) { return; }
      setTimeout(function () { if (gen === self._pollGen && self.ws) { self._pollPresence(); } }, 2000);
    });
  };

  Connection.prototype._presence = function (source) {
    var was = this.source;
    this.source = source;
    if (source === "offline" && this.state !== "source-offline") {
      this._setState("source-offline", { since: Date.now() });
    } else if (source === "online" && was === "offline" && this.state === "source-offline") {
      this._setState("open", { url: this.url });
      this._armStale();
    }
  };

  Connection.prototype._armStale = function () {
    var self = this, ms = this.opts.staleAfterMs;
    if (this._staleTimer) { clearTimeout(this._staleTimer); this._staleTimer = null; }
    if (!ms || ms <= 0) { return; }
    this._staleTimer = setTimeout(function () {
      self._staleTimer = null;
      if (self.ws && (self.state === "live" || self.state === "open")) {
        self._setState("stale", { sinceMs: self.lastMessageAt ? Date.now() - self.lastMessageAt : ms,
                                  lastMessageAt: self.lastMessageAt || null });
      }
    }, ms);
  };

  Connection.prototype._scheduleRetry = function (code, reason) {
    var self = this;
    this._clearTimers();
    var delay = backoffDelay(this.attempt, code, this.backoff, this.random);
    this.attempt += 1;
    this.retryAt = Date.now() + delay;
    this._retryTimer = setTimeout(function () { self._retryTimer = null; self._open(); }, delay);
    this._setState("retrying", { code: code, reason: closeReason(code), serverReason: reason || "",
                                 retryInMs: delay, retryAt: this.retryAt, attempt: this.attempt });
  };

  Connection.prototype._clearTimers = function () {
    if (this._retryTimer) { clearTimeout(this._retryTimer); this._retryTimer = null; }
    if (this._staleTimer) { clearTimeout(this._staleTimer); this._staleTimer = null; }
    if (this._stableTimer) { clearTimeout(this._stableTimer); this._stableTimer = null; }
  };

  /** Send a message to the room's source (needs the write key); false when not connected. */
  Connection.prototype.send = function (data) {
    if (!this.ws || this.ws.readyState !== 1) { return false; }
    this.ws.send(data);
    return true;
  };

  /** Skip the wait: reconnect now if a retry is pending. */
  Connection.prototype.retryNow = function () {
    if (this._stopped || this.state !== "retrying") { return; }
    this._open();
  };

  /** Stop for good: close the socket, cancel retries. */
  Connection.prototype.close = function () {
    if (this._stopped) { return; }
    this._stopped = true;
    this._clearTimers();
    if (root.removeEventListener) { root.removeEventListener("online", this._onOnline); }
    var ws = this.ws;
    this.ws = null;
    if (ws) { try { ws.close(1000); } catch (e) { /* already closing */ } }
    this._setState("stopped", {});
  };

  function utf8Length(s) {
    if (typeof TextEncoder !== "undefined") { return new TextEncoder().encode(s).byteLength; }
    return unescape(encodeURIComponent(s)).length;
  }

  root.Sphincter = {
    version: VERSION,
    connect: function (opts) { return new Connection(opts); },
    backoffDelay: backoffDelay,
    closeReason: closeReason,
    statusUrl: statusUrl,
    roomUrl: roomUrl,
    DEFAULT_BACKOFF: DEFAULT_BACKOFF,
    CLOSE_REASONS: CLOSE_REASONS
  };
})(typeof window !== "undefined" ? window : this);

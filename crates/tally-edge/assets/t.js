/*! tally.js v1 | Tally conversion tag | MIT OR Apache-2.0 */
// Served by Tally at /t.js. On a merchant's landing page it keeps the click ID from the URL
// first-party (localStorage and a cookie on the merchant's own site); on the thank-you page
// tally.convert({...}) reports the conversion to the Tally that served it. It never throws
// into the page: if Tally is down or blocked, calls resolve to {ok: false} and queued calls
// (window.tallyq) simply wait. Configure with data- attributes on the script element:
//   data-params        click ID parameters to read, comma-separated
//   data-days          days to keep the click ID, counted from the click (default 30)
//   data-cookie        name of the first-party cookie and storage key (default _tally_cid)
//   data-cookie-domain Domain of that cookie (default: the page's host)
(function (w, d) {
  "use strict";
  if (w.tally && w.tally.version) return;
  var el = d.currentScript;
  function attr(name, dflt) {
    var v = el && el.getAttribute("data-" + name);
    return v === null || v === undefined || v === "" ? dflt : v;
  }
  var base = el && el.src ? el.src.replace(/\/t\.js(?:[?#].*)?$/, "") : "";
  var params = attr("params", "cid,click_id,clickid,transaction_id,subid,cnv_id,tally_cid").split(",");
  var days = Number(attr("days", "30")) || 30;
  var name = attr("cookie", "_tally_cid");
  var domain = attr("cookie-domain", "");
  var ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
  var CLICK_ID = /^[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$/;
  var FIELDS = ["offer", "goal", "txid", "amount", "currency", "coupon", "status", "sub1", "sub2", "sub3", "sub4", "sub5"];

  function decode(s) {
    try {
      return decodeURIComponent(s.replace(/\+/g, " "));
    } catch (e) {
      return "";
    }
  }

  // A click ID's first 48 bits are the click's time in milliseconds: the ID is kept for
  // `days` from the click, not from this page view.
  function clickTime(id) {
    var t = 0;
    for (var i = 0; i < 10; i++) {
      var v = ALPHABET.indexOf(id.charAt(i).toUpperCase());
      if (v < 0) return 0;
      t = t * 32 + v;
    }
    return t;
  }

  function fromUrl() {
    var pairs = w.location.search.replace(/^\?/, "").split("&");
    for (var j = 0; j < params.length; j++) {
      for (var i = 0; i < pairs.length; i++) {
        var at = pairs[i].indexOf("=");
        if (at < 1 || decode(pairs[i].slice(0, at)) !== params[j]) continue;
        var v = decode(pairs[i].slice(at + 1));
        if (CLICK_ID.test(v)) return v;
      }
    }
    return null;
  }

  function save(id) {
    var now = new Date().getTime();
    var expires = (clickTime(id) || now) + days * 864e5;
    if (expires <= now) return;
    try {
      w.localStorage.setItem(name, JSON.stringify({ id: id, expires: expires }));
    } catch (e) {}
    try {
      d.cookie = name + "=" + id + "; Expires=" + new Date(expires).toUTCString() + "; Path=/; SameSite=Lax" +
        (domain ? "; Domain=" + domain : "") + (w.location.protocol === "https:" ? "; Secure" : "");
    } catch (e) {}
  }

  // The newest click ID still inside its days: from storage, else from the cookie.
  function clickId() {
    var now = new Date().getTime();
    try {
      var s = JSON.parse(w.localStorage.getItem(name) || "null");
      if (s && s.expires > now && CLICK_ID.test(s.id)) return s.id;
    } catch (e) {}
    try {
      var m = d.cookie.match(new RegExp("(?:^|;\\s*)" + name + "=([^;]+)"));
      if (m && CLICK_ID.test(m[1])) return m[1];
    } catch (e) {}
    return null;
  }

  function done(result) {
    return typeof Promise === "function" ? Promise.resolve(result) : result;
  }

  // Reports a conversion: {offer, goal, txid, amount, currency, coupon, status, sub1..sub5,
  // cid}; offer and goal may be left out when the click knows them. Resolves (never rejects)
  // to {ok, status}, and calls `callback` with it if one is given (for queued calls). One
  // transport only, so a report is never sent twice: fetch with keepalive (its answer is
  // read), else sendBeacon, else an image.
  function convert(c, callback) {
    var p = send(c);
    if (typeof callback === "function") {
      if (p && typeof p.then === "function") p.then(callback);
      else callback(p);
    }
    return p;
  }

  function send(c) {
    try {
      c = c || {};
      var body = [];
      var cid = c.cid || clickId();
      if (cid) body.push("cid=" + encodeURIComponent(cid));
      for (var i = 0; i < FIELDS.length; i++) {
        var v = c[FIELDS[i]];
        if (v !== undefined && v !== null && v !== "") body.push(FIELDS[i] + "=" + encodeURIComponent(String(v)));
      }
      var data = body.join("&");
      if (!base) return done({ ok: false, status: "no_endpoint" });
      // A reload of the thank-you page must not report its sale again. With a txid Tally
      // answers the repeat as a duplicate and pays once; without one it cannot tell, so the
      // tag sends the same report from the same page once per tab.
      if (!c.txid) {
        var seen = "tally:sent:" + w.location.pathname + w.location.search + ":" + data;
        try {
          if (w.sessionStorage.getItem(seen)) return done({ ok: true, status: "already_sent" });
          w.sessionStorage.setItem(seen, "1");
        } catch (e) {}
      }
      if (typeof w.fetch === "function") {
        return w
          .fetch(base + "/t/convert", {
            method: "POST",
            body: data,
            headers: { "Content-Type": "application/x-www-form-urlencoded" },
            credentials: "include",
            keepalive: true,
            mode: "cors"
          })
          .then(function (r) {
            return r.json().then(function (j) {
              return { ok: r.ok, status: j.status || j.error || "" };
            });
          })
          .catch(function () {
            return { ok: false, status: "unreachable" };
          });
      }
      var blob = typeof Blob === "function" ? new Blob([data], { type: "application/x-www-form-urlencoded" }) : data;
      if (w.navigator && typeof w.navigator.sendBeacon === "function" && w.navigator.sendBeacon(base + "/t/convert", blob)) {
        return done({ ok: true, status: "sent" });
      }
      new Image(1, 1).src = base + "/px.gif?" + data;
      return done({ ok: true, status: "sent" });
    } catch (e) {
      return done({ ok: false, status: "error" });
    }
  }

  var api = { version: 1, convert: convert, clickId: clickId };
  function run(cmd) {
    try {
      if (cmd && typeof api[cmd[0]] === "function") api[cmd[0]].apply(null, Array.prototype.slice.call(cmd, 1));
    } catch (e) {}
  }
  try {
    var landed = fromUrl();
    if (landed) save(landed);
  } catch (e) {}
  var queued = w.tallyq;
  w.tally = api;
  w.tallyq = { push: run };
  if (queued && queued.length) for (var i = 0; i < queued.length; i++) run(queued[i]);
})(window, document);

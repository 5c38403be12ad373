#!/usr/bin/env node
// Launcher for the Cosmos-protocol test server (@vercel/cosmosdb-server 1.0.1).
//
// Why a launcher instead of the package's CLI (see shared/design/cosmos-test-server.md):
// the CLI serves an expired certificate without subject alternative names and closes the
// connection after every response. Here we
//   - generate our own certificate (CN=localhost, SAN DNS:localhost + IP:127.0.0.1, CA:FALSE)
//     per start,
//   - turn keep-alive on,
//   - listen on 127.0.0.1 (or --host ADDR) with port 0 (or --port N) and write DIR/server.json
//     once listening,
//   - patch four protocol bugs so the official Rust SDK works against it:
//       1. /pkranges answers a numeric "id": 0; real Cosmos answers the string "0";
//       2. a query sent to one partition-key range without
//          x-ms-documentdb-query-enablecrosspartition is rejected with 400;
//       3. reading a missing document answers 500 instead of 404;
//       4. _rid values are plain standard base64 and so may contain "/" (the 63rd database
//          gets "gAA/AA=="); real Cosmos writes "-" in place of "/", and the SDK rejects a
//          rid containing "/" (opening such a container fails with 500/20020);
//   - offer a small fault-injection admin endpoint (/_faults) so client retry behaviour can be
//     tested against this real server (429 with x-ms-retry-after-ms, 503, dropped connections).
//   - serve a real incremental change feed (the package's is a stub: first page once, then 304
//     forever), latest-version mode, so change-feed consumers can be tested: see "change feed".
//
// Usage: node launch.js --state-dir DIR [--port N] [--host ADDR] [--cert-name DNS]
//   --host 0.0.0.0 and --cert-name NAME are for a container (deploy/compose.yaml): other
//   containers reach it by its service name, which the certificate must then name too.
// Exits 0 on SIGTERM/SIGINT after closing the listener.
"use strict";

const fs = require("fs");
const path = require("path");
const { execFileSync } = require("child_process");

function parseArgs(argv) {
  const args = { stateDir: null, port: 0, host: "127.0.0.1", certNames: [] };
  for (let i = 0; i < argv.length; i += 1) {
    const a = argv[i];
    if (a === "--state-dir") args.stateDir = argv[++i];
    else if (a === "--port") args.port = Number.parseInt(argv[++i], 10);
    else if (a === "--host") args.host = argv[++i];
    else if (a === "--cert-name") args.certNames.push(argv[++i]);
    else throw new Error(`unknown argument: ${a}`);
  }
  if (!args.stateDir) throw new Error("--state-dir DIR is required");
  if (!args.certNames.every(n => /^[A-Za-z0-9.-]+$/.test(n))) {
    throw new Error("--cert-name must be a DNS name");
  }
  if (!Number.isInteger(args.port) || args.port < 0 || args.port > 65535) {
    throw new Error("--port must be an integer between 0 and 65535");
  }
  return args;
}

function makeCertificate(stateDir, certNames) {
  const cert = path.join(stateDir, "cert.pem");
  const key = path.join(stateDir, "key.pem");
  execFileSync(
    "openssl",
    [
      "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
      "-subj", "/CN=localhost",
      "-addext", `subjectAltName=${["DNS:localhost", "IP:127.0.0.1", ...certNames.map(n => `DNS:${n}`)].join(",")}`,
      // openssl marks a self-signed certificate CA:TRUE by default; rustls (webpki) then
      // refuses it as a server certificate (CaUsedAsEndEntity). A self-signed leaf trusted
      // directly as its own anchor is fine.
      "-addext", "basicConstraints=critical,CA:FALSE",
      "-addext", "extendedKeyUsage=serverAuth",
      "-keyout", key, "-out", cert,
    ],
    { stdio: ["ignore", "ignore", "pipe"] },
  );
  return { cert, key };
}

// --- protocol patches -------------------------------------------------------------------
// The package's router captures each handler's `default` export when lib/routes.js is first
// loaded, so the handler modules are patched *before* lib/index.js (which loads routes) is
// required.
const pkgLib = path.join(__dirname, "node_modules", "@vercel", "cosmosdb-server", "lib");

function patchHandlers() {
  // 4. Cosmos rid alphabet. Every rid the package mints (account/databases.js, collections.js,
  // documents.js, partition-key-ranges.js, user-defined-functions.js) goes through
  // ResourceId.toString() -> ResourceId.toBase64String(), and every rid it parses back (the
  // parent rid when minting a child) through ResourceId.fromBase64String(). Real Cosmos
  // encodes rids as standard base64 with "-" substituted for "/" ("+" and "=" stay), which is
  // what azure_data_cosmos_driver's decode_rid expects: it rejects any rid containing "/"
  // because rids are put into URL paths verbatim. The package emits "/" (whenever a 6-bit
  // group is 63, e.g. database counter 63 -> "gAA/AA=="), and its decoder replaces only the
  // first "-". Patch both statics on the class; callers reach them as ResourceId.x(...), so
  // the patched functions are the ones used. Stored keys, _self links and URLs all carry the
  // same "-" form, so rid-addressed requests still find their resource.
  const resourceId = require(path.join(pkgLib, "account", "resource-id.js")).default;
  resourceId.toBase64String = buffer => buffer.toString("base64").replace(/\//g, "-");
  resourceId.fromBase64String = s => Buffer.from(s.replace(/-/g, "/"), "base64");

  // 1. String partition-key-range ids.
  const pkranges = require(path.join(pkgLib, "handler", "read-partition-key-ranges.js"));
  const readRanges = pkranges.default;
  pkranges.default = async (...args) => {
    const body = await readRanges(...args);
    if (body && Array.isArray(body.PartitionKeyRanges)) {
      for (const range of body.PartitionKeyRanges) {
        if (range && typeof range.id === "number") range.id = String(range.id);
      }
    }
    return body;
  };

  // 2. Per-range queries: the SDK addresses one range via x-ms-documentdb-partitionkeyrangeid
  // without the cross-partition header; real Cosmos accepts that.
  const query = require(path.join(pkgLib, "handler", "query-documents.js"));
  const queryDocuments = query.default;
  query.default = (account, req, res, params) => {
    if (req.headers["x-ms-documentdb-partitionkeyrangeid"] !== undefined
      && req.headers["x-ms-documentdb-query-enablecrosspartition"] === undefined) {
      req.headers["x-ms-documentdb-query-enablecrosspartition"] = "true";
    }
    return queryDocuments(account, req, res, params);
  };

  // 3. Missing document -> 404. The original dereferences the missing document while checking
  // partition-key components and throws (-> 500); on a throw, answer what a plain read says.
  const readDoc = require(path.join(pkgLib, "handler", "read-document.js"));
  const ops = require(path.join(pkgLib, "handler", "_document-operations.js"));
  const partitionFromHeader = require(path.join(pkgLib, "utils", "get-partition-from-header.js"));
  const readDocument = readDoc.default;
  readDoc.default = (account, req, res, params) => {
    try {
      return readDocument(account, req, res, params);
    } catch (err) {
      const collection = account.database(params.dbId).collection(params.collId);
      const result = ops.readOperation(collection, {
        partitionKey: partitionFromHeader.default(req),
        id: params.docId,
      });
      if (result.statusCode === 404) {
        res.statusCode = 404;
        return result.body;
      }
      throw err;
    }
  };
}

// --- fault injection ----------------------------------------------------------------------
// Rules are matched in creation order against every non-admin request. Tests give each rule a
// path fragment unique to their own database, so parallel tests do not see each other's faults.
//   POST   /_faults      {"pathContains": "/dbs/x/", "method": "GET"?, "count": N,
//                         "header": {"a-im": "Incremental feed"}?,
//                         "action": "respond"|"drop"|"hang", "status": 429, "retryAfterMs": 10?,
//                         "subStatus": 3200?}  -> {"id": ...}
// "header" (optional) matches only requests carrying each named header with that value (names
// and values compared case-insensitively). A "respond" with status 304 answers like a change
// feed that has nothing new: the request's own If-None-Match (its continuation) comes back as
// the etag ("0" when it had none, or `*`), so `{"header": {"a-im": "Incremental feed"},
// "action": "respond", "status": 304}` freezes a container's change feed while its documents
// keep changing (a feed that does not move).
//   GET    /_faults/ID   -> the rule with its "hits" counter
//   DELETE /_faults/ID   -> removes the rule (and closes the connections it holds)
// "hang" holds a matching request without answering (a Cosmos that stops responding), until
// the rule is deleted or the client gives up.
const faults = new Map();
const hanging = new Map(); // rule id -> sockets held by a "hang" rule
let nextFaultId = 1;

function readJson(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on("data", c => chunks.push(c));
    req.on("end", () => {
      try {
        resolve(chunks.length ? JSON.parse(Buffer.concat(chunks).toString("utf8")) : {});
      } catch (err) {
        reject(err);
      }
    });
    req.on("error", reject);
  });
}

function sendJson(res, status, body) {
  res.statusCode = status;
  res.setHeader("content-type", "application/json");
  res.end(JSON.stringify(body));
}

async function handleFaultAdmin(req, res) {
  const id = req.url.split("/")[2];
  if (req.method === "POST" && !id) {
    const rule = await readJson(req);
    if (typeof rule.pathContains !== "string" || !rule.pathContains) {
      return sendJson(res, 400, { message: "pathContains must be a non-empty string" });
    }
    if (!["respond", "drop", "hang"].includes(rule.action)) {
      return sendJson(res, 400, { message: "action must be respond, drop or hang" });
    }
    if (!Number.isInteger(rule.count) || rule.count < 1) {
      return sendJson(res, 400, { message: "count must be a positive integer" });
    }
    if (rule.header !== undefined && (typeof rule.header !== "object" || rule.header === null
        || Object.values(rule.header).some(v => typeof v !== "string"))) {
      return sendJson(res, 400, { message: "header must map header names to string values" });
    }
    const stored = { ...rule, id: String(nextFaultId++), hits: 0 };
    faults.set(stored.id, stored);
    return sendJson(res, 201, stored);
  }
  if (req.method === "GET" && id && faults.has(id)) return sendJson(res, 200, faults.get(id));
  if (req.method === "DELETE" && id && faults.delete(id)) {
    for (const socket of hanging.get(id) || []) socket.destroy();
    hanging.delete(id);
    return sendJson(res, 200, {});
  }
  return sendJson(res, 404, { message: "no such fault rule" });
}

// Returns true when a fault rule consumed the request.
function injectFault(req, res) {
  for (const rule of faults.values()) {
    if (rule.hits >= rule.count) continue;
    if (!req.url.includes(rule.pathContains)) continue;
    if (rule.method && rule.method !== req.method) continue;
    if (rule.header && !Object.entries(rule.header).every(([name, value]) => {
      const sent = singleHeader(req, name.toLowerCase());
      return sent !== undefined && sent !== null && sent.toLowerCase() === value.toLowerCase();
    })) continue;
    rule.hits += 1;
    if (rule.action === "drop") {
      req.socket.destroy();
      return true;
    }
    if (rule.action === "hang") {
      if (!hanging.has(rule.id)) hanging.set(rule.id, []);
      hanging.get(rule.id).push(req.socket);
      req.resume();
      return true;
    }
    if (rule.status === 304) {
      // nothing new after the client's continuation: the same continuation comes back
      const continuation = singleHeader(req, "if-none-match");
      const etag = continuation && continuation !== "*" ? continuation : '"0"';
      sendFeed(req, res, 304, etag, null);
      return true;
    }
    res.statusCode = rule.status || 503;
    res.setHeader("content-type", "application/json");
    res.setHeader("x-ms-activity-id", "00000000-0000-0000-0000-000000000000");
    if (rule.retryAfterMs !== undefined) res.setHeader("x-ms-retry-after-ms", String(rule.retryAfterMs));
    if (rule.subStatus !== undefined) res.setHeader("x-ms-substatus", String(rule.subStatus));
    // Drain the request body first so the keep-alive connection stays usable.
    req.resume();
    req.on("end", () => res.end(JSON.stringify({ code: "Injected", message: "injected fault" })));
    return true;
  }
  return false;
}

// --- change feed (latest-version mode) -------------------------------------------------------
// The package answers `A-IM: Incremental feed` with its plain document listing once and 304
// forever after (a stub in its generic response code: any If-None-Match turns a 200 into 304
// with etag "1"). We serve the feed ourselves, ahead of the package's listener, the way
// azure_data_cosmos 1.0 reads it (driver: CosmosOperation::change_feed,
// Request::handle_change_feed_response, OperationOverrides::apply_headers):
//   GET /dbs/{db}/colls/{coll}/docs  with  a-im: Incremental Feed
//   - no If-None-Match: start from the beginning; If-None-Match: * : start from now;
//     If-None-Match: <etag of an earlier answer>: continue after it;
//     If-Modified-Since (start from a point in time, no continuation yet): only documents
//     whose _ts is at or after it;
//   - x-ms-max-item-count: page size (absent or -1: 100, as the service decides);
//   - x-ms-documentdb-partitionkey: only that logical partition (FeedScope::partition);
//     x-ms-documentdb-partitionkeyrangeid / EPK headers are accepted and ignore (one range);
//   - answer 200 {"Documents": [...], "_count": n} with the continuation in `etag`, or 304
//     with the same (or a further, when only superseded entries lay ahead) continuation and
//     no documents when nothing changed after it;
//   - x-ms-cosmos-changefeed-wire-format-version present: each item is the envelope
//     {"current": doc, "metadata": {"lsn", "crts"}} the SDK unwraps; otherwise the bare doc.
// Each document appears once, at its latest version, in the order of its last modification:
// every write path of the package (create, replace, upsert, patch, batch) ends in
// Documents#_set, which we wrap to stamp a per-container modification counter (the "lsn";
// documents carry it as `_lsn` in the feed, as real Cosmos documents do). Deletes are not in a
// latest-version feed, as on the real service. The continuation is the counter, quoted like
// an ETag ("\"42\""). It is per container, so a container deleted and re-created starts again
// at 0 and a stale continuation from before sees nothing until it is passed.
const DEFAULT_FEED_PAGE = 100;
const FEED_PATH = /^\/dbs\/([^/]+)\/colls\/([^/]+)\/docs$/;
let cosmosAccount = null;

function patchAccountCapture() {
  // The package creates its Account inside a closure on "listening"; index.js looks up
  // account/index.js's `default` export at that moment, so a subclass installed before
  // listen() is the one constructed, and hands us the instance the handlers use.
  const accountModule = require(path.join(pkgLib, "account", "index.js"));
  const Account = accountModule.default;
  accountModule.default = class CapturedAccount extends Account {
    constructor(...args) {
      super(...args);
      cosmosAccount = this;
    }
  };
}

function feedState(documents) {
  if (!documents._feed) {
    // log: [{lsn, rid}] in lsn order (append-only; an entry is live while latest.get(rid) is
    // its lsn). latest: rid -> lsn of the document's current version.
    documents._feed = { counter: 0, log: [], latest: new Map() };
  }
  return documents._feed;
}

function patchModificationTracking() {
  const Documents = require(path.join(pkgLib, "account", "documents.js")).default;
  const Items = require(path.join(pkgLib, "account", "items.js")).default;
  Documents.prototype._set = function trackedSet(data) {
    const stored = Items.prototype._set.call(this, data);
    const feed = feedState(this);
    feed.counter += 1;
    feed.latest.set(stored._rid, feed.counter);
    feed.log.push({ lsn: feed.counter, rid: stored._rid });
    // Superseded entries are skipped when read; drop them once they dominate the log so it
    // stays proportional to the live documents.
    if (feed.log.length > 1024 && feed.log.length > 2 * feed.latest.size) {
      feed.log = feed.log.filter(e => feed.latest.get(e.rid) === e.lsn);
    }
    return stored;
  };
  Documents.prototype.delete = function trackedDelete(idOrRid, partition) {
    const data = this._item("/id", idOrRid, partition).read();
    Items.prototype.delete.call(this, idOrRid, partition);
    // A replace deletes then re-sets; the _set that follows records the new version.
    if (data) feedState(this).latest.delete(data._rid);
  };
}

function parseFeedContinuation(value) {
  const n = Number.parseInt(String(value).replace(/^W\//, "").replace(/"/g, ""), 10);
  return Number.isInteger(n) && n >= 0 ? n : null;
}

function singleHeader(req, name) {
  const v = req.headers[name];
  return Array.isArray(v) ? v[0] : v;
}

function isIncrementalFeed(req) {
  if (req.method !== "GET") return false;
  const aim = singleHeader(req, "a-im");
  if (!aim || aim.toLowerCase() !== "incremental feed") return false;
  let pathname = req.url.split("?")[0];
  if (pathname.startsWith("//")) pathname = pathname.slice(1);
  while (pathname.length > 1 && pathname.endsWith("/")) pathname = pathname.slice(0, -1);
  return FEED_PATH.test(pathname) ? pathname : false;
}

function sendFeed(req, res, status, etag, body) {
  res.statusCode = status;
  res.setHeader("content-type", "application/json");
  res.setHeader("connection", "keep-alive");
  res.setHeader("x-ms-activity-id", require("crypto").randomUUID());
  res.setHeader("x-ms-request-charge", "1");
  if (etag !== null) res.setHeader("etag", etag);
  if (body && Array.isArray(body.Documents)) res.setHeader("x-ms-item-count", String(body._count));
  req.resume();
  res.end(status === 304 ? "" : JSON.stringify(body));
}

// COSMOS_FEED_TRACE=1: log each feed request's change-feed headers to the server log (to see
// what a client sends). Partition-key values are never logged (they may be emails).
const FEED_TRACE_HEADERS = [
  "a-im", "if-none-match", "if-modified-since", "x-ms-max-item-count",
  "x-ms-documentdb-partitionkeyrangeid", "x-ms-start-epk", "x-ms-end-epk",
  "x-ms-read-key-type", "x-ms-cosmos-changefeed-wire-format-version",
];

function traceFeedRequest(req) {
  const seen = {};
  for (const name of FEED_TRACE_HEADERS) {
    if (req.headers[name] !== undefined) seen[name] = req.headers[name];
  }
  if (req.headers["x-ms-documentdb-partitionkey"] !== undefined) seen["x-ms-documentdb-partitionkey"] = "(set)";
  process.stdout.write(`change feed request ${JSON.stringify(seen)}\n`);
}

function handleChangeFeed(req, res, pathname) {
  if (process.env.COSMOS_FEED_TRACE === "1") traceFeedRequest(req);
  const [, dbId, collId] = FEED_PATH.exec(pathname).map(decodeURIComponent);
  const collection = cosmosAccount && cosmosAccount.database(dbId).collection(collId);
  if (!collection || !collection.read()) {
    return sendFeed(req, res, 404, null, { code: "NotFound", message: "Resource Not Found" });
  }
  const documents = collection.documents;
  const feed = feedState(documents);

  const ifNoneMatch = singleHeader(req, "if-none-match");
  let after;
  let since = null;
  if (ifNoneMatch === undefined || ifNoneMatch === "") {
    after = 0; // start from the beginning
    const ims = singleHeader(req, "if-modified-since");
    if (ims) {
      const t = Date.parse(ims);
      if (Number.isNaN(t)) {
        return sendFeed(req, res, 400, null, { code: "BadRequest", message: "invalid If-Modified-Since" });
      }
      since = Math.floor(t / 1000);
    }
  } else if (ifNoneMatch.trim() === "*") {
    after = feed.counter; // start from now
  } else {
    after = parseFeedContinuation(ifNoneMatch);
    if (after === null) {
      return sendFeed(req, res, 400, null, { code: "BadRequest", message: "invalid change feed continuation" });
    }
  }

  const rawMax = Number.parseInt(singleHeader(req, "x-ms-max-item-count") || "", 10);
  const limit = Number.isInteger(rawMax) && rawMax > 0 ? rawMax : DEFAULT_FEED_PAGE;

  let partition;
  const pkHeader = singleHeader(req, "x-ms-documentdb-partitionkey");
  if (pkHeader !== undefined) {
    try {
      const parsed = JSON.parse(pkHeader);
      partition = Array.isArray(parsed) ? parsed[0] : parsed;
    } catch (err) {
      return sendFeed(req, res, 400, null, { code: "BadRequest", message: "invalid partition key header" });
    }
  }
  const enveloped = singleHeader(req, "x-ms-cosmos-changefeed-wire-format-version") !== undefined;

  // First log entry after the continuation (the log is sorted by lsn).
  let lo = 0;
  let hi = feed.log.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (feed.log[mid].lsn <= after) lo = mid + 1;
    else hi = mid;
  }
  const items = [];
  let position = after;
  for (let i = lo; i < feed.log.length && items.length < limit; i += 1) {
    const entry = feed.log[i];
    position = entry.lsn;
    if (feed.latest.get(entry.rid) !== entry.lsn) continue; // superseded or deleted
    const item = documents._data.get(entry.rid);
    const doc = item && item.read();
    if (!doc) continue;
    if (partition !== undefined && documents._getPartition(doc) !== partition) continue;
    if (since !== null && !(doc._ts >= since)) continue;
    const current = { ...doc, _lsn: entry.lsn };
    items.push(enveloped ? { current, metadata: { lsn: entry.lsn, crts: doc._ts } } : current);
  }
  // Everything up to the counter was scanned when the page is not full: the continuation
  // may move past trailing superseded entries.
  if (items.length < limit) position = Math.max(after, feed.counter);
  const etag = `"${position}"`;
  if (items.length === 0) return sendFeed(req, res, 304, etag, null);
  return sendFeed(req, res, 200, etag, { _rid: collection.read()._rid, Documents: items, _count: items.length });
}

// --- main -----------------------------------------------------------------------------------
function main() {
  const args = parseArgs(process.argv.slice(2));
  fs.mkdirSync(args.stateDir, { recursive: true });
  const stateFile = path.join(args.stateDir, "server.json");
  fs.rmSync(stateFile, { force: true });
  const { cert, key } = makeCertificate(args.stateDir, args.certNames);

  patchHandlers();
  patchAccountCapture();
  patchModificationTracking();
  const { createHttpsServer } = require(pkgLib);
  const server = createHttpsServer({
    cert: fs.readFileSync(cert),
    key: fs.readFileSync(key),
    keepAlive: true,
  });
  // Route fault admin and injected faults before the package's own request listener.
  const [cosmosListener] = server.listeners("request");
  server.removeAllListeners("request");
  server.on("request", (req, res) => {
    if (req.url === "/_faults" || req.url.startsWith("/_faults/")) {
      handleFaultAdmin(req, res).catch(err => sendJson(res, 400, { message: err.message }));
      return;
    }
    if (injectFault(req, res)) return;
    const feedPath = isIncrementalFeed(req);
    if (feedPath) {
      try {
        handleChangeFeed(req, res, feedPath);
      } catch (err) {
        process.stderr.write(`change feed request failed: ${err.message}\n`);
        if (!res.headersSent) sendFeed(req, res, 500, null, { code: "InternalServerError", message: "change feed failed" });
      }
      return;
    }
    cosmosListener(req, res);
  });
  // Keep idle connections longer than Node's 5 s default so a client's pooled connection is
  // not closed under it between pages.
  server.keepAliveTimeout = 120_000;
  server.headersTimeout = 125_000;

  server.listen(args.port, args.host, () => {
    const { port } = server.address();
    // a wildcard address is not one to connect to; loopback reaches it from the same host
    const host = args.host === "0.0.0.0" || args.host === "::" ? "127.0.0.1" : args.host;
    const state = { endpoint: `https://${host}:${port}/`, cert, pid: process.pid };
    // Write atomically: waiters poll for the file and must never read half of it.
    fs.writeFileSync(`${stateFile}.tmp`, JSON.stringify(state));
    fs.renameSync(`${stateFile}.tmp`, stateFile);
    process.stdout.write(`cosmos test server listening on ${state.endpoint}\n`);
  });

  const stop = () => {
    fs.rmSync(stateFile, { force: true });
    server.close(() => process.exit(0));
    server.closeAllConnections();
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

try {
  main();
} catch (err) {
  process.stderr.write(`cosmos test server failed to start: ${err.message}\n`);
  process.exit(1);
}

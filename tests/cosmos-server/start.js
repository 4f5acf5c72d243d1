#!/usr/bin/env node
// Test launcher for @vercel/cosmosdb-server (pinned in package.json).
//
//   node tests/cosmos-server/start.js [--port N] [--request-log FILE] [--ignore-stdin]
//
// Serves the Cosmos DB REST protocol over PLAIN HTTP on 127.0.0.1 (keep-alive on). When it is
// listening it prints exactly one line to stdout:
//
//   {"endpoint":"http://127.0.0.1:PORT/"}
//
// and nothing else on stdout afterwards (diagnostics go to stderr). It exits with status 0 on
// SIGTERM, SIGINT, SIGHUP, or when its stdin reaches EOF, so a test that spawns it with a piped
// stdin and keeps the pipe open cannot leak it: when the test process dies the pipe closes and
// the server goes away. Pass --ignore-stdin to disable the stdin watch (for running it by hand
// with stdin on /dev/null).
//
// The server is patched in-process (no proxy hop, so the request log sees exactly what the
// client sent) to work around four bugs of the package:
//   1. partition-key ranges were stored with the number 0 as "id" (and "ridPrefix"); the Rust
//      driver deserializes the id as a string -> the range ids are stored as strings;
//   2. GET of a missing document threw a TypeError (-> 500) unless the request carried
//      x-ms-documentdb-query-enablecrosspartition: true -> a missing document answers 404
//      {"code":"NotFound"};
//   3. the account metadata (GET /) advertises https:// locations even over plain HTTP ->
//      they are rewritten to the real http://127.0.0.1:PORT/.
//   4. a query scoped to a partition key range (x-ms-documentdb-partitionkeyrangeid, how the
//      Rust driver runs cross-partition queries) was refused as "missing partition keys" ->
//      the range header counts as x-ms-documentdb-query-enablecrosspartition.
// Each patch asserts the shape of the code it replaces, so a different package version fails
// loudly at start instead of misbehaving.
//
// --request-log FILE appends one JSON line per client request, written synchronously just
// before the response is sent (so it is on disk when the client sees the answer):
//   {"ts":"2024-01-01T00:00:00.000Z","epoch_ms":1704067200000,"method":"GET",
//    "path":"/dbs/ingestion/colls/users/docs/u1","resource":"docs","op":"read",
//    "status":200,"partition_key":"[\"u1\"]","if_match":null,"conn":1,"dur_ms":0.4}
// resource: "account" | "dbs" | "colls" | "docs" | "pkranges" | "udfs" | "other";
// op: read | list | create | upsert | replace | delete | patch | query | batch.
// status is the HTTP status sent (null if the client went away first); conn numbers the TCP
// connections in accept order (keep-alive reuse shows as a repeated number); dur_ms is the
// server-side handling time.
"use strict";

const fs = require("fs");
const path = require("path");

const PKG = "@vercel/cosmosdb-server";
const EXPECTED_VERSION = "1.0.1";

function fail(msg) {
  process.stderr.write(`cosmos-server launcher: ${msg}\n`);
  process.exit(2);
}

// ---------- arguments ----------
function parseArgs(argv) {
  const args = { port: 0, requestLog: null, ignoreStdin: false };
  for (let i = 0; i < argv.length; i += 1) {
    const a = argv[i];
    const eq = a.indexOf("=");
    const key = a.startsWith("--") && eq > 0 ? a.slice(0, eq) : a;
    const inline = a.startsWith("--") && eq > 0 ? a.slice(eq + 1) : undefined;
    const value = () => {
      if (inline !== undefined) return inline;
      i += 1;
      if (i >= argv.length) fail(`missing value for ${key}`);
      return argv[i];
    };
    switch (key) {
      case "--port":
      case "-p": {
        const v = value();
        if (!/^\d+$/.test(v) || Number(v) > 65535) fail(`invalid --port: ${v}`);
        args.port = Number(v);
        break;
      }
      case "--request-log":
        args.requestLog = path.resolve(value());
        break;
      case "--ignore-stdin":
        args.ignoreStdin = true;
        break;
      case "-h":
      case "--help":
        process.stderr.write(
          "usage: node start.js [--port N (0 = any free port)] [--request-log FILE] [--ignore-stdin]\n"
        );
        process.exit(0);
        break;
      default:
        fail(`unknown argument: ${a}`);
    }
  }
  return args;
}

const args = parseArgs(process.argv.slice(2));

// ---------- lifecycle (installed first, so a signal during start-up also exits cleanly) ----------
let server = null;
let logFd = null;
let shuttingDown = false;
function shutdown(reason) {
  if (shuttingDown) return;
  shuttingDown = true;
  if (process.env.COSMOS_SERVER_DEBUG) process.stderr.write(`cosmos-server launcher: exiting (${reason})\n`);
  if (server) {
    try {
      server.close();
      server.closeAllConnections();
    } catch (_) {
      /* not listening yet */
    }
  }
  if (logFd !== null) {
    try {
      fs.closeSync(logFd);
    } catch (_) {
      /* ignore */
    }
  }
  process.exit(0);
}
for (const sig of ["SIGTERM", "SIGINT", "SIGHUP"]) process.on(sig, () => shutdown(sig));
if (!args.ignoreStdin) {
  process.stdin.on("end", () => shutdown("stdin EOF"));
  process.stdin.on("close", () => shutdown("stdin closed"));
  process.stdin.on("error", () => shutdown("stdin error"));
  process.stdin.on("data", () => {}); // discard; flowing mode so EOF is seen
  process.stdin.resume();
}

// ---------- load and patch the package (patches must run BEFORE lib/index -> lib/routes) ----------
const pkgJson = require(`${PKG}/package.json`);
if (pkgJson.version !== EXPECTED_VERSION) {
  fail(`${PKG} is ${pkgJson.version}, the patches were written for ${EXPECTED_VERSION}`);
}
const lib = (p) => require(`${PKG}/lib/${p}`);

// Bug 1: partition-key-range id stored as the number 0.
const PartitionKeyRanges = lib("account/partition-key-ranges").default;
if (typeof PartitionKeyRanges !== "function" || typeof PartitionKeyRanges.prototype.create !== "function") {
  fail("unexpected shape of account/partition-key-ranges");
}
const originalPkrCreate = PartitionKeyRanges.prototype.create;
PartitionKeyRanges.prototype.create = function createWithStringIds(data) {
  const fixed = { ...data };
  if (typeof fixed.id === "number") fixed.id = String(fixed.id);
  if (typeof fixed.ridPrefix === "number") fixed.ridPrefix = String(fixed.ridPrefix);
  return originalPkrCreate.call(this, fixed);
};

// Bug 2: GET of a missing document -> TypeError -> 500.
const readDocumentModule = lib("handler/read-document");
const { parsePartitionKey } = lib("utils/get-partition-from-header");
const originalReadDocument = readDocumentModule.default;
if (typeof originalReadDocument !== "function" || typeof parsePartitionKey !== "function") {
  fail("unexpected shape of handler/read-document");
}
const NOT_FOUND = {
  code: "NotFound",
  message: "Entity with the specified id does not exist in the system.",
};
readDocumentModule.default = function readDocumentOr404(account, req, res, params) {
  const collection = account.database(params.dbId).collection(params.collId);
  if (collection.read()) {
    let header = req.headers["x-ms-documentdb-partitionkey"];
    if (Array.isArray(header)) [header] = header;
    let exists = true;
    try {
      const pk = parsePartitionKey(header === undefined ? "[{}]" : header, params.docId);
      exists = Boolean(collection.document(params.docId, pk).read());
    } catch (_) {
      exists = true; // malformed partition key: let the original handler answer it
    }
    if (!exists) {
      res.statusCode = 404;
      return { ...NOT_FOUND };
    }
  }
  return originalReadDocument(account, req, res, params);
};

// Bug 3: account metadata advertises https:// over plain HTTP.
const readMetaModule = lib("handler/read-meta");
const originalReadMeta = readMetaModule.default;
if (typeof originalReadMeta !== "function") fail("unexpected shape of handler/read-meta");
let publicEndpoint = null; // "http://127.0.0.1:PORT/" once listening
readMetaModule.default = function readMetaHttp(account, req, res, params) {
  const meta = originalReadMeta(account, req, res, params);
  if (!meta || !publicEndpoint) return meta;
  const fixLocations = (locs) =>
    Array.isArray(locs) ? locs.map((l) => ({ ...l, databaseAccountEndpoint: publicEndpoint })) : locs;
  return {
    ...meta,
    writableLocations: fixLocations(meta.writableLocations),
    readableLocations: fixLocations(meta.readableLocations),
  };
};

// Bug 4: a query scoped to a partition key range (x-ms-documentdb-partitionkeyrangeid: how the
// Rust driver runs a cross-partition query, one range at a time, without the cross-partition
// header) was refused with 400 "missing partition keys" -> the range header counts as that
// header. The server keeps one range, so every document is in the range asked for.
const queryDocumentsModule = lib("handler/query-documents");
const originalQueryDocuments = queryDocumentsModule.default;
if (typeof originalQueryDocuments !== "function") fail("unexpected shape of handler/query-documents");
queryDocumentsModule.default = function queryDocumentsInRange(account, req, res, params) {
  if (req.headers["x-ms-documentdb-partitionkeyrangeid"] !== undefined) {
    req.headers["x-ms-documentdb-query-enablecrosspartition"] = "true";
  }
  return originalQueryDocuments(account, req, res, params);
};

// Only now load the server (lib/routes captures the handlers when it is first required).
const { createHttpServer } = require(PKG);
if (lib("routes").default === undefined) fail("unexpected shape of lib/routes");

// ---------- request log ----------
if (args.requestLog) {
  try {
    fs.mkdirSync(path.dirname(args.requestLog), { recursive: true });
    logFd = fs.openSync(args.requestLog, "a");
  } catch (err) {
    fail(`cannot open request log ${args.requestLog}: ${err.message}`);
  }
}

function classify(method, url, headers) {
  let p = (url || "/").split("?")[0];
  while (p.startsWith("//")) p = p.slice(1);
  while (p.length > 1 && p.endsWith("/")) p = p.slice(0, -1);
  const seg = p.split("/").filter(Boolean);
  const resources = ["dbs", "colls", "docs", "pkranges", "udfs"];
  let resource = "other";
  let isItem = false;
  if (seg.length === 0) {
    resource = "account";
    isItem = true;
  } else if (resources.includes(seg[seg.length - 1])) {
    resource = seg[seg.length - 1];
  } else if (seg.length >= 2 && resources.includes(seg[seg.length - 2])) {
    resource = seg[seg.length - 2];
    isItem = true;
  }
  const isTrue = (h) => String(headers[h] || "").toLowerCase() === "true";
  let op;
  switch (method) {
    case "GET":
      op = isItem ? "read" : "list";
      break;
    case "POST":
      if (isTrue("x-ms-documentdb-isquery") || headers["content-type"] === "application/query+json") op = "query";
      else if (isTrue("x-ms-documentdb-is-upsert")) op = "upsert";
      else if (isTrue("x-ms-cosmos-is-batch-request")) op = "batch";
      else op = "create";
      break;
    case "PUT":
      op = "replace";
      break;
    case "DELETE":
      op = "delete";
      break;
    case "PATCH":
      op = "patch";
      break;
    default:
      op = method.toLowerCase();
  }
  return { resource, op };
}

function attachRequestLog(server) {
  if (logFd === null) return;
  let connections = 0;
  const connIds = new WeakMap();
  server.on("connection", (socket) => {
    connections += 1;
    connIds.set(socket, connections);
  });
  server.prependListener("request", (req, res) => {
    const start = process.hrtime.bigint();
    const now = Date.now();
    const { resource, op } = classify(req.method, req.url, req.headers);
    let logged = false;
    const writeLine = (status) => {
      if (logged) return;
      logged = true;
      const line = {
        ts: new Date(now).toISOString(),
        epoch_ms: now,
        method: req.method,
        path: req.url,
        resource,
        op,
        status,
        partition_key: req.headers["x-ms-documentdb-partitionkey"] ?? null,
        if_match: req.headers["if-match"] ?? null,
        conn: connIds.get(req.socket) ?? null,
        dur_ms: Number(process.hrtime.bigint() - start) / 1e6,
      };
      try {
        fs.writeSync(logFd, `${JSON.stringify(line)}\n`);
      } catch (err) {
        process.stderr.write(`cosmos-server launcher: request log write failed: ${err.message}\n`);
      }
    };
    // Written synchronously before the response leaves, so the client never sees an answer
    // whose request is not in the log yet.
    const originalEnd = res.end;
    res.end = function endAndLog(...endArgs) {
      writeLine(res.statusCode);
      return originalEnd.apply(this, endArgs);
    };
    res.on("close", () => writeLine(null)); // client went away before an answer
  });
}

// ---------- server ----------
server = createHttpServer({ keepAlive: true });
// Keep idle connections longer than the client's pool idle timeout (reqwest/hyper: 90 s) so
// the client never reuses a connection the server is closing at the same moment.
server.keepAliveTimeout = 10 * 60 * 1000;
server.headersTimeout = 11 * 60 * 1000;
server.requestTimeout = 0;
attachRequestLog(server);
// The package labels every answer with "content-location: https://...": keep it truthful.
server.prependListener("request", (req, res) => {
  const originalSetHeader = res.setHeader;
  res.setHeader = function setHeaderHttp(name, value) {
    if (typeof value === "string" && String(name).toLowerCase() === "content-location") {
      value = value.replace(/^https:/, "http:");
    }
    return originalSetHeader.call(this, name, value);
  };
});

// stdout may be a pipe the parent stops reading or closes: never die of EPIPE.
process.stdout.on("error", () => {});

server.on("error", (err) => fail(`listen failed: ${err.message}`));
server.listen(args.port, "127.0.0.1", () => {
  const { port } = server.address();
  // A test that puts a proxy in front (to cut the network) has the server advertise the proxy.
  publicEndpoint = process.env.COSMOS_ADVERTISED_ENDPOINT || `http://127.0.0.1:${port}/`;
  process.stdout.write(`${JSON.stringify({ endpoint: `http://127.0.0.1:${port}/` })}\n`);
});

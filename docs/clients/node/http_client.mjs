#!/usr/bin/env node
// A client of definite-agent's local Stream API (POST /v2/stream), with Node's standard library only: over
// the agent's Unix socket, or over TCP ([intake] http_listen).
//
//     node http_client.mjs --unix /run/definite-agent/http.sock --table bronze.events < records.ndjson
//     node http_client.mjs --url http://127.0.0.1:8787 --token "$TOKEN" --table bronze.events < records.ndjson
//
// Records go in gzipped JSON bodies ({"data":[…],"config":{"table":…}}) of up to 1,000 rows and 8 MB (the
// Stream API takes 10 MB a body, counted before compression). A 200 means the rows are durable in the
// agent's spool (header X-Agent-Spooled: true); a 507 (spool full) or 503 (busy, or stopping) is retried
// after Retry-After (or a growing pause), and so is a connection the agent refused or closed (a restart) for
// up to a minute: a request whose answer was lost may have been stored, and is stored again (at least once).
// Any other status stops with the agent's message. Prints "spooled N rows"; exits 0, or 1 with the error
// and the input line to send again from (every row before it is durable).
import http from "node:http";
import { gzipSync } from "node:zlib";
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// `where`: { socketPath } or { host, port }. The agent keeps the connection alive between requests.
function postOnce(where, token, body) {
  const headers = { "Content-Type": "application/json", "Content-Encoding": "gzip", "Content-Length": body.length };
  if (token) headers.Authorization = `Bearer ${token}`;
  return new Promise((resolve, reject) => {
    const request = http.request({ ...where, method: "POST", path: "/v2/stream", headers, agent: keepAlive }, (response) => {
      let text = "";
      response.setEncoding("utf8");
      response.on("data", (chunk) => (text += chunk));
      response.on("end", () => resolve({ status: response.statusCode, retryAfter: response.headers["retry-after"], answer: JSON.parse(text) }));
    });
    request.on("error", reject);
    // No answer for a minute: the rows may or may not be stored (not retried).
    request.setTimeout(60_000, () => request.destroy(Object.assign(new Error("no answer within 60 s; these rows may or may not be stored"), { code: "TIMEOUT" })));
    request.end(body);
  });
}
const keepAlive = new http.Agent({ keepAlive: true, maxSockets: 1 });

// Refused, reset or closed connections (the agent restarts): connect again.
const RECONNECT = new Set(["ENOENT", "ECONNREFUSED", "ECONNRESET", "EPIPE"]);

export async function post(where, token, table, rows, patienceMs = 60_000) {
  const body = gzipSync(JSON.stringify({ data: rows, config: { table } }));
  let pause = 500;
  const deadline = Date.now() + patienceMs;
  while (true) {
    let last;
    try {
      last = await postOnce(where, token, body);
    } catch (error) {
      if (!RECONNECT.has(error.code)) throw error;
      if (Date.now() > deadline) throw new Error(`the agent is unreachable for ${patienceMs / 1000} s (${error.message})`);
      await sleep(pause);
      pause = Math.min(pause * 2, 5_000);
      continue;
    }
    if (last.status === 200) return last.answer;
    if (last.status !== 503 && last.status !== 507) throw new Error(`${last.status}: ${(last.answer.errors || []).join("; ")}`);
    // Nothing of the request was stored; the agent says when to come back.
    await sleep(last.retryAfter ? Number(last.retryAfter) * 1000 : pause);
    pause = Math.min(pause * 2, 10_000);
  }
}

// The rows (with their input line numbers) in requests of at most 1,000 rows and about 8 MB of JSON; a row
// larger than that goes alone (the agent answers 413 if it is over the Stream API's limits).
function* batches(lines, maxRows = 1000, maxBytes = 8_000_000) {
  let batch = [];
  let size = 0;
  for (const [number, row] of lines) {
    const rowBytes = Buffer.byteLength(JSON.stringify(row)) + 2;
    if (batch.length > 0 && (batch.length === maxRows || size + rowBytes > maxBytes)) {
      yield batch;
      batch = [];
      size = 0;
    }
    batch.push([number, row]);
    size += rowBytes;
  }
  if (batch.length > 0) yield batch;
}

const { values } = parseArgs({ options: { unix: { type: "string" }, url: { type: "string" }, token: { type: "string" }, table: { type: "string" } } });
if (!values.table || !!values.unix === !!values.url) {
  console.error("usage: node http_client.mjs (--unix SOCKET | --url http://host:port) [--token T] --table TABLE < records.ndjson");
  process.exit(64);
}
const where = values.unix ? { socketPath: values.unix } : { host: new URL(values.url).hostname, port: Number(new URL(values.url).port || 80) };
const lines = [];
// A byte order mark before the first line (an editor's, on Windows) is not part of it.
for (const [index, line] of readFileSync(0, "utf8").replace(/^\uFEFF/, "").split("\n").entries()) {
  if (line.trim() === "") continue;
  try {
    lines.push([index + 1, JSON.parse(line)]);
  } catch (error) {
    console.error(`error: line ${index + 1} is not JSON (${error.message}); nothing was sent`);
    process.exit(1);
  }
}
let spooled = 0;
for (const batch of batches(lines)) {
  try {
    spooled += (await post(where, values.token, values.table, batch.map(([, row]) => row))).successful_rows;
  } catch (error) {
    keepAlive.destroy();
    console.error(`error: ${error.message}`);
    console.error(`spooled ${spooled} rows before it; send the input again from line ${batch[0][0]}`);
    process.exit(1);
  }
}
keepAlive.destroy();
console.log(`spooled ${spooled} rows`);

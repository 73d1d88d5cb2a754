#!/usr/bin/env node
// A client of definite-agent's local Stream API (POST /v2/stream), with Node's standard library only: over
// the agent's Unix socket, or over TCP ([intake] http_listen).
//
//     node http_client.mjs --unix /run/definite-agent/http.sock --table bronze.events < records.ndjson
//     node http_client.mjs --url http://127.0.0.1:8787 --token "$TOKEN" --table bronze.events < records.ndjson
//
// Records go in gzipped JSON bodies ({"data":[…],"config":{"table":…}}) of up to 1,000 rows. A 200 means the
// rows are durable in the agent's spool (header X-Agent-Spooled: true); a 507 (spool full) or 503 (stopping)
// is retried after Retry-After (or a growing pause); any other status stops with the agent's message.
// Prints "spooled N rows"; exits 0, or 1 with the error.
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
    request.end(body);
  });
}
const keepAlive = new http.Agent({ keepAlive: true, maxSockets: 1 });

export async function post(where, token, table, rows, attempts = 20) {
  const body = gzipSync(JSON.stringify({ data: rows, config: { table } }));
  let pause = 500;
  let last;
  for (let attempt = 0; attempt < attempts; attempt++) {
    last = await postOnce(where, token, body);
    if (last.status === 200) return last.answer;
    if (last.status !== 503 && last.status !== 507) throw new Error(`${last.status}: ${(last.answer.errors || []).join("; ")}`);
    await sleep(last.retryAfter ? Number(last.retryAfter) * 1000 : pause);
    pause = Math.min(pause * 2, 10_000);
  }
  throw new Error(`the agent kept answering ${last.status} (${(last.answer.errors || []).join("; ")})`);
}

const { values } = parseArgs({ options: { unix: { type: "string" }, url: { type: "string" }, token: { type: "string" }, table: { type: "string" } } });
if (!values.table || !!values.unix === !!values.url) {
  console.error("usage: node http_client.mjs (--unix SOCKET | --url http://host:port) [--token T] --table TABLE < records.ndjson");
  process.exit(64);
}
const where = values.unix ? { socketPath: values.unix } : { host: new URL(values.url).hostname, port: Number(new URL(values.url).port || 80) };
const rows = readFileSync(0, "utf8").split("\n").filter((line) => line.trim() !== "").map((line) => JSON.parse(line));
let spooled = 0;
try {
  for (let start = 0; start < rows.length; start += 1000) {
    spooled += (await post(where, values.token, values.table, rows.slice(start, start + 1000))).successful_rows;
  }
  keepAlive.destroy();
  console.log(`spooled ${spooled} rows`);
} catch (error) {
  keepAlive.destroy();
  console.error(`error: ${error.message}`);
  process.exit(1);
}

#!/usr/bin/env node
// A client of definite-agent's line protocol (its Unix stream socket), with Node's standard library only.
//
//     node line_client.mjs /run/definite-agent/agent.sock bronze.events < records.ndjson
//     node line_client.mjs --patience 10 SOCKET TABLE < records.ndjson    # give up after 10 s of silence
//
// Each record goes as one request line with an ack id (its line number in the input). What a client of the
// protocol must do, and this one does:
//
// - Read the replies while writing (here: the socket's 'data' events): the agent stops reading a
//   connection whose replies are not read, so a client that only writes eventually blocks.
// - Match replies by ack id. A line the agent could not read an ack from (over [intake] max_line_bytes, or
//   not JSON) is answered with its line number on the connection instead.
// - When the connection closes (the agent closes it after a line over max_line_bytes; a restart closes it),
//   connect again and send every request that has no answer yet. After a line too long the agent read
//   nothing behind it, so nothing is stored twice; after a restart, a request whose answer was lost may
//   have been stored, and is stored again (at least once).
// - On 507 (the agent's spool is full), 503 busy (it holds as much unfinished input as it keeps) or 503
//   shutting_down, nothing of the record was stored: wait, with a growing pause, and send again.
// - Give up on a connection that answers nothing for a minute (an agent that hangs; `--patience`): its
//   requests go again on a new one, and after a minute without any answer the client stops.
//
// Prints "accepted N, refused M" and each refused record's line and reason on stderr (a line that is not
// JSON is refused here, without sending it); exits 0 when every record is durable, 1 when some were
// refused, 69 when the agent stays unreachable (or silent) for a minute, saying how many records are not
// confirmed.
import net from "node:net";
import { readFileSync } from "node:fs";

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Refusals that store nothing and end by themselves: the record goes again after a pause.
const RETRY_CODES = new Set(["spool_full", "busy", "shutting_down"]);
const mustRetry = (reply) => !reply.ok && (reply.status === 507 || RETRY_CODES.has(reply.code));

// One connection: writes every request, resolves with the answers (ack id → reply) once all came, the
// agent closed the connection, or it answered nothing for `patienceMs`.
function round(path, requests, patienceMs) {
  return new Promise((resolve) => {
    const order = requests.map(([ack]) => ack);
    const answers = new Map();
    let buffer = "";
    const socket = net.createConnection(path);
    const finish = () => {
      socket.destroy();
      resolve(answers);
    };
    socket.setEncoding("utf8");
    socket.setTimeout(patienceMs, finish); // an agent that hangs: these go again on a new connection
    socket.on("connect", () => socket.write(requests.map(([, line]) => line).join("")));
    socket.on("data", (chunk) => {
      buffer += chunk;
      let newline;
      while ((newline = buffer.indexOf("\n")) >= 0) {
        const reply = JSON.parse(buffer.slice(0, newline));
        buffer = buffer.slice(newline + 1);
        // Without an ack the reply names the request's line on this connection (1-based).
        answers.set("ack" in reply ? reply.ack : order[reply.line - 1], reply);
      }
      if (answers.size === order.length) finish();
    });
    socket.on("error", () => {}); // 'close' follows: what was answered before is kept
    socket.on("close", finish);
  });
}

export async function sendRecords(path, table, records, patienceMs = 60_000) {
  const pending = new Map(records.map(([ack, record]) => [ack, JSON.stringify({ data: record, config: { table }, ack }) + "\n"]));
  let accepted = 0;
  const refused = new Map();
  let pause = 500;
  let lastProgress = Date.now();
  while (pending.size > 0) {
    const answers = await round(path, [...pending.entries()], patienceMs);
    let full = false;
    for (const [ack, reply] of answers) {
      if (mustRetry(reply)) {
        full = true; // nothing was stored: this one goes again after a pause
        continue;
      }
      pending.delete(ack);
      if (reply.ok) accepted += reply.accepted;
      else refused.set(ack, reply);
    }
    if (answers.size > 0) {
      lastProgress = Date.now(); // the agent answers (a full spool included): keep going
      if (!full) pause = 500;
    } else if (Date.now() - lastProgress > patienceMs) {
      throw new Error(
        `the agent is unreachable (or silent) for ${patienceMs / 1000} s; ${pending.size} records not confirmed (those already sent may be stored)`,
      );
    }
    if (pending.size > 0 && (full || answers.size === 0)) {
      await sleep(pause);
      pause = Math.min(pause * 2, 10_000);
    }
  }
  return { accepted, refused };
}

const args = process.argv.slice(2);
let patienceSeconds = 60;
const flag = args.indexOf("--patience");
if (flag >= 0) {
  patienceSeconds = Number(args[flag + 1]);
  args.splice(flag, 2);
}
const [path, table] = args;
if (!path || !table || !(patienceSeconds > 0)) {
  console.error("usage: node line_client.mjs [--patience SECONDS] SOCKET TABLE < records.ndjson");
  process.exit(64);
}
const records = [];
let notJSON = 0;
// A byte order mark before the first line (an editor's, on Windows) is not part of it.
readFileSync(0, "utf8")
  .replace(/^\uFEFF/, "")
  .split("\n")
  .forEach((line, index) => {
    if (line.trim() === "") return;
    try {
      records.push([String(index + 1), JSON.parse(line)]);
    } catch (error) {
      console.error(`line ${index + 1}: not JSON (${error.message}); not sent`);
      notJSON++;
    }
  });
try {
  const { accepted, refused } = await sendRecords(path, table, records, patienceSeconds * 1000);
  for (const [ack, reply] of refused) console.error(`line ${ack}: ${reply.status} ${reply.code}: ${reply.error}`);
  console.log(`accepted ${accepted}, refused ${refused.size + notJSON}`);
  process.exit(refused.size + notJSON > 0 ? 1 : 0);
} catch (error) {
  console.error(`error: ${error.message}`);
  process.exit(69);
}

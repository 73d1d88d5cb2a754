#!/usr/bin/env node
// A client of definite-agent's line protocol (its Unix stream socket), with Node's standard library only.
//
//     node line_client.mjs /run/definite-agent/agent.sock bronze.events < records.ndjson
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
// - On 507 (the agent's spool is full) wait, with a growing pause, and send again.
//
// Prints "accepted N, refused M" and each refused record's line and reason on stderr; exits 0 when every
// record is durable, 1 when some were refused, 69 when the agent stays unreachable for a minute.
import net from "node:net";
import { readFileSync } from "node:fs";

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// One connection: writes every request, resolves with the answers (ack id → reply) once all came or the
// agent closed the connection.
function round(path, requests) {
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
    const answers = await round(path, [...pending.entries()]);
    let full = false;
    for (const [ack, reply] of answers) {
      if (reply.status === 507) {
        full = true; // the spool is full: this one goes again after a pause
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
      throw new Error(`the agent is unreachable for ${patienceMs / 1000} s; ${pending.size} records not confirmed`);
    }
    if (pending.size > 0 && (full || answers.size === 0)) {
      await sleep(pause);
      pause = Math.min(pause * 2, 10_000);
    }
  }
  return { accepted, refused };
}

const [path, table] = process.argv.slice(2);
if (!path || !table) {
  console.error("usage: node line_client.mjs SOCKET TABLE < records.ndjson");
  process.exit(64);
}
const records = readFileSync(0, "utf8")
  .split("\n")
  .map((line, index) => [String(index + 1), line])
  .filter(([, line]) => line.trim() !== "")
  .map(([ack, line]) => [ack, JSON.parse(line)]);
try {
  const { accepted, refused } = await sendRecords(path, table, records);
  for (const [ack, reply] of refused) console.error(`line ${ack}: ${reply.status} ${reply.code}: ${reply.error}`);
  console.log(`accepted ${accepted}, refused ${refused.size}`);
  process.exit(refused.size > 0 ? 1 : 0);
} catch (error) {
  console.error(`error: ${error.message}`);
  process.exit(69);
}

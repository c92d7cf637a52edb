// MULTI/EXEC through node-redis's multi() against a spendb on the port
// given. Exits non-zero with the reason on any mismatch.
import assert from "node:assert/strict";
import { createClient } from "redis";

const client = createClient({ socket: { host: "127.0.0.1", port: Number(process.argv[2]) } });
await client.connect();
// A flat array in RESP2 (node-redis's default), a map in RESP3.
const fields = (reply) => {
  if (reply instanceof Map) return Object.fromEntries(reply);
  if (!Array.isArray(reply)) return reply;
  return Object.fromEntries(
    Array.from({ length: reply.length / 2 }, (_, i) => [String(reply[2 * i]), reply[2 * i + 1]]));
};

await client.sendCommand(["BUDGET.SET", "org:node", "REQUESTS", "2", "PER", "DAY"]);
const replies = await client
  .multi()
  .addCommand(["RESERVE", "n1", "org:node", "gpt-4o", "INPUT", "1", "OUTPUT", "0"])
  .addCommand(["RESERVE", "n2", "org:node", "gpt-4o", "INPUT", "1", "OUTPUT", "0"])
  .addCommand(["RESERVE", "n3", "org:node", "gpt-4o", "INPUT", "1", "OUTPUT", "0"])
  .addCommand(["PING"])
  .exec();
const statuses = replies.slice(0, 3).map((r) => String(fields(r).status));
assert.deepEqual(statuses, ["granted", "granted", "denied"], JSON.stringify(replies));
assert.equal(String(replies[3]), "PONG");

// A command that cannot run inside a transaction aborts it.
await assert.rejects(
  client.multi()
    .addCommand(["RESERVE", "n4", "org:node", "gpt-4o", "INPUT", "1", "OUTPUT", "0"])
    .addCommand(["CACHE.GET", "ns", "k"])
    .exec(),
  /EXECABORT|not allowed inside MULTI/,
);
await assert.rejects(client.sendCommand(["HOLD.GET", "n4"]), /UNKNOWN/);
await client.quit();
console.log("node-redis transactions ok");

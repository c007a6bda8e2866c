// @discordjs/ws (a client someone else wrote) against `handover proxy`, run by
// proxy/tests/discordjs.rs with node 20.
//
// The WebSocketManager is destroyed and a new one created RESTARTS times during a stream of
// dispatches `E` carrying `{ n }` (1..=EVENTS, sent by the mock upstream); each new manager
// resumes from the session the script saved (`retrieveSessionInfo` / `updateSessionInfo`),
// and the script checks that it saw every `n` exactly once, in order.
//
// Environment: PROXY_HTTP (http://127.0.0.1:PORT), TOKEN, EVENTS, RESTARTS, SEED, DEADLINE_MS.
// Output: a line `ready` after the first READY (the test then starts the stream), progress on
// stderr, and a last line `result {json}`. Exit code 0 only when every check passed.

import { WebSocketManager, WebSocketShardEvents } from '@discordjs/ws';

const PROXY_HTTP = process.env.PROXY_HTTP;
const TOKEN = process.env.TOKEN;
const EVENTS = Number(process.env.EVENTS ?? 2000);
const RESTARTS = Number(process.env.RESTARTS ?? 50);
const DEADLINE_MS = Number(process.env.DEADLINE_MS ?? 60000);
let seed = Number(process.env.SEED ?? 1) >>> 0 || 1;

// GUILDS | GUILD_MESSAGES: what the proxy's upstream shard was identified with.
const INTENTS = (1 << 0) | (1 << 9);

function random(lo, hi) {
  // xorshift32: a reproducible restart schedule for a given SEED.
  seed ^= seed << 13;
  seed >>>= 0;
  seed ^= seed >>> 17;
  seed ^= seed << 5;
  seed >>>= 0;
  return lo + (seed % (hi - lo));
}

function fail(message, extra = {}) {
  console.log(`result ${JSON.stringify({ ok: false, message, ...extra })}`);
  process.exit(1);
}

const deadline = setTimeout(() => fail(`deadline of ${DEADLINE_MS} ms passed`, summary()), DEADLINE_MS);

// What the bot persisted: the session of shard 0 (as it would keep it in a file or redis), and
// the last seq whose event it processed. A crashed process writes nothing more, so a manager
// being torn down can no longer write here.
let saved = null;
const seen = [];
let readies = 0;
let resumed = 0;
let gatewayFetches = 0;
let incarnation = 0;

function summary() {
  return { events: seen.length, readies, resumed, restarts: incarnation, gatewayFetches };
}

async function gatewayBot() {
  // The proxy's own `/api/v10/gateway/bot`: its ws URL, its shard count, no identify limit.
  const response = await fetch(`${PROXY_HTTP}/api/v10/gateway/bot`, {
    headers: { Authorization: `Bot ${TOKEN}` },
  });
  if (!response.ok) {
    fail(`GET /api/v10/gateway/bot answered ${response.status}`);
  }
  gatewayFetches++;
  return response.json();
}

/** One incarnation of the bot: a new manager that runs until it has processed `quota` events. */
function run(quota) {
  const id = incarnation;
  let alive = true;
  let got = 0;
  let lastSeq = saved?.sequence ?? 0;
  return new Promise((resolve) => {
    const manager = new WebSocketManager({
      token: TOKEN,
      intents: INTENTS,
      // Not used: fetchGatewayInformation below asks the proxy over HTTP itself.
      rest: null,
      shardCount: null,
      retrieveSessionInfo: () => (alive ? saved : null),
      updateSessionInfo: (_shard, info) => {
        if (!alive) return;
        // The library writes the seq before it emits the dispatch; the saved seq is the one
        // of the last event this bot processed, so an event read but not yet handled when the
        // bot dies is replayed to the next incarnation.
        saved = info === null ? null : { ...info, sequence: Math.min(info.sequence, lastSeq) };
      },
    });
    manager.fetchGatewayInformation = gatewayBot;
    manager.on(WebSocketShardEvents.Ready, (data) => {
      if (!alive) return;
      readies++;
      lastSeq = 1;
      saved = {
        sessionId: data.session_id,
        resumeURL: data.resume_gateway_url,
        sequence: 1,
        shardId: 0,
        shardCount: data.shard?.[1] ?? 1,
      };
      if (readies === 1) console.log('ready');
    });
    manager.on(WebSocketShardEvents.Resumed, () => {
      if (alive) resumed++;
    });
    manager.on(WebSocketShardEvents.Closed, (code) => {
      if (alive) fail(`incarnation ${id}: the proxy closed the connection with ${code}`, summary());
    });
    manager.on(WebSocketShardEvents.Debug, (message) => {
      if (alive && /invalid session|Invalid session/.test(message)) {
        fail(`incarnation ${id}: invalid session: ${message}`, summary());
      }
    });
    manager.on(WebSocketShardEvents.Dispatch, (payload) => {
      if (!alive) return;
      if (payload.t === 'READY' || payload.t === 'RESUMED') {
        lastSeq = Math.max(lastSeq, payload.s);
        return;
      }
      if (payload.t !== 'E') return;
      const n = payload.d.n;
      const expected = seen.length + 1;
      if (n !== expected) {
        fail(`incarnation ${id}: event ${n} where ${expected} was due`, summary());
      }
      seen.push(n);
      lastSeq = payload.s;
      if (saved) saved = { ...saved, sequence: lastSeq };
      got++;
      if (got >= quota || n === EVENTS) {
        // Killed: this manager writes nothing more; a new one resumes from `saved`.
        alive = false;
        manager
          .destroy({ code: 4200, reason: 'restart' })
          .catch(() => {})
          .finally(() => resolve(n === EVENTS));
      }
    });
    manager.connect().catch((error) => fail(`incarnation ${id}: connect: ${error}`, summary()));
  });
}

for (;;) {
  const last = incarnation === RESTARTS;
  const quota = last ? Number.MAX_SAFE_INTEGER : random(5, 30);
  const finished = await run(quota);
  if (finished) break;
  if (last) fail('the last incarnation ended early', summary());
  incarnation++;
  if (incarnation % 10 === 0) console.error(`restart ${incarnation}: ${seen.length} events so far`);
}
clearTimeout(deadline);

const s = summary();
if (incarnation !== RESTARTS) fail(`the stream ended after ${incarnation} of ${RESTARTS} restarts`, s);
if (seen.length !== EVENTS) fail(`saw ${seen.length} events of ${EVENTS}`, s);
if (readies !== 1) fail(`identified ${readies} times (one READY expected)`, s);
console.log(`result ${JSON.stringify({ ok: true, ...s })}`);
process.exit(0);

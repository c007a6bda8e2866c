// The @discordjs/ws peer of the idle_shards benchmark: one WebSocketManager running SHARDS
// shards of one bot (its default SimpleShardingStrategy: every shard in this process) against
// the mock gateway, which also answers GET /gateway/bot. Prints "ready" once every shard is
// READY, then idles (heartbeats keep running) until killed or LIFE_SECS have passed.
//
// node idle.js WS_URL SHARDS plain|zlib-stream LIFE_SECS (SHARDS 0: the baseline, no shard)

'use strict';

const { REST } = require('@discordjs/rest');
const { CompressionMethod, WebSocketManager, WebSocketShardEvents } = require('@discordjs/ws');

const [url, shardsArg, compression, lifeArg] = process.argv.slice(2);
const shards = Number.parseInt(shardsArg, 10);
const life = Number.parseInt(lifeArg, 10);
if (!url || !(shards >= 0) || !(life > 0)) {
  console.error('usage: node idle.js WS_URL SHARDS plain|zlib-stream LIFE_SECS');
  process.exit(2);
}
const methods = { plain: null, 'zlib-stream': CompressionMethod.ZlibNative };
if (!(compression in methods)) {
  console.error(`@discordjs/ws 2.0.4 has no ${compression}`);
  process.exit(2);
}

// The mock's test token (not a secret).
const token = 'mock-token';
const rest = new REST({ api: `${url.replace(/^ws:/, 'http:')}/api`, version: '10' }).setToken(token);
const manager = new WebSocketManager({
  token,
  intents: 513, // GUILDS | GUILD_MESSAGES
  rest,
  shardCount: shards,
  compression: methods[compression],
});

let ready = 0;
manager.on(WebSocketShardEvents.Ready, () => {
  ready += 1;
  if (ready === shards) {
    console.log('ready');
  }
});
manager.on(WebSocketShardEvents.Error, (error) => {
  console.error(`shard error: ${error}`);
});

setTimeout(() => process.exit(0), life * 1000).unref();
// Keeps the process alive for LIFE_SECS even if every socket were to close.
setInterval(() => {}, 1000);

if (shards === 0) {
  // The baseline: the same process and modules, no shard.
  console.log('ready');
} else {
  manager.connect().catch((error) => {
    console.error(`connect failed: ${error}`);
    process.exit(1);
  });
}

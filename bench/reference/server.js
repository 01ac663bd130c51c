'use strict';
// Reference peer for bench/: the fonana-realtime protocol subset the benchmarks
// exercise, written the way a Node engineer would with `ws` and its defaults.
//
//   GET /ws?token=JWT        WebSocket (HS256 JWT, claim userId or sub; bad → 401)
//   {"type":"subscribe","channel":C}  → {"type":"subscribed","data":{channel,channelKey}}
//   {"type":"unsubscribe","channel":C}→ {"type":"unsubscribed",...}
//   {"type":"ping"}                   → {"type":"pong"}
//   POST /api/events         Bearer WS_API_SECRET; {"event":E} or {"events":[...]},
//                            addressed by "channel" and/or "userId", else routed by type → 202
//   GET /health              200
//
// Env: WS_HOST (127.0.0.1), WS_PORT (3002), JWT_SECRET, WS_API_SECRET.
// No database: every valid token is a user, post channels are open to everyone.
// Test hooks, only for `bench/run --selftest` (off by default, no cost when off):
//   REF_PERMESSAGE_DEFLATE=1 | no-context   compress every message (context takeover or not)
//   REF_FAULT=drop | dup                     drop or repeat every 997th delivery

const http = require('http');
const crypto = require('crypto');
const { WebSocketServer } = require('ws');

const HOST = process.env.WS_HOST || '127.0.0.1';
const PORT = parseInt(process.env.WS_PORT || '3002', 10);
const JWT_SECRET = process.env.JWT_SECRET || process.env.NEXTAUTH_SECRET;
const API_SECRET = process.env.WS_API_SECRET || '';
const DEFLATE = process.env.REF_PERMESSAGE_DEFLATE || '';
const FAULT = process.env.REF_FAULT || '';
if (!JWT_SECRET) {
  console.error('JWT_SECRET is required');
  process.exit(2);
}

// ---- JWT (HS256 only) ------------------------------------------------------
const HMAC_KEY = Buffer.from(JWT_SECRET, 'utf8');

function verifyToken(token) {
  if (typeof token !== 'string') return null;
  const parts = token.split('.');
  if (parts.length !== 3) return null;
  let header, payload;
  try {
    header = JSON.parse(Buffer.from(parts[0], 'base64url').toString('utf8'));
    payload = JSON.parse(Buffer.from(parts[1], 'base64url').toString('utf8'));
  } catch (e) {
    return null;
  }
  if (!header || header.alg !== 'HS256') return null;
  const expected = crypto.createHmac('sha256', HMAC_KEY).update(parts[0] + '.' + parts[1]).digest();
  const given = Buffer.from(parts[2], 'base64url');
  if (given.length !== expected.length || !crypto.timingSafeEqual(given, expected)) return null;
  if (!payload || typeof payload.exp !== 'number' || payload.exp + 30 < Date.now() / 1000) return null;
  const userId = payload.userId || payload.sub;
  if (typeof userId !== 'string' || !userId) return null;
  return userId;
}

// ---- channels ----------------------------------------------------------------
const ID_RE = /^[A-Za-z0-9_-]{1,128}$/;

function channelKey(ch) {
  if (typeof ch === 'string') return /^(post|notifications|feed|creator)_[A-Za-z0-9_-]{1,128}$/.test(ch) ? ch : null;
  if (!ch || typeof ch !== 'object') return null;
  let id;
  switch (ch.type) {
    case 'post': id = ch.postId; break;
    case 'notifications': case 'feed': id = ch.userId; break;
    case 'creator': id = ch.id; break;
    default: return null;
  }
  return typeof id === 'string' && ID_RE.test(id) ? ch.type + '_' + id : null;
}

function mayJoin(userId, key) {
  if (key.startsWith('notifications_') || key.startsWith('feed_')) {
    return key.slice(key.indexOf('_') + 1) === userId;
  }
  return true;
}

const ROUTES = {
  post_liked: (e) => 'post_' + e.postId,
  post_unliked: (e) => 'post_' + e.postId,
  post_deleted: (e) => 'post_' + e.postId,
  comment_added: (e) => 'post_' + e.postId,
  comment_deleted: (e) => 'post_' + e.postId,
  creator_updated: (e) => 'creator_' + e.creatorId,
  new_subscription: (e) => 'creator_' + e.creatorId,
  post_created: (e) => 'feed_' + e.userId,
};

// ---- registry ----------------------------------------------------------------
const channels = new Map(); // channelKey -> Set<ws>
const users = new Map(); // userId -> Set<ws>

function addTo(map, key, ws) {
  let set = map.get(key);
  if (!set) map.set(key, (set = new Set()));
  set.add(ws);
}

function removeFrom(map, key, ws) {
  const set = map.get(key);
  if (set && set.delete(ws) && set.size === 0) map.delete(key);
}

// ---- HTTP --------------------------------------------------------------------
function reply(res, status, obj) {
  const body = JSON.stringify(obj);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) });
  res.end(body);
}

function bearerOk(req) {
  const h = req.headers.authorization || '';
  if (!API_SECRET || !h.startsWith('Bearer ')) return false;
  const a = Buffer.from(h.slice(7));
  const b = Buffer.from(API_SECRET);
  return a.length === b.length && crypto.timingSafeEqual(a, b);
}

function publish(body) {
  const events = Array.isArray(body.events) ? body.events : body.event ? [body.event] : null;
  if (!events || events.length === 0) return 'missing event';
  const fixed = body.channel !== undefined ? channelKey(body.channel) : null;
  if (body.channel !== undefined && !fixed) return 'invalid channel';
  const plan = [];
  for (const e of events) {
    if (!e || typeof e !== 'object' || typeof e.type !== 'string') return 'invalid event';
    const key = fixed || (ROUTES[e.type] ? ROUTES[e.type](e) : null);
    const user = body.userId || (!fixed && !ROUTES[e.type] ? e.userId : null);
    if (!key && !user) return 'no route for ' + e.type;
    plan.push([e, key, user]);
  }
  for (const [e, key, user] of plan) {
    // Serialise once per event; every recipient gets the same buffer.
    const data = Buffer.from(JSON.stringify(e));
    const targets = new Set();
    if (key && channels.has(key)) for (const ws of channels.get(key)) targets.add(ws);
    if (user && users.has(user)) for (const ws of users.get(user)) targets.add(ws);
    sendAll(targets, data);
  }
  return null;
}

function sendToEach(targets, data) {
  for (const ws of targets) {
    if (ws.readyState === ws.OPEN) ws.send(data, { binary: false });
  }
}

let faultCount = 0;
function sendToEachWithFault(targets, data) {
  for (const ws of targets) {
    if (ws.readyState !== ws.OPEN) continue;
    if (++faultCount % 997 === 0) {
      if (FAULT === 'drop') continue;
      ws.send(data, { binary: false });
    }
    ws.send(data, { binary: false });
  }
}

const sendAll = FAULT ? sendToEachWithFault : sendToEach;

const server = http.createServer((req, res) => {
  if (req.method === 'GET' && (req.url === '/health' || req.url === '/ready')) {
    return reply(res, 200, { status: 'ok', connections: wss.clients.size });
  }
  if (req.method === 'POST' && req.url === '/api/events') {
    if (!bearerOk(req)) return reply(res, 401, { error: 'unauthorized' });
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      let body;
      try {
        body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
      } catch (e) {
        return reply(res, 400, { error: 'invalid_json' });
      }
      const err = body && typeof body === 'object' ? publish(body) : 'invalid body';
      if (err) return reply(res, 400, { error: err });
      reply(res, 202, { accepted: true });
    });
    return;
  }
  reply(res, 404, { error: 'not_found' });
});

// ---- WebSocket ---------------------------------------------------------------
const wss = new WebSocketServer({
  noServer: true,
  // ws's default (false) unless the self-test asks for compression of every message
  perMessageDeflate: DEFLATE ? { threshold: 0, serverNoContextTakeover: DEFLATE === 'no-context' } : false,
});

server.on('upgrade', (req, socket, head) => {
  const url = new URL(req.url, 'http://x');
  if (url.pathname !== '/ws' && url.pathname !== '/') {
    socket.end('HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
    return;
  }
  let token = url.searchParams.get('token');
  const auth = req.headers.authorization;
  if (!token && auth && auth.startsWith('Bearer ')) token = auth.slice(7);
  const userId = verifyToken(token);
  if (!userId) {
    const body = JSON.stringify({ error: 'unauthorized', reason: token ? 'invalid_token' : 'missing_token' });
    socket.end(
      'HTTP/1.1 401 Unauthorized\r\nConnection: close\r\nContent-Type: application/json\r\n' +
        'Content-Length: ' + Buffer.byteLength(body) + '\r\n\r\n' + body,
    );
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, userId));
});

function sendJson(ws, obj) {
  ws.send(JSON.stringify(obj));
}

function sendError(ws, message, code, channel) {
  const data = { message, code };
  if (channel !== undefined) data.channel = channel;
  sendJson(ws, { type: 'error', data });
}

wss.on('connection', (ws, userId) => {
  const subs = new Set();
  addTo(users, userId, ws);
  ws.isAlive = true;
  ws.on('pong', () => {
    ws.isAlive = true;
  });

  ws.on('message', (raw, isBinary) => {
    let msg;
    try {
      msg = isBinary ? null : JSON.parse(raw.toString('utf8'));
    } catch (e) {
      msg = null;
    }
    if (!msg || typeof msg !== 'object' || Array.isArray(msg) || typeof msg.type !== 'string') {
      return sendError(ws, 'Invalid message format', 'invalid_message');
    }
    switch (msg.type) {
      case 'ping':
        return sendJson(ws, { type: 'pong' });
      case 'subscribe': {
        const key = channelKey(msg.channel);
        if (!key) return sendError(ws, 'Failed to subscribe', 'invalid_channel', msg.channel);
        if (!mayJoin(userId, key)) return sendError(ws, 'Access denied to channel', 'access_denied', msg.channel);
        subs.add(key);
        addTo(channels, key, ws);
        return sendJson(ws, { type: 'subscribed', data: { channel: msg.channel, channelKey: key } });
      }
      case 'unsubscribe': {
        const key = channelKey(msg.channel);
        if (!key) return sendError(ws, 'Failed to subscribe', 'invalid_channel', msg.channel);
        subs.delete(key);
        removeFrom(channels, key, ws);
        return sendJson(ws, { type: 'unsubscribed', data: { channel: msg.channel, channelKey: key } });
      }
      default:
        return sendError(ws, 'Invalid message format', 'unknown_type');
    }
  });

  ws.on('close', () => {
    for (const key of subs) removeFrom(channels, key, ws);
    removeFrom(users, userId, ws);
  });
  ws.on('error', () => {});

  sendJson(ws, { type: 'connected', data: { userId, message: 'Successfully connected to WebSocket server' } });
});

// Liveness as in the protocol: ping every 25 s, drop who did not answer the last one.
const PING_MS = parseInt(process.env.WS_PING_INTERVAL || '25', 10) * 1000;
const heartbeat = setInterval(() => {
  for (const ws of wss.clients) {
    if (ws.isAlive === false) {
      ws.terminate();
      continue;
    }
    ws.isAlive = false;
    ws.ping();
  }
}, PING_MS);

server.listen(PORT, HOST, () => {
  console.log(`reference server listening on ${HOST}:${PORT} (node ${process.version})`);
});

function shutdown() {
  clearInterval(heartbeat);
  for (const ws of wss.clients) ws.terminate();
  server.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', shutdown);
// What a deploy does to its clients (bench/run --only reconnect): every client is closed
// with 1001, spread evenly over REF_DRAIN_SECONDS, while the server keeps accepting.
// Our server's drain is its worker's (WS_DRAIN_SECONDS); this stands in for it.
process.on('SIGHUP', () => {
  const all = [...wss.clients];
  const seconds = parseFloat(process.env.REF_DRAIN_SECONDS || '10');
  const ticks = Math.max(1, Math.floor(seconds / 0.05));
  const perTick = Math.max(1, Math.ceil(all.length / ticks));
  let i = 0;
  const timer = setInterval(() => {
    for (const ws of all.slice(i, i + perTick)) ws.close(1001, 'server is restarting');
    i += perTick;
    if (i >= all.length) clearInterval(timer);
  }, 50);
});
process.on('SIGINT', shutdown);

// A browser-like WebSocket client for the tests (the `ws` package: Node 20 has no
// global WebSocket without a flag). Frames are read strictly in order, as
// tests/support/ws.py does: `next()` is the next frame, whatever it is.

import assert from "node:assert/strict";
import WebSocket from "ws";

const DEFAULT_TIMEOUT_MS = 10000;

export class TestSocket {
  constructor(ws) {
    this.ws = ws;
    this.queue = [];
    this.waiting = null;
    this.closed = null;
    ws.on("message", (data, isBinary) => {
      this.queue.push(isBinary ? { binary: data } : JSON.parse(data.toString("utf8")));
      this.#wake();
    });
    ws.on("close", (code) => {
      this.closed = { code };
      this.#wake();
    });
    ws.on("error", (error) => {
      this.closed = { error };
      this.#wake();
    });
  }

  #wake() {
    const waiting = this.waiting;
    this.waiting = null;
    waiting?.();
  }

  /** The next frame; fails after `timeoutMs` or when the connection ends first. */
  async next(timeoutMs = DEFAULT_TIMEOUT_MS, what = "a frame") {
    const deadline = Date.now() + timeoutMs;
    while (this.queue.length === 0) {
      if (this.closed) assert.fail(`connection ended (${JSON.stringify(this.closed)}) while waiting for ${what}`);
      const left = deadline - Date.now();
      if (left <= 0) assert.fail(`${what} did not arrive within ${timeoutMs} ms`);
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiting = () => { clearTimeout(timer); resolve(); };
      });
    }
    return this.queue.shift();
  }

  send(frame) {
    this.ws.send(JSON.stringify(frame));
  }

  /** The next frame must be exactly this event (events are delivered flat). */
  async expectEvent(event, timeoutMs) {
    const frame = await this.next(timeoutMs, `event ${JSON.stringify(event)}`);
    assert.deepEqual(frame, event);
    return frame;
  }

  async expectType(type, timeoutMs) {
    const frame = await this.next(timeoutMs, `a ${type} frame`);
    assert.equal(frame.type, type, `expected ${type}, got ${JSON.stringify(frame)}`);
    return frame;
  }

  /** Subscribe and expect `subscribed` (and, for notifications, `unread_notifications`, returned). */
  async subscribe(channel) {
    this.send({ type: "subscribe", channel });
    const frame = await this.expectType("subscribed");
    assert.deepEqual(frame.data.channel, channel);
    if (channel.type === "notifications") return this.expectType("unread_notifications");
    return frame;
  }

  /** Nothing is queued before our ping: the next frame must be `pong`. */
  async barrier() {
    this.send({ type: "ping" });
    const frame = await this.next(DEFAULT_TIMEOUT_MS, "the pong of the barrier");
    assert.deepEqual(frame, { type: "pong" }, `unexpected frame before the pong barrier: ${JSON.stringify(frame)}`);
  }

  /** A normal close (1000): the client went away on purpose, so the server has nothing
   *  to keep for a reconnect of this user (PROTOCOL.md 8). */
  close() {
    if (this.ws.readyState === WebSocket.OPEN) this.ws.close(1000);
    else if (this.ws.readyState === WebSocket.CONNECTING) this.ws.terminate();
  }
}

/** A connection for `userId` (token in the query, as the browser client sends it), after its welcome. */
export async function connect(server, userId) {
  const ws = new WebSocket(`${server.wsUrl}?token=${encodeURIComponent(server.token(userId))}`);
  const socket = new TestSocket(ws);
  const welcome = await socket.expectType("connected");
  assert.equal(welcome.data.userId, userId);
  return socket;
}

/** The connections one test file opens, closed together when it ends. */
export class SocketPool {
  constructor() {
    this.sockets = [];
  }

  /** `connect(server, userId)`, remembered for `closeAll`. */
  async open(server, userId) {
    const socket = await connect(server, userId);
    this.sockets.push(socket);
    return socket;
  }

  closeAll() {
    this.sockets.forEach((s) => s.close());
    this.sockets.length = 0;
  }
}

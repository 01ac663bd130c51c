// A private redis-server on a free port that a test can kill (like a crash) and start
// again on the same port, as tests/support/redis_server.py does; nothing saved to disk.

import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { freePort } from "./server.js";

function ping(port) {
  return new Promise((resolve) => {
    const socket = connect({ host: "127.0.0.1", port }, () => socket.write("PING\r\n"));
    socket.setTimeout(1000, () => socket.destroy());
    socket.once("data", (data) => { socket.destroy(); resolve(data.toString().startsWith("+PONG")); });
    socket.once("error", () => resolve(false));
    socket.once("close", () => resolve(false));
  });
}

export async function startRedis() {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), "fonana-js-redis-"));
  let proc = null;
  const redis = {
    port,
    url: `redis://127.0.0.1:${port}/0`,
    /** Start (again) and wait until it answers PING. */
    async start() {
      proc = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "",
        "--appendonly", "no", "--dir", dir, "--daemonize", "no"], { stdio: "ignore", detached: true });
      const failed = new Promise((_, reject) => proc.once("error", (error) => reject(
        error.code === "ENOENT" ? new Error("redis-server is not on PATH (the machine's Redis, as make test needs it)") : error)));
      failed.catch(() => {});            // raced below; never left unhandled
      const deadline = Date.now() + 10000;
      while (Date.now() < deadline) {
        if (await Promise.race([ping(port), failed])) return;
        // polling a process that is starting up: a pause between attempts is the only option
        await new Promise((r) => setTimeout(r, 50));
      }
      throw new Error(`redis-server on ${port} did not answer PING within 10 s`);
    },
    /** SIGKILL, like a crash: every client's link is reset. */
    async kill() {
      if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
      const exited = new Promise((resolve) => proc.once("exit", resolve));
      proc.kill("SIGKILL");
      await exited;
    },
    async stop() {
      await redis.kill();
      rmSync(dir, { recursive: true, force: true });
    },
  };
  await redis.start();
  return redis;
}

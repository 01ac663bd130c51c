// A real fonana-realtime for the tests: `gunicorn -c gunicorn.conf.py wsgi:app` from the
// repository's .venv, on the embedded default (SQLite in a temporary DATA_DIR, demo rows
// seeded, in-process broker), a free port on 127.0.0.1, random WS_API_SECRET and
// NEXTAUTH_SECRET. As tests/support/server.py does it, nothing of the caller's
// environment that the server reads is inherited.

import { spawn, spawnSync } from "node:child_process";
import { createHmac, randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, closeSync } from "node:fs";
import { get as httpGet } from "node:http";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "../../../..");
export const VENV = join(REPO, ".venv");
export const PYTHON = join(VENV, "bin", "python");

// Every variable the server reads (tests/support/server.py CONFIG_VARS), plus this
// package's own: a developer's shell cannot change what a test means.
const CONFIG_VARS = new Set([
  "WS_PORT", "WS_HOST", "NEXTAUTH_SECRET", "JWT_SECRET", "DATABASE_URL", "REDIS_URL", "WS_API_SECRET",
  "ALLOWED_ORIGINS", "WS_WORKERS", "WS_WORKER_CONNECTIONS", "WS_PING_INTERVAL", "WS_MAX_MESSAGE_BYTES",
  "WS_RATE_PER_SEC", "WS_RATE_BURST", "WS_RATE_ABUSE_SECONDS", "WS_MAX_SUBSCRIPTIONS",
  "WS_MAX_CONNECTIONS_PER_USER", "WS_HANDSHAKES_PER_IP_PER_SEC", "WS_HANDSHAKES_PER_IP_BURST",
  "TRUSTED_PROXIES", "WS_SEND_BACKLOG_BYTES", "WS_SEND_BACKLOG_FRAMES", "WS_DRAIN_SECONDS",
  "API_MAX_BODY_BYTES", "API_MAX_EVENTS", "METRICS_PUBLIC", "REDIS_PREFIX", "LOG_DIR", "DATA_DIR",
  "GUNICORN_CMD_ARGS", "FLASK_ENV", "FLASK_DEBUG", "ENV", "APP_ENV", "NODE_ENV", "FONANA_ENV",
  "FONANA_REALTIME_URL", "WS_LEGACY_TYPE_GAP_MS", "WS_RESUME_SECONDS",
]);

export function requireVenv() {
  if (!existsSync(join(VENV, "bin", "gunicorn"))) {
    throw new Error(`no Python environment at ${VENV}: run \`make venv\` in ${REPO} (npm test does it in pretest)`);
  }
}

// Where freePort() looks: below the kernel's ephemeral range (the source ports of outgoing
// connections), as tests/support/server.py does. A port from that range (what listen(0)
// gives) can be taken at any moment by any process's outgoing connection: before the
// server, proxy or Redis binds it, or while a test has Redis down before restarting it on
// the same port; a client retrying a port nobody listens on can even connect to itself.
const LOW_PORT = 10000;

function ephemeralLow() {
  try {
    const low = Number(readFileSync("/proc/sys/net/ipv4/ip_local_port_range", "utf8").trim().split(/\s+/)[0]);
    return Number.isInteger(low) ? low : 32768;
  } catch {
    return 32768;                       // Linux's default
  }
}

function listenOnce(port) {
  return new Promise((resolvePort) => {
    const probe = createServer();
    probe.once("error", () => resolvePort(null));
    probe.listen(port, "127.0.0.1", () => {
      const bound = probe.address().port;
      probe.close(() => resolvePort(bound));
    });
  });
}

/** A 127.0.0.1 TCP port nobody listens on now, outside the ephemeral range when the
 *  kernel leaves room below it (else whatever listen(0) gives). */
export async function freePort() {
  const low = ephemeralLow();
  for (let i = 0; i < 200 && low - LOW_PORT >= 1000; i += 1) {
    const port = await listenOnce(LOW_PORT + Math.floor(Math.random() * (low - LOW_PORT)));
    if (port !== null) return port;
  }
  const port = await listenOnce(0);
  if (port === null) throw new Error("no free port on 127.0.0.1");
  return port;
}

// Once settings.py lists its variables (settings.ENV_NAMES), those too: a new setting is
// then never inherited without anyone touching this file.
let settingsNames;
function serverSettingNames() {
  if (settingsNames === undefined) {
    const run = spawnSync(PYTHON, ["-c",
      "import json; from fonana_realtime import settings; print(json.dumps(sorted(getattr(settings, 'ENV_NAMES', ()))))"],
    { cwd: REPO, encoding: "utf8" });
    settingsNames = run.status === 0 ? JSON.parse(run.stdout) : [];
  }
  return settingsNames;
}

function cleanEnv(extra) {
  const env = {};
  const names = new Set([...CONFIG_VARS, ...serverSettingNames()]);
  for (const [k, v] of Object.entries(process.env)) {
    if (!names.has(k) && !k.toLowerCase().endsWith("_proxy")) env[k] = v;
  }
  env.PYTHONUNBUFFERED = "1";
  for (const [k, v] of Object.entries(extra)) {
    if (v === null || v === undefined) delete env[k];
    else env[k] = String(v);
  }
  return env;
}

const b64url = (data) => Buffer.from(data).toString("base64url");

/** A token as the Next.js app mints it: HS256, claim `userId`, `exp`. */
export function mintToken(secret, userId, lifetimeSeconds = 3600) {
  const now = Math.floor(Date.now() / 1000);
  const head = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const body = b64url(JSON.stringify({ userId, sub: userId, iat: now, exp: now + lifetimeSeconds }));
  const signature = createHmac("sha256", secret).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${signature}`;
}

/** Start a server and wait for /health. `env` overrides (null removes a variable). */
export async function startServer({ env = {}, name = "server" } = {}) {
  requireVenv();
  const workdir = mkdtempSync(join(tmpdir(), `fonana-js-${name}-`));
  const port = await freePort();
  const apiKey = randomBytes(24).toString("base64url");
  const jwtSecret = randomBytes(24).toString("base64url");
  const dataDir = join(workdir, "data");
  const logDir = join(workdir, "logs");
  const serverEnv = cleanEnv({
    WS_HOST: "127.0.0.1",
    WS_PORT: port,
    DATA_DIR: dataDir,
    LOG_DIR: logDir,
    WS_API_SECRET: apiKey,
    NEXTAUTH_SECRET: jwtSecret,
    WS_HANDSHAKES_PER_IP_PER_SEC: 0,
    WS_DRAIN_SECONDS: 1,
    // these tests check raw delivery (every event, as published) over legacy connections:
    // no pacing of same-type frames, no replays they did not ask for (PROTOCOL.md 8)
    WS_LEGACY_TYPE_GAP_MS: 0,
    WS_RESUME_SECONDS: 0,
    ...env,
  });
  const stdout = openSync(join(workdir, "stdout.txt"), "a");
  const stderr = openSync(join(workdir, "stderr.txt"), "a");
  const proc = spawn(join(VENV, "bin", "gunicorn"), ["-c", join(REPO, "gunicorn.conf.py"), "wsgi:app"], {
    cwd: REPO,
    env: serverEnv,
    stdio: ["ignore", stdout, stderr],
    detached: true,                       // its own process group: stop() ends master and workers
  });
  const exited = new Promise((resolveExit) => proc.once("exit", (code, signal) => resolveExit(code ?? signal)));
  const url = `http://127.0.0.1:${port}`;
  const server = {
    name,
    url,
    wsUrl: `ws://127.0.0.1:${port}/ws`,
    port,
    apiKey: serverEnv.WS_API_SECRET,
    jwtSecret,
    dataDir,
    workdir,
    token: (userId) => mintToken(jwtSecret, userId),
    /** Everything the server wrote: stdout, stderr and LOG_DIR. */
    output() {
      const files = [join(workdir, "stdout.txt"), join(workdir, "stderr.txt")];
      if (existsSync(logDir)) files.push(...readdirSync(logDir).map((f) => join(logDir, f)));
      return files.filter(existsSync).map((f) => readFileSync(f, "utf8")).join("\n");
    },
    /** SIGTERM, then SIGKILL of the group after 2 s; the work directory is removed.
     *  (The worker's graceful exit waits out idle keep-alive connections, up to 5 s, and
     *  this process's fetch keeps its connections alive: nothing here needs those 5 s.) */
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) {
        try { process.kill(proc.pid, "SIGTERM"); } catch { /* gone */ }
        const timer = setTimeout(() => { try { process.kill(-proc.pid, "SIGKILL"); } catch { /* gone */ } }, 2000);
        await exited;
        clearTimeout(timer);
      }
      try { process.kill(-proc.pid, "SIGKILL"); } catch { /* the group is gone */ }
      closeSync(stdout);
      closeSync(stderr);
      rmSync(workdir, { recursive: true, force: true });
    },
  };
  const deadline = Date.now() + 30000;
  let last = "no answer";
  while (Date.now() < deadline) {
    if (proc.exitCode !== null || proc.signalCode !== null) {
      const output = server.output();
      await server.stop();
      throw new Error(`${name} exited before /health answered:\n${output.slice(-4000)}`);
    }
    try {
      const status = await healthStatus(port);
      if (status === 200) return server;
      last = `HTTP ${status}`;
    } catch (error) {
      last = String(error.code ?? error);
    }
    // polling a process that is starting up: a pause between attempts is the only option
    await new Promise((r) => setTimeout(r, 100));
  }
  const output = server.output();
  await server.stop();
  throw new Error(`${name}: /health not 200 within 30 s (last: ${last}):\n${output.slice(-4000)}`);
}

// A fresh connection, closed after the answer: an idle kept-alive one would hold the
// stopping worker open for its keep-alive time (gunicorn.conf.py: 5 s).
function healthStatus(port) {
  return new Promise((resolveStatus, reject) => {
    const req = httpGet({ host: "127.0.0.1", port, path: "/health", agent: false, timeout: 2000,
      headers: { connection: "close" } }, (res) => {
      res.resume();
      res.on("end", () => resolveStatus(res.statusCode));
    });
    req.on("timeout", () => req.destroy(new Error("timeout")));
    req.on("error", reject);
  });
}

/** Rows of the server's SQLite file (`DATA_DIR/fonana.sqlite3`), read by Python's sqlite3. */
export function sqlite(server, sql, params = []) {
  const script = [
    "import json, sqlite3, sys",
    "db = sqlite3.connect(sys.argv[1]); db.row_factory = sqlite3.Row",
    "rows = [dict(r) for r in db.execute(sys.argv[2], json.loads(sys.argv[3]))]",
    "print(json.dumps(rows))",
  ].join("\n");
  const run = spawnSync(PYTHON, ["-c", script, join(server.dataDir, "fonana.sqlite3"), sql, JSON.stringify(params)],
    { encoding: "utf8" });
  if (run.status !== 0) throw new Error(`sqlite query failed: ${run.stderr}`);
  return JSON.parse(run.stdout);
}

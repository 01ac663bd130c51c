// A throw-away PostgreSQL database for a test file (the server runs on it, as in
// production), made and read through tests/support/db.py by the repository's Python:
// this package has no PostgreSQL driver of its own and needs none.

import { spawnSync } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import { PYTHON, requireVenv } from "./server.js";

const SCRIPT = join(dirname(fileURLToPath(import.meta.url)), "pg.py");

function run(args) {
  const done = spawnSync(PYTHON, [SCRIPT, ...args], { encoding: "utf8" });
  if (done.status !== 0) throw new Error(`pg.py ${args[0]} failed: ${done.stderr.slice(-2000)}`);
  return done.stdout.trim();
}

/** `{url, query(sql, params), drop()}`: `query` uses psycopg2 placeholders (`%s`). */
export function createDatabase() {
  requireVenv();
  const { url, name } = JSON.parse(run(["create"]));
  return {
    url,
    query: (sql, params = []) => JSON.parse(run(["query", url, sql, JSON.stringify(params)])),
    drop: () => run(["drop", name]),
  };
}

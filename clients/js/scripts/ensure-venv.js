// The tests start the real server from the repository's Python environment (.venv):
// make it, or bring it up to date with requirements*.txt, through the repository's own
// `make venv` (a no-op when it is current).
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const repo = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");
const made = spawnSync("make", ["-s", "-C", repo, "venv"], { stdio: "inherit" });
if (made.error || made.status !== 0) {
  const why = made.error ? made.error.message : `exit ${made.status}`;
  console.error(`fonana-realtime-client tests: \`make venv\` in ${repo} failed (${why}).\n` +
    "They need the server's Python environment: Python 3.11 and make, then `make venv` in the repository root.");
  process.exit(1);
}
if (!existsSync(join(repo, ".venv", "bin", "gunicorn"))) {
  console.error(`fonana-realtime-client tests: no ${join(repo, ".venv", "bin", "gunicorn")} after \`make venv\``);
  process.exit(1);
}

// The TypeScript declarations compile, strictly, against test/types/usage.ts: what a
// Next.js route writes type-checks and what the server would refuse does not.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

const HERE = dirname(fileURLToPath(import.meta.url));

test("index.d.ts, catalogue.d.ts and the two switch-over entry points type-check the usage of a route and of the app (tsc --strict)", () => {
  const tsc = createRequire(import.meta.url).resolve("typescript/bin/tsc");
  const run = spawnSync(process.execPath, [tsc, "-p", join(HERE, "types", "tsconfig.json")], { encoding: "utf8" });
  assert.equal(run.status, 0, `tsc failed:\n${run.stdout}${run.stderr}`);
});

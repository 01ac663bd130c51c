// The helpers against the server's catalogue: src/catalogue.js is what
// scripts/catalogue.py makes from fonana_realtime/events.py today, every catalogue type
// has its helper (on a client, as a named export, in the declarations), and each
// helper builds an event with the fields its type requires, addressed as it must be.

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

import * as realtime from "../src/index.js";
import { CATALOGUE, createClient } from "../src/index.js";
import { catalogueHelpers, helperName } from "../src/helpers.js";
import { PYTHON, requireVenv } from "./support/server.js";

const PACKAGE = join(dirname(fileURLToPath(import.meta.url)), "..");
const NOT_HELPERS = ["clearNotifications", "likesChanged", "markNotificationRead", "publish", "publishMany",
  "pushNotification", "sendNotification"];

test("src/catalogue.js and .d.ts are what the server's catalogue generates (else: npm run catalogue)", () => {
  requireVenv();
  const run = spawnSync(PYTHON, [join(PACKAGE, "scripts", "catalogue.py"), "--print"], { encoding: "utf8" });
  assert.equal(run.status, 0, run.stderr);
  const fresh = JSON.parse(run.stdout);
  assert.equal(readFileSync(join(PACKAGE, "src", "catalogue.js"), "utf8"), fresh.js,
    "src/catalogue.js differs from fonana_realtime/events.py: run `npm run catalogue` and update the helpers");
  assert.equal(readFileSync(join(PACKAGE, "src", "catalogue.d.ts"), "utf8"), fresh.dts,
    "src/catalogue.d.ts differs from fonana_realtime/events.py: run `npm run catalogue`");
});

test("one helper per catalogue type, and no other", () => {
  const client = createClient({ url: "http://127.0.0.1:9", apiKey: "k" });
  const methods = Object.keys(client).filter((k) => typeof client[k] === "function");
  const helpers = methods.filter((m) => !NOT_HELPERS.includes(m)).sort();
  assert.deepEqual(helpers, Object.keys(CATALOGUE).map(helperName).sort());
});

test("every method of a client is also a named export and is declared in index.d.ts", () => {
  const client = createClient({ url: "http://127.0.0.1:9", apiKey: "k" });
  const dts = readFileSync(join(PACKAGE, "src", "index.d.ts"), "utf8");
  for (const name of Object.keys(client).filter((k) => typeof client[k] === "function")) {
    assert.equal(typeof realtime[name], "function", `no named export ${name}`);
    assert.match(dts, new RegExp(`^  ${name}\\(`, "m"), `RealtimeClient.${name} is not declared`);
    assert.match(dts, new RegExp(`^export declare const ${name}: RealtimeClient\\["${name}"\\];$`, "m"),
      `the named export ${name} is not declared`);
  }
});

test("each helper builds its type's event with every required field, from its arguments, routable", () => {
  const sent = [];
  const helpers = catalogueHelpers((event, address = {}) => sent.push({ event, address }));
  for (const [type, entry] of Object.entries(CATALOGUE)) {
    const helper = helpers[helperName(type)];
    // distinct, id-shaped arguments, so each one can be found again in the event
    const args = Array.from({ length: helper.length }, (_, i) => `arg${i}`);
    sent.length = 0;
    helper(...args);
    assert.equal(sent.length, 1, type);
    const { event, address } = sent[0];
    assert.equal(event.type, type);
    for (const field of entry.required) assert.ok(field in event, `${helperName(type)} leaves out ${type}.${field}`);
    for (const field of entry.idFields) {
      assert.ok(args.includes(event[field]), `${type}.${field} does not come from an argument`);
    }
    // every argument lands somewhere: in the event, or in the address
    const placed = new Set([...Object.values(event), ...Object.values(address)]);
    for (const arg of args) assert.ok(placed.has(arg), `${helperName(type)} drops its argument ${arg}`);
    if (entry.route === null) {
      assert.ok(address.channel || address.userId, `${type} has no default route: its helper must address it`);
    } else {
      assert.deepEqual(address, {}, `${type} has a default route: its helper should use it`);
    }
  }
});

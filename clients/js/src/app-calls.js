// What the two entry points of the Fonana app's switch-over share (docs/MIGRATING.md):
// the app's settings as it has them, a short deadline, and calls that never throw.
//
// The app's API routes await every realtime call, so a server that is down or slow must
// cost a route at most the deadline (WS_API_TIMEOUT_MS, default 800 ms, retries of a
// refused connection or a 503 included) and never an exception: each call resolves
// `{success: true}` or `{success: false, error}` and logs the failure, as the app's own
// wrapper did.

import { createClient } from "./client.js";

export const APP_DEFAULT_URL = "http://localhost:3002/api";     // the app's own default WS_API_URL
export const APP_DEFAULT_TIMEOUT_MS = 800;

function environment() {
  return (typeof process !== "undefined" && process.env) || {};
}

/** The server's base URL from the app's WS_API_URL (which ends in `/api`), else
 *  FONANA_REALTIME_URL (which does not), else the app's default. */
export function appBaseUrl(env = environment()) {
  if (env.WS_API_URL) return String(env.WS_API_URL).trim().replace(/\/+$/, "").replace(/\/api$/, "");
  if (env.FONANA_REALTIME_URL) return String(env.FONANA_REALTIME_URL).trim();
  return APP_DEFAULT_URL.replace(/\/api$/, "");
}

function appTimeout(env) {
  const value = Number(env.WS_API_TIMEOUT_MS);
  return Number.isFinite(value) && value > 0 ? value : APP_DEFAULT_TIMEOUT_MS;
}

// One client per setting, made again only when the environment changes (a late-loaded
// .env, a test): the settings are read on every call, which costs a string compare.
let made = { key: null, client: null };

function appClient() {
  const env = environment();
  const url = appBaseUrl(env);
  const timeoutMs = appTimeout(env);
  const apiKey = env.WS_API_SECRET;
  const key = `${url}\n${timeoutMs}\n${apiKey}`;
  if (made.key !== key) made = { key, client: createClient({ url, apiKey, timeoutMs }) };
  return made.client;
}

// The app's routes log at most once per failed call; the key never reaches a message
// (RealtimeError texts are redacted, a TypeError of createClient names no value).
function report(name, error) {
  const why = error?.message ?? String(error);
  console.error(`[fonana-realtime] ${name} failed: ${why}`);
}

/**
 * Run `work(client)`; `{success: true, value}` or, on any failure (no key, bad URL,
 * refused, timed out, 4xx/5xx), `{success: false, error}`. Bounded by the client's
 * deadline, and by a timer of its own in case anything outside fetch stalls.
 */
export async function attempt(name, work) {
  let timer;
  try {
    const client = appClient();
    const late = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no answer within ${client.timeoutMs} ms`)), client.timeoutMs + 50);
    });
    const value = await Promise.race([work(client), late]);
    return { success: true, value };
  } catch (error) {
    report(name, error);
    return { success: false, error };
  } finally {
    clearTimeout(timer);
  }
}

/** `{success}` (and `error`) alone: what the app's websocket-client functions resolve to. */
export function outcome(result) {
  return result.success ? { success: true } : { success: false, error: result.error };
}

// API_MAX_EVENTS on the server (default 1000): a longer subscriber list goes in chunks.
const EVENTS_PER_REQUEST = 1000;

/** notifyNewPost of both entry points (the same meaning in the app and the seed):
 *  `new_post_from_subscription` with the post's summary to every tab of each subscriber,
 *  one request per thousand of them, each item addressed to its subscriber. */
export async function publishNewPost(client, post, subscriberIds) {
  const event = {
    type: "new_post_from_subscription",
    post: { id: post?.id, title: post?.title, type: post?.type, creatorId: post?.creatorId, createdAt: post?.createdAt },
  };
  for (let i = 0; i < subscriberIds.length; i += EVENTS_PER_REQUEST) {
    await client.publishMany(subscriberIds.slice(i, i + EVENTS_PER_REQUEST).map((userId) => ({ event, userId })));
  }
}

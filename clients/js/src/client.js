// createClient: the server-to-server HTTP API (docs/PROTOCOL.md section 4) over fetch.
//
// Only global fetch, AbortSignal.timeout and performance are used (Node >= 18), so the
// package has no dependency and no `node:` import.

import { retryDelay, sleep } from "./backoff.js";
import { connectionError, httpError, networkCode, redactDeep } from "./errors.js";
import { catalogueHelpers } from "./helpers.js";

export const DEFAULT_URL = "http://127.0.0.1:3002";
export const DEFAULT_TIMEOUT_MS = 5000;

// Failures where the request cannot have reached the server, so sending it again cannot
// write a row or publish an event twice (a reset or a timeout mid-request might have).
const NOT_SENT = new Set(["ECONNREFUSED", "ENOTFOUND", "EAI_AGAIN", "UND_ERR_CONNECT_TIMEOUT"]);

// Printable ASCII, no whitespace at either end: what a Bearer header carries intact.
const HEADER_SAFE = /^[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?$/;

// A 503 that will not go away by waiting: the server has no WS_API_SECRET.
const FINAL_503 = new Set(["api_disabled"]);

function environment() {
  return (typeof process !== "undefined" && process.env) || {};
}

function baseUrl(value) {
  let url;
  try {
    url = new URL(String(value));
  } catch {
    throw new TypeError("fonana-realtime: url must be an absolute http(s) URL such as http://127.0.0.1:3002");
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new TypeError(`fonana-realtime: url must be http: or https: (the HTTP API, not the WebSocket), got ${url.protocol}`);
  }
  if (url.username || url.password) {
    throw new TypeError("fonana-realtime: url must not carry credentials; the key goes in apiKey / WS_API_SECRET");
  }
  url.search = "";
  url.hash = "";
  return url.href.replace(/\/+$/, "");
}

/**
 * A client for one server. Options fall back to the environment:
 * `url` to FONANA_REALTIME_URL (else http://127.0.0.1:3002), `apiKey` to WS_API_SECRET.
 * `timeoutMs` bounds each call, retries included (default 5000). `onRetry(info)`, if
 * given, is called before each pause with `{ path, attempt, delayMs, status, error, code }`
 * (what failed and how long the client waits; never a header), e.g. to log retries.
 */
export function createClient(options = {}) {
  const env = environment();
  const base = baseUrl(options.url ?? env.FONANA_REALTIME_URL ?? DEFAULT_URL);
  const apiKey = options.apiKey ?? env.WS_API_SECRET;
  if (typeof apiKey !== "string" || !apiKey) {
    throw new TypeError("fonana-realtime: no API key: pass apiKey or set WS_API_SECRET (the server's WS_API_SECRET)");
  }
  // fetch would refuse such a header later, quoting its value in the error
  if (!HEADER_SAFE.test(apiKey)) {
    throw new TypeError("fonana-realtime: the API key has leading or trailing whitespace, or a character " +
      "an HTTP header cannot carry (check WS_API_SECRET for a stray newline)");
  }
  const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  if (!Number.isFinite(timeoutMs) || timeoutMs <= 0) {
    throw new TypeError("fonana-realtime: timeoutMs must be a positive number of milliseconds");
  }
  const onRetry = options.onRetry;
  if (onRetry !== undefined && typeof onRetry !== "function") {
    throw new TypeError("fonana-realtime: onRetry must be a function");
  }
  // The key lives only in this closure and in the header below: not a property of the
  // client, so logging or inspecting the client cannot show it.
  const headers = {
    authorization: `Bearer ${apiKey}`,
    "content-type": "application/json",
    accept: "application/json",
  };

  /** POST `body` to `path`; the decoded answer, or a RealtimeError. `keep503(answer)`
   *  may turn a 503 answer into a result instead of a retry. */
  async function post(path, body, keep503) {
    const url = base + path;
    const payload = JSON.stringify(body);
    const deadline = performance.now() + timeoutMs;
    let last;            // the last 503, for the error if the deadline passes
    for (let attempt = 1; ; attempt++) {
      let status, answer;
      const signal = AbortSignal.timeout(Math.max(1, Math.ceil(deadline - performance.now())));
      try {
        const response = await fetch(url, {
          method: "POST",
          headers,
          body: payload,
          redirect: "manual",                         // never resend the key elsewhere
          signal,
        });
        status = response.status;
        answer = decode(await response.text(), apiKey);
      } catch (failure) {
        const code = networkCode(failure);
        const retry = NOT_SENT.has(code) && waitable(attempt, deadline);
        if (retry === false) throw connectionError("POST", url, failure, attempt, apiKey, last);
        await pause({ path, attempt, delayMs: retry, code });
        continue;
      }
      if (status >= 200 && status < 300) return answer;
      if (status === 503 && !FINAL_503.has(answer?.error)) {
        const kept = keep503?.(answer);
        if (kept !== undefined) return kept;
        last = { status, error: answer?.error };
        const retry = waitable(attempt, deadline);
        if (retry !== false) {
          await pause({ path, attempt, delayMs: retry, status, error: answer?.error });
          continue;
        }
      }
      throw httpError("POST", url, status, answer, attempt);
    }
  }

  async function pause(info) {
    await onRetry?.(info);
    await sleep(info.delayMs);
  }

  /** The pause before the next attempt, or false when it would end past the deadline. */
  function waitable(attempt, deadline) {
    const delay = retryDelay(attempt);
    return performance.now() + delay < deadline ? delay : false;
  }

  async function publish(event, { channel, userId } = {}) {
    return post("/api/events", address({ event }, channel, userId));
  }

  async function publishMany(events, { channel, userId } = {}) {
    return post("/api/events", address({ events }, channel, userId));
  }

  const client = {
    url: base,
    timeoutMs,

    /** The old sendNotification: writes the row, pushes `notification` to every tab of
     *  the user, and resolves to the ROW. When the row was written but the push failed
     *  (503 broker_unavailable carrying the row) it resolves to the row too: the user gets
     *  it as unread on the next subscribe, and a retry would write it twice. */
    async sendNotification(userId, { type, title, message, metadata } = {}) {
      const body = { userId, type, title, message };
      if (metadata !== undefined) body.metadata = metadata;
      return post("/api/notifications", body, (answer) => answer?.notification ?? undefined);
    },

    /** Marks one notification read and pushes `notification_read`; resolves to the ROW. */
    async markNotificationRead(userId, notificationId) {
      const answer = await post("/api/notifications/read", { userId, notificationId });
      return answer.notification;
    },

    /** Marks all of the user's notifications read and pushes `notifications_cleared`:
     *  resolves to `{cleared: n}`. */
    async clearNotifications(userId) {
      return post("/api/notifications/clear", { userId });
    },

    /** The row the app's route just wrote, pushed (found by `metadata.id`, else by its
     *  content); written only when the route wrote none. Resolves to
     *  `{notification: ROW, created}`; when only the push failed (503 with the row), to
     *  `{notification: ROW, created: false, pushed: false}` (a retry could write it twice). */
    async pushNotification(userId, { type, title, message, metadata } = {}) {
      const body = { userId, type, title, message };
      if (metadata !== undefined) body.metadata = metadata;
      return post("/api/notifications/push", body,
        (answer) => (answer?.notification ? { notification: answer.notification, created: false, pushed: false } : undefined));
    },

    /** `post_liked` (or `post_unliked` with `isLiked: false`) to `post_<postId>`, with
     *  `likesCount`, or without it the post's count read from the database by the server. */
    async likesChanged(postId, userId, { isLiked = true, likesCount } = {}) {
      const body = { postId, userId: userId ?? null, isLiked };
      if (likesCount !== undefined) body.likesCount = likesCount;
      return post("/api/likes", body);
    },

    publish,
    publishMany,
    ...catalogueHelpers(publish),
  };
  return Object.freeze(client);
}

function address(body, channel, userId) {
  if (channel !== undefined && channel !== null) body.channel = channel;
  if (userId !== undefined && userId !== null) body.userId = userId;
  return body;
}

function decode(text, apiKey) {
  if (!text) return null;
  try {
    return redactDeep(JSON.parse(text), apiKey);
  } catch {
    return redactDeep(text.slice(0, 500), apiKey);
  }
}

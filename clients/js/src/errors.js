// The errors a call can end with. Every message, field and cause is built here from
// the server's answer or the network error's code, never from the request, so the API
// key (sent only in the Authorization header) cannot end up in one; `redact` also
// removes it from any text the other side sends back, in case a proxy echoes headers.

/** Base class: every error this package throws is one of these. */
export class RealtimeError extends Error {
  constructor(message, { cause, ...fields } = {}) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = new.target.name;
    /** HTTP status of the last answer, undefined when there was none. */
    this.status = fields.status;
    /** The server's `error` (`bad_request`, `unauthorized`, …) or, with no answer, `timeout` / `network`. */
    this.error = fields.error;
    /** The server's `reason`, when it gave one. */
    this.reason = fields.reason;
    /** For `publishMany`: the position of the event the server refused. */
    this.index = fields.index;
    /** The decoded JSON answer (or its text, cut to 500 characters). */
    this.body = fields.body;
    /** How many requests were made (more than 1 when 503s or refused connections were retried). */
    this.attempts = fields.attempts;
    for (const key of Object.keys(this)) if (this[key] === undefined) delete this[key];
  }
}

/** The server answered, with a status that is not a success (4xx, or 5xx after the retries). */
export class RealtimeHttpError extends RealtimeError {}

/** No usable answer: the deadline (`timeoutMs`) passed, or the server could not be reached. */
export class RealtimeConnectionError extends RealtimeError {}

/** `text` with every occurrence of `secret` replaced (a no-op for an empty secret). */
export function redact(text, secret) {
  if (typeof text !== "string" || !secret) return text;
  return text.split(secret).join("[redacted]");
}

/** The same for every string inside a decoded JSON value. */
export function redactDeep(value, secret) {
  if (!secret) return value;
  if (typeof value === "string") return redact(value, secret);
  if (Array.isArray(value)) return value.map((v) => redactDeep(v, secret));
  if (value && typeof value === "object") {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [redact(k, secret), redactDeep(v, secret)]));
  }
  return value;
}

/** A RealtimeHttpError from a decoded answer: `POST <url> -> 400 bad_request: <reason> (index 2)`. */
export function httpError(method, url, status, body, attempts) {
  const fields = body && typeof body === "object" && !Array.isArray(body) ? body : {};
  const error = typeof fields.error === "string" ? fields.error : undefined;
  const reason = typeof fields.reason === "string" ? fields.reason : undefined;
  const index = Number.isInteger(fields.index) ? fields.index : undefined;
  let message = `${method} ${url} -> ${status}${error ? ` ${error}` : ""}${reason ? `: ${reason}` : ""}`;
  if (index !== undefined) message += ` (events[${index}])`;
  if (status === 401) message += " (check apiKey / WS_API_SECRET: it must equal the server's WS_API_SECRET)";
  if (attempts > 1) message += ` after ${attempts} attempts`;
  return new RealtimeHttpError(message, { status, error, reason, index, body, attempts });
}

/** A RealtimeConnectionError from a fetch failure, with a cause that holds only its code and text. */
export function connectionError(method, url, failure, attempts, secret, last) {
  const timedOut = failure?.name === "TimeoutError" || failure?.name === "AbortError";
  const code = timedOut ? "timeout" : networkCode(failure) ?? "network";
  const detail = redact(String(failure?.cause?.message ?? failure?.message ?? failure), secret);
  let message = `${method} ${url}: ${timedOut ? "no answer within timeoutMs" : `cannot reach the server (${detail})`}`;
  if (last) message += `; last answer ${last.status}${last.error ? ` ${last.error}` : ""}`;
  if (attempts > 1) message += ` after ${attempts} attempts`;
  const cause = new Error(timedOut ? "timeout" : detail);
  cause.code = code;
  return new RealtimeConnectionError(message, { error: code === "timeout" ? "timeout" : "network", reason: code, attempts, cause });
}

/** The system error code (`ECONNREFUSED`, …) of a failed fetch, if it has one. */
export function networkCode(failure) {
  for (let e = failure, depth = 0; e && depth < 4; e = e.cause, depth++) {
    if (typeof e.code === "string") return e.code;
  }
  return undefined;
}

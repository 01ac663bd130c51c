// When to try again after a 503 or a refused connection.
//
// The server's own Redis listener reconnects 0.05–0.1 s after a failure, doubling up to
// 0.5–1 s between attempts (docs/PUBLISHING.md, "When Redis goes away"); measured, it
// delivers again 0.03–0.8 s after Redis answers. The same schedule here means a caller
// waits at most about one server back-off longer than the outage, and many callers
// retrying at once spread out instead of arriving together.

export const FIRST_DELAY_MS = 50;
export const MAX_DELAY_MS = 1000;

/** The pause before retry number `retry` (1, 2, …): between half and all of
 *  min(MAX_DELAY_MS, FIRST_DELAY_MS * 2^(retry-1)) ("equal jitter"). */
export function retryDelay(retry, random = Math.random) {
  const ceiling = Math.min(MAX_DELAY_MS, FIRST_DELAY_MS * 2 ** Math.max(0, retry - 1));
  return ceiling / 2 + random() * (ceiling / 2);
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// An HTTP proxy in front of the real server: it answers some requests itself (a 503, as
// the server does while Redis is down or nginx while it restarts) and forwards the rest,
// so the client's retries are exercised over real sockets and end at the real server.

import { createServer } from "node:http";

/**
 * `plan(n)` decides request number n (1, 2, …): "forward", `{status, body}` to answer
 * without forwarding, or "hang" to never answer. `plan` also gets the request (`{method, path, headers}`).
 * `port`: listen there (default: any free port).
 */
export async function startProxy(targetUrl, plan, { port = 0 } = {}) {
  const seen = [];
  const server = createServer(async (req, res) => {
    const chunks = [];
    for await (const chunk of req) chunks.push(chunk);
    const n = seen.length + 1;
    seen.push({ method: req.method, path: req.url });      // no headers: a failing assertion prints it
    const decision = plan(n, { method: req.method, path: req.url, headers: req.headers });
    if (decision === "hang") return;
    const reply = (status, body) => {
      res.writeHead(status, { "content-type": "application/json" });
      res.end(JSON.stringify(body));
    };
    if (decision !== "forward") {
      reply(decision.status, decision.body);
      return;
    }
    const upstream = await fetch(targetUrl + req.url, {
      method: req.method,
      headers: { authorization: req.headers.authorization ?? "", "content-type": "application/json" },
      body: Buffer.concat(chunks),
    });
    const text = await upstream.text();
    res.writeHead(upstream.status, { "content-type": upstream.headers.get("content-type") ?? "application/json" });
    res.end(text);
  });
  await new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, "127.0.0.1", resolve);
  });
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    /** The requests it received, in order. */
    seen,
    close: () => new Promise((resolve) => {
      server.closeAllConnections();
      server.close(resolve);
    }),
  };
}

// The Fonana app's own settings, as its .env has them, pointed at a test server
// (WS_API_URL with the /api, WS_API_SECRET, the default deadline), and put back afterwards.

import { createDatabase } from "./pg.js";
import { startServer } from "./server.js";

const NAMES = ["WS_API_URL", "WS_API_SECRET", "FONANA_REALTIME_URL", "WS_API_TIMEOUT_MS"];

/** Set the app's variables for `server` (or to `values`); returns the function that restores them. */
export function appEnvironment(server, values = {}) {
  const saved = Object.fromEntries(NAMES.map((name) => [name, process.env[name]]));
  const wanted = { WS_API_URL: server && `${server.url}/api`, WS_API_SECRET: server?.apiKey, ...values };
  for (const name of NAMES) {
    if (wanted[name] === undefined) delete process.env[name];
    else process.env[name] = wanted[name];
  }
  return () => {
    for (const [name, value] of Object.entries(saved)) {
      if (value === undefined) delete process.env[name];
      else process.env[name] = value;
    }
  };
}

/** The app's world for a test file: a fresh PostgreSQL database, a real server on it, and
 *  the app's variables pointed at that server. `stop()` undoes all three. */
export async function startAppStack(name) {
  const db = createDatabase();
  let server;
  try {
    server = await startServer({ name, env: { DATABASE_URL: db.url } });
  } catch (error) {
    db.drop();
    throw error;
  }
  const restore = appEnvironment(server);     // WS_API_URL with the /api, the default deadline (800 ms)
  return {
    db,
    server,
    async stop() {
      await server.stop();
      db.drop();
      restore();
    },
  };
}

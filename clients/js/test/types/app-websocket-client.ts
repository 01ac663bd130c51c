// The Fonana app's lib/services/websocket-client.ts after the switch-over: this one line.
export * from "@fonana/realtime-client/websocket-client";

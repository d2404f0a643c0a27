import type { Adapter } from 'socket.io-adapter';

export interface AdapterOptions {
  /** Milliseconds between heartbeats (default 5000). */
  heartbeatInterval?: number;
  /** Milliseconds without a message after which a server is forgotten (default 10000); a worker that exits is forgotten at once. */
  heartbeatTimeout?: number;
}

/** A socket.io adapter over the sticky-cluster bus: `new Server(http, { adapter: createAdapter() })`. */
export function createAdapter(opts?: AdapterOptions): (nsp: any) => Adapter;

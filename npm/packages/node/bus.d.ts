/// <reference types="node" />
import { EventEmitter } from 'events';

declare namespace bus {
/** The worker's end of the sticky-cluster message bus (newline-delimited JSON over STICKY_CLUSTER_IPC). */
interface Bus extends EventEmitter {
  /** True in a process started by sticky-cluster. */
  readonly available: boolean;
  /** This worker's index (WORKER_ID), or null outside a worker. */
  readonly id: number | null;
  /** To the supervisor: `--on-message`, the master's `workerListener`. */
  send(data: unknown): void;
  /** To every other worker. */
  broadcast(data: unknown): void;
  /** To worker `id`. */
  sendTo(id: number, data: unknown): void;
  /** Pins session key `key` to this worker. */
  bind(key: string): void;
  /** Forgets session key `key`. */
  unbind(key: string): void;
  /** Connects now (sending or listening connects too). */
  connect(): void;
  /** Closes the connection for good. */
  close(): void;
  /** `from`: the sending worker, or null for the supervisor. */
  on(event: 'message', listener: (data: any, from: number | null) => void): this;
  /** Another worker's process exited (`down`) or came (back) up. */
  on(event: 'worker', listener: (change: { id: number; state: 'up' | 'down' }) => void): this;
  on(event: 'connect' | 'disconnect', listener: () => void): this;
}
}

declare const bus: bus.Bus;
export = bus;

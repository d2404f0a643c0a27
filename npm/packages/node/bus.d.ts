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
  /** Session hand-off, retiring side: hands session `key` and its `data` to the replacement. */
  handoff(key: string, data: unknown): void;
  /** Session hand-off, retiring side: every session was handed off. */
  handoffEnd(): void;
  /** Session hand-off, replacement side: session `key` is stored here now; re-pin it. */
  adopt(key: string): void;
  /** Connects now (sending or listening connects too). */
  connect(): void;
  /** Closes the connection for good. */
  close(): void;
  /** `from`: the sending worker, or null for the supervisor. */
  on(event: 'message', listener: (data: any, from: number | null) => void): this;
  /** Another worker's process exited (`down`) or came (back) up. */
  on(event: 'worker', listener: (change: { id: number; state: 'up' | 'down' }) => void): this;
  on(event: 'connect' | 'disconnect', listener: () => void): this;
  /** This process is retiring (rolling restart with --drain-sessions): hand sessions off. */
  on(event: 'drain', listener: () => void): this;
  /** A session handed off by the retiring process of this slot; `from` is the slot. */
  on(event: 'handoff', listener: (key: string, data: any, from: number) => void): this;
  /** The replacement adopted session `key`: this (retiring) process may forget it. */
  on(event: 'adopted', listener: (key: string) => void): this;
}
}

declare const bus: bus.Bus;
export = bus;

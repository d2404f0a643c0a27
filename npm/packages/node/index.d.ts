/// <reference types="node" />
import type { ChildProcess } from 'child_process';
import bus = require('./bus');

declare namespace stickyCluster {
  /** A session key source of the proxy (see `--session-key`). */
  type KeySource = `cookie:${string}` | `header:${string}` | `query:${string}` | 'ip' | 'none';

  interface Logger {
    info(message: string): void;
    warn(message: string): void;
    error(message: string): void;
    debug?(message: string): void;
  }

  /** express-sticky-cluster's options, same names and meanings. */
  interface Options {
    /** Worker processes; 0 = one per CPU (default). */
    workers?: number;
    /** Restart workers that exit (default true). */
    respawn?: boolean;
    /** Proxy WebSocket (default true). */
    socket?: boolean;
    /** Proxy port (default 80, 443 with ssl.secure); env STICKY_CLUSTER_PROXY_PORT overrides. */
    proxy_port?: number;
    /** First worker port (default 8000); env STICKY_CLUSTER_WORKER_PORT overrides. */
    worker_port?: number;
    /** Least time before the proxy accepts connections, in ms. */
    delay?: number;
    /** Log routing decisions. */
    debug?: boolean;
    ssl?: {
      /** HTTPS at the proxy. */
      secure?: boolean;
      /** PEM contents (not paths). */
      certs?: { key: string | Buffer; cert: string | Buffer };
      /**
       * How the proxy reaches workers: 'tls' (default: they serve HTTPS with certs.cert),
       * 'tls-no-verify', or 'plain' (TLS at the proxy only: faster, recommended).
       */
      workers?: 'tls' | 'tls-no-verify' | 'plain';
    };
    /** Clients let in or kept out: addresses, CIDRs and [from, to] ranges. */
    ipfilter?: { ips: Array<string | [string, string]>; mode?: 'allow' | 'deny' };
    session?: {
      /** The session cookie's name, or a key source. */
      hash?: string | KeySource;
      /** Sliding TTL of a remembered session, in ms. */
      ttl?: number;
    };
    /** Gets the binary's log lines. A function gets (line, level). */
    logger?: Logger | ((message: string, level: 'debug' | 'info' | 'warn' | 'error') => void) | null;
    /** Gets every message a worker sends (bus.send or process.send); `this.id` is the worker. */
    workerListener?: ((this: { id: number }, message: any) => void) | null;
    /** Extra sticky-cluster flags, e.g. ['--session-max', '100000']. */
    args?: string[];
  }

  interface Worker {
    /** 0-based worker index (WORKER_ID). */
    id: number;
    process: NodeJS.Process;
  }
}

interface StickyCluster {
  /** Master: starts the cluster, returns the binary's process. Worker: returns the callback's value. */
  <T>(options: stickyCluster.Options, callback: (worker: stickyCluster.Worker, port: number) => T): T | ChildProcess;
  /** The worker's message bus. */
  bus: bus.Bus;
  /** True in a worker started by this API. */
  isWorker(): boolean;
  /** The binary this package runs. */
  binaryPath(): string;
  default: StickyCluster;
}

declare const stickyCluster: StickyCluster;
export = stickyCluster;

import type bus = require('./bus');

declare namespace session {
  /** What handoff() needs of an express-session store: set(), and all() (MemoryStore) ... */
  interface AllStore {
    all(callback: (err: any, sessions?: { [sid: string]: any } | any[] | null) => void): void;
    set(sid: string, session: any, callback?: (err?: any) => void): void;
  }
  /** ... or list() of session ids and get() (session-file-store). */
  interface ListStore {
    list(callback: (err: any, ids?: string[]) => void): void;
    get(sid: string, callback: (err: any, session?: any) => void): void;
    set(sid: string, session: any, callback?: (err?: any) => void): void;
  }
  type ListableStore = AllStore | ListStore;
  interface HandoffOptions {
    /** The session middleware's secret: sessions are handed off under their signed cookie value. */
    secret?: string | string[];
    /** The proxy's session key for a session id, instead of the signed cookie value. */
    key?: (sid: string) => string;
    /** The bus to use (default: this worker's). */
    bus?: bus.Bus;
  }
  /**
   * Session hand-off on rolling restarts (--drain-sessions): a retiring process hands every
   * session of `store` to its replacement, which stores and adopts them. Returns `store`.
   */
  function handoff<S extends ListableStore>(store: S, options?: HandoffOptions): S;
  /** express-session's cookie value for session id `sid` signed with `secret`. */
  function signedCookie(sid: string, secret: string): string;
  /** Longest bus line in bytes; a larger session is not handed off. */
  const MAX_LINE: number;
}

export = session;

/**
 * SystemdNotifier: what `narfs mount` tells systemd under a `Type=notify` unit
 * (sd_notify(3); the datagram is sent by the addon's `sdNotify`, native/src/sd-notify.cc).
 *
 * - `READY=1` once, after the mount answers (the caller checks that first) — so units
 *   ordered after narfs.service (nix-daemon, the overlay mount, virtiofsd) start only
 *   when /nix/store can be read;
 * - `STATUS=…` one human line (shown by `systemctl status`), on each state change and
 *   refreshed with every watchdog ping;
 * - `WATCHDOG=1` (systemd.service(5), WatchdogSec=), when $WATCHDOG_PID is unset or ours.
 *   With the native engine the pings come from its C thread (native/src/watchdog.cc), every
 *   quarter of $WATCHDOG_USEC, and only while the JS loop beat within half of it and no
 *   reader thread is stuck in one request that long: a stalled event loop or a stuck reader
 *   both stop the pings, and systemd restarts the daemon (which resumes the mount,
 *   restart-state.ts). Policy (these fractions) is here, the mechanism in C. Without the
 *   native engine the JS loop pings every half of $WATCHDOG_USEC itself.
 * - `STOPPING=1` when the unmount starts.
 *
 * Without $NOTIFY_SOCKET (not under systemd) every call is a no-op. A failed send is
 * logged once and never fails the mount.
 */
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { Logger } from '../log.js';

const require = createRequire(import.meta.url);

type SdNotify = (state: string) => boolean;

/** The engine's pinging thread (NativeMount.watchdog). */
export interface EngineWatchdog {
  start(intervalMs: number, staleMs: number): void;
  beat(): void;
  stop(): void;
}

/** The addon's sdNotify, or undefined when the addon is not built. */
export function loadSdNotify(): SdNotify | undefined {
  const found = ['../../build/Release/narfs_fuse.node', '../../../build/Release/narfs_fuse.node']
    .map((rel) => fileURLToPath(new URL(rel, import.meta.url)))
    .find((p) => existsSync(p));
  if (!found) return undefined;
  const addon = require(found) as { sdNotify?: SdNotify };
  return addon.sdNotify;
}

export class SystemdNotifier {
  readonly #send: SdNotify | undefined;
  readonly #log: Logger;
  #timer: NodeJS.Timeout | undefined;
  #failed = false;
  #status = '';
  #engine: EngineWatchdog | undefined;

  constructor(logger: Logger, send: SdNotify | undefined = process.env['NOTIFY_SOCKET'] ? loadSdNotify() : undefined) {
    this.#log = logger;
    this.#send = send;
    if (process.env['NOTIFY_SOCKET'] && !send) {
      logger.warn('NOTIFY_SOCKET is set but the native addon (build/Release/narfs_fuse.node) is not built: systemd will not be told when the mount is ready');
    }
  }

  /** Whether systemd listens (NOTIFY_SOCKET set and the addon loaded). */
  get active(): boolean {
    return this.#send !== undefined && !!process.env['NOTIFY_SOCKET'];
  }

  status(line: string): void {
    this.#status = line;
    this.#notify(`STATUS=${line}`);
  }

  /** READY=1 with a status line, and the watchdog pings from now on (from `engine` if given). */
  ready(line: string, refresh?: () => string, engine?: EngineWatchdog): void {
    this.#status = line;
    this.#notify(`READY=1\nSTATUS=${line}`);
    const usec = Number(process.env['WATCHDOG_USEC']);
    const pid = process.env['WATCHDOG_PID'];
    if (!this.active || !Number.isFinite(usec) || usec <= 0 || (pid !== undefined && pid !== '' && Number(pid) !== process.pid)) return;
    if (engine) {
      const everyMs = Math.max(25, Math.floor(usec / 4000));
      const staleMs = Math.max(everyMs, Math.floor(usec / 2000));
      this.#engine = engine;
      engine.start(everyMs, staleMs);
      this.#timer = setInterval(() => {
        engine.beat();
        const now = refresh?.() ?? this.#status;
        if (now !== this.#status) this.#notify(`STATUS=${now}`);
        this.#status = now;
      }, everyMs);
      this.#timer.unref();
      this.#log.info('systemd watchdog armed (engine thread)', { pingEveryMs: everyMs, jsStaleAfterMs: staleMs });
      return;
    }
    const everyMs = Math.max(100, Math.floor(usec / 2000));
    this.#timer = setInterval(() => {
      const now = refresh?.() ?? this.#status;
      this.#notify(now === this.#status ? 'WATCHDOG=1' : `WATCHDOG=1\nSTATUS=${now}`);
      this.#status = now;
    }, everyMs);
    this.#timer.unref();
    this.#log.info('systemd watchdog armed', { pingEveryMs: everyMs });
  }

  stopping(line: string): void {
    this.#stopPings();
    this.#notify(`STOPPING=1\nSTATUS=${line}`);
  }

  #stopPings(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = undefined;
    this.#engine?.stop();
    this.#engine = undefined;
  }

  #notify(state: string): void {
    if (!this.#send) return;
    try {
      this.#send(state);
    } catch (err) {
      if (!this.#failed) this.#log.warn('cannot notify systemd', { err: (err as Error).message });
      this.#failed = true;
    }
  }
}

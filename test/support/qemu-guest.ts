/**
 * Boots a QEMU guest (scripts/build-vm-guest.sh) with directories of this host exported to
 * it over virtiofs, and collects what it writes to its serial ports.
 *
 * Invariants:
 * - Every export is read-only twice over: virtiofsd runs in its own mount namespace
 *   (`unshare -m`, private propagation) on a read-only bind of the directory, and the Rust
 *   virtiofsd also gets --readonly (the C one of QEMU 7.2, /usr/lib/qemu/virtiofsd, has no
 *   such option). Options over a FUSE mount as in systemd/narfs-virtiofsd@.service and
 *   fuse-engine.md §5/§7: no file-handle mode, no xattrs, no locks.
 * - The guest has no network (`-nic none`): nothing it does can download anything.
 * - Waits are on events: a virtiofsd socket appearing (fs.watch on its directory), QEMU
 *   exiting (the guest reboots, QEMU runs with -no-reboot), lines on ttyS1 (fs.watch on
 *   the file). The guest's last line on ttyS1 is `DONE`; once it is there QEMU gets a
 *   bounded time to exit on its own before it is killed. Deadlines bound hangs only, generously for TCG on a loaded 2-core machine.
 * - `stop()` kills QEMU before the virtiofsds (they hold descriptors on the exports, a
 *   FUSE mount among them) and is safe to call twice; call it before unmounting.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, watch } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

export const VIRTIOFSD = ['/usr/libexec/virtiofsd', '/usr/lib/qemu/virtiofsd'].find((p) => existsSync(p));

/** How long virtiofsd may take to listen (a process start, on a loaded machine). */
const LISTEN_MS = 60_000;

export interface GuestRun {
  /** QEMU's exit code (0 after the guest's reboot), null when it was killed. */
  code: number | null;
  /** Whether QEMU was killed by the deadline (or after DONE). */
  killed: boolean;
  /** ttyS0: the kernel's console. */
  console: string;
  /** ttyS1: what the guest reports, `\r` removed. */
  out: string;
  /** Wall time of the boot in ms. */
  ms: number;
  /** What BootOptions.onLine threw. */
  lineErrors: string[];
}

export interface BootOptions {
  /** The directory scripts/build-vm-guest.sh printed. */
  guest: string;
  /** Kernel command line, after `console=ttyS0`. */
  append: string;
  /** An archive appended to the guest's initramfs (test/support/newc-cpio.ts). */
  initrdExtra?: Buffer;
  memMiB?: number;
  /** Bound of the whole boot. */
  deadlineMs: number;
  /**
   * Called with each complete line the guest writes to ttyS1, in order, as it arrives (a
   * way for the host to act at a point the guest announces, e.g. `REGISTER …`); the next
   * line waits for the promise. Its errors are collected in GuestRun.lineErrors.
   */
  onLine?: (line: string) => Promise<void> | void;
}

function exited(child: ChildProcess): Promise<void> {
  return new Promise((r) => (child.exitCode !== null || child.signalCode !== null ? r() : child.once('exit', () => r())));
}

function alive(child: ChildProcess | undefined): child is ChildProcess {
  return child !== undefined && child.exitCode === null && child.signalCode === null;
}

/** Resolves once `file` exists, re-checking on each change in its directory; rejects after `ms` or when `child` exits. */
async function untilExists(file: string, dir: string, child: ChildProcess, ms: number, log: () => string): Promise<void> {
  const ac = new AbortController();
  let changed: () => void = () => {};
  watch(dir, { signal: ac.signal }, () => changed()).on('error', () => changed());
  child.once('exit', () => changed());
  const deadline = Date.now() + ms;
  try {
    for (;;) {
      const next = new Promise<void>((r) => (changed = r));
      if (existsSync(file)) return;
      if (!alive(child)) throw new Error(`virtiofsd exited before listening: ${log()}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`virtiofsd did not listen within ${ms / 1000} s: ${log()}`);
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([next, new Promise<void>((r) => (timer = setTimeout(r, left)))]);
      clearTimeout(timer);
    }
  } finally {
    ac.abort();
  }
}

export class QemuGuest {
  private readonly virtiofsds: ChildProcess[] = [];
  private readonly exports: { tag: string; sock: string }[] = [];
  private qemu: ChildProcess | undefined;
  readonly logs: Record<string, string> = {};

  /** `dir`: a private, empty work directory of the caller. */
  constructor(private readonly dir: string) {
    if (!VIRTIOFSD) throw new Error('no virtiofsd (/usr/libexec/virtiofsd or /usr/lib/qemu/virtiofsd)');
  }

  /**
   * Exports `source` to the guest as virtiofs tag `tag`. `cache`: `always` for what never
   * changes (a store, a distribution tree), `auto` for what may be replaced while the
   * guest runs (the lower database: a new generation is a rename over db.sqlite).
   */
  async export(tag: string, source: string, cache: 'always' | 'auto'): Promise<void> {
    const ro = join(this.dir, `export-${tag}`);
    const sockDir = join(this.dir, `sock-${tag}`);
    const sock = join(sockDir, 'vfs.sock');
    await mkdir(ro);
    await mkdir(sockDir);
    const opts = VIRTIOFSD!.endsWith('libexec/virtiofsd')
      ? `--socket-path=${sock} --shared-dir=${ro} --readonly --cache=${cache} --inode-file-handles=never --sandbox=namespace`
      : `--socket-path=${sock} -o source=${ro} -o cache=${cache} -o sandbox=namespace -o no_posix_lock -o no_flock -o no_xattr`;
    const child = spawn('unshare', ['-m', '--propagation', 'private', 'sh', '-c',
      `mount --bind "$1" "$2" && mount -o remount,bind,ro "$2" && exec ${VIRTIOFSD!} ${opts}`, 'sh', source, ro],
    { stdio: ['ignore', 'pipe', 'pipe'] });
    this.virtiofsds.push(child);
    this.logs[tag] = '';
    child.stdout!.on('data', (d: Buffer) => (this.logs[tag] += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (this.logs[tag] += d.toString()));
    await untilExists(sock, sockDir, child, LISTEN_MS, () => this.logs[tag]!);
    this.exports.push({ tag, sock });
  }

  /** Boots the guest once with every export so far; resolves when QEMU is gone. */
  async boot(o: BootOptions): Promise<GuestRun> {
    const out = join(this.dir, 'ttyS1');
    const con = join(this.dir, 'console');
    await writeFile(out, '');
    let initrd = join(o.guest, 'initramfs.cpio.gz');
    if (o.initrdExtra) {
      // The cached archive is zero-padded to 4 bytes; the kernel unpacks both in turn.
      const joined = join(this.dir, 'initrd');
      await writeFile(joined, Buffer.concat([await readFile(initrd), o.initrdExtra]));
      initrd = joined;
    }
    const mem = `${o.memMiB ?? 512}M`;
    const start = Date.now();
    const qemu = spawn('qemu-system-x86_64', [
      '-M', 'q35,memory-backend=mem', '-object', `memory-backend-memfd,id=mem,size=${mem},share=on`, '-m', mem,
      '-accel', 'tcg', '-cpu', 'max', '-smp', '1', '-display', 'none', '-no-reboot', '-nic', 'none',
      '-kernel', join(o.guest, 'vmlinux'), '-initrd', initrd,
      '-append', `console=ttyS0 quiet panic=-1 ${o.append}`,
      '-serial', `file:${con}`, '-chardev', `file,id=out,path=${out}`, '-device', 'isa-serial,chardev=out',
      ...this.exports.flatMap(({ tag, sock }, i) => [
        '-chardev', `socket,id=vfs${i},path=${sock}`, '-device', `vhost-user-fs-pci,chardev=vfs${i},tag=${tag}`]),
    ], { stdio: ['ignore', 'ignore', 'pipe'] });
    this.qemu = qemu;
    let qemuErr = '';
    qemu.stderr!.on('data', (d: Buffer) => (qemuErr += d.toString()));
    let killed = false;
    const kill = () => {
      if (alive(qemu)) {
        killed = true;
        qemu.kill('SIGKILL');
      }
    };
    const deadline = setTimeout(kill, o.deadlineMs);
    // Once DONE is on ttyS1 the guest is rebooting: QEMU gets a bounded time to exit.
    let afterDone: NodeJS.Timeout | undefined;
    const lineErrors: string[] = [];
    let seen = 0;
    let chain = Promise.resolve();
    const scan = () => {
      chain = chain.then(async () => {
        const lines = (await readFile(out, 'latin1')).replace(/\r/g, '').split('\n');
        lines.pop(); // incomplete (or empty) last piece
        for (; seen < lines.length; seen++) {
          const line = lines[seen]!;
          if (afterDone === undefined && /^DONE\b/.test(line)) afterDone = setTimeout(kill, 60_000);
          try {
            await o.onLine?.(line);
          } catch (e) {
            lineErrors.push(`${line}: ${(e as Error).message}`);
          }
        }
      }).catch(() => {});
    };
    const ac = new AbortController();
    watch(out, { signal: ac.signal }, scan).on('error', () => {});
    await exited(qemu);
    clearTimeout(deadline);
    ac.abort();
    scan();
    await chain;
    clearTimeout(afterDone);
    const console_ = await readFile(con, 'utf8').catch(() => '');
    return {
      code: qemu.exitCode,
      killed,
      console: console_ + (qemuErr ? `\n--- qemu stderr:\n${qemuErr}` : ''),
      out: (await readFile(out, 'latin1')).replace(/\r/g, ''),
      ms: Date.now() - start,
      lineErrors,
    };
  }

  /** QEMU first, then every virtiofsd (SIGTERM, SIGKILL after 10 s). */
  async stop(): Promise<void> {
    if (alive(this.qemu)) {
      this.qemu.kill('SIGKILL');
      await exited(this.qemu);
    }
    await Promise.all(this.virtiofsds.filter(alive).map(async (v) => {
      v.kill('SIGTERM');
      const t = setTimeout(() => v.kill('SIGKILL'), 10_000);
      await exited(v);
      clearTimeout(t);
    }));
  }
}

/**
 * A stream from `getStream` may fail before its caller has attached anything to it (the
 * caller awaited something else first: a temp file, a decompressor). That failure must not
 * become an unhandled 'error' (which kills the process), and it must not be lost either:
 * the caller gets it as soon as it consumes the stream.
 *
 * HTTP: a real node:http server on 127.0.0.1 (port 0), written here, sends headers and
 * 1 KiB of a larger body, then resets the connection; the same server serves as a
 * path-style S3 endpoint for S3Datalake. file://: a real file whose stream is
 * aborted or closed before use, and a "NAR" that is a symlink to /proc/self/mem, whose read
 * at offset 0 fails with a real EIO from the kernel (address 0 is never mapped).
 */
import assert from 'node:assert/strict';
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { once } from 'node:events';
import { promises as fsp } from 'node:fs';
import * as http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { Writable, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { inspect } from 'node:util';
import { FileDatalake } from '../../src/datalake/file-datalake.js';
import { HttpDatalake } from '../../src/datalake/http-datalake.js';
import { S3Datalake } from '../../src/datalake/s3-datalake.js';
import { isNarfsError } from '../../src/errors.js';

/** Collects uncaught exceptions while installed; mocha's own handler stays in place too. */
class UncaughtWatch {
  readonly seen: unknown[] = [];
  private readonly listener = (e: unknown) => void this.seen.push(e);
  constructor() {
    process.on('uncaughtException', this.listener);
  }
  remove(): void {
    process.off('uncaughtException', this.listener);
  }
}

/** How many of this process's file descriptors are open on `target` (per /proc/self/fd). */
async function fdsOn(target: string): Promise<number> {
  let n = 0;
  for (const fd of await fsp.readdir('/proc/self/fd')) {
    const to = await fsp.readlink(`/proc/self/fd/${fd}`).catch(() => '');
    if (to === target) n++;
  }
  return n;
}

/**
 * Waits until no descriptor is open on `target` any more: the datalake has released the
 * file. A condition, polled; `boundMs` only turns a hang into a failure.
 */
async function released(target: string, boundMs = 10_000): Promise<void> {
  const until = Date.now() + boundMs;
  while ((await fdsOn(target)) > 0) {
    assert.ok(Date.now() < until, `${target} is still open after ${boundMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

/** Lets every pending nextTick, microtask and immediate callback run. */
async function settle(): Promise<void> {
  for (let i = 0; i < 3; i++) await new Promise((resolve) => setImmediate(resolve));
}

/** Consumes `s` with stream.pipeline; resolves with the error it ended with (undefined: none). */
async function pipeOut(s: Readable): Promise<{ error: unknown; bytes: number }> {
  let bytes = 0;
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      bytes += chunk.length;
      cb();
    },
  });
  try {
    await pipeline(s, sink);
    return { error: undefined, bytes };
  } catch (error) {
    return { error, bytes };
  }
}

describe('a getStream result failing before it is consumed', function () {
  let watch: UncaughtWatch | undefined;
  afterEach(function () {
    watch?.remove();
    watch = undefined;
  });

  describe('HttpDatalake: the socket is reset after 1 KiB', function () {
    let server: http.Server;
    let serverSocketClosed: Promise<unknown>;
    let lake: HttpDatalake | undefined;

    beforeEach(async function () {
      let closed!: (v: unknown) => void;
      serverSocketClosed = new Promise((resolve) => (closed = resolve));
      server = http.createServer((req, res) => {
        res.writeHead(200, { 'Content-Length': String(1 << 20) });
        res.write(Buffer.alloc(1024, 0x4e), () => {
          const socket = req.socket as Socket;
          socket.once('close', closed);
          socket.resetAndDestroy();
        });
      });
      server.listen(0, '127.0.0.1');
      await once(server, 'listening');
    });
    afterEach(async function () {
      await lake?.close();
      lake = undefined;
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    });

    for (const consume of ['pipeline', 'for await', "on('data') then on('error')"] as const) {
      it(`no uncaught exception; ${consume} later gets ERR_DATALAKE_TRUNCATED`, async function () {
        const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
        lake = new HttpDatalake(url, { attempts: 1, closeTimeoutMs: 500 });
        // The client has seen the reset once undici reports the request's error.
        let clientSawReset!: () => void;
        const clientSaw = new Promise<void>((resolve) => (clientSawReset = resolve));
        const onRequestError = () => clientSawReset();
        subscribe('undici:request:error', onRequestError);
        watch = new UncaughtWatch();
        try {
          const s = await lake.getStream('nar/x.nar');
          assert.ok(s);
          // The caller holds the stream without consuming it while the connection dies.
          await serverSocketClosed;
          await clientSaw;
          await settle();
          assert.deepEqual(watch.seen, [], 'an error on the unconsumed stream escaped as uncaught');

          let error: unknown;
          if (consume === 'pipeline') {
            error = (await pipeOut(s)).error;
          } else if (consume === 'for await') {
            try {
              for await (const _ of s) void _;
            } catch (e) {
              error = e;
            }
          } else {
            error = await new Promise((resolve) => {
              s.on('data', () => {});
              s.once('end', () => resolve(undefined));
              s.once('error', resolve);
            });
          }
          assert.ok(isNarfsError(error, 'ERR_DATALAKE_TRUNCATED'), `the stream ended with ${inspect(error)}`);
          assert.deepEqual(watch.seen, []);
        } finally {
          unsubscribe('undici:request:error', onRequestError);
        }
      });
    }
  });

  describe('S3Datalake: the socket is reset after 1 KiB', function () {
    let server: http.Server;
    let serverSocketClosed: Promise<unknown>;
    let lake: S3Datalake | undefined;
    let home: string;

    beforeEach(async function () {
      home = await fsp.mkdtemp(path.join(os.tmpdir(), 'narfs-s3-home-'));
      let closed!: (v: unknown) => void;
      serverSocketClosed = new Promise((resolve) => (closed = resolve));
      server = http.createServer((req, res) => {
        res.writeHead(200, { 'Content-Length': String(1 << 20) });
        res.write(Buffer.alloc(1024, 0x4e), () => {
          const socket = req.socket as Socket;
          socket.once('close', closed);
          socket.resetAndDestroy();
        });
      });
      server.listen(0, '127.0.0.1');
      await once(server, 'listening');
    });
    afterEach(async function () {
      await lake?.close();
      lake = undefined;
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
      await fsp.rm(home, { recursive: true, force: true });
    });

    it('no uncaught exception; pipeline later gets ERR_DATALAKE_TRUNCATED', async function () {
      const endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
      lake = new S3Datalake(`s3://bucket?endpoint=${endpoint}`, {
        attempts: 1,
        closeTimeoutMs: 500,
        credentialSources: { env: { AWS_ACCESS_KEY_ID: 'AKIDTEST', AWS_SECRET_ACCESS_KEY: 'test-secret' }, homeDir: home },
      });
      let clientSawReset!: () => void;
      const clientSaw = new Promise<void>((resolve) => (clientSawReset = resolve));
      const onRequestError = () => clientSawReset();
      subscribe('undici:request:error', onRequestError);
      watch = new UncaughtWatch();
      try {
        const s = await lake.getStream('nar/x.nar');
        assert.ok(s);
        await serverSocketClosed;
        await clientSaw;
        await settle();
        assert.deepEqual(watch.seen, [], 'an error on the unconsumed stream escaped as uncaught');
        const { error } = await pipeOut(s);
        assert.ok(isNarfsError(error, 'ERR_DATALAKE_TRUNCATED'), `the stream ended with ${inspect(error)}`);
        assert.deepEqual(watch.seen, []);
      } finally {
        unsubscribe('undici:request:error', onRequestError);
      }
    });
  });

  describe('FileDatalake', function () {
    let dir: string;
    let okNar: string;
    let lake: FileDatalake | undefined;

    before(async function () {
      dir = await fsp.realpath(await fsp.mkdtemp(path.join(os.tmpdir(), 'narfs-unconsumed-')));
      okNar = path.join(dir, 'nar', 'ok.nar');
      await fsp.mkdir(path.join(dir, 'nar'));
      await fsp.writeFile(path.join(dir, 'nix-cache-info'), 'StoreDir: /nix/store\n');
      await fsp.writeFile(okNar, Buffer.alloc(3 << 20, 0x4e));
      await fsp.symlink('/proc/self/mem', path.join(dir, 'nar', 'eio.nar'));
    });
    after(async function () {
      if (dir) await fsp.rm(dir, { recursive: true, force: true });
    });
    beforeEach(function () {
      lake = new FileDatalake(`file://${dir}`);
    });
    afterEach(async function () {
      await lake?.close();
      lake = undefined;
    });

    it('aborted before use: no uncaught exception; pipeline later gets ERR_ABORTED', async function () {
      watch = new UncaughtWatch();
      const ac = new AbortController();
      const s = await lake!.getStream('nar/ok.nar', { signal: ac.signal });
      assert.ok(s);
      assert.equal(await fdsOn(okNar), 1);
      ac.abort();
      // The file is closed at once although nobody consumes the stream; an error emitted
      // on it would have come by now.
      await released(okNar);
      await settle();
      assert.deepEqual(watch.seen, [], 'the abort escaped as an uncaught exception');
      const { error } = await pipeOut(s);
      assert.ok(isNarfsError(error, 'ERR_ABORTED'), inspect(error));
    });

    it('datalake closed before use: no uncaught exception; pipeline later gets ERR_ABORTED', async function () {
      watch = new UncaughtWatch();
      const s = await lake!.getStream('nar/ok.nar');
      assert.ok(s);
      await lake!.close();
      await released(okNar);
      await settle();
      assert.deepEqual(watch.seen, [], 'close() escaped as an uncaught exception');
      const { error } = await pipeOut(s);
      assert.ok(isNarfsError(error, 'ERR_ABORTED'), inspect(error));
    });

    it('a read failing with EIO is ERR_DATALAKE_UNAVAILABLE, however late it is consumed', async function () {
      watch = new UncaughtWatch();
      const s = await lake!.getStream('nar/eio.nar');
      assert.ok(s);
      // The stream reads ahead; its first read fails and the descriptor is closed.
      await released(`/proc/${process.pid}/mem`);
      await settle();
      assert.deepEqual(watch.seen, []);
      const { error, bytes } = await pipeOut(s);
      assert.equal(bytes, 0);
      assert.ok(isNarfsError(error, 'ERR_DATALAKE_UNAVAILABLE'), inspect(error));
      assert.equal((error as { cause?: { code?: string } }).cause?.code, 'EIO');
      assert.deepEqual(watch.seen, []);
    });

    it('an unconsumed healthy stream still delivers every byte', async function () {
      const s = await lake!.getStream('nar/ok.nar');
      assert.ok(s);
      await settle();
      assert.deepEqual(await pipeOut(s), { error: undefined, bytes: 3 << 20 });
    });
  });
});

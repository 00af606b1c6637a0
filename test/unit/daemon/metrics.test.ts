/**
 * The metrics registry's Prometheus text exposition (format 0.0.4): escaping, cumulative
 * histogram buckets, collected series; the timed filesystem (every FUSE operation the
 * engines call counted and timed, everything else passed through); and --metrics-listen
 * parsing.
 */
import assert from 'node:assert/strict';
import { FUSE_OPS, MetricsRegistry, NarfsMetrics } from '../../../src/daemon/metrics.js';
import { StoreFilesystem } from '../../../src/fs/store-filesystem.js';
import { parseListen } from '../../../src/daemon/metrics-server.js';

describe('metrics registry (text exposition 0.0.4)', () => {
  it('escapes help and label values, and writes counters and gauges', () => {
    const r = new MetricsRegistry();
    const c = r.counter('x_total', 'a \\ help\nline', ['url']);
    c.inc({ url: 'file:///a "b"\\c\nd' }, 2);
    r.gauge('g', 'collected', ['k'], () => [[{ k: 'v' }, 1.5]]);
    const text = r.expose();
    assert.equal(text, [
      '# HELP x_total a \\\\ help\\nline',
      '# TYPE x_total counter',
      'x_total{url="file:///a \\"b\\"\\\\c\\nd"} 2',
      '# HELP g collected',
      '# TYPE g gauge',
      'g{k="v"} 1.5',
      '',
    ].join('\n'));
  });

  it('histogram buckets are cumulative and end with +Inf = count', () => {
    const r = new MetricsRegistry();
    const h = r.histogram('t_seconds', 'h', ['op'], [0.1, 1]);
    for (const v of [0.05, 0.1, 0.5, 3]) h.observe({ op: 'read' }, v);
    const lines = r.expose().split('\n').filter((l) => l.startsWith('t_seconds'));
    assert.deepEqual(lines, [
      't_seconds_bucket{op="read",le="0.1"} 2',
      't_seconds_bucket{op="read",le="1"} 3',
      't_seconds_bucket{op="read",le="+Inf"} 4',
      't_seconds_sum{op="read"} 3.65',
      't_seconds_count{op="read"} 4',
    ]);
  });

  it('a timed filesystem times calls per op, tracks open handles, and keeps `this`', async () => {
    const m = new NarfsMetrics();
    class Fs {
      #n = 0;
      open(): number { return ++this.#n; }
      release(_fh: number): void {}
      async read(): Promise<Buffer> { throw new Error('EIO'); }
      get count(): number { return this.#n; }
    }
    const fs = m.timedFilesystem(new Fs(), { open: 'open', release: 'release', read: 'read' });
    assert.equal(fs.open(), 1);
    assert.equal(fs.open(), 2);
    fs.release(1);
    await assert.rejects(fs.read());
    assert.equal(fs.count, 2);
    assert.deepEqual([...m.openHandles], [2]);
    assert.equal(m.fuseSeconds.get({ op: 'open' }).count, 2);
    assert.equal(m.fuseErrors.get({ op: 'read' }), 1);
  });

  it('a timed filesystem counts and times every FUSE op, sync or async, ok or failed; the rest passes through', async () => {
    // Every op of FUSE_OPS is a method of StoreFilesystem (the object the daemon wraps).
    for (const name of Object.keys(FUSE_OPS)) assert.equal(typeof (StoreFilesystem.prototype as unknown as Record<string, unknown>)[name], 'function', name);
    const m = new NarfsMetrics();
    const calls: string[] = [];
    class Base {
      #secret = 7;
      inherited(): number { return this.#secret; }
    }
    class Fs extends Base {
      #fail = false;
      field = 1;
      fail(on: boolean): void { this.#fail = on; }
      get failing(): boolean { return this.#fail; }
      set failing(v: boolean) { this.#fail = v; }
    }
    // One method per FUSE op, half of them asynchronous, each failing while #fail is set.
    Object.keys(FUSE_OPS).forEach((name, i) => {
      Object.defineProperty(Fs.prototype, name, {
        value: i % 2 === 0
          ? function (this: Fs, ...a: unknown[]) { calls.push(name); if (this.failing) throw new Error('EIO'); return a[0]; }
          : async function (this: Fs, ...a: unknown[]) { calls.push(name); if (this.failing) throw new Error('EIO'); return a[0]; },
      });
    });
    const inner = new Fs();
    const fs = m.timedFilesystem(inner, FUSE_OPS) as unknown as Record<string, (...a: unknown[]) => unknown> & Fs;
    for (const name of Object.keys(FUSE_OPS)) assert.equal(await fs[name]!(5), 5, name);
    fs.failing = true;
    for (const name of Object.keys(FUSE_OPS)) await assert.rejects(async () => fs[name]!(5), /EIO/, name);
    fs.fail(false);
    assert.deepEqual(calls, [...Object.keys(FUSE_OPS), ...Object.keys(FUSE_OPS)]);
    for (const op of Object.values(FUSE_OPS)) {
      const h = m.fuseSeconds.get({ op });
      assert.equal(h.count, 2, `${op} timed`);
      assert.ok(h.sum >= 0 && h.counts.reduce((x, y) => x + y, 0) === 2, `${op} in a bucket`);
      assert.equal(m.fuseErrors.get({ op }), 1, `${op} errors`);
    }
    // Methods, accessors and fields of the real object, private fields included.
    assert.equal(fs.failing, false);
    assert.equal(fs.inherited(), 7);
    fs.field = 2;
    assert.equal(inner.field, 2);
    assert.ok(fs instanceof Fs);
    // Series exist from their first observation only.
    const fresh = new NarfsMetrics();
    fresh.timedFilesystem(new Fs(), FUSE_OPS);
    assert.doesNotMatch(fresh.registry.expose(), /^narfs_fuse_op/m);
  });
});

describe('parseListen', () => {
  it('takes HOST:PORT and [v6]:PORT, refuses the rest', () => {
    assert.deepEqual(parseListen('127.0.0.1:9477'), { host: '127.0.0.1', port: 9477 });
    assert.deepEqual(parseListen('[::1]:0'), { host: '::1', port: 0 });
    for (const bad of ['9477', '127.0.0.1', ':9477', '127.0.0.1:99999', 'http://x:1']) {
      assert.throws(() => parseListen(bad), { code: 'ERR_USAGE' }, bad);
    }
  });
});

/**
 * The metrics registry's Prometheus text exposition (format 0.0.4): escaping, cumulative
 * histogram buckets, collected series; and --metrics-listen parsing.
 */
import assert from 'node:assert/strict';
import { MetricsRegistry, NarfsMetrics } from '../../../src/daemon/metrics.js';
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

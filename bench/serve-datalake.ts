/**
 * A benchmark datalake served over HTTP in its own process, so that the benchmark's
 * synchronous workloads (run in the parent) never stall the "remote" server.
 *
 *   tsx bench/serve-datalake.ts <root> <latencyMs> <bytesPerSecond>
 *
 * The link model: every request waits `latencyMs` before its answer starts (one round
 * trip), then its body is paced at `bytesPerSecond` per connection, the last piece by its
 * own length (`proportionalPacing`), so a request costs latency + bytes / bandwidth.
 *
 * Prints `url <base-url>` once listening. A line `stats` on stdin is answered with
 * `stats <requests> <bodyBytes>` (totals served so far: requests of every path, and body
 * bytes written, narinfos, indexes and listings included). On SIGTERM, SIGINT or stdin
 * EOF (the parent died) it prints `requests <n>` and `bodyBytes <n>` and exits.
 */
import { HttpDatalakeServer } from '../test/support/http-datalake-server.js';

const [root, latency, bps] = process.argv.slice(2);
if (!root) throw new Error('usage: serve-datalake.ts <root> <latencyMs> <bytesPerSecond>');
const server = await HttpDatalakeServer.start({
  root,
  latencyMs: Number(latency ?? 0),
  bytesPerSecond: Number(bps ?? 0),
  proportionalPacing: true,
});
if (process.env.NARFS_SERVE_LOG) {
  // Probe aid: one line per request (wall ms, path, Range), appended to that file.
  const { appendFileSync } = await import('node:fs');
  const logPath = process.env.NARFS_SERVE_LOG;
  const push = server.requests.push.bind(server.requests);
  server.requests.push = (...rs) => {
    for (const r of rs) appendFileSync(logPath, `${Date.now()}\t${r.relPath}\t${r.headers.range ?? ''}\n`);
    return push(...rs);
  };
}
process.stdout.write(`url ${server.url}\n`);
let closing = false;
const stop = async () => {
  if (closing) return;
  closing = true;
  process.stdout.write(`requests ${server.totalRequests}\nbodyBytes ${server.bodyBytesSent}\n`);
  await server.close();
  process.exit(0);
};
process.on('SIGTERM', () => void stop());
process.on('SIGINT', () => void stop());
let pending = '';
process.stdin.on('data', (d: Buffer) => {
  pending += d.toString();
  for (let i = pending.indexOf('\n'); i !== -1; i = pending.indexOf('\n')) {
    const line = pending.slice(0, i).trim();
    pending = pending.slice(i + 1);
    if (line === 'stats') process.stdout.write(`stats ${server.totalRequests} ${server.bodyBytesSent}\n`);
  }
});
process.stdin.on('end', () => void stop());
process.stdin.resume();

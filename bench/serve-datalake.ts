/**
 * A benchmark datalake served over HTTP in its own process, so that the benchmark's
 * synchronous workloads (run in the parent) never stall the "remote" server.
 *
 *   tsx bench/serve-datalake.ts <root> <latencyMs> <bytesPerSecond>
 *
 * Prints `url <base-url>` once listening. On SIGTERM, SIGINT or stdin EOF (the parent
 * died) it prints `requests <n>` (the total it served) and exits.
 */
import { HttpDatalakeServer } from '../test/support/http-datalake-server.js';

const [root, latency, bps] = process.argv.slice(2);
if (!root) throw new Error('usage: serve-datalake.ts <root> <latencyMs> <bytesPerSecond>');
const server = await HttpDatalakeServer.start({
  root,
  latencyMs: Number(latency ?? 0),
  bytesPerSecond: Number(bps ?? 0),
});
process.stdout.write(`url ${server.url}\n`);
let closing = false;
const stop = async () => {
  if (closing) return;
  closing = true;
  process.stdout.write(`requests ${server.totalRequests}\n`);
  await server.close();
  process.exit(0);
};
process.on('SIGTERM', () => void stop());
process.on('SIGINT', () => void stop());
process.stdin.on('end', () => void stop());
process.stdin.resume();

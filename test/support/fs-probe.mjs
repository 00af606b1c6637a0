// Runs one filesystem operation in a separate process and prints its outcome as JSON.
// Tests use it so that no syscall on a FUSE mount is made from the thread serving it.
// usage: node fs-probe.mjs <read|stat|lstat|readdir|readlink|write|mkdir|unlink> <path>
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';

//
// With NARFS_PROBE_GATE=1 the probe starts up, writes "ready" to stderr, waits for a line
// on stdin, writes "go" to stderr and then makes its syscall: a test can line up many
// probes and learn, from events, that each is about to enter the mount.
const [op, path] = process.argv.slice(2);
if (process.env.NARFS_PROBE_GATE === '1') {
  fs.writeSync(2, 'ready\n');
  const buf = Buffer.alloc(1);
  while (fs.readSync(0, buf, 0, 1, null) === 1 && buf[0] !== 0x0a);
  fs.writeSync(2, 'go\n');
}
const started = Date.now();
function out(result) {
  process.stdout.write(JSON.stringify({ ...result, ms: Date.now() - started }) + '\n');
}
try {
  switch (op) {
    case 'read': {
      const data = fs.readFileSync(path);
      out({ ok: true, bytes: data.length, sha256: createHash('sha256').update(data).digest('hex') });
      break;
    }
    case 'stat':
    case 'lstat': {
      const st = fs[op + 'Sync'](path);
      out({ ok: true, mode: st.mode, size: st.size, nlink: st.nlink, ino: st.ino, uid: st.uid, gid: st.gid, mtimeMs: st.mtimeMs, blocks: st.blocks });
      break;
    }
    case 'readdir':
      out({ ok: true, names: fs.readdirSync(path) });
      break;
    case 'readlink':
      out({ ok: true, target: fs.readlinkSync(path) });
      break;
    case 'write':
      fs.writeFileSync(path, 'x');
      out({ ok: true });
      break;
    case 'mkdir':
      fs.mkdirSync(path);
      out({ ok: true });
      break;
    case 'unlink':
      fs.unlinkSync(path);
      out({ ok: true });
      break;
    default:
      out({ ok: false, code: 'EUSAGE' });
  }
} catch (err) {
  out({ ok: false, code: err.code });
}

// Turns `strace -f -e trace=%file,getdents64` output of real programs run on the host
// into the scenario-1 workload: the list of operations (read a file, list a directory,
// stat a path that may be missing) those programs did inside the trees the benchmark
// closure copies, with host paths mapped to <store-path-basename>/<relative path>.
//
//   node record-workload.mjs <roles.json> <strace-log>... > workload.json
//
// roles.json: {"python": "/nix/store/...", ...} (from default.nix). Paths outside the
// mapped trees (the host's libc, /etc, ...) are dropped: they are not in the closure.
import { readFileSync } from 'node:fs';

const [rolesFile, ...logs] = process.argv.slice(2);
const roles = JSON.parse(readFileSync(rolesFile, 'utf8'));
const base = (role) => roles[role].replace(/^\/nix\/store\//, '');
// Longest prefix first.
const map = [
  ['/usr/lib/python3.11', `${base('python')}/lib/python3.11`],
  ['/usr/lib/python3/dist-packages', `${base('python')}/lib/python3/dist-packages`],
  ['/usr/share/perl', `${base('perl')}/share/perl`],
  ['/usr/lib/x86_64-linux-gnu/perl-base', `${base('perl')}/lib/perl-base`],
  ['/usr/lib/x86_64-linux-gnu/perl', `${base('perl')}/lib/perl`],
  ['/usr/include', `${base('headers')}/include`],
  ['/usr/share/doc', `${base('doc')}/share/doc`],
].sort((a, b) => b[0].length - a[0].length);

function mapPath(p) {
  for (const [host, store] of map) {
    if (p === host) return store;
    if (p.startsWith(host + '/')) return store + p.slice(host.length);
  }
  return undefined;
}

const ops = [];
const re = /^(?:\[pid\s+\d+\]\s+)?(\w+)\((?:AT_FDCWD|-?\d+), "([^"]+)"(.*)\)\s+=\s+(-?\d+)(?:\s+(\w+))?/;
for (const log of logs) {
  for (const line of readFileSync(log, 'utf8').split('\n')) {
    const m = re.exec(line.replace(/^\d+\s+/, ''));
    if (!m) continue;
    const [, call, rawPath, rest, ret, errno] = m;
    if (!rawPath.startsWith('/')) continue;
    const path = rawPath.replace(/\/+$/, '').replace(/\/\.\//g, '/');
    if (path.includes('/../')) continue;
    const mapped = mapPath(path);
    if (!mapped) continue;
    const ok = Number(ret) >= 0;
    if (!ok && errno !== 'ENOENT' && errno !== 'ENOTDIR') continue;
    if (call === 'openat' || call === 'open') {
      if (!ok) ops.push({ op: 'stat', path: mapped, missing: true });
      else if (rest.includes('O_DIRECTORY')) ops.push({ op: 'readdir', path: mapped });
      else ops.push({ op: 'read', path: mapped });
    } else if (/^(new)?fstatat|^l?stat|^statx|^access|^faccessat|^readlink/.test(call)) {
      ops.push({ op: call.startsWith('readlink') ? 'readlink' : 'stat', path: mapped, ...(ok ? {} : { missing: true }) });
    }
  }
}
process.stdout.write(JSON.stringify(ops) + '\n');

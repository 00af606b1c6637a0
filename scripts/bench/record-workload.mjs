// Turns `strace -f -e trace=%file,getdents64` output of real programs run on the host
// into the scenario-1 workload: the list of operations (read a file, list a directory,
// stat a path that may be missing, read a link) those programs did inside the benchmark
// closure, as <store-path-basename><host path>.
//
//   node record-workload.mjs <roles.json> <strace-log>... > workload.json
//
// roles.json: {"python": "/nix/store/...", ...} (from default.nix). Every package store
// path holds its packages' files at their host paths (copy-packages.sh), so a host path
// maps to the first role, in ROLES order, whose store path has it with the same kind
// (a file to read, a directory to list, a symlink); a path that was missing on the host
// maps to the role that has the longest existing ancestor of it (first in ROLES order on
// a tie), an ancestor inside TREES, so the lookup fails there as it did on the host. Only operations under TREES are kept (the
// interpreters' module trees, headers, documentation), and of those only the ones the
// closure can answer alike: a file the host had from a package that is not declared
// (a .pth in dist-packages, say) is dropped, as is a path whose symlinks lead out of
// /nix/store. The number dropped goes to stderr.
import { lstatSync, readFileSync, realpathSync, statSync } from 'node:fs';
import { dirname } from 'node:path';

const [rolesFile, ...logs] = process.argv.slice(2);
const roles = JSON.parse(readFileSync(rolesFile, 'utf8'));
const ROLES = ['python', 'perl', 'headers', 'doc', 'libs', 'large'];
const TREES = ['/usr/lib/python3.11', '/usr/lib/python3/dist-packages', '/usr/share/perl', '/usr/lib/x86_64-linux-gnu/perl-base',
  '/usr/lib/x86_64-linux-gnu/perl', '/usr/include', '/usr/share/doc'];

const inTrees = (p) => TREES.some((t) => p === t || p.startsWith(t + '/'));
const lst = (p) => { try { return lstatSync(p); } catch { return undefined; } };
const st = (p) => { try { return realpathSync(p).startsWith('/nix/store/') ? statSync(p) : undefined; } catch { return undefined; } };
const KIND = {
  read: (p) => st(p)?.isFile(),
  readdir: (p) => st(p)?.isDirectory(),
  readlink: (p) => lst(p)?.isSymbolicLink(),
  stat: (p) => lst(p) !== undefined,
};

/** The closure path of host path `p` for operation `op`, or undefined when the closure cannot answer it alike. */
function mapOp(op, p, missing) {
  const store = (role) => (roles[role] + p).replace(/^\/nix\/store\//, '');
  if (!missing) return ROLES.filter((role) => KIND[op](roles[role] + p)).map(store)[0];
  let best, bestLength = -1;
  for (const role of ROLES) {
    if (lst(roles[role] + p) !== undefined) return undefined; // the closure has it: not alike
    let a = dirname(p);
    while (inTrees(a) && lst(roles[role] + a) === undefined) a = dirname(a);
    if (inTrees(a) && a.length > bestLength) { best = role; bestLength = a.length; }
  }
  return best === undefined ? undefined : store(best);
}

const ops = [];
let dropped = 0;
const re = /^(?:\[pid\s+\d+\]\s+)?(\w+)\((?:AT_FDCWD|-?\d+), "([^"]+)"(.*)\)\s+=\s+(-?\d+)(?:\s+(\w+))?/;
for (const log of logs) {
  for (const line of readFileSync(log, 'utf8').split('\n')) {
    const m = re.exec(line.replace(/^\d+\s+/, ''));
    if (!m) continue;
    const [, call, rawPath, rest, ret, errno] = m;
    if (!rawPath.startsWith('/')) continue;
    const path = rawPath.replace(/\/+$/, '').replace(/\/\.\//g, '/');
    if (path.includes('/../') || !inTrees(path)) continue;
    const ok = Number(ret) >= 0;
    if (!ok && errno !== 'ENOENT' && errno !== 'ENOTDIR') continue;
    let op;
    if (call === 'openat' || call === 'open') op = !ok ? 'stat' : rest.includes('O_DIRECTORY') ? 'readdir' : 'read';
    else if (/^(new)?fstatat|^l?stat|^statx|^access|^faccessat|^readlink/.test(call)) op = call.startsWith('readlink') ? 'readlink' : 'stat';
    else continue;
    const mapped = mapOp(op, path, !ok);
    if (mapped === undefined) { dropped++; continue; }
    ops.push({ op, path: mapped, ...(ok ? {} : { missing: true }) });
  }
}
process.stderr.write(`record-workload: ${ops.length} operations, ${dropped} dropped (not answerable alike by the closure)\n`);
process.stdout.write(JSON.stringify(ops) + '\n');

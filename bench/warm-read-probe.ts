/**
 * Diagnostic for scenario 3 (warm read): reads the fixtures' 40 MiB file through a narfs
 * mount (native engine, in this process) and from /nix/store, page cache warm, in child
 * processes (a read in this process would wait on the FUSE thread it runs on), and counts
 * the FUSE requests the engine saw during the warm reads (`stats()`: requests handed to
 * JS, answered in C, READs served in C). Zero requests means the kernel served the read
 * from its page cache without asking narfs: what remains is the kernel's FUSE read path.
 *
 * Usage: node --import tsx bench/warm-read-probe.ts [reps (5)] [block KiB (1024)]
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { join } from 'node:path';
import { loadFixtures } from '../test/support/fixtures.js';
import { withMount } from '../test/support/mount-harness.js';
import { parseStorePath, storePathBase } from '../src/nix/store-path.js';

const reps = Number(process.argv[2] ?? 5);
const blockKiB = Number(process.argv[3] ?? 1024);
const READER = `const fs=require('fs');const b=Buffer.allocUnsafe(${blockKiB}*1024);const p=process.argv[1];
const t=[];for(let r=0;r<${reps};r++){const t0=process.hrtime.bigint();const fd=fs.openSync(p,'r');let n=0,k;while((k=fs.readSync(fd,b,0,b.length,null))>0)n+=k;fs.closeSync(fd);t.push(Number(process.hrtime.bigint()-t0)/1e6);}
console.log(JSON.stringify(t));`;

/** Asynchronously: this process serves the mount, a synchronous wait would deadlock it. */
async function timeReads(path: string): Promise<number[]> {
  const { stdout } = await promisify(execFile)(process.execPath, ['-e', READER, path], { encoding: 'utf8' });
  return JSON.parse(stdout) as number[];
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;

const fixtures = await loadFixtures();
const lake = fixtures.datalakes['none']!;
const rel = join(storePathBase(parseStorePath(fixtures.largeFile.storePath)), fixtures.largeFile.relPath);
await withMount({ datalakes: [lake.url], trustedPublicKeys: fixtures.publicKey }, async (m) => {
  const path = join(m.mnt, rel);
  await timeReads(path); // materialise, fill the page cache, let JS push the content to C
  await timeReads(join('/nix/store', rel));
  const before = m.running.engine.stats();
  const fuse = await timeReads(path);
  const after = m.running.engine.stats();
  const disk = await timeReads(join('/nix/store', rel));
  console.log(`backend ${m.running.engine.backend}, ${blockKiB} KiB reads, ${reps} reps`);
  console.log(`warm read via narfs: median ${median(fuse).toFixed(2)} ms (${fuse.map((x) => x.toFixed(1)).join(' ')})`);
  console.log(`warm read /nix/store: median ${median(disk).toFixed(2)} ms (${disk.map((x) => x.toFixed(1)).join(' ')})`);
  console.log(`ratio ${(median(fuse) / median(disk)).toFixed(2)}`);
  if (before && after) {
    console.log(`FUSE requests during the warm reads: to JS ${after.toJs - before.toJs}, in C ${after.inC - before.inC}, READs in C ${after.readsInC - before.readsInC}`);
  }
});
process.exit(0);

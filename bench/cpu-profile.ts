/**
 * Reading a V8 `.cpuprofile` written by `node --cpu-prof` (bench/diagnose.ts,
 * bench/lazy-probe.ts): the profile's nodes, and the self time of each function, keyed
 * `name file:line` with the path cut to `dist/…` or `node_modules/…`. Times in µs, as V8
 * writes `timeDeltas`.
 */
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';

export interface ProfileNode { id: number; children?: number[]; callFrame: { functionName: string; url: string; lineNumber: number } }
export interface CpuProfile { nodes: ProfileNode[]; samples: number[]; timeDeltas: number[] }

/** The first `.cpuprofile` in `dir`, or undefined when there is none. */
export function loadProfile(dir: string): CpuProfile | undefined {
  const f = readdirSync(dir).find((n) => n.endsWith('.cpuprofile'));
  return f ? (JSON.parse(readFileSync(join(dir, f), 'utf8')) as CpuProfile) : undefined;
}

/** The key a function's samples are summed under. */
export function frameKey(n: ProfileNode): string {
  return `${n.callFrame.functionName || '(anonymous)'} ${n.callFrame.url.replace(/^.*\/(dist|node_modules)\//, '$1/')}:${n.callFrame.lineNumber + 1}`;
}

/** Self time per function, and the total sampled; `each` also sees every sample. */
export function selfTimes(p: CpuProfile, each?: (n: ProfileNode, dt: number) => void): { self: Map<string, number>; total: number } {
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const self = new Map<string, number>();
  let total = 0;
  p.samples.forEach((id, i) => {
    const n = byId.get(id)!;
    const dt = p.timeDeltas[i] ?? 0;
    total += dt;
    const key = frameKey(n);
    self.set(key, (self.get(key) ?? 0) + dt);
    each?.(n, dt);
  });
  return { self, total };
}

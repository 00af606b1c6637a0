/**
 * SliceFilter and sliceClosure against narinfos Nix wrote (the fixture datalake), read
 * with the real parser: closures follow References exactly, missing and failing paths
 * are reported per root, and the gate admits only whole basenames.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { NarfsError } from '../../../src/errors.js';
import { parseNarInfo } from '../../../src/nix/narinfo.js';
import { storePathBase, type StorePath } from '../../../src/nix/store-path.js';
import { SliceFilter, isTransient, sliceClosure, type NarInfoLookup } from '../../../src/slice/slice-filter.js';
import { FIXTURE_BUILD_TIMEOUT_MS, loadFixtures, narInfoPath, pathByRole, type Fixtures } from '../../support/fixtures.js';

const base = (full: string) => full.slice('/nix/store/'.length);
const sp = (full: string): StorePath => ({ hashPart: base(full).slice(0, 32), name: base(full).slice(33) });

describe('SliceFilter / sliceClosure', function () {
  let fx: Fixtures;
  let asked: string[];
  let lookup: NarInfoLookup;
  before(async function () {
    this.timeout(FIXTURE_BUILD_TIMEOUT_MS);
    fx = await loadFixtures();
  });
  beforeEach(function () {
    asked = [];
    const dir = fx.datalakes.xz.dir;
    lookup = async (p) => {
      asked.push(storePathBase(p));
      const text = await readFile(narInfoPath(dir, p.hashPart), 'utf8').catch(() => undefined);
      return text === undefined ? undefined : parseNarInfo(text, p.hashPart);
    };
  });

  it('the closure of each root is the References closure Nix recorded (manifest), each path asked once', async function () {
    const roots = ['tree', 'single-symlink', 'top'].map((r) => pathByRole(fx, r as 'tree'));
    const { closures, unresolved } = await sliceClosure(roots.map((r) => sp(r.storePath)), lookup);
    assert.deepEqual(unresolved, []);
    const refs = new Map(fx.paths.map((p) => [p.storePath, p.references]));
    for (const r of roots) {
      const want = new Set<string>();
      const walk = (p: string) => {
        if (want.has(base(p))) return;
        want.add(base(p));
        for (const q of refs.get(p) ?? []) walk(q);
      };
      walk(r.storePath);
      assert.deepEqual(new Set(closures.get(base(r.storePath))), want, r.role);
    }
    assert.equal(new Set(asked).size, asked.length, 'a path was looked up twice');
  });

  it('a root in no datalake, or with a reference in none, is reported; the others resolve; previous closures stand in', async function () {
    const single = pathByRole(fx, 'single-file');
    const symlink = pathByRole(fx, 'single-symlink');
    const ghost = '0'.repeat(32) + '-ghost';
    const hidden = base(single.storePath);
    const gappy: NarInfoLookup = async (p) => (storePathBase(p) === hidden ? undefined : lookup(p));
    const r = await sliceClosure([sp(symlink.storePath), { hashPart: ghost.slice(0, 32), name: 'ghost' }], gappy);
    assert.equal(r.closures.size, 0);
    const byRoot = new Map(r.unresolved.map((u) => [u.root, u]));
    assert.equal(byRoot.get(base(symlink.storePath))?.missing, hidden);
    assert.equal(byRoot.get(ghost)?.error.code, 'ERR_PATH_NOT_FOUND');
    assert.ok(!isTransient(byRoot.get(ghost)!));
    // A failing datalake: transient, and the previous closure is kept.
    const down: NarInfoLookup = async () => { throw new NarfsError('ERR_DATALAKE_UNAVAILABLE', 'down'); };
    const previous = new Map([[base(symlink.storePath), [base(symlink.storePath), hidden]]]);
    const off = await sliceClosure([sp(symlink.storePath)], down, { previous });
    assert.deepEqual(off.closures.get(base(symlink.storePath)), [base(symlink.storePath), hidden]);
    assert.ok(isTransient(off.unresolved[0]!));
  });

  it('the filter lists exactly the set, admits whole basenames only, and keeps retained names unlisted', function () {
    const f = new SliceFilter();
    const a = '6qhi9a2q8vza2s19hkqvlcl1p83bp5a2-a';
    const b = 'ia6s2b8kjgrgvdw15jh466qfbh779v1r-b';
    const c = '4q7gnwawd1qqiwynb83pwnlj9n3ydx3p-c';
    assert.deepEqual(f.set([a, b]), { added: [a, b], removed: [] });
    assert.ok(f.admits(a) && f.admits(b) && !f.admits(c));
    assert.ok(!f.admits('6qhi9a2q8vza2s19hkqvlcl1p83bp5a2-other-name'));
    assert.deepEqual(f.set([b, c]), { added: [c], removed: [a] });
    assert.deepEqual([...f.listed()].sort(), [c, b].sort());
    assert.ok(!f.admits(a));
    f.retain([a]);
    assert.ok(f.admits(a) && f.admitsHashPart(a.slice(0, 32)) && !f.isListed(a));
    assert.deepEqual([...f.listed()].sort(), [c, b].sort());
  });
});

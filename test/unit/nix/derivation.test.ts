/**
 * parseDerivation / parseDerivationOutputs against .drv files written by real Nix
 * (Debian nix-bin, `nix-instantiate` at test time), checked against `nix show-derivation`.
 *
 * All Nix work happens once, in `before`, against a private chroot store in a temp dir
 * (`--store <dir>/root`): no wait on the machine's store lock, which fixture builds and
 * other test runs hold. The hook waits for the tools themselves (`this.timeout(0)`); each
 * call has its own generous deadline (runTool) and fails with the command and its stderr.
 */
import { strict as assert } from 'node:assert';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseDerivation, parseDerivationOutputs } from '../../../src/nix/derivation.js';
import { isNarfsError } from '../../../src/errors.js';
import { runTool } from '../../support/run-tool.js';
import { requireNix } from './nix-tool.js';

const NIX_ENV: NodeJS.ProcessEnv = {
  ...process.env,
  NIX_CONFIG: [
    'experimental-features = nix-command ca-derivations',
    'build-users-group =',
    'sandbox = false',
    'substituters =',
  ].join('\n'),
};

const ATTRS = ['multi', 'fixed', 'floating'] as const;
type Attr = (typeof ATTRS)[number];

interface ShownDrv {
  outputs: Record<string, { path?: string; hashAlgo?: string; hash?: string }>;
  inputSrcs: string[];
  system: string;
  builder: string;
  args: string[];
  env: Record<string, string>;
}

function expectParseError(text: string): void {
  assert.throws(() => parseDerivationOutputs(text), (e: unknown) => isNarfsError(e, 'ERR_DERIVATION_PARSE'), text);
}

describe('nix/derivation (real .drv files from nix-instantiate)', function () {
  let dir: string | undefined;
  let store: string;
  /** Logical .drv path (`/nix/store/…`) per attribute. */
  const drvs = {} as Record<Attr, string>;
  /** `nix show-derivation` of every .drv, by logical path. */
  let shown: Record<string, ShownDrv>;
  /** `nix-store -q --outputs` of the multi-output derivation. */
  let multiOutputs: string[];
  /** The text of a .drv, read from the private store. */
  const drvText = (attr: Attr): string => readFileSync(join(store, drvs[attr]), 'utf8');

  before(async function () {
    // Waits on the Nix processes, each bounded by runTool's deadline (see the header).
    this.timeout(0);
    requireNix(this);
    dir = mkdtempSync(join(tmpdir(), 'narfs-drv-'));
    store = join(dir, 'root');
    // Strings full of ATerm metacharacters: quotes, backslashes, newline, tab, CR, a fake
    // output tuple and non-ASCII, so a regex-based parser would be fooled.
    const tricky = String.raw`a\"b\\c\nd\te\r é ),(\"x\",\"/nix/store/fake\",\"\",\"\")]`;
    const dep = join(dir, 'dep.txt');
    writeFileSync(dep, 'a source file\n');
    writeFileSync(
      join(dir, 'drvs.nix'),
      `
      let sys = builtins.currentSystem; in {
        multi = derivation {
          name = "narfs-drv-multi"; system = sys; builder = "/bin/sh";
          args = [ "-c" "echo \\"$out\\" > /dev/null" "${tricky}" ];
          outputs = [ "out" "dev" "lib" ];
          src = ${dep};
          tricky = "${tricky}";
        };
        fixed = derivation {
          name = "narfs-drv-fixed"; system = sys; builder = "/bin/sh"; args = [ "-c" "x" ];
          outputHashMode = "recursive"; outputHashAlgo = "sha256";
          outputHash = "0000000000000000000000000000000000000000000000000000";
        };
        floating = derivation {
          name = "narfs-drv-floating"; system = sys; builder = "/bin/sh"; args = [ "-c" "x" ];
          __contentAddressed = true; outputHashMode = "recursive"; outputHashAlgo = "sha256";
          outputs = [ "out" "doc" ];
        };
      }`,
    );
    const storeArgs = ['--store', store];
    // One evaluation for the three derivations: nix-instantiate prints one path per -A, in order.
    const instantiated = (
      await runTool('nix-instantiate', [...storeArgs, join(dir, 'drvs.nix'), ...ATTRS.flatMap((a) => ['-A', a])], { env: NIX_ENV })
    ).trim().split('\n');
    assert.equal(instantiated.length, ATTRS.length, `nix-instantiate printed ${JSON.stringify(instantiated)}`);
    ATTRS.forEach((attr, i) => {
      drvs[attr] = instantiated[i]!;
    });
    const [shownJson, outputs] = await Promise.all([
      runTool('nix', ['show-derivation', ...storeArgs, ...instantiated], { env: NIX_ENV }),
      runTool('nix-store', [...storeArgs, '-q', '--outputs', drvs.multi], { env: NIX_ENV }),
    ]);
    shown = JSON.parse(shownJson) as Record<string, ShownDrv>;
    multiOutputs = outputs.trim().split('\n').sort();
  });

  after(function () {
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
  });

  for (const attr of ATTRS) {
    it(`parses the ${attr} derivation exactly as nix show-derivation does`, function () {
      const drv = shown[drvs[attr]];
      assert.ok(drv, `nix show-derivation did not describe ${drvs[attr]}`);
      const parsed = parseDerivation(drvText(attr));
      assert.deepEqual(
        parsed.outputs,
        Object.entries(drv.outputs)
          .map(([id, o]) => ({ id, path: o.path }))
          .sort((a, b) => (a.id < b.id ? -1 : 1)),
      );
      assert.deepEqual(parsed.inputSrcs, drv.inputSrcs);
      assert.equal(parsed.system, drv.system);
      assert.equal(parsed.builder, drv.builder);
      assert.deepEqual(parsed.args, drv.args);
      assert.deepEqual(Object.fromEntries(parsed.env), drv.env);
    });
  }

  it('decodes ATerm escapes (the tricky env value round-trips)', function () {
    const parsed = parseDerivation(drvText('multi'));
    const tricky = parsed.env.find(([k]) => k === 'tricky')?.[1];
    assert.equal(tricky, 'a"b\\c\nd\te\r é ),("x","/nix/store/fake","","")]');
    assert.deepEqual(
      parsed.outputs.map((o) => o.id),
      ['dev', 'lib', 'out'],
    );
  });

  it('gives floating content-addressed outputs an undefined path', function () {
    const outputs = parseDerivationOutputs(drvText('floating'));
    assert.deepEqual(outputs, [
      { id: 'doc', path: undefined },
      { id: 'out', path: undefined },
    ]);
  });

  it('keeps the path of a fixed-output derivation', function () {
    const [out] = parseDerivationOutputs(drvText('fixed'));
    assert.equal(out?.id, 'out');
    assert.match(out?.path ?? '', /^\/nix\/store\/[0-9a-df-np-sv-z]{32}-narfs-drv-fixed$/);
  });

  it('matches nix-store -q --outputs for the multi-output derivation', function () {
    const outputs = parseDerivationOutputs(drvText('multi'));
    assert.deepEqual(outputs.map((o) => o.path).sort(), multiOutputs);
  });

  it('rejects malformed derivations with ERR_DERIVATION_PARSE', function () {
    const good = drvText('multi');
    expectParseError('');
    expectParseError('Derive(');
    expectParseError(good.slice(0, good.length - 1)); // truncated
    expectParseError(good.slice(0, good.length / 2)); // truncated inside a string
    expectParseError(`${good}\n`); // trailing data
    expectParseError(good.replace(/^Derive/, 'Derivx'));
    expectParseError(good.replace(/\)$/, ',"extra")')); // 8 fields
    expectParseError('Derive([],[],[],"s","b",[],[])'); // no output
    expectParseError('Derive([("out","/nix/store/x","","")],[],[],"s","b",[],[("k")])');
    expectParseError('Derive([("out","/nix/store/x","")],[],[],"s","b",[],[])'); // 3-tuple
    expectParseError('Derive([("out","/nix/store/x","",""),("out","/nix/store/y","","")],[],[],"s","b",[],[])');
    expectParseError('Derive([("out","nix/store/x","","")],[],[],"s","b",[],[])'); // relative
    expectParseError('Derive([("out","/nix/store/x","","\\');
    expectParseError('DrvWithVersion("v9",[("out","/nix/store/x","","")],[],[],"s","b",[],[])');
  });

  it('rejects inputDrvs and inputSrcs Nix cannot parse (found by npm run fuzz)', function () {
    const drv = (inputDrvs: string, inputSrcs = '[]'): string =>
      `Derive([("out","/nix/store/x","","")],${inputDrvs},${inputSrcs},"s","b",[],[])`;
    // Valid shapes first, so the rejections below are about the shape alone.
    assert.equal(parseDerivationOutputs(drv('[("/nix/store/d.drv",["out","dev"])]', '["/nix/store/src"]')).length, 1);
    expectParseError(drv('[[[[]]]]')); // nested lists instead of (path,[outputs])
    expectParseError(drv('["/nix/store/d.drv"]'));
    expectParseError(drv('[("/nix/store/d.drv")]'));
    expectParseError(drv('[("/nix/store/d.drv",["out"],"x")]'));
    expectParseError(drv('[("relative.drv",["out"])]'));
    expectParseError(drv('[("/nix/store/d.drv","out")]'));
    expectParseError(drv('[("/nix/store/d.drv",[["out"]])]'));
    expectParseError(drv('[("/nix/store/d.drv",(["out"],[]))]')); // the dynamic form needs DrvWithVersion
    expectParseError(drv('[]', '["relative"]'));
    expectParseError(drv('[]', '[""]'));
    expectParseError(drv('[]', '[["/nix/store/src"]]'));
  });

  it('accepts the dynamic inputDrvs form of xp-dyn-drv', function () {
    const text = 'DrvWithVersion("xp-dyn-drv",[("out","/nix/store/x","","")],[("/nix/store/d.drv",(["out"],[("out",["a"]),("b",([],[]))]))],[],"s","b",[],[])';
    assert.deepEqual(parseDerivationOutputs(text), [{ id: 'out', path: '/nix/store/x' }]);
    expectParseError(text.replace('("out",["a"])', '("out","a")'));
  });

  it('accepts the dynamic-derivations wrapper', function () {
    const text = 'DrvWithVersion("xp-dyn-drv",[("out","/nix/store/x","","")],[],[],"s","b",[],[])';
    assert.deepEqual(parseDerivationOutputs(text), [{ id: 'out', path: '/nix/store/x' }]);
  });
});

/**
 * parseDerivation / parseDerivationOutputs against .drv files written by real Nix
 * (Debian nix-bin, `nix-instantiate` at test time), checked against `nix show-derivation`.
 */
import { strict as assert } from 'node:assert';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseDerivation, parseDerivationOutputs } from '../../../src/nix/derivation.js';
import { isNarfsError } from '../../../src/errors.js';

const NIX_CONFIG = [
  'experimental-features = nix-command ca-derivations',
  'build-users-group =',
  'sandbox = false',
  'substituters =',
].join('\n');

function nix(cmd: string, args: string[]): string {
  return execFileSync(cmd, args, {
    encoding: 'utf8',
    env: { ...process.env, NIX_CONFIG },
    stdio: ['ignore', 'pipe', 'pipe'],
  }).trim();
}

interface ShownDrv {
  outputs: Record<string, { path?: string; hashAlgo?: string; hash?: string }>;
  inputSrcs: string[];
  system: string;
  builder: string;
  args: string[];
  env: Record<string, string>;
}

function show(drvPath: string): ShownDrv {
  const json = JSON.parse(nix('nix', ['show-derivation', drvPath])) as Record<string, ShownDrv>;
  const shown = json[drvPath];
  assert.ok(shown, `nix show-derivation did not describe ${drvPath}`);
  return shown;
}

function expectParseError(text: string): void {
  assert.throws(() => parseDerivationOutputs(text), (e: unknown) => isNarfsError(e, 'ERR_DERIVATION_PARSE'), text);
}

describe('nix/derivation (real .drv files from nix-instantiate)', function () {
  this.timeout(60_000);
  let dir: string;
  const drvs: Record<string, string> = {};

  before(function () {
    dir = mkdtempSync(join(tmpdir(), 'narfs-drv-'));
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
    for (const attr of ['multi', 'fixed', 'floating']) {
      drvs[attr] = nix('nix-instantiate', [join(dir, 'drvs.nix'), '-A', attr]);
    }
  });

  after(function () {
    rmSync(dir, { recursive: true, force: true });
  });

  for (const attr of ['multi', 'fixed', 'floating']) {
    it(`parses the ${attr} derivation exactly as nix show-derivation does`, function () {
      const drvPath = drvs[attr]!;
      const text = readFileSync(drvPath, 'utf8');
      const shown = show(drvPath);
      const parsed = parseDerivation(text);
      assert.deepEqual(
        parsed.outputs,
        Object.entries(shown.outputs)
          .map(([id, o]) => ({ id, path: o.path }))
          .sort((a, b) => (a.id < b.id ? -1 : 1)),
      );
      assert.deepEqual(parsed.inputSrcs, shown.inputSrcs);
      assert.equal(parsed.system, shown.system);
      assert.equal(parsed.builder, shown.builder);
      assert.deepEqual(parsed.args, shown.args);
      assert.deepEqual(Object.fromEntries(parsed.env), shown.env);
    });
  }

  it('decodes ATerm escapes (the tricky env value round-trips)', function () {
    const parsed = parseDerivation(readFileSync(drvs.multi!, 'utf8'));
    const tricky = parsed.env.find(([k]) => k === 'tricky')?.[1];
    assert.equal(tricky, 'a"b\\c\nd\te\r é ),("x","/nix/store/fake","","")]');
    assert.deepEqual(
      parsed.outputs.map((o) => o.id),
      ['dev', 'lib', 'out'],
    );
  });

  it('gives floating content-addressed outputs an undefined path', function () {
    const outputs = parseDerivationOutputs(readFileSync(drvs.floating!, 'utf8'));
    assert.deepEqual(outputs, [
      { id: 'doc', path: undefined },
      { id: 'out', path: undefined },
    ]);
  });

  it('keeps the path of a fixed-output derivation', function () {
    const [out] = parseDerivationOutputs(readFileSync(drvs.fixed!, 'utf8'));
    assert.equal(out?.id, 'out');
    assert.match(out?.path ?? '', /^\/nix\/store\/[0-9a-df-np-sv-z]{32}-narfs-drv-fixed$/);
  });

  it('matches nix-store -q --outputs for the multi-output derivation', function () {
    const outputs = parseDerivationOutputs(readFileSync(drvs.multi!, 'utf8'));
    const fromNix = nix('nix-store', ['-q', '--outputs', drvs.multi!]).split('\n').sort();
    assert.deepEqual(outputs.map((o) => o.path).sort(), fromNix);
  });

  it('rejects malformed derivations with ERR_DERIVATION_PARSE', function () {
    const good = readFileSync(drvs.multi!, 'utf8');
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

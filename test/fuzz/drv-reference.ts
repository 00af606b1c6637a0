/**
 * A reference recognizer of the `.drv` ATerm shape, written independently of
 * src/nix/derivation.ts after `parseDerivation` in Nix 2.26 src/libstore/derivations.cc
 * (`expect`, `parseString`, `parsePath`/`validatePath`, `parseStrings`, `endOfList`,
 * `parseDerivedPathMapNode`), for the fuzz oracle: whatever narfs accepts, Nix's grammar
 * must accept too.
 *
 * Kept from Nix: list items need no comma between them and may start with one
 * (`endOfList` skips a single `,`), paths (input derivations, input sources, non-empty
 * output paths) start with `/`, inputDrvs entries are `(path,[outputs])` or, in
 * `DrvWithVersion("xp-dyn-drv",…)`, also `(path,([outputs],[(output,node)…]))`.
 * Left out (narfs does not check them): hash algorithms and digests of outputs, store
 * path syntax beyond the leading `/`. Returns undefined when the text is accepted, else why.
 */

class Rejected extends Error {}

export function drvShapeProblem(text: string): string | undefined {
  let pos = 0;
  let depth = 0;
  const fail = (why: string): never => {
    throw new Rejected(`${why} at ${pos}`);
  };
  const expect = (s: string): void => {
    if (!text.startsWith(s, pos)) fail(`expected ${s}`);
    pos += s.length;
  };
  const parseString = (): string => {
    expect('"');
    let out = '';
    for (;;) {
      const c = text[pos++];
      if (c === undefined) fail('unterminated string');
      if (c === '"') return out;
      if (c === '\\') {
        const e = text[pos++];
        if (e === undefined) fail('unterminated escape');
        out += e === 'n' ? '\n' : e === 'r' ? '\r' : e === 't' ? '\t' : e;
      } else out += c;
    }
  };
  const parsePath = (): string => {
    const s = parseString();
    if (s.length === 0 || s[0] !== '/') fail(`bad path '${s}'`);
    return s;
  };
  const endOfList = (): boolean => {
    if (text[pos] === ',') {
      pos++;
      return false;
    }
    if (text[pos] === ']') {
      pos++;
      return true;
    }
    return false;
  };
  const parseStrings = (arePaths: boolean): void => {
    expect('[');
    while (!endOfList()) (arePaths ? parsePath : parseString)();
  };
  const parseNode = (dyn: boolean): void => {
    if (++depth > 10000) fail('too deep'); // Nix recurses without a bound; keep the test's stack
    if (!dyn || text[pos] === '[') parseStrings(false);
    else if (text[pos] === '(') {
      expect('(');
      parseStrings(false);
      expect(',[');
      while (!endOfList()) {
        expect('(');
        parseString();
        expect(',');
        parseNode(dyn);
        expect(')');
      }
      expect(')');
    } else fail('invalid inputDrvs entry');
    depth--;
  };

  try {
    let dyn = false;
    if (text.startsWith('Derive(')) {
      expect('Derive(');
    } else {
      expect('DrvWithVersion(');
      if (parseString() !== 'xp-dyn-drv') fail('unknown version');
      expect(',');
      dyn = true;
    }
    expect('[');
    while (!endOfList()) {
      expect('(');
      parseString();
      expect(',');
      const path = parseString();
      if (path !== '' && path[0] !== '/') fail(`bad path '${path}'`);
      expect(',');
      parseString();
      expect(',');
      parseString();
      expect(')');
    }
    expect(',[');
    while (!endOfList()) {
      expect('(');
      parsePath();
      expect(',');
      parseNode(dyn);
      expect(')');
    }
    expect(',');
    parseStrings(true);
    expect(',');
    parseString();
    expect(',');
    parseString();
    expect(',');
    parseStrings(false);
    expect(',[');
    while (!endOfList()) {
      expect('(');
      parseString();
      expect(',');
      parseString();
      expect(')');
    }
    expect(')'); // Nix does not look for trailing data
    return undefined;
  } catch (e) {
    if (e instanceof Rejected) return e.message;
    throw e;
  }
}

/**
 * The outputs of a `.drv` file (ATerm), as Nix records them in `DerivationOutputs`.
 *
 * Format (src/libstore/derivations.cc, `parseDerivation` / `printString`, Nix 2.26.3):
 *
 *   Derive([("out","/nix/store/…-name","",""),…],[inputDrvs],[inputSrcs],"system",
 *          "builder",[args],[("name","value"),…])
 *
 * or, for the experimental dynamic-derivations format, `DrvWithVersion("xp-dyn-drv",[outputs],…)`.
 * Each output is a 4-tuple `(id, path, hashAlgo, hash)`:
 *   - input-addressed:   path set,   hashAlgo "",            hash ""
 *   - fixed-output (CA): path set,   hashAlgo "r:sha256" …,  hash "<base16>"
 *   - floating CA / impure / deferred: path "" ⇒ not statically known ⇒ `path: undefined`
 *     (Nix skips those when it fills DerivationOutputs, local-store.cc `cacheDrvOutputMapping`).
 *
 * Strings are double-quoted; Nix prints `"` `\` newline CR tab as `\"` `\\` `\n` `\r` `\t`
 * and its parser maps `\n` `\r` `\t` to those characters and `\X` to X for any other X.
 *
 * Invariant: the whole text must be one well-formed derivation term (outputs, inputDrvs,
 * inputSrcs, system, builder, args, env) with nothing after it; anything else throws
 * ERR_DERIVATION_PARSE. As in Nix, paths (non-empty output paths, input derivations,
 * input sources) must start with `/`, and inputDrvs entries are `("path",["out",…])` or,
 * in the xp-dyn-drv format, also `("path",(["out",…],[("out",<node>),…]))`
 * (`parseDerivedPathMapNode`). Hash algorithms and digests of outputs are not checked.
 * Pure: no I/O.
 */
import { NarfsError } from '../errors.js';

export interface DerivationOutput {
  /** Symbolic output name, e.g. "out", "dev". */
  id: string;
  /** Full output path, or undefined when the derivation does not fix it (floating CA). */
  path: string | undefined;
}

type Term = { kind: 'string'; value: string } | { kind: 'list'; items: Term[] } | { kind: 'tuple'; items: Term[] };

function fail(message: string, offset?: number): never {
  throw new NarfsError('ERR_DERIVATION_PARSE', offset === undefined ? message : `${message} at offset ${offset}`, {
    details: offset === undefined ? undefined : { offset },
  });
}

/** A tiny recursive-descent reader for the subset of ATerm that .drv files use. */
class Reader {
  pos = 0;
  constructor(private readonly text: string) {}

  peek(): string | undefined {
    return this.text[this.pos];
  }

  expect(s: string): void {
    if (!this.text.startsWith(s, this.pos)) fail(`expected '${s}'`, this.pos);
    this.pos += s.length;
  }

  atEnd(): boolean {
    return this.pos >= this.text.length;
  }

  string(): string {
    this.expect('"');
    let out = '';
    let runStart = this.pos;
    for (;;) {
      const c = this.text[this.pos];
      if (c === undefined) fail('unterminated string', this.pos);
      if (c === '"') {
        out += this.text.slice(runStart, this.pos);
        this.pos++;
        return out;
      }
      if (c === '\\') {
        out += this.text.slice(runStart, this.pos);
        const e = this.text[this.pos + 1];
        if (e === undefined) fail('unterminated escape', this.pos);
        out += e === 'n' ? '\n' : e === 'r' ? '\r' : e === 't' ? '\t' : e;
        this.pos += 2;
        runStart = this.pos;
        continue;
      }
      this.pos++;
    }
  }

  term(depth = 0): Term {
    if (depth > 64) fail('terms nested too deeply', this.pos);
    const c = this.peek();
    if (c === '"') return { kind: 'string', value: this.string() };
    if (c === '[' || c === '(') {
      const close = c === '[' ? ']' : ')';
      this.pos++;
      const items: Term[] = [];
      if (this.peek() !== close) {
        for (;;) {
          items.push(this.term(depth + 1));
          if (this.peek() === ',') {
            this.pos++;
            continue;
          }
          break;
        }
      }
      this.expect(close);
      return { kind: c === '[' ? 'list' : 'tuple', items };
    }
    return fail(c === undefined ? 'unexpected end of derivation' : `unexpected character ${JSON.stringify(c)}`, this.pos);
  }
}

function asString(t: Term | undefined, what: string): string {
  if (t?.kind !== 'string') fail(`${what} must be a string`);
  return t.value;
}

function asList(t: Term | undefined, what: string): Term[] {
  if (t?.kind !== 'list') fail(`${what} must be a list`);
  return t.items;
}

function asTuple(t: Term | undefined, arity: number, what: string): Term[] {
  if (t?.kind !== 'tuple' || t.items.length !== arity) fail(`${what} must be a ${arity}-tuple`);
  return t.items;
}

/** A path field: a string starting with `/` (Nix `parsePath`: "bad path in derivation"). */
function asPath(t: Term | undefined, what: string): string {
  const s = asString(t, what);
  if (!s.startsWith('/')) fail(`${what} has the bad path ${JSON.stringify(s)}`);
  return s;
}

/**
 * The outputs wanted of an input derivation (Nix `parseDerivedPathMapNode`): a list of
 * output names or, in the dynamic-derivations format only, `([names],[(name,node),…])`.
 * Depth is bounded by the reader's nesting limit.
 */
function checkInputNode(t: Term | undefined, dyn: boolean): void {
  if (t?.kind === 'list') {
    for (const name of t.items) asString(name, 'an input derivation output');
    return;
  }
  if (!dyn) fail('the outputs of an input derivation must be a list of strings');
  const [names, children] = asTuple(t, 2, 'the outputs of an input derivation');
  checkInputNode(names, false);
  for (const child of asList(children, 'the dynamic outputs of an input derivation')) {
    const [name, node] = asTuple(child, 2, 'a dynamic output of an input derivation');
    asString(name, 'a dynamic output name');
    checkInputNode(node, true);
  }
}

/** The parts of a derivation narfs reads (inputDrvs are checked for shape, not returned). */
export interface Derivation {
  outputs: DerivationOutput[];
  inputSrcs: string[];
  system: string;
  builder: string;
  args: string[];
  /** Environment in file order (Nix writes it sorted by name). */
  env: Array<[string, string]>;
}

/** Parses a derivation in ATerm form (the contents of a `.drv` file). */
export function parseDerivation(atermText: string): Derivation {
  const r = new Reader(atermText);
  if (atermText.startsWith('Derive(')) {
    r.expect('Derive(');
  } else if (atermText.startsWith('DrvWithVersion(')) {
    r.expect('DrvWithVersion(');
    const version = r.string();
    if (version !== 'xp-dyn-drv') fail(`unsupported derivation version ${JSON.stringify(version)}`);
    r.expect(',');
  } else {
    fail('a derivation starts with Derive( or DrvWithVersion(', 0);
  }
  const fields: Term[] = [];
  for (;;) {
    fields.push(r.term());
    if (r.peek() === ',') {
      r.pos++;
      continue;
    }
    break;
  }
  r.expect(')');
  if (!r.atEnd()) fail('trailing data after the derivation', r.pos);
  if (fields.length !== 7) fail(`a derivation has 7 fields, this one has ${fields.length}`);
  const [outputsTerm, inputDrvs, inputSrcsTerm, systemTerm, builderTerm, argsTerm, envTerm] = fields;

  const dyn = atermText.startsWith('DrvWithVersion(');
  for (const entry of asList(inputDrvs, 'inputDrvs')) {
    const [drvPath, node] = asTuple(entry, 2, 'an input derivation');
    asPath(drvPath, 'an input derivation');
    checkInputNode(node, dyn);
  }
  const inputSrcs = asList(inputSrcsTerm, 'inputSrcs').map((s) => asPath(s, 'an input source'));
  const system = asString(systemTerm, 'system');
  const builder = asString(builderTerm, 'builder');
  const args = asList(argsTerm, 'args').map((a) => asString(a, 'an argument'));
  const env = asList(envTerm, 'env').map((e): [string, string] => {
    const [k, v] = asTuple(e, 2, 'an environment entry');
    return [asString(k, 'an environment name'), asString(v, 'an environment value')];
  });

  const outputs: DerivationOutput[] = [];
  const seen = new Set<string>();
  for (const o of asList(outputsTerm, 'outputs')) {
    const [idT, pathT, algoT, hashT] = asTuple(o, 4, 'an output');
    const id = asString(idT, 'an output name');
    const path = asString(pathT, 'an output path');
    asString(algoT, 'an output hash algorithm');
    asString(hashT, 'an output hash');
    if (id === '') fail('empty output name');
    if (seen.has(id)) fail(`duplicate output ${JSON.stringify(id)}`);
    seen.add(id);
    if (path !== '' && !path.startsWith('/')) fail(`output ${JSON.stringify(id)} has a relative path`);
    outputs.push({ id, path: path === '' ? undefined : path });
  }
  if (outputs.length === 0) fail('a derivation has at least one output');
  return { outputs, inputSrcs, system, builder, args, env };
}

/**
 * Parses the outputs of a derivation in ATerm form (the contents of a `.drv` file).
 * Output order is the file's (Nix sorts them by name when it writes the file).
 */
export function parseDerivationOutputs(atermText: string): DerivationOutput[] {
  return parseDerivation(atermText).outputs;
}

// Real worker-protocol sessions recorded by scripts/capture-worker-protocol.ts (Nix 2.26
// clients and nix-daemon in the trixie chroot), and a decoder that splits a session into
// its handshake and request/answer exchanges with narfs' own readers, keeping the bytes
// of each part so that tests can compare narfs' writers with them byte for byte.
import { spawn } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  WireIncomplete, WireReader, protocolMinor, readClientHello, readClientPostHandshake, readFeatures,
} from '../../src/nix/worker-protocol.js';
import { readRequest, type WorkerRequest } from '../../src/nix/worker-protocol-requests.js';
import {
  readHandshakeInfo, readResult, readServerHello, readStderr, type HandshakeInfo, type StderrOutcome, type WorkerResult,
} from '../../src/nix/worker-protocol-client.js';

const REPO = fileURLToPath(new URL('../../', import.meta.url));

export interface CapturedSession {
  file: string;
  label: string;
  client: Buffer;
  server: Buffer;
}

export interface Capture {
  dir: string;
  nixVersion: string;
  top: string;
  topDrv: string;
  sessions: CapturedSession[];
}

let cached: Promise<Capture> | undefined;

/** Runs the capture script (cached on disk; a cold run takes about a minute) and loads it. */
export function loadCapture(): Promise<Capture> {
  cached ??= (async () => {
    const out = await new Promise<string>((resolve, reject) => {
      const child = spawn(process.execPath, ['--import', 'tsx', join(REPO, 'scripts/capture-worker-protocol.ts')],
        { stdio: ['ignore', 'pipe', 'pipe'], cwd: REPO });
      let stdout = '';
      let stderr = '';
      child.stdout.setEncoding('utf8').on('data', (d: string) => { stdout += d; });
      child.stderr.setEncoding('utf8').on('data', (d: string) => { stderr += d; });
      child.on('close', (code) => code === 0 ? resolve(stdout) : reject(new Error(`capture-worker-protocol failed (${code}): ${stderr.slice(-2000)}`)));
    });
    const dir = out.trim().split('\n').pop()!;
    const manifest = JSON.parse(await readFile(join(dir, 'manifest.json'), 'utf8')) as {
      nixVersion: string; top: string; topDrv: string; sessions: Array<{ file: string; label: string }>;
    };
    const sessions: CapturedSession[] = [];
    for (const s of manifest.sessions) {
      const j = JSON.parse(await readFile(join(dir, s.file), 'utf8')) as { label: string; client: string; server: string };
      sessions.push({ file: s.file, label: j.label, client: Buffer.from(j.client, 'hex'), server: Buffer.from(j.server, 'hex') });
    }
    return { dir, nixVersion: manifest.nixVersion, top: manifest.top, topDrv: manifest.topDrv, sessions };
  })();
  return cached;
}

export interface Exchange {
  request: WorkerRequest;
  requestBytes: Buffer;
  outcome: StderrOutcome;
  result?: WorkerResult;
  /** Everything the server wrote for this request (stderr messages and result). */
  answerBytes: Buffer;
}

export interface DecodedSession {
  clientVersion: number;
  serverVersion: number;
  version: number;
  /** Bytes of the client's handshake (hello, features, post-handshake fields). */
  clientHandshake: Buffer;
  /** Bytes of the server's handshake (hello, features, info, STDERR_LAST). */
  serverHandshake: Buffer;
  info: HandshakeInfo;
  exchanges: Exchange[];
  /** Server bytes after the last exchange (Nix's daemon repeats an error before it closes). */
  serverRest: Buffer;
}

/** Splits a whole session; throws when either side does not decode exactly. */
export function decodeSession(client: Buffer, server: Buffer): DecodedSession {
  const c = new WireReader(client);
  const s = new WireReader(server);
  const { clientVersion } = readClientHello(c);
  const { serverVersion } = readServerHello(s);
  const version = Math.min(clientVersion, serverVersion);
  if (protocolMinor(version) >= 38) {
    readFeatures(c);
    readFeatures(s);
  }
  readClientPostHandshake(c, version);
  const info = readHandshakeInfo(s, version);
  const start = readStderr(s, version);
  if (start.kind !== 'last') throw new Error(`start-up error: ${start.message}`);
  const clientHandshake = client.subarray(0, c.offset);
  const serverHandshake = server.subarray(0, s.offset);
  const exchanges: Exchange[] = [];
  while (c.remaining > 0) {
    const c0 = c.offset;
    const request = readRequest(c, version);
    const requestBytes = client.subarray(c0, c.offset);
    const s0 = s.offset;
    const outcome = readStderr(s, version);
    const ex: Exchange = { request, requestBytes, outcome, answerBytes: Buffer.alloc(0) };
    if (outcome.kind === 'last') ex.result = readResult(s, request.op, version);
    ex.answerBytes = server.subarray(s0, s.offset);
    exchanges.push(ex);
    if (request.kind === 'opaque') break;
  }
  if (c.remaining > 0) throw new Error(`${c.remaining} client bytes after an opaque request`);
  return { clientVersion, serverVersion, version, clientHandshake, serverHandshake, info, exchanges, serverRest: server.subarray(s.offset) };
}

/** Whether `bytes` is a prefix that a reader would wait on rather than reject. */
export function isIncomplete(fn: () => void): boolean {
  try {
    fn();
    return false;
  } catch (err) {
    if (err instanceof WireIncomplete) return true;
    throw err;
  }
}

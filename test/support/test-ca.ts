/**
 * makeTestCa: a throw-away certificate authority and a server certificate for 127.0.0.1
 * (and localhost), made by the openssl command line (node:crypto cannot sign X.509), in a
 * temp dir that `cleanup()` removes. EC P-256 keys: quick to make on a loaded machine.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

export interface TestCa {
  dir: string;
  /** The CA certificate (PEM): what --ssl-cert-file names. */
  caFile: string;
  /** Server certificate (PEM) for IP 127.0.0.1 and DNS localhost, signed by the CA. */
  cert: Buffer;
  key: Buffer;
  cleanup(): Promise<void>;
}

export async function haveOpenssl(): Promise<boolean> {
  return run('openssl', ['version']).then(() => true, () => false);
}

export async function makeTestCa(name = 'narfs-test-ca'): Promise<TestCa> {
  const dir = await mkdtemp(join(tmpdir(), 'narfs-ca-'));
  const f = (n: string) => join(dir, n);
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  const opts = { timeout: 120_000 };
  await run('openssl', ['req', '-x509', ...ec, '-keyout', f('ca.key'), '-out', f('ca.pem'), '-days', '2', '-subj', `/CN=${name}`,
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign'], opts);
  await run('openssl', ['req', '-new', ...ec, '-keyout', f('server.key'), '-out', f('server.csr'), '-subj', '/CN=127.0.0.1'], opts);
  await writeFile(f('ext.cnf'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n');
  await run('openssl', ['x509', '-req', '-in', f('server.csr'), '-CA', f('ca.pem'), '-CAkey', f('ca.key'), '-CAcreateserial',
    '-out', f('server.pem'), '-days', '2', '-extfile', f('ext.cnf')], opts);
  return {
    dir,
    caFile: f('ca.pem'),
    cert: await readFile(f('server.pem')),
    key: await readFile(f('server.key')),
    cleanup: () => rm(dir, { recursive: true, force: true }),
  };
}

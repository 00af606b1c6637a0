/**
 * Secret files (tokens, netrc, AWS credentials) are read only when private, like ssh keys:
 * real files with real modes and owners; HttpAuth and resolveS3Credentials refuse them.
 */
import assert from 'node:assert/strict';
import { chmod, chown, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { execFile } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { NarfsError } from '../../../src/errors.js';
import { readSecretFile, secretFileProblem } from '../../../src/datalake/secret-file.js';
import { HttpAuth } from '../../../src/datalake/http-auth.js';
import { resolveS3Credentials } from '../../../src/datalake/s3-credentials.js';

const TOKEN = 'sekret-token-5f1e2d';

async function refused(p: Promise<unknown>, file: string): Promise<NarfsError> {
  const err = await p.then(() => assert.fail('a too-open secret file was read'), (e: unknown) => e);
  assert.ok(err instanceof NarfsError, String(err));
  assert.equal(err.code, 'ERR_SECRET_PERMISSIONS');
  assert.equal(err.hint, `Make it private: chmod 600 ${file}`);
  assert.ok(err.message.includes(file));
  for (const text of [err.message, err.hint, JSON.stringify(err.details)]) assert.ok(!text.includes(TOKEN), 'the secret leaked');
  return err;
}

describe('readSecretFile: secrets are read only from private files', function () {
  let dir: string;
  before(async function () {
    dir = await mkdtemp(join(tmpdir(), 'narfs-secret-'));
  });
  after(async function () {
    await rm(dir, { recursive: true, force: true });
  });

  it('secretFileProblem: 0600/0400 pass, any group or other bit fails, owner must be the user or root', function () {
    assert.equal(secretFileProblem({ mode: 0o100600, uid: 1000, isFile: true }, 1000), undefined);
    assert.equal(secretFileProblem({ mode: 0o100400, uid: 0, isFile: true }, 1000), undefined);
    for (const mode of [0o100644, 0o100640, 0o100604, 0o100620, 0o100601, 0o100610]) {
      assert.match(secretFileProblem({ mode, uid: 1000, isFile: true }, 1000) ?? '', /accessible by others/, mode.toString(8));
    }
    assert.match(secretFileProblem({ mode: 0o100600, uid: 1001, isFile: true }, 1000) ?? '', /belongs to uid 1001/);
    assert.match(secretFileProblem({ mode: 0o010600, uid: 1000, isFile: false }, 1000) ?? '', /not a regular file/);
  });

  it('a 0644 token file is refused with ERR_SECRET_PERMISSIONS and "chmod 600 FILE"; 0600 is read', async function () {
    const f = join(dir, 'token');
    await writeFile(f, TOKEN + '\n', { mode: 0o644 });
    await chmod(f, 0o644);
    const err = await refused(readSecretFile(f, 'bearer token file'), f);
    assert.match(err.message, /mode 0644/);
    await chmod(f, 0o600);
    assert.equal((await readSecretFile(f, 'bearer token file')).toString(), TOKEN + '\n');
  });

  it('a file owned by another user is refused even when 0600 (root reads it on behalf of nobody)', async function () {
    if (process.getuid?.() !== 0) this.skip();
    const f = join(dir, 'foreign');
    await writeFile(f, TOKEN, { mode: 0o600 });
    await chown(f, 65534, 65534);
    const err = await refused(readSecretFile(f, 'netrc file'), f);
    assert.match(err.message, /belongs to uid 65534/);
  });

  it('a FIFO is refused without blocking on it', async function () {
    const f = join(dir, 'fifo');
    await promisify(execFile)('mkfifo', ['-m', '600', f]);
    const err = await readSecretFile(f, 'netrc file').then(() => undefined, (e: unknown) => e);
    assert.ok(err instanceof NarfsError && err.code === 'ERR_SECRET_PERMISSIONS', String(err));
  });

  it('HttpAuth refuses a group-readable bearer token file and a world-readable netrc file', async function () {
    const token = join(dir, 'token-640');
    await writeFile(token, TOKEN, { mode: 0o640 });
    await chmod(token, 0o640);
    await refused(new HttpAuth(new URL('http://127.0.0.1:1/c'), { bearerTokenFiles: [{ file: token }] }).load(), token);
    const netrc = join(dir, 'netrc-644');
    await writeFile(netrc, `machine 127.0.0.1 login u password ${TOKEN}\n`, { mode: 0o644 });
    await chmod(netrc, 0o644);
    await refused(new HttpAuth(new URL('http://127.0.0.1:1/c'), { netrcFile: netrc }).load(), netrc);
  });

  it('an AWS shared credentials file readable by others is refused; the config file need not be private', async function () {
    const creds = join(dir, 'aws-credentials');
    await writeFile(creds, `[default]\naws_access_key_id = AKID\naws_secret_access_key = ${TOKEN}\n`, { mode: 0o644 });
    await chmod(creds, 0o644);
    const config = join(dir, 'aws-config');
    await writeFile(config, '[default]\nregion = eu-west-1\n', { mode: 0o644 });
    const env = { AWS_SHARED_CREDENTIALS_FILE: creds, AWS_CONFIG_FILE: config };
    await refused(resolveS3Credentials(undefined, { env, homeDir: dir }), creds);
    await chmod(creds, 0o600);
    const ok = await resolveS3Credentials(undefined, { env, homeDir: dir });
    assert.equal(ok.credentials?.accessKeyId, 'AKID');
  });
});

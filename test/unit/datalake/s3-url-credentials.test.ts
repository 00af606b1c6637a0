/**
 * s3:// URL parameters (Nix's s3-url.cc semantics) and the AWS credential lookup order
 * (environment, credentials/config profiles, unsigned), on temp files, no network.
 */
import assert from 'node:assert/strict';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { openDatalake } from '../../../src/datalake/open-datalake.js';
import { parseIni, resolveS3Credentials } from '../../../src/datalake/s3-credentials.js';
import { parseS3Url, s3Target } from '../../../src/datalake/s3-url.js';
import { isNarfsError } from '../../../src/errors.js';

function throwsCode(fn: () => unknown, code: string): void {
  assert.throws(fn, (e: unknown) => isNarfsError(e) && e.code === code);
}

describe('parseS3Url and s3Target', function () {
  it('bucket, prefix and defaults: AWS, us-east-1, virtual-hosted for DNS-safe buckets', function () {
    const loc = parseS3Url('s3://my-cache/some/prefix/');
    assert.equal(loc.bucket, 'my-cache');
    assert.equal(loc.prefix, 'some/prefix');
    assert.equal(loc.region, undefined);
    assert.equal(loc.displayUrl, 's3://my-cache/some/prefix');
    assert.deepEqual(s3Target(loc, 'us-east-1'), {
      origin: 'https://my-cache.s3.us-east-1.amazonaws.com',
      host: 'my-cache.s3.us-east-1.amazonaws.com',
      rootPath: '/some/prefix/',
    });
    // Dotted buckets cannot be a TLS subdomain: path-style.
    assert.deepEqual(s3Target(parseS3Url('s3://my.cache'), 'eu-west-1'), {
      origin: 'https://s3.eu-west-1.amazonaws.com',
      host: 's3.eu-west-1.amazonaws.com',
      rootPath: '/my.cache/',
    });
  });

  it('endpoint= (full URL or host with scheme=) is path-style unless addressing-style=virtual', function () {
    const loc = parseS3Url('s3://b/p?endpoint=http://127.0.0.1:9000/base&region=eu-central-1');
    assert.equal(loc.region, 'eu-central-1');
    assert.equal(loc.displayUrl, 's3://b/p?endpoint=http://127.0.0.1:9000/base');
    assert.deepEqual(s3Target(loc, 'eu-central-1'), { origin: 'http://127.0.0.1:9000', host: '127.0.0.1:9000', rootPath: '/base/b/p/' });
    const bare = parseS3Url('s3://b?endpoint=minio.example:9000&scheme=http');
    assert.equal(s3Target(bare, 'us-east-1').origin, 'http://minio.example:9000');
    assert.equal(s3Target(parseS3Url('s3://b?endpoint=minio.example'), 'us-east-1').origin, 'https://minio.example');
    const virt = parseS3Url('s3://b?endpoint=https://store.example&addressing-style=virtual');
    assert.deepEqual(s3Target(virt, 'us-east-1'), { origin: 'https://b.store.example', host: 'b.store.example', rootPath: '/' });
    const path = parseS3Url('s3://my-cache?addressing-style=path');
    assert.equal(s3Target(path, 'us-east-1').rootPath, '/my-cache/');
  });

  it('refuses credentials in the URL, bad parameters, and never echoes the URL', function () {
    for (const bad of [
      's3://AKID:secretkey@bucket',
      's3://bucket?endpoint=http://u:secretkey@host',
      's3://bucket?addressing-style=sideways',
      's3://bucket?region=EU%20West',
      's3://bucket?endpoint=ftp://host',
      's3://',
    ]) {
      try {
        parseS3Url(bad);
        assert.fail(`accepted ${bad}`);
      } catch (e) {
        assert.ok(isNarfsError(e, 'ERR_DATALAKE_URL'), String(e));
        assert.ok(!e.message.includes('secretkey'), e.message);
      }
    }
  });

  it('openDatalake builds an S3Datalake for s3:// (no I/O yet)', function () {
    const d = openDatalake('s3://bucket/prefix?endpoint=http://127.0.0.1:1');
    assert.equal(d.displayUrl, 's3://bucket/prefix?endpoint=http://127.0.0.1:1');
    assert.equal(typeof d.getRange, 'function');
    throwsCode(() => openDatalake('s3://user:pw@bucket'), 'ERR_DATALAKE_URL');
    return d.close();
  });
});

describe('resolveS3Credentials', function () {
  let home: string;
  before(async function () {
    home = await fsp.mkdtemp(path.join(os.tmpdir(), 'narfs-aws-home-'));
    await fsp.mkdir(path.join(home, '.aws'));
    await fsp.writeFile(
      path.join(home, '.aws', 'credentials'),
      '[default]\naws_access_key_id = DEFAULTID\naws_secret_access_key = defaultsecret\n' +
        '[work]\naws_access_key_id=WORKID\naws_secret_access_key=worksecret\naws_session_token = worktoken\n' +
        '[half]\naws_access_key_id = HALF\n',
      { mode: 0o600 },
    );
    await fsp.writeFile(
      path.join(home, '.aws', 'config'),
      '[default]\nregion = eu-west-1\n[profile work]\nregion = ap-south-1\ns3 =\n  addressing_style = path\n' +
        '[profile cfgonly]\naws_access_key_id = CFGID\naws_secret_access_key = cfgsecret\n' +
        '[profile role]\nrole_arn = arn:aws:iam::1:role/x\nsource_profile = default\n',
    );
  });
  after(async function () {
    await fsp.rm(home, { recursive: true, force: true });
  });

  it('parses AWS ini files: sections, comments, spacing, nested sub-keys', function () {
    const ini = parseIni('# c\n[a]\nk = v\n; c\nx=y z\ns3 =\n  nested = 1\n[profile b]\nk=w\n');
    assert.deepEqual([...ini.keys()], ['a', 'profile b']);
    assert.deepEqual(Object.fromEntries(ini.get('a')!), { k: 'v', x: 'y z', s3: '' });
  });

  it('environment keys first, then AWS_PROFILE / default from the files, then unsigned', async function () {
    const envKeys = { AWS_ACCESS_KEY_ID: 'ENVID', AWS_SECRET_ACCESS_KEY: 'envsecret', AWS_SESSION_TOKEN: 'envtoken', AWS_REGION: 'us-west-2' };
    const a = await resolveS3Credentials(undefined, { env: envKeys, homeDir: home });
    assert.deepEqual(a, { credentials: { accessKeyId: 'ENVID', secretAccessKey: 'envsecret', sessionToken: 'envtoken' }, source: 'environment', region: 'us-west-2' });
    const b = await resolveS3Credentials(undefined, { env: {}, homeDir: home });
    assert.equal(b.credentials?.accessKeyId, 'DEFAULTID');
    assert.equal(b.region, 'eu-west-1');
    const c = await resolveS3Credentials(undefined, { env: { AWS_PROFILE: 'work' }, homeDir: home });
    assert.deepEqual(c.credentials, { accessKeyId: 'WORKID', secretAccessKey: 'worksecret', sessionToken: 'worktoken' });
    assert.equal(c.region, 'ap-south-1');
    const d = await resolveS3Credentials(undefined, { env: {}, homeDir: path.join(home, 'empty') });
    assert.equal(d.credentials, undefined);
    assert.match(d.source, /unsigned/);
  });

  it('profile= wins over the environment; keys may live in the config file', async function () {
    const env = { AWS_ACCESS_KEY_ID: 'ENVID', AWS_SECRET_ACCESS_KEY: 'envsecret' };
    assert.equal((await resolveS3Credentials('work', { env, homeDir: home })).credentials?.accessKeyId, 'WORKID');
    const cfg = await resolveS3Credentials('cfgonly', { env: {}, homeDir: home });
    assert.equal(cfg.credentials?.accessKeyId, 'CFGID');
    assert.doesNotMatch(cfg.source, /cfgsecret/);
  });

  it('files named by AWS_SHARED_CREDENTIALS_FILE / AWS_CONFIG_FILE are read instead of ~/.aws', async function () {
    const f = path.join(home, 'other-creds');
    await fsp.writeFile(f, '[default]\naws_access_key_id = OTHER\naws_secret_access_key = othersecret\n', { mode: 0o600 });
    const r = await resolveS3Credentials(undefined, { env: { AWS_SHARED_CREDENTIALS_FILE: f, AWS_CONFIG_FILE: path.join(home, 'none') }, homeDir: home });
    assert.equal(r.credentials?.accessKeyId, 'OTHER');
    assert.equal(r.region, undefined);
  });

  it('a missing named profile, half keys, or a role profile are ERR_DATALAKE_AUTH without secrets', async function () {
    for (const [profile, env] of [
      ['nope', {}],
      ['half', {}],
      ['role', {}],
      [undefined, { AWS_PROFILE: 'nope' }],
      [undefined, { AWS_ACCESS_KEY_ID: 'ONLYID' }],
    ] as Array<[string | undefined, Record<string, string>]>) {
      try {
        await resolveS3Credentials(profile, { env, homeDir: home });
        assert.fail(`accepted ${profile ?? JSON.stringify(env)}`);
      } catch (e) {
        assert.ok(isNarfsError(e, 'ERR_DATALAKE_AUTH'), String(e));
        assert.ok(!/(default|work|cfg|env)secret|worktoken/.test(JSON.stringify({ m: e.message, d: e.details })), e.message);
      }
    }
  });
});

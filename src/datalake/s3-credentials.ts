/**
 * resolveS3Credentials: the keys that sign an S3 datalake's requests, found where the AWS
 * tools find static keys, or none (then requests go unsigned, for public buckets).
 *
 * Order (the AWS CLI's, restricted to static keys):
 * 1. `profile=NAME` in the URL: that profile only; a profile that does not exist, or has no
 *    static keys, is ERR_DATALAKE_AUTH (a typo must not silently become "unsigned");
 * 2. the environment: AWS_ACCESS_KEY_ID + AWS_SECRET_ACCESS_KEY (+ AWS_SESSION_TOKEN);
 * 3. the profile AWS_PROFILE names (an error when it is missing, as in 1), else `default`:
 *    `[NAME]` in the credentials file (AWS_SHARED_CREDENTIALS_FILE, else ~/.aws/credentials),
 *    then `[profile NAME]` (or `[default]`) in the config file (AWS_CONFIG_FILE, else
 *    ~/.aws/config); keys aws_access_key_id, aws_secret_access_key, aws_session_token;
 * 4. nothing: unsigned.
 * Region when the URL has none: AWS_REGION, AWS_DEFAULT_REGION, the profile's `region` in the
 * config file, else us-east-1 (Nix's default).
 *
 * Profiles that get their keys another way (role_arn, credential_process, sso_*, web identity)
 * are refused with ERR_DATALAKE_AUTH and a hint: narfs reads static keys only.
 *
 * Invariants: the returned `source` says where keys came from and never contains a key;
 * no message or detail contains a key; missing files are not errors (unreadable ones are);
 * the credentials file must be private (readSecretFile: chmod 600), else ERR_SECRET_PERMISSIONS.
 */
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { NarfsError } from '../errors.js';
import { readSecretFile } from './secret-file.js';

export interface S3Credentials {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken?: string;
}

export interface ResolvedS3Auth {
  /** undefined: send unsigned requests. */
  credentials: S3Credentials | undefined;
  /** Where the keys came from ("environment", "profile default (~/.aws/credentials)", "none"). */
  source: string;
  region: string | undefined;
}

export interface CredentialSources {
  env?: NodeJS.ProcessEnv;
  homeDir?: string;
}

/** An INI file as AWS writes it: `[section]`, `key = value`, `#`/`;` comments, indented sub-keys. */
export type IniFile = Map<string, Map<string, string>>;

export function parseIni(text: string): IniFile {
  const out: IniFile = new Map();
  let section: Map<string, string> | undefined;
  let lastKey: string | undefined;
  for (const raw of text.split(/\r?\n/)) {
    if (/^\s*([#;].*)?$/.test(raw)) continue;
    const indented = /^\s/.test(raw);
    const line = raw.trim();
    const header = /^\[\s*([^\]]*?)\s*\]$/.exec(line);
    if (header) {
      const name = header[1]!;
      section = out.get(name) ?? new Map<string, string>();
      out.set(name, section);
      lastKey = undefined;
      continue;
    }
    if (!section) continue;
    if (indented && lastKey !== undefined) continue; // a nested sub-key (s3 = \n  max_concurrent_requests = …)
    const eq = line.indexOf('=');
    if (eq <= 0) continue;
    const key = line.slice(0, eq).trim().toLowerCase();
    const value = line.slice(eq + 1).trim();
    section.set(key, value);
    lastKey = key;
  }
  return out;
}

const INDIRECT_KEYS = ['role_arn', 'credential_process', 'sso_session', 'sso_start_url', 'web_identity_token_file', 'source_profile'];

export async function resolveS3Credentials(profileParam: string | undefined, sources: CredentialSources = {}): Promise<ResolvedS3Auth> {
  const env = sources.env ?? process.env;
  const home = sources.homeDir ?? os.homedir();
  const credFile = nonEmpty(env.AWS_SHARED_CREDENTIALS_FILE) ?? path.join(home, '.aws', 'credentials');
  const configFile = nonEmpty(env.AWS_CONFIG_FILE) ?? path.join(home, '.aws', 'config');
  const envRegion = nonEmpty(env.AWS_REGION) ?? nonEmpty(env.AWS_DEFAULT_REGION);

  const envProfile = nonEmpty(env.AWS_PROFILE);
  const explicit = profileParam ?? undefined;
  if (explicit === undefined) {
    const id = nonEmpty(env.AWS_ACCESS_KEY_ID);
    const secret = nonEmpty(env.AWS_SECRET_ACCESS_KEY);
    if (id !== undefined && secret !== undefined) {
      const token = nonEmpty(env.AWS_SESSION_TOKEN);
      const region = envRegion ?? (await readProfileRegion(configFile, envProfile ?? 'default'));
      return { credentials: { accessKeyId: id, secretAccessKey: secret, ...(token ? { sessionToken: token } : {}) }, source: 'environment', region };
    }
    if (id !== undefined || secret !== undefined) {
      throw new NarfsError('ERR_DATALAKE_AUTH', 'only one of AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY is set', {
        hint: 'Set both (and AWS_SESSION_TOKEN for temporary keys), or neither.',
      });
    }
  }
  const name = explicit ?? envProfile ?? 'default';
  const mustExist = explicit !== undefined || envProfile !== undefined;
  const creds = await readIniFile(credFile, true);
  const config = await readIniFile(configFile);
  const fromCreds = creds?.get(name);
  const fromConfig = config?.get(name === 'default' ? 'default' : `profile ${name}`) ?? (name === 'default' ? undefined : config?.get(name));
  const region = envRegion ?? nonEmpty(fromConfig?.get('region'));
  const pick = (section: Map<string, string> | undefined, file: string, shown: string): ResolvedS3Auth | undefined => {
    const id = nonEmpty(section?.get('aws_access_key_id'));
    const secret = nonEmpty(section?.get('aws_secret_access_key'));
    if (id === undefined && secret === undefined) return undefined;
    if (id === undefined || secret === undefined) {
      throw new NarfsError('ERR_DATALAKE_AUTH', `profile '${name}' in ${shown} has only one of aws_access_key_id and aws_secret_access_key`, {
        details: { profile: name, file },
      });
    }
    const token = nonEmpty(section?.get('aws_session_token'));
    return {
      credentials: { accessKeyId: id, secretAccessKey: secret, ...(token ? { sessionToken: token } : {}) },
      source: `profile ${name} (${shown})`,
      region,
    };
  };
  const found = pick(fromCreds, credFile, credFile) ?? pick(fromConfig, configFile, configFile);
  if (found) return found;
  const indirect = [fromCreds, fromConfig].flatMap((s) => INDIRECT_KEYS.filter((k) => s?.has(k)));
  if (indirect.length > 0) {
    throw new NarfsError('ERR_DATALAKE_AUTH', `profile '${name}' gets its keys through ${indirect[0]}, which narfs does not run`, {
      details: { profile: name },
      hint: 'Export static keys (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN), e.g. from `aws configure export-credentials`.',
    });
  }
  if (mustExist && fromCreds === undefined && fromConfig === undefined) {
    throw new NarfsError('ERR_DATALAKE_AUTH', `AWS profile '${name}' is in neither ${credFile} nor ${configFile}`, {
      details: { profile: name, credentialsFile: credFile, configFile },
      hint: 'Check the profile= parameter of the s3:// URL (or AWS_PROFILE), or the AWS_SHARED_CREDENTIALS_FILE / AWS_CONFIG_FILE paths.',
    });
  }
  if (mustExist) {
    throw new NarfsError('ERR_DATALAKE_AUTH', `AWS profile '${name}' has no aws_access_key_id / aws_secret_access_key`, {
      details: { profile: name },
    });
  }
  return { credentials: undefined, source: 'none (unsigned requests)', region };
}

async function readProfileRegion(configFile: string, name: string): Promise<string | undefined> {
  const config = await readIniFile(configFile);
  return nonEmpty(config?.get(name === 'default' ? 'default' : `profile ${name}`)?.get('region'));
}

/** The parsed file, or undefined when it does not exist; unreadable is ERR_DATALAKE_AUTH. */
async function readIniFile(file: string, secret = false): Promise<IniFile | undefined> {
  let text: string;
  try {
    // The shared credentials file holds secret keys: private, like ~/.ssh keys.
    text = secret ? (await readSecretFile(file, 'AWS credentials file')).toString('utf8') : await fsp.readFile(file, 'utf8');
  } catch (e) {
    if (e instanceof NarfsError) throw e;
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return undefined;
    throw new NarfsError('ERR_DATALAKE_AUTH', `cannot read AWS credentials file ${file}: ${code ?? 'error'}`, {
      details: { file, cause: code },
    });
  }
  return parseIni(text);
}

function nonEmpty(v: string | undefined | null): string | undefined {
  if (v === undefined || v === null) return undefined;
  const t = v.trim();
  return t === '' ? undefined : t;
}

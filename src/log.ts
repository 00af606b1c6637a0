/**
 * Logger: one line per event, as text for people or JSON for machines (--log-format json).
 *
 * Invariant: a line is written whole with one write to stderr; errors are logged with
 * their stable `code` and `hint`; no field may carry a secret (callers pass display URLs).
 */
import { isNarfsError, type NarfsError } from './errors.js';

export type LogFormat = 'text' | 'json';
export type LogLevel = 'debug' | 'info' | 'warn' | 'error';
const LEVELS: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

export interface Logger {
  debug(msg: string, fields?: Record<string, unknown>): void;
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
}

export interface LoggerOptions {
  format?: LogFormat;
  level?: LogLevel;
  write?: (line: string) => void;
}

export function createLogger(options: LoggerOptions = {}): Logger {
  const format = options.format ?? 'text';
  const min = LEVELS[options.level ?? 'info'];
  const write = options.write ?? ((line: string) => process.stderr.write(line));
  const emit = (level: LogLevel, msg: string, fields: Record<string, unknown> = {}): void => {
    if (LEVELS[level] < min) return;
    const flat = flattenFields(fields);
    if (format === 'json') {
      write(JSON.stringify({ time: new Date().toISOString(), level, msg, ...flat }) + '\n');
    } else {
      const parts = Object.entries(flat).map(([k, v]) => `${k}=${formatValue(v)}`);
      write(`narfs ${level}: ${msg}${parts.length ? ' ' + parts.join(' ') : ''}\n`);
    }
  };
  return {
    debug: (m, f) => emit('debug', m, f),
    info: (m, f) => emit('info', m, f),
    warn: (m, f) => emit('warn', m, f),
    error: (m, f) => emit('error', m, f),
  };
}

/**
 * How a command reports the error that ended it, on stderr: `narfs: error CODE: message`,
 * the hint and the details on their own lines, or one JSON object for --log-format json.
 */
export function formatErrorReport(err: NarfsError, format: LogFormat): string {
  const details = err.details && Object.keys(err.details).length > 0 ? err.details : undefined;
  if (format === 'json') {
    return JSON.stringify({ level: 'error', code: err.code, msg: err.message, hint: err.hint, ...(details ? { details } : {}) }) + '\n';
  }
  return `narfs: error ${err.code}: ${err.message}\n  hint: ${err.hint}\n${details ? `  details: ${JSON.stringify(details)}\n` : ''}`;
}

/** A logger that drops everything (tests, library use). */
export const silentLogger: Logger = { debug() {}, info() {}, warn() {}, error() {} };

function flattenFields(fields: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(fields)) {
    if (k === 'err' && v !== undefined) {
      if (isNarfsError(v)) {
        out.code = v.code;
        out.error = v.message;
        out.hint = v.hint;
      } else {
        out.error = v instanceof Error ? v.message : String(v);
      }
    } else {
      out[k] = v;
    }
  }
  return out;
}

function formatValue(v: unknown): string {
  const s = typeof v === 'string' ? v : JSON.stringify(v);
  return /[\s"=]/.test(s ?? '') ? JSON.stringify(s) : String(s);
}

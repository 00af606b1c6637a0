/**
 * The name of the daemon's control socket in its cache directory. A module of its own so
 * that the CLI's client side (src/cli/control-client.ts) does not load the daemon to know it,
 * with the longest request line the daemon reads (a client can refuse a longer one itself).
 */
export const CONTROL_SOCKET = 'control.sock';

/** Longest request line the control server reads. */
export const MAX_CONTROL_REQUEST_BYTES = 1 << 20;

/**
 * The name of the daemon's control socket in its cache directory. A module of its own so
 * that the CLI's client side (src/cli/control-client.ts) does not load the daemon to know it.
 */
export const CONTROL_SOCKET = 'control.sock';

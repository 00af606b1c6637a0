// Run by plain `node` (ES modules, no tsx hook) on the built dist/: loads modules with
// loadLater as built narfs does and prints, as one JSON line, whether they share the module
// graph (and so the classes) of the static imports. Used by
// test/integration/load-later-dist.test.ts.
import { loadLater } from '../../dist/src/daemon/load-later.js';
import { NarfsError } from '../../dist/src/errors.js';
import { sleep } from '../../dist/src/deadline.js';
import { CleanupStack } from '../../dist/src/daemon/cleanup-stack.js';

const out = { requireDefined: typeof require === 'function' };
const errors = await loadLater('../../dist/src/errors.js', import.meta.url);
out.sameErrorClass = errors.NarfsError === NarfsError;
const deadlines = await loadLater('../../dist/src/deadline.js', import.meta.url);
out.sameFunction = deadlines.sleep === sleep;
// An error made inside a module loaded later is an instance of the statically imported class.
out.errorInstanceOf = await deadlines.sleep(1, AbortSignal.abort()).then(() => 'resolved', (e) => e instanceof NarfsError && e.code);
// With the daemon's base, as store-stack.ts and mount-daemon.ts pass it.
const daemonBase = new URL('../../dist/src/daemon/load-later.js', import.meta.url).href;
out.sameWithDaemonBase = (await loadLater('./cleanup-stack.js', daemonBase)).CleanupStack === CleanupStack;
// The same specifier from here names no module: the base given is the one used.
out.ownBaseRejects = await loadLater('./cleanup-stack.js', import.meta.url).then(() => false, () => true);
process.stdout.write(JSON.stringify(out) + '\n');

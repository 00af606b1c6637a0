/**
 * Writes an uncompressed cpio archive in the "newc" format (magic 070701), as the Linux
 * initramfs unpacker reads it (kernel: init/initramfs.c, Documentation/driver-api/
 * early-userspace/buffer-format.rst): per entry a 110-byte ASCII header of 13 eight-digit
 * hex fields (ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor,
 * rdevminor, namesize including the NUL, check = 0), the name and its NUL padded to a
 * multiple of 4 bytes, then the data padded likewise; last the entry `TRAILER!!!`.
 *
 * Used to append per-run files (a script and its data) to a cached initramfs: the kernel
 * unpacks concatenated archives one after the other, the later ones adding to the tree.
 * Only directories and regular files, owned by root; directories must precede their files.
 */
export interface CpioEntry {
  /** Path inside the archive, without a leading slash (`narfs/run`). */
  name: string;
  /** Absent for a directory. */
  data?: Buffer | string;
  /** Permission bits (default 0755 for directories, 0644 for files). */
  mode?: number;
}

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;

function pad4(n: number): number {
  return (4 - (n % 4)) % 4;
}

function entry(ino: number, name: string, mode: number, nlink: number, data: Buffer): Buffer {
  const nameBytes = Buffer.from(name + '\0', 'utf8');
  const fields = [ino, mode, 0, 0, nlink, 0, data.length, 0, 0, 0, 0, nameBytes.length, 0];
  const header = Buffer.from('070701' + fields.map((f) => f.toString(16).padStart(8, '0')).join(''), 'ascii');
  return Buffer.concat([
    header, nameBytes, Buffer.alloc(pad4(header.length + nameBytes.length)),
    data, Buffer.alloc(pad4(data.length)),
  ]);
}

/** The archive holding `entries`, in order, followed by the trailer. */
export function newcArchive(entries: CpioEntry[]): Buffer {
  const parts = entries.map((e, i) => {
    if (e.name.startsWith('/') || e.name.length === 0) throw new Error(`cpio entry name must be relative: ${e.name}`);
    return e.data === undefined
      ? entry(i + 1, e.name, S_IFDIR | (e.mode ?? 0o755), 2, Buffer.alloc(0))
      : entry(i + 1, e.name, S_IFREG | (e.mode ?? 0o644), 1, Buffer.from(e.data));
  });
  parts.push(entry(0, 'TRAILER!!!', 0, 1, Buffer.alloc(0)));
  return Buffer.concat(parts);
}

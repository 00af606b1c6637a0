# $count small files (0..99 bytes) in 1000 directories of 100: a store path whose
# listing alone is large, for the daemon's memory under a full walk.
mkdir -p "$out"
awk -v out="$out" -v count="$count" 'BEGIN {
  for (i = 0; i < count; i++) {
    d = sprintf("%s/d%03d", out, int(i / 100));
    if (i % 100 == 0) system("mkdir -p " d);
    f = sprintf("%s/f%05d", d, i);
    printf "%s\n", substr("narfs benchmark file " i " abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz", 1, i % 100) > f;
    close(f);
  }
}'

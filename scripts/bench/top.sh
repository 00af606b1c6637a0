# The closure's root: a list of the store paths it references.
mkdir -p "$out"
for p in "$python" "$perl" "$headers" "$doc" "$libs" "$large"; do echo "$p"; done > "$out/paths.txt"
ln -s "$python/usr/bin/python3.11" "$out/python3"

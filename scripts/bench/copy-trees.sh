# $trees: space-separated "host-path:relative-destination" pairs, copied with cp -a
# (symlinks kept as symlinks, even dangling ones).
for pair in $trees; do
  src=${pair%%:*}
  dst=$out/${pair#*:}
  mkdir -p "$(dirname "$dst")"
  cp -a "$src" "$dst"
done

# Copies the files of Debian packages into $out at their host paths (minus the leading
# /): regular files, symlinks (as symlinks, even dangling ones) and directories, exactly
# what `dpkg-query -L` lists, nothing else from the host. $packages is a space-separated
# list of name=version; the build fails if a package is not installed at that version or
# if a listed file is missing on the host (e.g. dropped by a dpkg path-exclude), so a
# store path always holds the declared packages' files. Conffiles (/etc) are left out:
# they are the host's configuration. Run by /bin/sh (dash) with -eu; no pipefail, so
# each step writes a file and the next one reads it.
mkdir -p "$out"
work=$(mktemp -d)
for spec in $packages; do
  name=${spec%%=*}; want=${spec#*=}
  have=$(dpkg-query -W -f='${Version}' "$name")
  [ "$have" = "$want" ] || { echo "copy-packages: $name is installed at '$have', the derivation wants '$want'" >&2; exit 1; }
  dpkg-query -L "$name" > "$work/$name.list"
done
# Paths only (dpkg also prints diversion notes), no /. and no /etc.
cat "$work"/*.list | grep '^/' | grep -v -e '^/\.$' -e '^/etc$' -e '^/etc/' | LC_ALL=C sort -u > "$work/paths"
# A listed path that is the parent of another listed path is a directory of the copy,
# even where the host has a symlink there (/lib on a merged-/usr system).
awk '{ print; p = $0; while (sub(/\/[^\/]*$/, "", p) && p != "") print "parent " p }' "$work/paths" \
  | awk '/^parent / { parents[substr($0, 8)] = 1; next } { paths[++n] = $0 }
         END { for (i = 1; i <= n; i++) print (paths[i] in parents ? "d " : "? ") paths[i] }' > "$work/classified"
: > "$work/dirs"; : > "$work/entries"; : > "$work/missing"
while IFS= read -r line; do
  p=${line#??}
  case $line in
    "d "*) printf '%s\n' "${p#/}" >> "$work/dirs" ;;
    *) if [ -L "$p" ] || [ -f "$p" ]; then printf '%s\n' "${p#/}" >> "$work/entries"
       elif [ -d "$p" ]; then printf '%s\n' "${p#/}" >> "$work/dirs"
       else printf '%s\n' "$p" >> "$work/missing"; fi ;;
  esac
done < "$work/classified"
if [ -s "$work/missing" ]; then
  echo "copy-packages: $(wc -l < "$work/missing") listed files are missing on the host, e.g.:" >&2
  head -5 "$work/missing" >&2
  exit 1
fi
(cd "$out" && xargs -r -d '\n' mkdir -p -- < "$work/dirs")
(cd / && xargs -r -d '\n' cp -P --preserve=mode --parents -t "$out" -- < "$work/entries")
rm -rf "$work"

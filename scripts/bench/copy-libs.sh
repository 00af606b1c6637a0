# The host's shared libraries lib[a-c]* (files and their version symlinks), flat.
mkdir -p "$out/lib"
find /usr/lib/x86_64-linux-gnu -maxdepth 1 -name 'lib[a-c]*.so*' \( -type f -o -type l \) \
  -exec cp -a {} "$out/lib/" \;

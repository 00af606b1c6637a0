# Benchmark closure for narfs, built by real Nix (nix-build, no sandbox, no nixpkgs).
#
# Each store path but `many` and `top` holds the files of declared Debian packages
# (packages.txt), copied from the host at their host paths by copy-packages.sh (the
# sandbox is off, so builders see the host file system and its dpkg database): an
# interpreter with its standard library, another one with its modules, headers,
# documentation, shared libraries, and a store path of large files. `top` references all
# of them, so `nix-store -qR top` is the benchmark closure. `many` (100,000 small files)
# stands alone: scenario 6 walks it.
#
# `packages` is JSON, {"<role>": "<name>=<version> ..."}, with the versions installed on
# the host (scripts/build-bench-datalake.sh reads them with dpkg-query): a store path
# changes exactly when its packages' versions do, and its builder fails if the host has
# other versions installed.
{ packages }:
let
  pkgs = builtins.fromJSON packages;
  mk = name: script: attrs: derivation ({
    name = "narfs-bench-${name}";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-eu" "-c" ". ${script}" ];
    PATH = "/usr/local/bin:/usr/bin:/bin";
    LC_ALL = "C";
  } // attrs);
  deb = name: role: mk name ./copy-packages.sh { packages = pkgs.${role}; };

  python = deb "python3.11" "python";
  perl = deb "perl5.36" "perl";
  headers = deb "headers" "headers";
  doc = deb "doc" "doc";
  libs = deb "libs" "libs";
  large = deb "large" "large";
  many = mk "many-100k" ./many.sh { count = "100000"; };
  top = mk "top" ./top.sh { inherit python perl headers doc libs large; };
in {
  inherit python perl headers doc libs large many top;
}

# Benchmark closure for narfs, built by real Nix (nix-build, no sandbox, no nixpkgs).
#
# Each store path copies a real tree from the host (the sandbox is off, so builders see
# the host file system): an interpreter with its standard library, headers, shared
# libraries, documentation, and a store path of large files. `top` references all of
# them, so `nix-store -qR top` is the benchmark closure. `many` (100,000 small files)
# stands alone: scenario 6 walks it. `fingerprint` is a digest of the host trees, so
# the outputs change when the host's files do.
{ fingerprint ? "none" }:
let
  mk = name: script: attrs: derivation ({
    name = "narfs-bench-${name}";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-eu" "-c" ". ${script}" ];
    PATH = "/usr/local/bin:/usr/bin:/bin";
    LC_ALL = "C";
    inherit fingerprint;
  } // attrs);
  copy = ./copy-trees.sh;

  python = mk "python3.11" copy {
    trees = "/usr/bin/python3.11:bin/python3.11 /usr/lib/python3.11:lib/python3.11 /usr/lib/python3/dist-packages:lib/python3/dist-packages";
  };
  perl = mk "perl5.36" copy {
    trees = "/usr/bin/perl:bin/perl /usr/share/perl:share/perl /usr/lib/x86_64-linux-gnu/perl:lib/perl /usr/lib/x86_64-linux-gnu/perl-base:lib/perl-base";
  };
  headers = mk "headers" copy { trees = "/usr/include:include"; };
  doc = mk "doc" copy { trees = "/usr/share/doc:share/doc"; };
  libs = mk "libs" ./copy-libs.sh { };
  large = mk "large" ./large.sh { };
  many = mk "many-100k" ./many.sh { count = "100000"; };
  top = mk "top" ./top.sh { inherit python perl headers doc libs large; };
in {
  inherit python perl headers doc libs large many top;
}

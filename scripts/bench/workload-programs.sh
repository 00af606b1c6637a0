# The programs whose file accesses become the scenario-1 workload ("first use of a
# closure"): starting Python with common modules, Perl with common modules, and
# preprocessing a C file that includes libc and Python headers. Each runs under strace;
# $1 is the directory for the logs.
#
# Python runs with an empty byte-code cache (PYTHONPYCACHEPREFIX points at a directory
# that does not exist, PYTHONDONTWRITEBYTECODE keeps it so): it reads the modules' .py
# sources, which are files of the declared packages, and never the __pycache__/*.pyc
# that Debian's maintainer scripts compile on the host, which no `dpkg -L` lists and so
# are not in the closure. -S skips the site module: the .pth files the host has in
# dist-packages (from whatever else is installed) would otherwise run at startup and
# make the workload differ between machines.
set -eu
d=$1
st() { name=$1; shift; strace -f -qq -o "$d/$name.strace" -e trace=%file,getdents64 "$@" >/dev/null 2>&1; }
st python env -i PYTHONDONTWRITEBYTECODE=1 PYTHONPYCACHEPREFIX="$d/no-pycache" /usr/bin/python3.11 -S -c \
  'import json, email.parser, http.client, urllib.request, asyncio, sqlite3, decimal, argparse, logging, subprocess, xml.etree.ElementTree, unittest, csv, tarfile, zipfile, hashlib, ssl'
st perl env -i /usr/bin/perl -MPOSIX -MData::Dumper -MFile::Find -MGetopt::Long -MStorable -MList::Util -MTime::HiRes -MEncode -MFile::Temp -e 1
printf '#include <stdio.h>\n#include <stdlib.h>\n#include <string.h>\n#include <pthread.h>\n#include <sys/socket.h>\n#include <netinet/in.h>\n#include <math.h>\n#include <python3.11/Python.h>\nint main(void){return 0;}\n' > "$d/prog.c"
st cpp cpp "$d/prog.c"

{
  "targets": [
    {
      "target_name": "narfs_fuse",
      "sources": [
        "native/src/addon.cc",
        "native/src/sd-notify.cc",
        "native/src/session.cc",
        "native/src/session_passthrough.cc",
        "native/src/decode.cc",
        "native/src/dirent_pack.cc",
        "native/src/adopt.cc",
        "native/src/backing_journal.cc",
        "native/src/watchdog.cc",
        "native/src/io_ring.cc",
        "native/src/uring_transport.cc",
        "native/src/hash_file.cc",
        "native/src/dir_flags.cc",
        "native/src/malloc_trim.cc"
      ],
      "include_dirs": ["native/src"],
      "defines": ["NAPI_VERSION=8", "NAPI_DISABLE_CPP_EXCEPTIONS"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-fno-rtti"],
      "cflags": ["-Wall", "-Wextra", "-Werror"],
      "cflags_cc": [
        "-std=c++17", "-fexceptions", "-Wall", "-Wextra", "-Werror",
        "-isystem", "<!(node -p \"require('path').dirname(require.resolve('node-addon-api/package.json'))\")"
      ]
    },
    {
      "target_name": "narfs-client",
      "type": "executable",
      "sources": ["native/client/fast-client.c"],
      "cflags": ["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror"]
    },
    {
      "target_name": "narfs-flock",
      "type": "executable",
      "sources": ["native/client/flock-helper.c"],
      "cflags": ["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror"]
    }
  ]
}

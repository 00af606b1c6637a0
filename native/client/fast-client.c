/*
 * narfs-client: the fast front of `narfs register` and `narfs prefetch` when a daemon
 * serves the cache directory. Started by bin/narfs as
 *
 *     narfs-client SCRIPT register|prefetch [ARG...]
 *
 * where SCRIPT is bin/narfs itself. It forwards the command line and its working
 * directory to the daemon's control socket (<cache-dir>/control.sock, op "cli") and
 * copies the daemon's answer to stdout/stderr and its exit status
 * (src/daemon/cli-operation.ts). Why C: the whole registration of a small closure through
 * a warm daemon takes ~10 ms, `node -e 0` alone 40-50 ms, and issue 13 asks for no more
 * than `nix-store --load-db` of the same rows (~20 ms); a job's `narfs prefetch --trace
 * FILE --detach` races the job's own first reads, which miss until the daemon has the
 * trace (issue 10). See native/README.md.
 *
 * For prefetch, the files named by `--trace FILE` / `--trace=FILE` are read here, with the
 * caller's rights and in its mount namespace, and sent whole as `"files":[[FILE,TEXT],...]`
 * (the daemon parses them; one it cannot be sent, unreadable or too large for the 1 MiB
 * request line, makes this run the Node CLI, which reports it).
 *
 * No policy here: the daemon parses the command line (with the Node CLI's parser), decides
 * what to register, formats every line printed and the exit status. The client only finds
 * the socket: the last `--cache-dir DIR` / `--cache-dir=DIR` before `--`, else
 * /var/cache/narfs; the daemon checks that this guess is the cache directory the command
 * line means (with --config too) and answers "f" when it is not.
 *
 * Whenever the fast path does not end with the daemon's exit frame — no socket, a refused
 * connection, a daemon that does not know op "cli" (it answers a JSON line), an "f" frame,
 * a connection closed early, a malformed frame, no first frame within 60 s — it execs the
 * Node CLI (`node SCRIPT COMMAND ARG...`), which does the same work (registration is
 * idempotent; a detached prefetch asked twice finds the first one's files cached) and
 * reports in full. The socket is close-on-exec, so a registration the daemon was still
 * running for us is aborted when we exec. The one thing printed from
 * here is the text the daemon gave in its "d" frame, when the daemon passes that deadline
 * (plus 10 s of slack) without an answer: then the exit status is 1.
 *
 * Frames (cli-operation.ts): `TAG SP LENGTH LF PAYLOAD`; TAG o (stdout), e (stderr),
 * d ("MS TEXT": deadline from now and the text to print when it passes), x (exit status),
 * f (run the Node CLI).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_CACHE_DIR "/var/cache/narfs"
#define CONTROL_SOCKET "control.sock"
/* How long to wait for the daemon's first frame (a daemon that does not answer at all). */
#define FIRST_FRAME_MS 60000
/* Added to the daemon's own deadline before giving up on it. */
#define SLACK_MS 10000
/* The daemon reads request lines up to 1 MiB. */
#define MAX_REQUEST (1 << 20)
/* Longest frame accepted (log lines and results are far smaller). */
#define MAX_FRAME (16 << 20)

struct buf {
  char *data;
  size_t len, cap;
};

static int buf_reserve(struct buf *b, size_t more) {
  if (b->len + more <= b->cap) return 0;
  size_t cap = b->cap ? b->cap : 4096;
  while (cap < b->len + more) cap *= 2;
  char *p = realloc(b->data, cap);
  if (!p) return -1;
  b->data = p;
  b->cap = cap;
  return 0;
}

static int buf_add(struct buf *b, const char *s, size_t n) {
  if (buf_reserve(b, n) != 0) return -1;
  memcpy(b->data + b->len, s, n);
  b->len += n;
  return 0;
}

/* Appends the `n` bytes at `s` as a JSON string. Bytes >= 0x80 pass as they are (UTF-8 in, UTF-8 out). */
static int buf_json_bytes(struct buf *b, const char *s, size_t n) {
  if (buf_add(b, "\"", 1) != 0) return -1;
  for (const unsigned char *p = (const unsigned char *)s, *end = p + n; p < end; p++) {
    char esc[8];
    if (*p == '"' || *p == '\\') {
      esc[0] = '\\';
      esc[1] = (char)*p;
      if (buf_add(b, esc, 2) != 0) return -1;
    } else if (*p < 0x20) {
      snprintf(esc, sizeof esc, "\\u%04x", *p);
      if (buf_add(b, esc, 6) != 0) return -1;
    } else if (buf_add(b, (const char *)p, 1) != 0) {
      return -1;
    }
  }
  return buf_add(b, "\"", 1);
}

static int buf_json_string(struct buf *b, const char *s) {
  return buf_json_bytes(b, s, strlen(s));
}

/* Appends the whole file `path` (relative to the working directory) to `b`; -1 when it
 * cannot be read or would make `b` longer than `max`. */
static int buf_file(struct buf *b, const char *path, size_t max) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  for (;;) {
    if (b->len >= max || buf_reserve(b, 65536) != 0) {
      close(fd);
      return -1;
    }
    ssize_t n = read(fd, b->data + b->len, b->cap - b->len);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      close(fd);
      return -1;
    }
    if (n == 0) break;
    b->len += (size_t)n;
  }
  close(fd);
  return b->len > max ? -1 : 0;
}

/* The value of option `name` at argv[*i] (`NAME VALUE`, then *i moves past VALUE, or
 * `NAME=VALUE`), or NULL when argv[*i] is not that option. */
static const char *option_value(int argc, char **argv, int *i, const char *name) {
  size_t n = strlen(name);
  if (strcmp(argv[*i], name) == 0 && *i + 1 < argc) return argv[++*i];
  if (strncmp(argv[*i], name, n) == 0 && argv[*i][n] == '=') return argv[*i] + n + 1;
  return NULL;
}

/* `,"files":[[FILE,TEXT],...]` for every --trace FILE of argv[3...] (before `--`). */
static int add_trace_files(struct buf *req, int argc, char **argv) {
  int rc = buf_add(req, ",\"files\":[", 10);
  int first = 1;
  for (int i = 3; i < argc && rc == 0; i++) {
    if (strcmp(argv[i], "--") == 0) break;
    const char *file = option_value(argc, argv, &i, "--trace");
    if (!file) continue;
    struct buf text = {0};
    if (buf_file(&text, file, MAX_REQUEST) != 0) {
      free(text.data);
      return -1;
    }
    rc |= buf_add(req, first ? "[" : ",[", first ? 1 : 2) | buf_json_string(req, file) | buf_add(req, ",", 1) |
          buf_json_bytes(req, text.data ? text.data : "", text.len) | buf_add(req, "]", 1);
    free(text.data);
    first = 0;
  }
  return rc | buf_add(req, "]", 1);
}

/* Runs the Node CLI in this process: `node SCRIPT ARG...` (argv[1] is SCRIPT). */
static void run_node(int argc, char **argv) {
  char **args = calloc((size_t)argc + 1, sizeof *args);
  if (args) {
    args[0] = "node";
    for (int i = 1; i < argc; i++) args[i] = argv[i];
    args[argc] = NULL;
    execvp("node", args);
  }
  fprintf(stderr, "narfs: error ERR_INTERNAL: cannot run node: %s\n", strerror(errno));
  exit(1);
}

static long long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int write_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

static int send_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

/* The control socket's path from the command line (argv[3...]), or NULL when it does not fit. */
static char *socket_path(int argc, char **argv) {
  const char *dir = DEFAULT_CACHE_DIR;
  for (int i = 3; i < argc; i++) {
    if (strcmp(argv[i], "--") == 0) break;
    const char *value = option_value(argc, argv, &i, "--cache-dir");
    if (value) dir = value;
  }
  struct sockaddr_un sa;
  size_t n = strlen(dir) + 1 + strlen(CONTROL_SOCKET) + 1;
  if (n > sizeof sa.sun_path) return NULL;
  char *path = malloc(n);
  if (path) snprintf(path, n, "%s/%s", dir, CONTROL_SOCKET);
  return path;
}

/* The request line: {"op":"cli","cwd":CWD,"argv":[argv[2],...]}\n, plus "files" for prefetch. */
static int build_request(struct buf *req, int argc, char **argv) {
  char *cwd = getcwd(NULL, 0);
  if (!cwd) return -1;
  int rc = buf_add(req, "{\"op\":\"cli\",\"cwd\":", 18) | buf_json_string(req, cwd) | buf_add(req, ",\"argv\":[", 9);
  free(cwd);
  for (int i = 2; i < argc && rc == 0; i++) {
    if (i > 2) rc |= buf_add(req, ",", 1);
    rc |= buf_json_string(req, argv[i]);
  }
  rc |= buf_add(req, "]", 1);
  if (rc == 0 && strcmp(argv[2], "prefetch") == 0) rc |= add_trace_files(req, argc, argv);
  rc |= buf_add(req, "}\n", 2);
  return rc != 0 || req->len > MAX_REQUEST ? -1 : 0;
}

/*
 * Parses one whole frame at the start of `in` (header and payload). Returns its total
 * length, 0 when more bytes are needed, -1 when the bytes are not a frame.
 */
static long frame_at(const struct buf *in, char *tag, const char **payload, size_t *len) {
  const char *nl = memchr(in->data, '\n', in->len < 32 ? in->len : 32);
  if (!nl) return in->len < 32 ? 0 : -1;
  if (nl - in->data < 3 || in->data[1] != ' ') return -1;
  size_t n = 0;
  for (const char *p = in->data + 2; p < nl; p++) {
    if (*p < '0' || *p > '9') return -1;
    n = n * 10 + (size_t)(*p - '0');
    if (n > MAX_FRAME) return -1;
  }
  size_t head = (size_t)(nl - in->data) + 1;
  if (in->len < head + n) return 0;
  *tag = in->data[0];
  *payload = nl + 1;
  *len = n;
  return (long)(head + n);
}

int main(int argc, char **argv) {
  if (argc < 3 || (strcmp(argv[2], "register") != 0 && strcmp(argv[2], "prefetch") != 0)) {
    if (argc >= 2) run_node(argc, argv);
    fprintf(stderr, "narfs-client: run by bin/narfs as: narfs-client SCRIPT register|prefetch [ARG...]\n");
    return 2;
  }
  char *path = socket_path(argc, argv);
  struct buf req = {0};
  if (!path || build_request(&req, argc, argv) != 0) run_node(argc, argv);

  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) run_node(argc, argv);
  struct sockaddr_un sa;
  memset(&sa, 0, sizeof sa);
  sa.sun_family = AF_UNIX;
  memcpy(sa.sun_path, path, strlen(path) + 1);
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) run_node(argc, argv);
  struct timeval tv = {FIRST_FRAME_MS / 1000, 0};
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  if (send_all(fd, req.data, req.len) != 0) run_node(argc, argv);

  struct buf in = {0};
  long long deadline = now_ms() + FIRST_FRAME_MS;
  char *deadline_text = NULL;
  int frames = 0;
  for (;;) {
    /* Every whole frame received so far. */
    for (;;) {
      char tag;
      const char *payload;
      size_t len;
      long used = in.len ? frame_at(&in, &tag, &payload, &len) : 0;
      if (used < 0) run_node(argc, argv);
      if (used == 0) break;
      frames++;
      switch (tag) {
        case 'o':
          write_all(1, payload, len);
          break;
        case 'e':
          write_all(2, payload, len);
          break;
        case 'd': {
          char ms[24];
          size_t k = 0;
          while (k < len && k < sizeof ms - 1 && payload[k] >= '0' && payload[k] <= '9') ms[k] = payload[k], k++;
          ms[k] = '\0';
          if (k == 0 || k == sizeof ms - 1) run_node(argc, argv);
          deadline = now_ms() + atoll(ms) + SLACK_MS;
          free(deadline_text);
          deadline_text = strndup(k < len ? payload + k + 1 : "", k < len ? len - k - 1 : 0);
          break;
        }
        case 'x': {
          int status = 0;
          for (size_t k = 0; k < len && k < 3 && payload[k] >= '0' && payload[k] <= '9'; k++) status = status * 10 + (payload[k] - '0');
          return len == 0 ? 1 : status;
        }
        case 'f':
        default:
          run_node(argc, argv);
      }
      memmove(in.data, in.data + used, in.len - (size_t)used);
      in.len -= (size_t)used;
    }
    if (frames == 0 && in.len > 0 && in.data[0] == '{') run_node(argc, argv); /* a daemon without op "cli" */

    long long left = deadline - now_ms();
    if (left <= 0) {
      if (!deadline_text) run_node(argc, argv);
      write_all(2, deadline_text, strlen(deadline_text));
      return 1;
    }
    struct pollfd p = {fd, POLLIN, 0};
    int r = poll(&p, 1, left > 1000000000 ? 1000000000 : (int)left);
    if (r < 0 && errno != EINTR) run_node(argc, argv);
    if (r <= 0) continue;
    if (buf_reserve(&in, 65536) != 0) run_node(argc, argv);
    ssize_t n = read(fd, in.data + in.len, in.cap - in.len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) run_node(argc, argv); /* closed before the exit frame */
    in.len += (size_t)n;
  }
}

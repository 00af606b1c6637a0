/*
 * narfs-flock: holds exclusive flock(2) locks for a Node process, which has no flock API
 * (src/nixdb/lock-file.ts). One helper serves one lock set at a time and is kept for the
 * next, so a registration costs two pipe round trips instead of starting a chain of
 * util-linux flock processes (~6 ms of a ~20 ms registration: issue 13). Nix's big-lock
 * is an flock (src/libutil/unix/file-system.cc lockFile), so the lock must be that kind.
 *
 * Protocol on stdin/stdout:
 *   request  "L <timeout_ms> <n>\n" then n paths, each ended by a NUL byte
 *            → takes them exclusively in that order, each waiting at most until the
 *              deadline (a blocking flock, interrupted by a timer, as flock(1) -w does),
 *              answers "held\n", or "busy <i>\n" when lock i was not free in time, or
 *              "error <i> <text>\n" when file i cannot be opened or locked; on busy and
 *              error every lock of the set is dropped.
 *   request  "U\n" → drops every lock held → "released\n"
 *   EOF on stdin (the owner closed the pipe or died, even by SIGKILL) → exit: the kernel
 *   drops the locks with the descriptors, so a lock never outlives its owner.
 * Files are opened as flock(1) opens them: O_RDONLY|O_CREAT|O_NOCTTY, mode 0666 & umask.
 * Anything else on stdin is a protocol error: exit 2 (dropping the locks).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define MAX_LOCKS 8
#define MAX_PATH 4096

static int held[MAX_LOCKS];
static int nheld;
static volatile sig_atomic_t timed_out;

static void on_alarm(int sig) {
  (void)sig;
  timed_out = 1;
}

static void drop_all(void) {
  while (nheld > 0) close(held[--nheld]);
}

static void answer(const char *s) {
  size_t n = strlen(s);
  while (n > 0) {
    ssize_t w = write(1, s, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      exit(0); /* the owner is gone */
    }
    s += w;
    n -= (size_t)w;
  }
}

/* One byte of stdin; exits on EOF (the owner is gone) or a read error. */
static int next_byte(void) {
  static char buf[8192];
  static ssize_t len, pos;
  if (pos == len) {
    do len = read(0, buf, sizeof buf);
    while (len < 0 && errno == EINTR);
    if (len <= 0) {
      drop_all();
      exit(0);
    }
    pos = 0;
  }
  return (unsigned char)buf[pos++];
}

/* Reads up to `end` into `out` (at most `cap` bytes with the NUL); exits 2 if longer. */
static void read_until(int end, char *out, size_t cap) {
  size_t n = 0;
  for (int c = next_byte(); c != end; c = next_byte()) {
    if (n + 1 >= cap) exit(2);
    out[n++] = (char)c;
  }
  out[n] = '\0';
}

static long long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Takes `path` exclusively by `deadline`: 0, or 1 when busy, or -1 with errno. */
static int take(const char *path, long long deadline) {
  int fd = open(path, O_RDONLY | O_CREAT | O_NOCTTY | O_CLOEXEC, 0666);
  if (fd < 0 && errno == EISDIR) fd = open(path, O_RDONLY | O_NOCTTY | O_CLOEXEC);
  if (fd < 0) return -1;
  for (;;) {
    if (flock(fd, LOCK_EX | LOCK_NB) == 0) break;
    if (errno != EWOULDBLOCK) {
      int e = errno;
      close(fd);
      errno = e;
      return -1;
    }
    long long left = deadline - now_ms();
    if (left <= 0) {
      close(fd);
      return 1;
    }
    /* Block in flock (seen as a waiter in /proc/locks) until the lock is free or the timer fires. */
    struct itimerval t = {{0, 0}, {(time_t)(left / 1000), (suseconds_t)(left % 1000) * 1000}};
    timed_out = 0;
    setitimer(ITIMER_REAL, &t, NULL);
    int r = flock(fd, LOCK_EX);
    int e = errno;
    struct itimerval off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &off, NULL);
    if (r == 0) break;
    if (e != EINTR) {
      close(fd);
      errno = e;
      return -1;
    }
    /* EINTR: the deadline (checked again above), or another signal. */
  }
  held[nheld++] = fd;
  return 0;
}

int main(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_alarm;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0; /* no SA_RESTART: the timer interrupts flock() */
  sigaction(SIGALRM, &sa, NULL);
  signal(SIGPIPE, SIG_IGN);

  for (;;) {
    char line[64];
    read_until('\n', line, sizeof line);
    if (strcmp(line, "U") == 0) {
      drop_all();
      answer("released\n");
      continue;
    }
    long long timeout_ms;
    int n;
    char extra;
    if (sscanf(line, "L %lld %d%c", &timeout_ms, &n, &extra) != 2 || timeout_ms < 0 || n < 1 || n > MAX_LOCKS || nheld != 0) exit(2);
    static char paths[MAX_LOCKS][MAX_PATH];
    for (int i = 0; i < n; i++) read_until('\0', paths[i], sizeof paths[i]);
    long long deadline = now_ms() + timeout_ms;
    int i = 0;
    for (; i < n; i++) {
      int r = take(paths[i], deadline);
      if (r == 0) continue;
      char msg[256];
      if (r == 1) snprintf(msg, sizeof msg, "busy %d\n", i);
      else snprintf(msg, sizeof msg, "error %d %s\n", i, strerror(errno));
      drop_all();
      answer(msg);
      break;
    }
    if (i == n) answer("held\n");
  }
}

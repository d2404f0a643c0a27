// The kernel experiments of README "WebSocket": can the kernel move a tunnel's bytes
// between its two sockets (an SK_SKB verdict program redirecting each socket's data to the
// other's send side), and is that worth it against a user-space relay? And for large
// messages: does splice(2) through a pipe beat copying through a buffer?
//
//   probe order            bytes queued before the hand-over arrive first, in order; no
//                          read wake-ups while bytes flow; how a client's FIN shows, and
//                          whether the worker's bytes after it still arrive
//   probe flood relay|sockmap
//                          a worker writes while its client reads nothing: how much the
//                          worker can write before it is blocked (bounded at 512 MiB)
//   probe echo direct|relay|relay64|splice|sockmap [SIZE]
//                          200 tunnels ping-pong messages of SIZE bytes (64; 400,000
//                          echoes, or 2 GiB in all for larger ones): the whole machine's
//                          CPU per echo (/proc/stat), so kernel threads and softirq work
//                          count as well as the processes. relay reads into 16 KiB,
//                          relay64 into 64 KiB, splice moves the bytes through a pipe
//                          per direction with splice(2) (no copy to user space)
//
// Everything listens on 127.0.0.1. Needs root (CAP_BPF + CAP_NET_ADMIN) for sockmap.
// Built and run by bench/sockmap.sh.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define TUNNELS 200
#define ECHOES 400000L
#define FLOOD_MAX (512L << 20)
#define MAX_MESSAGE (1L << 20)

static void die(const char *what) { perror(what); exit(1); }

static void send_all(int s, const char *bytes, long n) {
  for (long w = 0; w < n;) {
    ssize_t k = send(s, bytes + w, n - w, 0);
    if (k <= 0) die("send");
    w += k;
  }
}


static long bpf(int cmd, union bpf_attr *attr) { return syscall(SYS_bpf, cmd, attr, sizeof(*attr)); }

// A SOCKHASH keyed by a socket's cookie.
static int sockhash(void) {
  union bpf_attr a = {0};
  a.map_type = BPF_MAP_TYPE_SOCKHASH;
  a.key_size = 8;
  a.value_size = 4;
  a.max_entries = 4 * TUNNELS;
  int fd = bpf(BPF_MAP_CREATE, &a);
  if (fd < 0) die("bpf(BPF_MAP_CREATE, SOCKHASH) (root needed)");
  return fd;
}

static uint64_t cookie(int sock) {
  uint64_t c;
  socklen_t len = sizeof c;
  if (getsockopt(sock, SOL_SOCKET, SO_COOKIE, &c, &len) < 0) die("SO_COOKIE");
  return c;
}

static void put(int map, uint64_t key, int sock) {
  union bpf_attr a = {0};
  uint32_t value = sock;
  a.map_fd = map;
  a.key = (uint64_t)&key;
  a.value = (uint64_t)&value;
  if (bpf(BPF_MAP_UPDATE_ELEM, &a) < 0) die("bpf(BPF_MAP_UPDATE_ELEM)");
}

#define INSN(code, dst, src, off, imm) ((struct bpf_insn){code, dst, src, off, imm})

// verdict(skb) = bpf_sk_redirect_hash(skb, peers, &cookie(skb's socket), egress)
static int verdict_program(int peers) {
  struct bpf_insn prog[] = {
      INSN(BPF_ALU64 | BPF_MOV | BPF_X, 6, 1, 0, 0),
      INSN(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_get_socket_cookie),
      INSN(BPF_STX | BPF_MEM | BPF_DW, 10, 0, -8, 0),
      INSN(BPF_LD | BPF_DW | BPF_IMM, 2, BPF_PSEUDO_MAP_FD, 0, peers),
      INSN(0, 0, 0, 0, 0),
      INSN(BPF_ALU64 | BPF_MOV | BPF_X, 1, 6, 0, 0),
      INSN(BPF_ALU64 | BPF_MOV | BPF_X, 3, 10, 0, 0),
      INSN(BPF_ALU64 | BPF_ADD | BPF_K, 3, 0, 0, -8),
      INSN(BPF_ALU64 | BPF_MOV | BPF_K, 4, 0, 0, 0),
      INSN(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_sk_redirect_hash),
      INSN(BPF_JMP | BPF_EXIT, 0, 0, 0, 0),
  };
  union bpf_attr a = {0};
  a.prog_type = BPF_PROG_TYPE_SK_SKB;
  a.insn_cnt = sizeof prog / sizeof prog[0];
  a.insns = (uint64_t)prog;
  a.license = (uint64_t) "GPL";
  int fd = bpf(BPF_PROG_LOAD, &a);
  if (fd < 0) die("bpf(BPF_PROG_LOAD)");
  return fd;
}

// The two maps: `peers` (own cookie -> the other socket, the redirect target, no program)
// and `members` (own cookie -> itself, carrying the verdict program).
struct sockmap { int peers, members; };

static struct sockmap sockmap_new(void) {
  struct sockmap m = {sockhash(), sockhash()};
  union bpf_attr a = {0};
  a.target_fd = m.members;
  a.attach_bpf_fd = verdict_program(m.peers);
  a.attach_type = BPF_SK_SKB_VERDICT;
  if (bpf(BPF_PROG_ATTACH, &a) < 0) die("bpf(BPF_PROG_ATTACH)");
  return m;
}

// Hands a tunnel to the kernel. Both redirect targets exist before either socket gets the
// program; then SO_RCVLOWAT makes each socket run what is already queued through it.
static void sockmap_join(struct sockmap m, int a, int b) {
  put(m.peers, cookie(a), b);
  put(m.peers, cookie(b), a);
  put(m.members, cookie(a), a);
  put(m.members, cookie(b), b);
  int one = 1;
  setsockopt(a, SOL_SOCKET, SO_RCVLOWAT, &one, sizeof one);
  setsockopt(b, SOL_SOCKET, SO_RCVLOWAT, &one, sizeof one);
}

static int listener(int *port) {
  int s = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof a;
  if (bind(s, (void *)&a, sizeof a) < 0 || listen(s, 1024) < 0) die("listen");
  getsockname(s, (void *)&a, &len);
  *port = ntohs(a.sin_port);
  return s;
}

static int dial(int port) {
  int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port),
                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  if (connect(s, (void *)&a, sizeof a) < 0) die("connect");
  setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return s;
}

static int take(int listener_fd) {
  int s = accept(listener_fd, 0, 0), one = 1;
  if (s < 0) die("accept");
  setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return s;
}

// One tunnel: client <-> (front, back) <-> worker.
struct tunnel { int client, front, back, worker; };

static struct tunnel tunnel_new(int proxy_l, int proxy_port, int worker_l, int worker_port, int proxied) {
  struct tunnel t = {-1, -1, -1, -1};
  if (!proxied) {
    t.client = dial(worker_port);
    t.worker = take(worker_l);
    return t;
  }
  t.client = dial(proxy_port);
  t.front = take(proxy_l);
  t.back = dial(worker_port);
  t.worker = take(worker_l);
  return t;
}

static void pin(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  sched_setaffinity(0, sizeof set, &set);
}

// Moves what one readable socket has to its peer by splice(2) through the direction's pipe:
// the bytes go socket -> pipe -> socket as page references, never through user space.
static void splice_once(int from, int to, int pipe_r, int pipe_w) {
  ssize_t r = splice(from, 0, pipe_w, 0, 65536, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
  if (r <= 0) _exit(0);
  while (r > 0) {
    ssize_t s = splice(pipe_r, 0, to, 0, r, SPLICE_F_MOVE);
    if (s <= 0) _exit(0);
    r -= s;
  }
}

// A user-space relay in a child process on CPU 0: one epoll, one read and one write per
// readable socket (what nginx does per message, without its HTTP machinery), through a
// buffer of `chunk` bytes; with chunk 0, splice(2) through a pipe per direction instead.
static pid_t relay_with(struct tunnel *t, int n, size_t chunk) {
  pid_t pid = fork();
  if (pid != 0) return pid;
  pin(0);
  int ep = epoll_create1(0);
  for (int i = 0; i < n; i++) {
    struct epoll_event e = {.events = EPOLLIN, .data.u64 = ((uint64_t)t[i].front << 32) | t[i].back};
    epoll_ctl(ep, EPOLL_CTL_ADD, t[i].front, &e);
    e.data.u64 = ((uint64_t)t[i].back << 32) | t[i].front;
    epoll_ctl(ep, EPOLL_CTL_ADD, t[i].back, &e);
  }
  // pipes[fd]: the pipe of the direction that reads fd (spliced relays only).
  static int pipes[65536][2];
  for (int i = 0; !chunk && i < n; i++)
    if (pipe(pipes[t[i].front]) < 0 || pipe(pipes[t[i].back]) < 0) die("pipe");
  struct epoll_event ev[64];
  static char buf[65536];
  for (;;) {
    int k = epoll_wait(ep, ev, 64, -1);
    for (int j = 0; j < k; j++) {
      int from = ev[j].data.u64 >> 32, to = ev[j].data.u64 & 0xffffffff;
      if (!chunk) {
        splice_once(from, to, pipes[from][0], pipes[from][1]);
        continue;
      }
      ssize_t r = recv(from, buf, chunk, 0);
      if (r <= 0) _exit(0);
      for (ssize_t w = 0; w < r;) {
        ssize_t s = send(to, buf + w, r - w, 0);
        if (s <= 0) _exit(0);
        w += s;
      }
    }
  }
}

static pid_t relay(struct tunnel *t, int n) { return relay_with(t, n, 16384); }

static long long machine_busy_ticks(void) {
  long long user, nice, sys, idle, iowait, irq, softirq;
  FILE *f = fopen("/proc/stat", "r");
  if (!f || fscanf(f, "cpu %lld %lld %lld %lld %lld %lld %lld", &user, &nice, &sys, &idle, &iowait, &irq, &softirq) != 7)
    die("/proc/stat");
  fclose(f);
  return user + nice + sys + irq + softirq;
}

static void read_exactly(int s, const char *want) {
  char got[64] = {0};
  size_t n = strlen(want), have = 0;
  while (have < n) {
    ssize_t r = read(s, got + have, n - have);
    if (r <= 0) die("read");
    have += r;
  }
  printf("  %-34s %s (%s)\n", want, strcmp(got, want) ? "WRONG" : "ok", got);
  if (strcmp(got, want)) exit(1);
}

static int order(void) {
  int pp, wp, pl = listener(&pp), wl = listener(&wp);
  struct sockmap m = sockmap_new();
  struct tunnel t = tunnel_new(pl, pp, wl, wp, 1);
  write(t.client, "early-up ", 9);
  write(t.worker, "early-down ", 11);
  usleep(20000);
  int ep = epoll_create1(0);
  struct epoll_event e = {.events = EPOLLRDHUP | EPOLLET, .data.fd = t.front};
  epoll_ctl(ep, EPOLL_CTL_ADD, t.front, &e);
  e.data.fd = t.back;
  epoll_ctl(ep, EPOLL_CTL_ADD, t.back, &e);
  sockmap_join(m, t.front, t.back);
  write(t.client, "late-up", 7);
  printf("order:\n");
  read_exactly(t.worker, "early-up late-up");
  read_exactly(t.client, "early-down ");
  char c;
  for (int i = 0; i < 1000; i++) {
    write(t.client, "x", 1); read(t.worker, &c, 1);
    write(t.worker, "y", 1); read(t.client, &c, 1);
  }
  struct epoll_event out[4];
  printf("  epoll events (RDHUP only) after 1,000 echoes: %d\n", epoll_wait(ep, out, 4, 0));
  shutdown(t.client, SHUT_WR);
  int n = epoll_wait(ep, out, 4, 1000);
  for (int i = 0; i < n; i++) {
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(out[i].data.fd, SOL_SOCKET, SO_ERROR, &err, &len);
    printf("  after the client's FIN: %s socket events 0x%x, SO_ERROR %d (%s)\n",
           out[i].data.fd == t.front ? "client-side" : "worker-side", out[i].events, err, strerror(err));
  }
  // Half-close: the worker answers after the client's FIN, as a WebSocket close does.
  char got[32] = {0};
  write(t.worker, "after-fin", 9);
  struct timeval wait = {.tv_sec = 1};
  setsockopt(t.client, SOL_SOCKET, SO_RCVTIMEO, &wait, sizeof wait);
  ssize_t r = read(t.client, got, sizeof got - 1);
  printf("  the worker's bytes after the client's FIN: %s\n", r == 9 ? "delivered" : "lost (read timed out)");
  return 0;
}

static long mem_available_kib(void) {
  char line[256];
  long kib = -1;
  FILE *f = fopen("/proc/meminfo", "r");
  while (f && fgets(line, sizeof line, f))
    if (sscanf(line, "MemAvailable: %ld kB", &kib) == 1) break;
  if (f) fclose(f);
  return kib;
}

static int flood(int kernel) {
  int pp, wp, pl = listener(&pp), wl = listener(&wp);
  struct tunnel t = tunnel_new(pl, pp, wl, wp, 1);
  pid_t child = 0;
  if (kernel) sockmap_join(sockmap_new(), t.front, t.back);
  else child = relay(&t, 1);
  fcntl(t.worker, F_SETFL, O_NONBLOCK);
  static char chunk[65536];
  long before = mem_available_kib(), written = 0;
  int stalls = 0;
  while (written < FLOOD_MAX && stalls < 100) {
    ssize_t w = write(t.worker, chunk, sizeof chunk);
    if (w > 0) { written += w; stalls = 0; continue; }
    if (errno != EAGAIN) die("write");
    stalls++;
    usleep(2000);  // blocked: give a relay 0.2 s in all to make room before calling it bounded
  }
  long after = mem_available_kib();
  printf("flood %s: the worker wrote %ld MiB while its client read nothing (%s); MemAvailable fell %ld MiB\n",
         kernel ? "sockmap" : "relay", written >> 20, written >= FLOOD_MAX ? "never blocked" : "then blocked",
         (before - after) >> 10);
  if (child) kill(child, SIGKILL);
  return 0;
}

static int echo(const char *mode, long size) {
  int proxied = strcmp(mode, "direct") != 0, kernel = strcmp(mode, "sockmap") == 0;
  size_t chunk = !strcmp(mode, "splice") ? 0 : !strcmp(mode, "relay64") ? 65536 : 16384;
  long total = size <= 64 ? ECHOES : (2L << 30) / size;  // large messages: 2 GiB in all
  static long pending[TUNNELS];      // bytes of the current echo the client still waits for
  int pp, wp, pl = listener(&pp), wl = listener(&wp);
  static struct tunnel t[TUNNELS];
  struct sockmap m = {-1, -1};
  if (kernel) m = sockmap_new();
  for (int i = 0; i < TUNNELS; i++) {
    t[i] = tunnel_new(pl, pp, wl, wp, proxied);
    if (kernel) sockmap_join(m, t[i].front, t[i].back);
  }
  pid_t child = proxied && !kernel ? relay_with(t, TUNNELS, chunk) : 0;
  pin(1);  // clients and workers: one epoll loop on CPU 1
  int ep = epoll_create1(0);
  for (int i = 0; i < TUNNELS; i++) {
    struct epoll_event e = {.events = EPOLLIN, .data.u64 = i};
    epoll_ctl(ep, EPOLL_CTL_ADD, t[i].client, &e);
    e.data.u64 = TUNNELS + i;
    epoll_ctl(ep, EPOLL_CTL_ADD, t[i].worker, &e);
  }
  static char msg[MAX_MESSAGE], buf[MAX_MESSAGE];
  memset(msg, 'm', size);
  struct timespec t0, t1;
  long echoes = 0;
  long long busy0 = machine_busy_ticks();
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (int i = 0; i < TUNNELS; i++) pending[i] = size, send_all(t[i].client, msg, size);
  struct epoll_event ev[64];
  while (echoes < total) {
    int n = epoll_wait(ep, ev, 64, 5000);
    if (n <= 0) die("echo stalled");
    for (int j = 0; j < n; j++) {
      int i = ev[j].data.u64 % TUNNELS, at_worker = ev[j].data.u64 >= TUNNELS;
      int s = at_worker ? t[i].worker : t[i].client;
      ssize_t r = recv(s, buf, sizeof buf, 0);
      if (r <= 0) die("recv");
      if (at_worker) send_all(s, buf, r);
      else if ((pending[i] -= r) == 0) echoes++, pending[i] = size, send_all(s, msg, size);
    }
  }
  clock_gettime(CLOCK_MONOTONIC, &t1);
  long long busy1 = machine_busy_ticks();
  double secs = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
  printf("echo %-8s %6ld B: %ld echoes in %.2f s, %.0f echoes/s, machine CPU %.2f us per echo\n", mode, size, echoes,
         secs, echoes / secs, (double)(busy1 - busy0) / sysconf(_SC_CLK_TCK) * 1e6 / echoes);
  if (child) kill(child, SIGKILL);
  return 0;
}

int main(int argc, char **argv) {
  setvbuf(stdout, 0, _IONBF, 0);
  if (argc == 2 && !strcmp(argv[1], "order")) return order();
  if (argc == 3 && !strcmp(argv[1], "flood")) return flood(!strcmp(argv[2], "sockmap"));
  long size = argc == 4 ? atol(argv[3]) : 64;
  if ((argc == 3 || argc == 4) && !strcmp(argv[1], "echo") && size > 0 && size <= MAX_MESSAGE)
    return echo(argv[2], size);
  fprintf(stderr, "usage: probe order | flood relay|sockmap | echo direct|relay|relay64|splice|sockmap [SIZE]\n");
  return 2;
}

/*
 * wsbench: the bench's compiled load generator (one file, no dependencies).
 *
 *   wsbench client [options]   N WebSocket (or raw TCP) subscribers + the source, one epoll loop
 *   wsbench sink   [options]   a trivial WebSocket server that blasts frames (the client's ceiling)
 *
 * The source lives in the same process as the subscribers, which makes the CLOSED LOOP exact:
 * message seq s is sent only when every live subscriber has received every message < s - K
 * (K = --window).  Each message starts with "<seq:10> <send-time-ns:19> " so every subscriber
 * checks loss/order and measures latency (CLOCK_MONOTONIC, same process, same clock).
 * --window 0 is the OPEN LOOP: the source writes as fast as the socket takes it (the relay's own
 * flow control, if any, is all that holds it back).  --subs 0 with a source is a blaster: it
 * only writes (into a room nobody watches) until --duration/--count/--total-bytes.
 * Raw subscribers check every byte against the source's pattern ("corrupt": mismatching reads).
 *
 * Source kinds (--source):
 *   none                      subscribers only (sink / idle memory probe)
 *   lines:HOST:PORT           Sphincter contract: read "ROOM <CODE>\n", then send '\n'-ended lines
 *   raw:HOST:PORT             same banner, then raw 64 KiB writes (tunnel); byte window
 *   post:HOST:PORT            nchan: pipelined "POST /pub?id=<room>" on one keep-alive connection
 *   listen:PORT               tunnel peers (websockify/socat connect to us); raw writes
 * Subscriber kinds (--sub): ws (default) or tcp (plain bytes, for socat).
 *
 * Several --ws addresses (A,B: the nodes of one relay) spread each room's subscribers evenly over
 * them (subscriber i of a room goes to address (i / rooms) % count); the JSON then has "groups":
 * deliveries and latency p50/p99 of each address's subscribers.
 *
 * Output: one JSON object on stdout.  With --pause the client prints "PHASE <name>" lines
 * (sources, subs, done) and waits for a line on stdin before going on, so the runner can read
 * the server's CPU and RSS at exact points.  Everything is bounded by --duration/--timeout.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define RBUF (256 * 1024)
#define OBUF (256 * 1024)
#define PREFIX 40
#define HIST_US 2000000 /* 1 us buckets up to 2 s, then overflow bucket */
#define MAXROOMS 256
#define MAXWS 8 /* --ws A,B,...: subscribers spread over several relay nodes */

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *what) {
    fprintf(stderr, "wsbench: %s: %s\n", what, strerror(errno));
    exit(3);
}

static void set_nonblock(int fd) {
    int fl = fcntl(fd, F_GETFL);
    fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

static double self_cpu_s(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

static void raise_nofile(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static void parse_hostport(const char *s, struct sockaddr_in *sa) {
    char host[128];
    const char *colon = strrchr(s, ':');
    if (!colon || (size_t)(colon - s) >= sizeof host) { fprintf(stderr, "bad HOST:PORT %s\n", s); exit(2); }
    memcpy(host, s, colon - s);
    host[colon - s] = 0;
    memset(sa, 0, sizeof *sa);
    sa->sin_family = AF_INET;
    sa->sin_port = htons((uint16_t)atoi(colon + 1));
    if (inet_pton(AF_INET, host, &sa->sin_addr) != 1) { fprintf(stderr, "bad host %s\n", host); exit(2); }
}

static void put_digits(char *p, uint64_t v, int n) {
    for (int i = n - 1; i >= 0; i--) { p[i] = (char)('0' + v % 10); v /= 10; }
}

static uint64_t get_digits(const uint8_t *p, int n) {
    uint64_t v = 0;
    for (int i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9') return UINT64_MAX;
        v = v * 10 + (p[i] - '0');
    }
    return v;
}

/* ------------------------------------------------------------------------------------------ */
/* client                                                                                      */

enum { ST_CONNECTING, ST_HANDSHAKE, ST_OPEN, ST_CLOSED };
enum { SRC_NONE, SRC_LINES, SRC_RAW, SRC_POST, SRC_LISTEN };

typedef struct {
    int fd;
    uint16_t room;
    uint8_t grp;            /* index of its --ws address */
    uint8_t state;
    uint8_t hdr_have, hdr_need;
    uint8_t opcode, msg_opcode, fin, masked;
    uint8_t pre_have, ctl_have;
    uint16_t hs_len;
    int close_code;
    char *hs;               /* handshake response buffer, freed once open */
    uint8_t hdr[14];
    uint8_t pre[PREFIX];
    uint8_t ctl[126];
    uint64_t remaining;     /* payload bytes left in the current frame */
    uint64_t next_seq, received, bytes, reorder, gaps;
} conn_t;

static struct {
    int subs, rooms, window, msg_bytes, chunk, pause, sub_tcp, timeout_s, conc, post_depth;
    double duration, rate;
    uint64_t count, total_bytes;
    int src_kind;
    struct sockaddr_in ws_addr[MAXWS], src_addr;
    int nws;
    const char *path_fmt, *subprotocol, *room_names;
    char room[MAXROOMS][64];
} opt;

static int ep;
static conn_t *conns;
static uint8_t rbuf[RBUF];
static uint32_t *hist;      /* nws histograms of HIST_US buckets, one per --ws address */
static uint64_t hist_over, lat_max, lat_n, corrupt, grp_lat_n[MAXWS];
static uint64_t batch_now;

/* closed-loop accounting */
static uint64_t sent, acked, *ackcnt, ackmask;
static int alive;
static uint64_t min_bytes_cache;

/* source state */
static int src_fd[MAXROOMS], nsrc, listen_fd = -1;
static char obuf[OBUF];
static size_t oout, ooff;
static uint64_t src_bytes_sent, send_start, last_delivery, first_delivery, pub_errors, post_responses;
static char post_hdr[256];
static size_t post_hdr_len;
static uint8_t *chunkbuf;

#define TAG_LISTEN 0xFFFFFFF0u
#define TAG_SRC 0xFFFF0000u

static void ep_ctl(int op, int fd, uint32_t events, uint32_t tag) {
    struct epoll_event ev = {.events = events, .data.u32 = tag};
    if (epoll_ctl(ep, op, fd, &ev) < 0 && op != EPOLL_CTL_DEL) die("epoll_ctl");
}

static void conn_close(conn_t *c, int code) {
    if (c->state == ST_CLOSED) return;
    if (c->state == ST_OPEN) alive--;
    c->state = ST_CLOSED;
    if (c->close_code == 0) c->close_code = code;
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    struct linger lg = {1, 0};  /* RST: no TIME_WAIT pile-up across runs */
    setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(c->fd);
    free(c->hs);
    c->hs = NULL;
}

static void ack_seq(uint64_t s) {
    if (s >= acked && s < acked + ackmask + 1) ackcnt[s & ackmask]++;
}

static void on_message(conn_t *c) {
    if (c->msg_opcode > 2) return;
    c->received++;
    if (c->pre_have < 31) { c->reorder++; return; }
    uint64_t seq = get_digits(c->pre, 10), ts = get_digits(c->pre + 11, 19);
    if (seq == UINT64_MAX) { c->reorder++; return; }
    if (seq < c->next_seq) { c->reorder++; return; }
    while (c->next_seq < seq) { c->gaps++; ack_seq(c->next_seq++); }
    ack_seq(seq);
    c->next_seq = seq + 1;
    if (ts != UINT64_MAX && ts <= batch_now) {
        uint64_t us = (batch_now - ts) / 1000;
        if (us > lat_max) lat_max = us;
        if (us < HIST_US) hist[(size_t)c->grp * HIST_US + us]++; else hist_over++;
        lat_n++;
        grp_lat_n[c->grp]++;
    }
}

static void send_pong(conn_t *c) {
    uint8_t f[6 + 125];
    f[0] = 0x8A;
    f[1] = 0x80 | c->ctl_have;
    memset(f + 2, 0, 4); /* zero mask: payload unchanged */
    memcpy(f + 6, c->ctl, c->ctl_have);
    if (write(c->fd, f, 6 + c->ctl_have) < 0) { /* best effort */ }
}

/* raw streams: stream byte o is chunkbuf[o % chunk] (the source always writes from the pattern) */
static void check_raw(uint64_t off, const uint8_t *p, size_t n) {
    while (n) {
        size_t at = (size_t)(off % (uint64_t)opt.chunk), k = (size_t)opt.chunk - at;
        if (k > n) k = n;
        if (memcmp(p, chunkbuf + at, k) != 0) corrupt++;
        p += k;
        n -= k;
        off += k;
    }
}

/* streaming frame parser: any split of the byte stream works */
static void feed(conn_t *c, const uint8_t *p, size_t n) {
    const uint8_t *end = p + n;
    while (p < end && c->state == ST_OPEN) {
        if (c->hdr_have < c->hdr_need) {
            c->hdr[c->hdr_have++] = *p++;
            if (c->hdr_have == 2) {
                uint8_t l7 = c->hdr[1] & 0x7F;
                c->masked = c->hdr[1] >> 7;
                c->hdr_need = 2 + (l7 == 126 ? 2 : l7 == 127 ? 8 : 0) + (c->masked ? 4 : 0);
            }
            if (c->hdr_have < c->hdr_need) continue;
            c->fin = c->hdr[0] >> 7;
            c->opcode = c->hdr[0] & 0x0F;
            uint8_t l7 = c->hdr[1] & 0x7F;
            uint64_t len = l7;
            if (l7 == 126) len = ((uint64_t)c->hdr[2] << 8) | c->hdr[3];
            else if (l7 == 127) { len = 0; for (int i = 2; i < 10; i++) len = (len << 8) | c->hdr[i]; }
            c->remaining = len;
            if (c->opcode == 1 || c->opcode == 2) { c->msg_opcode = c->opcode; c->pre_have = 0; }
            if (c->opcode >= 8) c->ctl_have = 0;
            if (len) continue;
        } else {
            size_t take = (size_t)(end - p) < c->remaining ? (size_t)(end - p) : (size_t)c->remaining;
            if (c->opcode >= 8) {
                size_t t = take > 125u - c->ctl_have ? 125u - c->ctl_have : take;
                memcpy(c->ctl + c->ctl_have, p, t);
                c->ctl_have += t;
            } else {
                if (c->pre_have < PREFIX) {
                    size_t t = take > (size_t)(PREFIX - c->pre_have) ? (size_t)(PREFIX - c->pre_have) : take;
                    memcpy(c->pre + c->pre_have, p, t);
                    c->pre_have += t;
                }
                if (opt.src_kind == SRC_RAW || opt.src_kind == SRC_LISTEN) check_raw(c->bytes, p, take);
                c->bytes += take;
            }
            p += take;
            c->remaining -= take;
            if (c->remaining) continue;
        }
        /* frame complete */
        c->hdr_have = 0;
        c->hdr_need = 2;
        if (c->opcode == 8) {
            int code = c->ctl_have >= 2 ? (c->ctl[0] << 8 | c->ctl[1]) : 1005;
            conn_close(c, code);
            return;
        } else if (c->opcode == 9) {
            send_pong(c);
        } else if (c->opcode < 8 && c->fin) {
            if (opt.src_kind != SRC_RAW && opt.src_kind != SRC_LISTEN) on_message(c);
            else c->received++;
            if (!first_delivery) first_delivery = batch_now;
            last_delivery = batch_now;
        }
    }
}

static void start_connect(conn_t *c) {
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (c->fd < 0) die("socket");
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    int r = connect(c->fd, (struct sockaddr *)&opt.ws_addr[c->grp], sizeof opt.ws_addr[0]);
    if (r < 0 && errno != EINPROGRESS) die("connect");
    c->state = ST_CONNECTING;
    c->hdr_need = 2;
    ep_ctl(EPOLL_CTL_ADD, c->fd, EPOLLOUT, (uint32_t)(c - conns));
}

static void on_connected(conn_t *c) {
    int err = 0;
    socklen_t l = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
    if (err) { conn_close(c, -err); return; }
    if (opt.sub_tcp) {
        c->state = ST_OPEN;
        alive++;
        ep_ctl(EPOLL_CTL_MOD, c->fd, EPOLLIN, (uint32_t)(c - conns));
        return;
    }
    char req[512], path[256];
    snprintf(path, sizeof path, opt.path_fmt, opt.room[c->room]);
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n%s%s%s\r\n",
                     path, opt.subprotocol ? "Sec-WebSocket-Protocol: " : "",
                     opt.subprotocol ? opt.subprotocol : "", opt.subprotocol ? "\r\n" : "");
    if (write(c->fd, req, n) != n) { conn_close(c, -1); return; }
    c->state = ST_HANDSHAKE;
    c->hs = malloc(2048);
    c->hs_len = 0;
    ep_ctl(EPOLL_CTL_MOD, c->fd, EPOLLIN, (uint32_t)(c - conns));
}

static void on_handshake_data(conn_t *c, const uint8_t *p, size_t n) {
    size_t room = 2047 - c->hs_len;
    size_t t = n < room ? n : room;
    memcpy(c->hs + c->hs_len, p, t);
    c->hs_len += t;
    c->hs[c->hs_len] = 0;
    char *e = strstr(c->hs, "\r\n\r\n");
    if (!e) { if (c->hs_len >= 2047) conn_close(c, -2); return; }
    if (strncmp(c->hs, "HTTP/1.1 101", 12) != 0) { conn_close(c, -atoi(c->hs + 9)); return; }
    size_t used = (size_t)(e + 4 - c->hs);
    size_t extra_from_p = c->hs_len - used; /* bytes of this read past the headers */
    free(c->hs);
    c->hs = NULL;
    c->state = ST_OPEN;
    alive++;
    if (extra_from_p) feed(c, p + (t - extra_from_p), extra_from_p + (n - t));
    else if (n > t) feed(c, p + t, n - t);
}

static void on_readable(conn_t *c) {
    ssize_t n = read(c->fd, rbuf, RBUF);
    if (n <= 0) {
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
        conn_close(c, n == 0 ? 1006 : -errno);
        return;
    }
    if (c->state == ST_HANDSHAKE) { on_handshake_data(c, rbuf, (size_t)n); return; }
    if (opt.sub_tcp) { check_raw(c->bytes, rbuf, (size_t)n); c->bytes += (uint64_t)n; c->received++; last_delivery = batch_now; return; }
    feed(c, rbuf, (size_t)n);
}

/* ---- source ---- */

static int tcp_connect_blocking(struct sockaddr_in *sa) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) die("socket");
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)sa, sizeof *sa) < 0) die("source connect");
    return fd;
}

static void read_banner(int fd, char *code_out) {
    char line[256];
    size_t len = 0;
    uint64_t deadline = now_ns() + 10ull * 1000000000ull;
    while (len < sizeof line - 1) {
        struct pollfd pf = {fd, POLLIN, 0};
        if (poll(&pf, 1, 200) <= 0) {
            if (now_ns() > deadline) { fprintf(stderr, "wsbench: no banner\n"); exit(3); }
            continue;
        }
        ssize_t r = read(fd, line + len, 1);  /* byte at a time: never eat past the banner */
        if (r <= 0) { fprintf(stderr, "wsbench: source closed before banner\n"); exit(3); }
        if (line[len] == '\n') break;
        len++;
    }
    line[len] = 0;
    if (len && line[len - 1] == '\r') line[len - 1] = 0;
    if (strncmp(line, "ROOM ", 5) != 0) { fprintf(stderr, "wsbench: bad banner '%s'\n", line); exit(3); }
    snprintf(code_out, 64, "%.63s", line + 5);
}

static void setup_sources(void) {
    if (opt.src_kind == SRC_LINES || opt.src_kind == SRC_RAW) {
        nsrc = opt.rooms;
        for (int r = 0; r < nsrc; r++) {
            src_fd[r] = tcp_connect_blocking(&opt.src_addr);
            read_banner(src_fd[r], opt.room[r]);
            set_nonblock(src_fd[r]);
        }
    } else if (opt.src_kind == SRC_POST) {
        nsrc = 1;
        src_fd[0] = tcp_connect_blocking(&opt.src_addr);
        set_nonblock(src_fd[0]);
    } else if (opt.src_kind == SRC_LISTEN) {
        listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        int one = 1;
        setsockopt(listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(listen_fd, (struct sockaddr *)&opt.src_addr, sizeof opt.src_addr) < 0) die("bind");
        if (listen(listen_fd, 16) < 0) die("listen");
        ep_ctl(EPOLL_CTL_ADD, listen_fd, EPOLLIN, TAG_LISTEN);
    }
    if (opt.src_kind == SRC_NONE || opt.src_kind == SRC_POST || opt.src_kind == SRC_LISTEN) {
        /* rooms named by the caller (nchan channel ids) or generated */
        const char *s = opt.room_names;
        for (int r = 0; r < opt.rooms; r++) {
            if (s && *s) {
                const char *comma = strchr(s, ',');
                size_t l = comma ? (size_t)(comma - s) : strlen(s);
                snprintf(opt.room[r], 64, "%.*s", (int)l, s);
                s = comma ? comma + 1 : s + l;
            } else if (!s) {
                snprintf(opt.room[r], 64, "BENCH%03d", r);
            }
        }
    }
    if (nsrc && opt.src_kind != SRC_LISTEN) ep_ctl(EPOLL_CTL_ADD, src_fd[0], EPOLLIN, TAG_SRC);
    for (int r = 1; r < nsrc; r++) ep_ctl(EPOLL_CTL_ADD, src_fd[r], EPOLLIN, TAG_SRC + r);
}

static uint64_t min_bytes(void) {
    uint64_t m = UINT64_MAX;
    for (int i = 0; i < opt.subs; i++)
        if (conns[i].state == ST_OPEN && conns[i].bytes < m) m = conns[i].bytes;
    return m == UINT64_MAX ? src_bytes_sent : m;
}

static void advance_acked(void) {
    while (acked < sent && ackcnt[acked & ackmask] >= (uint64_t)alive) {
        ackcnt[acked & ackmask] = 0;
        acked++;
    }
}

static int source_done_sending(uint64_t t) {
    if (opt.duration > 0 && send_start && t - send_start > (uint64_t)(opt.duration * 1e9)) return 1;
    if (opt.src_kind == SRC_RAW || opt.src_kind == SRC_LISTEN) return src_bytes_sent >= opt.total_bytes;
    return sent >= opt.count;
}

static int src_out_fd(void) {
    return opt.src_kind == SRC_LISTEN ? src_fd[0] : (nsrc ? src_fd[0] : -1);
}

static void fill_messages(uint64_t t) {
    uint64_t limit = opt.window > 0 ? acked + (uint64_t)opt.window : opt.count;
    if (opt.count < limit) limit = opt.count;
    if (opt.src_kind == SRC_POST && opt.post_depth > 0 && post_responses + (uint64_t)opt.post_depth < limit)
        limit = post_responses + (uint64_t)opt.post_depth;
    if (opt.rate > 0) {
        uint64_t due = (uint64_t)((double)(t - send_start) * opt.rate / 1e9) + 1;
        if (due < limit) limit = due;
    }
    int body = opt.msg_bytes - 1;
    size_t per = (opt.src_kind == SRC_POST ? post_hdr_len : 0) + (size_t)opt.msg_bytes;
    while (sent < limit && oout + per <= OBUF && !source_done_sending(t)) {
        char *p = obuf + oout;
        if (opt.src_kind == SRC_POST) { memcpy(p, post_hdr, post_hdr_len); p += post_hdr_len; }
        put_digits(p, sent, 10);
        p[10] = ' ';
        put_digits(p + 11, t, 19);
        p[30] = ' ';
        memset(p + 31, 'x', body - 31);
        if (opt.src_kind == SRC_POST) { oout += post_hdr_len + body; }
        else { p[body] = '\n'; oout += opt.msg_bytes; }
        sent++;
    }
}

/* returns 1 if data remains unsent (wait for EPOLLOUT) */
static int pump_source(uint64_t t) {
    int fd = src_out_fd();
    if (fd < 0) return 0;
    for (;;) {
        if (opt.src_kind == SRC_RAW || opt.src_kind == SRC_LISTEN) {
            if (ooff == 0) {
                if (source_done_sending(t)) return 0;
                uint64_t mb = min_bytes_cache;
                if (opt.window > 0 &&
                    src_bytes_sent - mb + (uint64_t)opt.chunk > (uint64_t)opt.window * (uint64_t)opt.chunk)
                    return 0;
                oout = (size_t)opt.chunk;
                if (opt.total_bytes - src_bytes_sent < oout) oout = opt.total_bytes - src_bytes_sent;
            }
            ssize_t w = write(fd, chunkbuf + ooff, oout - ooff);
            if (w < 0) { if (errno == EAGAIN) return 1; die("source write"); }
            ooff += (size_t)w;
            src_bytes_sent += (uint64_t)w;
            if (ooff < oout) return 1;
            ooff = oout = 0;
        } else {
            if (ooff == oout) {
                ooff = oout = 0;
                fill_messages(t);
                if (oout == 0) return 0;
            }
            ssize_t w = write(fd, obuf + ooff, oout - ooff);
            if (w < 0) { if (errno == EAGAIN) return 1; die("source write"); }
            ooff += (size_t)w;
            src_bytes_sent += (uint64_t)w;
            if (ooff < oout) return 1;
        }
    }
}

/* count "HTTP/1.1 " status lines in the publisher's response stream (split-safe) */
static void count_responses(const uint8_t *p, ssize_t n) {
    static char carry[16];
    static size_t clen;
    uint8_t tmp[32];
    /* status lines split across reads: look at the seam separately */
    if (clen) {
        size_t k = (size_t)n < 12 ? (size_t)n : 12;
        memcpy(tmp, carry, clen);
        memcpy(tmp + clen, p, k);
        for (size_t i = 0; i + 10 <= clen + k; i++)
            if (i < clen && memcmp(tmp + i, "HTTP/1.1 ", 9) == 0) {
                post_responses++;
                if (tmp[i + 9] != '2') pub_errors++;
            }
    }
    for (ssize_t i = 0; i + 10 <= n; i++)
        if (p[i] == 'H' && memcmp(p + i, "HTTP/1.1 ", 9) == 0) {
            post_responses++;
            if (p[i + 9] != '2') pub_errors++;
        }
    clen = n >= 9 ? 9 : (size_t)n;
    memcpy(carry, p + n - clen, clen);
}

static void drain_source(int fd) {
    ssize_t n = read(fd, rbuf, RBUF);
    if (n == 0) { fprintf(stderr, "wsbench: source connection closed by server\n"); exit(4); }
    if (n < 0) return;
    if (opt.src_kind == SRC_POST) count_responses(rbuf, n);
}

static int src_waiting_out;

static void handle_events(int timeout_ms) {
    static struct epoll_event evs[1024];
    int n = epoll_wait(ep, evs, 1024, timeout_ms);
    if (n < 0 && errno != EINTR) die("epoll_wait");
    batch_now = now_ns();
    for (int i = 0; i < n; i++) {
        uint32_t tag = evs[i].data.u32;
        if (tag == TAG_LISTEN) {
            int fd = accept4(listen_fd, NULL, NULL, SOCK_NONBLOCK);
            if (fd >= 0 && nsrc == 0) {
                int one = 1;
                setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                src_fd[0] = fd;
                nsrc = 1;
                ep_ctl(EPOLL_CTL_ADD, fd, EPOLLIN, TAG_SRC);
            } else if (fd >= 0) close(fd);
            continue;
        }
        if (tag >= TAG_SRC) {
            int r = (int)(tag - TAG_SRC);
            if (evs[i].events & EPOLLIN) drain_source(src_fd[r]);
            if (evs[i].events & EPOLLOUT) src_waiting_out = 0;
            continue;
        }
        conn_t *c = &conns[tag];
        if (c->state == ST_CONNECTING) on_connected(c);
        else if (c->state != ST_CLOSED) on_readable(c);
    }
}

static void set_src_out_interest(int want) {
    static int cur = -1;
    int fd = src_out_fd();
    if (fd < 0 || cur == want) return;
    cur = want;
    ep_ctl(EPOLL_CTL_MOD, fd, EPOLLIN | (want ? EPOLLOUT : 0), TAG_SRC);
}

static void phase(const char *name) {
    if (!opt.pause) return;
    printf("PHASE %s\n", name);
    fflush(stdout);
    char line[64];
    if (!fgets(line, sizeof line, stdin)) { /* runner gone: go on */ }
}

/* latency quantile over every subscriber (g < 0) or over those of --ws address g */
static double pct_of(double q, int g) {
    uint64_t n = g < 0 ? lat_n : grp_lat_n[g];
    if (!n) return -1;
    uint64_t want = (uint64_t)(q * (double)n), acc = 0;
    if (want >= n) want = n - 1;
    for (uint64_t us = 0; us < HIST_US; us++) {
        if (g >= 0) acc += hist[(size_t)g * HIST_US + us];
        else for (int k = 0; k < opt.nws; k++) acc += hist[(size_t)k * HIST_US + us];
        if (acc > want) return (double)us;
    }
    return (double)lat_max;
}

static double pct(double q) { return pct_of(q, -1); }

static int client_main(void) {
    raise_nofile();
    signal(SIGPIPE, SIG_IGN);
    ep = epoll_create1(0);
    conns = calloc((size_t)opt.subs + 1, sizeof(conn_t));
    hist = calloc((size_t)opt.nws * HIST_US, sizeof(uint32_t));
    uint64_t w = 1;
    while (w < (uint64_t)opt.window * 2 + 2) w <<= 1;
    ackcnt = calloc(w, sizeof(uint64_t));
    ackmask = w - 1;
    chunkbuf = malloc((size_t)opt.chunk);
    for (int i = 0; i < opt.chunk; i++) chunkbuf[i] = (uint8_t)(i * 7 + 1);
    uint64_t t0 = now_ns(), hard_deadline = t0 + (uint64_t)opt.timeout_s * 1000000000ull;

    setup_sources();
    if (opt.src_kind == SRC_POST) {
        post_hdr_len = (size_t)snprintf(post_hdr, sizeof post_hdr,
                                        "POST /pub?id=%s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n",
                                        opt.room[0], opt.msg_bytes - 1);
    }
    phase("sources");

    /* connect subscribers, at most opt.conc handshakes in flight (no SYN-queue overflow) */
    int started = 0, failed = 0;
    uint64_t connect_start = now_ns();
    for (;;) {
        int inflight = 0, done = 0;
        failed = 0;
        for (int i = 0; i < started; i++) {
            if (conns[i].state == ST_CONNECTING || conns[i].state == ST_HANDSHAKE) inflight++;
            else if (conns[i].state == ST_OPEN) done++;
            else failed++;
        }
        while (started < opt.subs && inflight < opt.conc) {
            conns[started].room = (uint16_t)(started % opt.rooms);
            /* every room's subscribers spread evenly over the --ws addresses */
            conns[started].grp = (uint8_t)((started / opt.rooms) % opt.nws);
            start_connect(&conns[started++]);
            inflight++;
        }
        if (done + failed >= opt.subs) break;
        if (now_ns() > hard_deadline) break;
        handle_events(50);
    }
    double connect_s = (double)(now_ns() - connect_start) / 1e9;
    /* tunnel peers: wait (bounded) for the proxied connection to reach us */
    while (opt.src_kind == SRC_LISTEN && nsrc == 0 && now_ns() < hard_deadline) handle_events(50);
    phase("subs");

    /* run: send under the closed loop until done, then wait for every delivery */
    int connected = alive;
    double cpu0 = self_cpu_s();
    send_start = now_ns();
    batch_now = send_start;
    last_delivery = send_start;
    uint64_t last_progress = send_start, last_total = 0;
    int raw = opt.src_kind == SRC_RAW || opt.src_kind == SRC_LISTEN;
    int have_source = opt.src_kind != SRC_NONE;
    for (;;) {
        uint64_t t = now_ns();
        if (raw) min_bytes_cache = min_bytes();
        else advance_acked();
        if (have_source && !src_waiting_out) {
            if (pump_source(t)) { src_waiting_out = 1; set_src_out_interest(1); }
            else set_src_out_interest(0);
        }
        /* finished? */
        uint64_t total = 0;
        int finished;
        if (raw) {
            finished = source_done_sending(t) && !src_waiting_out && min_bytes_cache >= src_bytes_sent;
            total = min_bytes_cache;
        } else if (have_source) {
            finished = source_done_sending(t) && !src_waiting_out && ooff == oout && acked >= sent;
            total = acked;
        } else {
            uint64_t mn = UINT64_MAX;
            for (int i = 0; i < opt.subs; i++)
                if (conns[i].state == ST_OPEN && conns[i].received < mn) mn = conns[i].received;
            finished = mn == UINT64_MAX || mn >= opt.count;
            total = mn == UINT64_MAX ? 0 : mn;
        }
        if (finished || (alive == 0 && opt.subs > 0)) break;
        if (total != last_total) { last_total = total; last_progress = t; }
        if (t > hard_deadline || t - last_progress > 5000000000ull) {
            fprintf(stderr, "wsbench: stalled or timed out (alive=%d total=%llu sent=%llu)\n", alive,
                    (unsigned long long)total, (unsigned long long)sent);
            break;
        }
        int tmo = 100;
        if (opt.rate > 0) tmo = 1;
        handle_events(tmo);
    }
    double client_cpu = self_cpu_s() - cpu0;
    /* a blaster (no subscribers) is timed by its own sending */
    uint64_t end = opt.subs == 0 ? now_ns() : last_delivery > send_start ? last_delivery : now_ns();
    if (opt.src_kind == SRC_NONE && first_delivery && first_delivery < end) send_start = first_delivery;
    phase("done");

    /* report */
    uint64_t deliveries = 0, bytes = 0, reorder = 0, gaps = 0, loss = 0;
    int closed = 0;
    char codes[512] = "";
    size_t cl = 0;
    uint64_t expected = opt.src_kind == SRC_NONE ? opt.count : sent;
    for (int i = 0; i < opt.subs; i++) {
        conn_t *c = &conns[i];
        deliveries += c->received;
        bytes += c->bytes;
        reorder += c->reorder;
        gaps += c->gaps;
        if (!raw && (c->state == ST_OPEN || c->close_code > 0) && c->room == 0 && c->received < expected)
            loss += expected - c->received;
        if (c->state == ST_CLOSED) {
            closed++;
            if (cl < sizeof codes - 16 && closed <= 8) cl += (size_t)snprintf(codes + cl, sizeof codes - cl, "%s%d", cl ? "," : "", c->close_code);
        }
    }
    if (raw) { /* bytes the worst subscriber lacks, closed ones included (a cut tunnel lost them) */
        loss = 0;
        for (int i = 0; i < opt.subs; i++)
            if (src_bytes_sent > conns[i].bytes && src_bytes_sent - conns[i].bytes > loss)
                loss = src_bytes_sent - conns[i].bytes;
    }
    double el = (double)(end - send_start) / 1e9;
    if (el <= 0) el = 1e-9;
    printf("{\"subs\":%d,\"connected\":%d,\"connect_failed\":%d,\"connect_s\":%.3f,\"closed\":%d,"
           "\"close_codes\":[%s],\"sent\":%llu,\"source_bytes\":%llu,\"deliveries\":%llu,\"bytes\":%llu,"
           "\"loss\":%llu,\"gaps\":%llu,\"reorder\":%llu,\"pub_errors\":%llu,\"elapsed_s\":%.6f,"
           "\"deliveries_per_s\":%.1f,\"mb_per_s\":%.2f,\"lat_n\":%llu,\"lat_p50_us\":%.0f,"
           "\"lat_p99_us\":%.0f,\"lat_max_us\":%llu,\"client_cpu_s\":%.3f,\"post_responses\":%llu,"
           "\"corrupt\":%llu,\"source_mb_per_s\":%.2f",
           opt.subs, connected, failed, connect_s, closed, codes, (unsigned long long)sent,
           (unsigned long long)src_bytes_sent, (unsigned long long)deliveries, (unsigned long long)bytes,
           (unsigned long long)loss, (unsigned long long)gaps, (unsigned long long)reorder,
           (unsigned long long)pub_errors, el, (double)deliveries / el, (double)bytes / el / 1e6,
           (unsigned long long)lat_n, pct(0.50), pct(0.99), (unsigned long long)lat_max, client_cpu,
           (unsigned long long)post_responses, (unsigned long long)corrupt,
           (double)src_bytes_sent / el / 1e6);
    if (opt.nws > 1) { /* per --ws address (per node): deliveries and latency of its subscribers */
        printf(",\"groups\":[");
        for (int g = 0; g < opt.nws; g++) {
            uint64_t gd = 0;
            int gc = 0;
            for (int i = 0; i < opt.subs; i++)
                if (conns[i].grp == g) { gd += conns[i].received; gc++; }
            printf("%s{\"subs\":%d,\"deliveries\":%llu,\"lat_n\":%llu,\"lat_p50_us\":%.0f,"
                   "\"lat_p99_us\":%.0f}", g ? "," : "", gc, (unsigned long long)gd,
                   (unsigned long long)grp_lat_n[g], pct_of(0.50, g), pct_of(0.99, g));
        }
        printf("]");
    }
    printf("}\n");
    fflush(stdout);
    for (int i = 0; i < opt.subs; i++) conn_close(&conns[i], 0);
    for (int r = 0; r < nsrc; r++) close(src_fd[r]);
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* sink: trivial WS server, pre-formatted frames, as fast as the sockets take them              */

typedef struct {
    int fd, open;
    uint64_t seq;
    size_t off, len;
    char *buf;
    char req[2048];
    size_t rlen;
} sconn_t;

static int sink_main(int port, uint64_t count, int msg_bytes, int max_conns) {
    raise_nofile();
    signal(SIGPIPE, SIG_IGN);
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(lfd, (struct sockaddr *)&sa, sizeof sa) < 0) die("sink bind");
    listen(lfd, 1024);
    socklen_t sl = sizeof sa;
    getsockname(lfd, (struct sockaddr *)&sa, &sl);
    printf("LISTEN %d\n", ntohs(sa.sin_port));
    fflush(stdout);
    int e = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = 0xFFFFFFFFu};
    epoll_ctl(e, EPOLL_CTL_ADD, lfd, &ev);
    sconn_t *sc = calloc((size_t)max_conns, sizeof(sconn_t));
    int nconn = 0, nopen = 0, finished = 0;
    int payload = msg_bytes - 1, flen = 2 + payload;
    static struct epoll_event evs[1024];
    while (finished < max_conns) {
        int n = epoll_wait(e, evs, 1024, 30000);
        if (n <= 0) break; /* idle 30 s: give up (bounded) */
        for (int i = 0; i < n; i++) {
            uint32_t tag = evs[i].data.u32;
            if (tag == 0xFFFFFFFFu) {
                int fd;
                while ((fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    if (nconn >= max_conns) { close(fd); continue; }
                    sc[nconn].fd = fd;
                    sc[nconn].buf = malloc(OBUF);
                    struct epoll_event ce = {.events = EPOLLIN, .data.u32 = (uint32_t)nconn};
                    epoll_ctl(e, EPOLL_CTL_ADD, fd, &ce);
                    nconn++;
                }
                continue;
            }
            sconn_t *c = &sc[tag];
            if (!c->open) {
                ssize_t r = read(c->fd, c->req + c->rlen, sizeof c->req - 1 - c->rlen);
                if (r <= 0) { close(c->fd); finished++; c->open = -1; continue; }
                c->rlen += (size_t)r;
                c->req[c->rlen] = 0;
                if (!strstr(c->req, "\r\n\r\n")) continue;
                const char *resp = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                                   "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
                if (write(c->fd, resp, strlen(resp)) < 0) { /* ignore */ }
                c->open = 1;
                if (++nopen == max_conns) /* all here: start every stream at once */
                    for (int k = 0; k < nconn; k++) {
                        struct epoll_event ce = {.events = EPOLLOUT, .data.u32 = (uint32_t)k};
                        epoll_ctl(e, EPOLL_CTL_MOD, sc[k].fd, &ce);
                    }
                else {
                    struct epoll_event ce = {.events = 0, .data.u32 = tag};
                    epoll_ctl(e, EPOLL_CTL_MOD, c->fd, &ce);
                }
                continue;
            }
            if (c->open != 1) continue;
            for (;;) {
                if (c->off == c->len) {
                    c->off = c->len = 0;
                    uint64_t t = now_ns();
                    while (c->seq < count && c->len + (size_t)flen <= OBUF) {
                        char *p = c->buf + c->len;
                        p[0] = (char)0x81;
                        p[1] = (char)payload;
                        put_digits(p + 2, c->seq, 10);
                        p[12] = ' ';
                        put_digits(p + 13, t, 19);
                        p[32] = ' ';
                        memset(p + 33, 'x', (size_t)payload - 31);
                        c->len += (size_t)flen;
                        c->seq++;
                    }
                    if (c->len == 0) {
                        epoll_ctl(e, EPOLL_CTL_DEL, c->fd, NULL);
                        c->open = 2;
                        finished++;
                        break;
                    }
                }
                ssize_t w = write(c->fd, c->buf + c->off, c->len - c->off);
                if (w <= 0) break;
                c->off += (size_t)w;
            }
        }
    }
    /* keep sockets open until the client hangs up (bounded by the client's own timeout) */
    for (int i = 0; i < nconn; i++) {
        char b[4096];
        struct pollfd pf = {sc[i].fd, POLLIN, 0};
        if (sc[i].open == 2 && poll(&pf, 1, 30000) > 0) { while (read(sc[i].fd, b, sizeof b) > 0) {} }
        close(sc[i].fd);
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------ */

static void usage(void) {
    fputs("usage: wsbench client --ws HOST:PORT[,HOST:PORT...] [--path-fmt FMT] [--subs N] [--rooms R]\n"
          "         [--source none|lines:H:P|raw:H:P|post:H:P|listen:P] [--sub ws|tcp]\n"
          "         [--count M] [--duration S] [--rate R] [--window K] [--msg-bytes B]\n"
          "         [--chunk B] [--total-bytes B] [--room-names a,b] [--subprotocol P]\n"
          "         [--conc C] [--post-depth D] [--timeout S] [--pause]\n"
          "       wsbench sink [--port P] [--count M] [--msg-bytes B] [--conns N]\n",
          stderr);
    exit(2);
}

int main(int argc, char **argv) {
    if (argc < 2) usage();
    if (strcmp(argv[1], "sink") == 0) {
        int port = 0, mb = 100, nc = 1;
        uint64_t count = 1000;
        for (int i = 2; i + 1 < argc; i += 2) {
            if (!strcmp(argv[i], "--port")) port = atoi(argv[i + 1]);
            else if (!strcmp(argv[i], "--count")) count = strtoull(argv[i + 1], NULL, 10);
            else if (!strcmp(argv[i], "--msg-bytes")) mb = atoi(argv[i + 1]);
            else if (!strcmp(argv[i], "--conns")) nc = atoi(argv[i + 1]);
            else usage();
        }
        if (mb < 40 || mb > 126) { fputs("sink: --msg-bytes 40..126\n", stderr); return 2; }
        return sink_main(port, count, mb, nc);
    }
    if (strcmp(argv[1], "client") != 0) usage();
    opt.subs = 10; opt.rooms = 1; opt.window = 64; opt.msg_bytes = 100; opt.chunk = 65536;
    opt.count = 1000; opt.total_bytes = 64ull << 20; opt.timeout_s = 60; opt.conc = 128;
    opt.path_fmt = "/ws?room=%s";
    opt.src_kind = SRC_NONE;
    int have_ws = 0;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--pause")) { opt.pause = 1; continue; }
        if (!v) usage();
        i++;
        if (!strcmp(a, "--ws")) {
            char list[512];
            snprintf(list, sizeof list, "%s", v);
            opt.nws = 0;
            for (char *save = NULL, *t = strtok_r(list, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
                if (opt.nws == MAXWS) usage();
                parse_hostport(t, &opt.ws_addr[opt.nws++]);
            }
            have_ws = opt.nws > 0;
        }
        else if (!strcmp(a, "--path-fmt")) opt.path_fmt = v;
        else if (!strcmp(a, "--subs")) opt.subs = atoi(v);
        else if (!strcmp(a, "--rooms")) opt.rooms = atoi(v);
        else if (!strcmp(a, "--count")) opt.count = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--duration")) opt.duration = atof(v);
        else if (!strcmp(a, "--rate")) opt.rate = atof(v);
        else if (!strcmp(a, "--window")) opt.window = atoi(v);
        else if (!strcmp(a, "--msg-bytes")) opt.msg_bytes = atoi(v);
        else if (!strcmp(a, "--chunk")) opt.chunk = atoi(v);
        else if (!strcmp(a, "--total-bytes")) opt.total_bytes = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--room-names")) opt.room_names = v;
        else if (!strcmp(a, "--subprotocol")) opt.subprotocol = v;
        else if (!strcmp(a, "--conc")) opt.conc = atoi(v);
        else if (!strcmp(a, "--post-depth")) opt.post_depth = atoi(v);
        else if (!strcmp(a, "--timeout")) opt.timeout_s = atoi(v);
        else if (!strcmp(a, "--sub")) opt.sub_tcp = !strcmp(v, "tcp");
        else if (!strcmp(a, "--source")) {
            if (!strcmp(v, "none")) opt.src_kind = SRC_NONE;
            else if (!strncmp(v, "lines:", 6)) { opt.src_kind = SRC_LINES; parse_hostport(v + 6, &opt.src_addr); }
            else if (!strncmp(v, "raw:", 4)) { opt.src_kind = SRC_RAW; parse_hostport(v + 4, &opt.src_addr); }
            else if (!strncmp(v, "post:", 5)) { opt.src_kind = SRC_POST; parse_hostport(v + 5, &opt.src_addr); }
            else if (!strncmp(v, "listen:", 7)) {
                opt.src_kind = SRC_LISTEN;
                char hp[64];
                snprintf(hp, sizeof hp, "127.0.0.1:%s", v + 7);
                parse_hostport(hp, &opt.src_addr);
            } else usage();
        } else usage();
    }
    if (!have_ws || opt.subs < 0 || opt.rooms < 1 || opt.rooms > MAXROOMS || opt.window < 0 ||
        opt.msg_bytes < 40 || opt.msg_bytes > OBUF / 4 || opt.chunk < 1 || opt.conc < 1)
        usage();
    if (opt.window == 0 && opt.subs > 0 && opt.src_kind != SRC_RAW && opt.src_kind != SRC_LISTEN) {
        fputs("wsbench: --window 0 (open loop) is for raw tunnels and blasters (--subs 0)\n", stderr);
        return 2;
    }
    return client_main();
}

/*
 * loadgen: the WebSocket load generator behind bench/run.
 *
 * One process, one thread, epoll over non-blocking sockets. Each client handshakes like
 * a browser (Origin, User-Agent, offers "permessage-deflate; client_max_window_bits"),
 * checks Sec-WebSocket-Accept, accepts whatever extension the server negotiates, and
 * inflates RSV1 frames (raw deflate + the 00 00 ff ff tail; a zlib context is allocated
 * only for a connection that actually receives a compressed frame). Client frames are
 * masked and never compressed (RSV1 clear is always valid). Server pings get pongs.
 *
 * The work is a plan: a comma-separated list of steps run in order on the same clients.
 *   c<N>            connect clients until N are subscribed (--inflight handshakes at a
 *                   time; each: TCP connect, upgrade with the JWT in the query, wait for
 *                   "connected", send subscribe, wait for "subscribed")
 *   w               print {"event":"wait",...} and block until stdin says NEXT (go on),
 *                   STOP or closes (end the plan), or --hold seconds pass
 *   max:<S>         publish for S measured seconds (after --warmup) as fast as the server
 *                   takes it: at most --window events not yet received by every subscriber
 *   rate<R>:<S>     publish R events/s for S measured seconds, open loop: "ts" is the
 *                   scheduled send time, so a server that falls behind shows as latency
 *   r               reconnect: wait until the server closes the ready clients (a drain:
 *                   close 1001, or the connection simply ends) and reconnect each at once
 *                   (--inflight handshakes at a time; a refusal with 503, a refused TCP
 *                   connect or a reset is retried after 250 ms, as a browser backs off);
 *                   done when every client ready at the start has been closed and is
 *                   subscribed again. Measures first close -> last re-subscribed.
 * Each client subscribes to --channel: "notifications" (its own) or "post" (--post ID).
 *
 * Publishing is HTTP POST /api/events on --publishers keep-alive connections. Each event
 * carries "seq" and "ts" (CLOCK_MONOTONIC microseconds of this process, which is also the
 * receiving clock). Every client records each seq in a bitmap: a seq seen twice is a
 * duplicate, an expected seq never seen is a miss; either fails the run (exit 2), as do a
 * refused handshake, an error frame, a close by the server, or a publish without 202.
 *
 * Measured per step: this process' CPU (getrusage) and the server's (utime+stime of all
 * threads of --server-pids from /proc), and the busy share of the two pinned cores
 * (/proc/stat, which also shows load from anything else on the machine).
 *
 * Why it is cheap per delivery: one read() per socket per wake-up (edge-triggered, read
 * again only if the buffer filled), no copy unless a frame straddles reads, a top-level
 * JSON scan instead of a parse, TCP_QUICKACK off after each read (the kernel then ACKs
 * every other small segment instead of every one: the ACK is the largest single cost of
 * a loopback receive), and a 100 us pause after a small epoll batch so each wake-up
 * serves many sockets (adds at most that much to measured latency).
 *
 * stdout: one JSON line per finished step ({"event":"step",...}), the wait lines, and a
 * final {"event":"result",...}. stderr: errors and progress.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/evp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

/* ------------------------------------------------------------------------- */
/* options                                                                    */

static const char *opt_host = "127.0.0.1";
static int opt_port = 0;
static const char *opt_tokens = NULL;
static const char *opt_plan = NULL;
static int opt_inflight = 200;
static const char *opt_channel = "notifications";
static const char *opt_post = "demo-open-post";
static const char *opt_api_secret = "";
static int opt_window = 8;
static int opt_publishers = 2;
static double opt_warmup = 1.0;
static double opt_settle = 0.5;
static double opt_drain = 15.0;
static int opt_max_events = 20000;
static double opt_deadline = 300.0;
static double opt_hold = 120.0;
static const char *opt_server_pids = "";
static int opt_server_cpu = -1, opt_gen_cpu = -1;
static const char *opt_path = "/ws";
static int opt_verbose = 0;
static int opt_deflate_offer = 1;
static int opt_delack = 1;
static int opt_coalesce_us = 100;
static int opt_detail = 0;

/* ------------------------------------------------------------------------- */
/* time and CPU                                                               */

static inline int64_t now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static double self_cpu_s(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

static int server_pids[64];
static int n_server_pids = 0;

/* utime+stime of all threads of the server processes, in seconds */
static double server_cpu_s(void) {
    long tck = sysconf(_SC_CLK_TCK);
    double total = 0;
    for (int i = 0; i < n_server_pids; i++) {
        char path[64], buf[2048];
        snprintf(path, sizeof path, "/proc/%d/stat", server_pids[i]);
        FILE *f = fopen(path, "r");
        if (!f) continue;
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[n] = 0;
        char *p = strrchr(buf, ')');
        if (!p) continue;
        unsigned long ut = 0, st = 0;
        int field = 2; /* the field after ')' is field 3 (state); utime is 14, stime 15 */
        char *save = NULL;
        for (char *tok = strtok_r(p + 1, " ", &save); tok; tok = strtok_r(NULL, " ", &save)) {
            field++;
            if (field == 14) ut = strtoul(tok, NULL, 10);
            if (field == 15) { st = strtoul(tok, NULL, 10); break; }
        }
        total += (double)(ut + st) / tck;
    }
    return total;
}

/* busy and total jiffies of one core (busy counts irq, softirq and steal too) */
static void core_jiffies(int cpu, double *busy, double *total) {
    *busy = *total = 0;
    if (cpu < 0) return;
    FILE *f = fopen("/proc/stat", "r");
    if (!f) return;
    char line[512], want[16];
    snprintf(want, sizeof want, "cpu%d ", cpu);
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, want, strlen(want))) continue;
        unsigned long long v[8] = { 0 };
        sscanf(line + strlen(want), "%llu %llu %llu %llu %llu %llu %llu %llu",
               &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6], &v[7]);
        double tot = 0;
        for (int i = 0; i < 8; i++) tot += (double)v[i];
        *busy = tot - (double)(v[3] + v[4]);
        *total = tot;
        break;
    }
    fclose(f);
}

typedef struct { int64_t t; double self, server, sbusy, stot, gbusy, gtot; } probe;

static void take_probe(probe *p) {
    p->t = now_us();
    p->self = self_cpu_s();
    p->server = server_cpu_s();
    core_jiffies(opt_server_cpu, &p->sbusy, &p->stot);
    core_jiffies(opt_gen_cpu, &p->gbusy, &p->gtot);
}

static double frac(double b1, double b0, double t1, double t0) { return t1 > t0 ? (b1 - b0) / (t1 - t0) : -1; }

/* ------------------------------------------------------------------------- */
/* latency histogram: log-linear, 64 sub-buckets per power of two (~1.6 %)    */

#define HB_SUB 64
#define HB_N (HB_SUB + 40 * HB_SUB)
typedef struct { uint64_t b[HB_N]; uint64_t count; int64_t max; } hist;

static inline int hbucket(int64_t v) {
    if (v < 0) v = 0;
    if (v < HB_SUB) return (int)v;
    int e = 63 - __builtin_clzll((uint64_t)v); /* >= 6 */
    int idx = HB_SUB + (e - 6) * HB_SUB + (int)((v >> (e - 6)) & (HB_SUB - 1));
    return idx < HB_N ? idx : HB_N - 1;
}
static double hvalue(int idx) {
    if (idx < HB_SUB) return idx;
    int e = (idx - HB_SUB) / HB_SUB + 6;
    int sub = (idx - HB_SUB) % HB_SUB;
    double lo = (double)((1ULL << e) + ((uint64_t)sub << (e - 6)));
    return lo + (double)(1ULL << (e - 6)) / 2.0;
}
static inline void hadd(hist *h, int64_t v) {
    h->b[hbucket(v)]++;
    h->count++;
    if (v > h->max) h->max = v;
}
static double hpct(const hist *h, double p) { /* in the unit recorded (us) */
    if (!h->count) return -1;
    uint64_t want = (uint64_t)(p / 100.0 * (double)h->count);
    if (want >= h->count) want = h->count - 1;
    uint64_t acc = 0;
    for (int i = 0; i < HB_N; i++) {
        acc += h->b[i];
        if (acc > want) return hvalue(i);
    }
    return (double)h->max;
}

/* ------------------------------------------------------------------------- */
/* errors: counted, the first few kept verbatim                               */

#define MAX_ERR_KEEP 12
static char *err_keep[MAX_ERR_KEEP];
static int n_err_keep = 0;
static long n_errors = 0;

static void add_error(const char *fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    n_errors++;
    if (n_err_keep < MAX_ERR_KEEP) err_keep[n_err_keep++] = strdup(buf);
    if (opt_verbose || n_errors <= 5) fprintf(stderr, "loadgen: ERROR %s\n", buf);
}

static void json_str(FILE *f, const char *s) {
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') fprintf(f, "\\%c", *s);
        else if ((unsigned char)*s < 0x20) fputc(' ', f);
        else fputc(*s, f);
    }
    fputc('"', f);
}

/* ------------------------------------------------------------------------- */
/* state                                                                      */

enum { K_CLIENT = 1, K_PUB = 2, K_STDIN = 3 };
enum { ST_NEW = 0, ST_CONNECTING, ST_HANDSHAKE, ST_WAIT_CONNECTED, ST_WAIT_SUBSCRIBED,
       ST_READY, ST_CLOSING, ST_CLOSED, ST_FAILED };

typedef struct {
    int kind;
    int fd;
    int idx;
    uint8_t state;
    uint8_t pmd;          /* permessage-deflate negotiated */
    uint8_t srv_no_ctx;   /* server_no_context_takeover */
    uint8_t in_frag, frag_rsv1;
    uint8_t want_out;     /* EPOLLOUT armed */
    uint8_t was_ready;    /* got "subscribed" at some point */
    uint8_t closed_once, reconnected;  /* the r step */
    int64_t t_closed, due;
    z_stream *inf;        /* only once a compressed frame arrives */
    uint8_t *pend; uint32_t pend_len, pend_cap;   /* a frame straddling reads */
    uint8_t *frag; uint32_t frag_len, frag_cap;   /* a fragmented message */
    uint8_t *out; uint32_t out_len, out_cap;      /* writes the kernel refused */
    int64_t t_start;
    int64_t first_seq;    /* events from this seq on are due to this client */
    int64_t last_seq;
    uint32_t received, dups;
    uint64_t *seen;       /* bitmap of seqs received */
    char key[32];
} conn;

typedef struct {
    int kind;
    int fd;
    int state; /* 0 closed, 1 connecting, 2 idle, 3 awaiting the reply */
    int64_t seq;
    char out[1024]; size_t out_len, out_off;
    char in[8192]; size_t in_len;
} pubconn;

enum { S_CONNECT = 1, S_WAIT, S_PUBLISH, S_RECONNECT };
typedef struct {
    int kind;
    int target;          /* S_CONNECT */
    double rate, dur;    /* S_PUBLISH: rate 0 = max */
    /* results */
    int subs;
    probe p0, p1;        /* connect: whole step; publish: the measured window */
    hist lat;            /* connect latency or publish->receive latency, us */
    int64_t seq_first, seq_m0, seq_m1, seq_last;
    uint64_t d0, d1;
    int64_t late;
    int done, drained;
    int64_t t_first_close, t_last_ready, retries;   /* S_RECONNECT */
} step;

static struct sockaddr_in srv_addr;
static int ep;
static conn *conns;
static int n_clients;                /* the largest connect target of the plan */
static char **tok_user, **tok_token;
static int n_tokens;
static pubconn *pubs;
static step steps[64];
static int n_steps;
static step *cur;                    /* the step running now */
static uint8_t gbuf[1 << 18];
static uint8_t *zout; static size_t zout_cap;

static int n_inflight = 0, next_to_start = 0, n_ready = 0, n_failed_conn = 0, n_open = 0;
static uint64_t total_deliveries = 0, n_compressed_frames = 0, n_pmd = 0, n_pings = 0;
static uint64_t n_other_msgs = 0, n_unknown_seq = 0, n_out_of_order = 0;
static uint32_t *seq_count;          /* receivers per seq */
static int64_t *seq_ts, *seq_first_rx, *seq_last_rx; /* --detail: per event */
static int64_t next_seq = 0;         /* events published (POST written) */
static int64_t acked = 0;            /* 202 received */
static int64_t completed = 0;        /* events received by every subscriber due */
static int subs_due = 0;             /* subscribers of the current publish step */
static int closing = 0;
static int reconnect_mode = 0;       /* the r step is running */
static int *rq, rq_head = 0, rq_len = 0, n_reconnected = 0;   /* clients waiting to reconnect */

static void die(const char *msg) { fprintf(stderr, "loadgen: %s: %s\n", msg, strerror(errno)); exit(4); }

static void *xrealloc(void *p, size_t n) {
    void *q = realloc(p, n);
    if (!q) { fprintf(stderr, "loadgen: out of memory\n"); exit(4); }
    return q;
}

static uint64_t rng_state = 88172645463325252ULL;
static inline uint64_t rnd(void) {
    rng_state ^= rng_state << 13; rng_state ^= rng_state >> 7; rng_state ^= rng_state << 17;
    return rng_state;
}

static void ep_mod(int fd, void *ptr, uint32_t evs, int op) {
    struct epoll_event ev = { .events = evs, .data.ptr = ptr };
    if (epoll_ctl(ep, op, fd, &ev) < 0) die("epoll_ctl");
}

static int tcp_socket(void) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket");
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

static const char *user_of(const conn *c) { return tok_user[c->idx % n_tokens]; }

/* ------------------------------------------------------------------------- */
/* client writes (tiny; buffered only if the kernel refuses)                  */

#define CLIENT_EVENTS (EPOLLIN | EPOLLRDHUP | EPOLLET)

static void conn_write(conn *c, const uint8_t *data, size_t len) {
    if (c->out_len == 0) {
        ssize_t w = write(c->fd, data, len);
        if (w == (ssize_t)len) return;
        if (w < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK) return; /* the error shows on read */
            w = 0;
        }
        data += w; len -= w;
    }
    if (c->out_len + len > c->out_cap) {
        c->out_cap = (uint32_t)((c->out_len + len) * 2);
        c->out = xrealloc(c->out, c->out_cap);
    }
    memcpy(c->out + c->out_len, data, len);
    c->out_len += (uint32_t)len;
    if (!c->want_out) { c->want_out = 1; ep_mod(c->fd, c, CLIENT_EVENTS | EPOLLOUT, EPOLL_CTL_MOD); }
}

static void conn_flush(conn *c) {
    while (c->out_len) {
        ssize_t w = write(c->fd, c->out, c->out_len);
        if (w <= 0) return;
        memmove(c->out, c->out + w, c->out_len - w);
        c->out_len -= (uint32_t)w;
    }
    if (c->want_out) { c->want_out = 0; ep_mod(c->fd, c, CLIENT_EVENTS, EPOLL_CTL_MOD); }
}

/* one masked client frame */
static void send_frame(conn *c, int opcode, const uint8_t *payload, size_t len) {
    uint8_t buf[16 + 1024];
    if (len > 1024) len = 1024;
    size_t h = 0;
    buf[h++] = 0x80 | (uint8_t)opcode;
    if (len < 126) buf[h++] = 0x80 | (uint8_t)len;
    else { buf[h++] = 0x80 | 126; buf[h++] = (uint8_t)(len >> 8); buf[h++] = (uint8_t)len; }
    uint32_t m = (uint32_t)rnd();
    uint8_t mask[4] = { (uint8_t)m, (uint8_t)(m >> 8), (uint8_t)(m >> 16), (uint8_t)(m >> 24) };
    memcpy(buf + h, mask, 4); h += 4;
    for (size_t i = 0; i < len; i++) buf[h + i] = payload[i] ^ mask[i & 3];
    conn_write(c, buf, h + len);
}

static void send_text(conn *c, const char *s) { send_frame(c, 1, (const uint8_t *)s, strlen(s)); }

/* ------------------------------------------------------------------------- */
/* a top-level JSON scan: "type" (string), "seq" and "ts" (integers); nested  */
/* values are skipped whole, so key order and spacing do not matter            */

typedef struct {
    const char *type; int type_len;
    int64_t seq; int has_seq;
    int64_t ts; int has_ts;
} msginfo;

static const char *skip_ws(const char *p, const char *e) {
    while (p < e && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
    return p;
}
static const char *skip_string(const char *p, const char *e) { /* p at the opening quote */
    p++;
    while (p < e) {
        if (*p == '\\') p += 2;
        else if (*p == '"') return p + 1;
        else p++;
    }
    return NULL;
}
static const char *skip_value(const char *p, const char *e) {
    if (p >= e) return NULL;
    if (*p == '"') return skip_string(p, e);
    if (*p == '{' || *p == '[') {
        int depth = 0;
        while (p < e) {
            if (*p == '"') { p = skip_string(p, e); if (!p) return NULL; continue; }
            if (*p == '{' || *p == '[') depth++;
            else if ((*p == '}' || *p == ']') && --depth == 0) return p + 1;
            p++;
        }
        return NULL;
    }
    while (p < e && *p != ',' && *p != '}' && *p != ']' && *p != ' ' && *p != '\n' && *p != '\r' && *p != '\t') p++;
    return p;
}
static int scan_msg(const char *p, size_t n, msginfo *mi) {
    const char *e = p + n;
    memset(mi, 0, sizeof *mi);
    p = skip_ws(p, e);
    if (p >= e || *p != '{') return -1;
    p++;
    for (;;) {
        p = skip_ws(p, e);
        if (p >= e) return -1;
        if (*p == '}') return 0;
        if (*p != '"') return -1;
        const char *k = p + 1;
        p = skip_string(p, e);
        if (!p) return -1;
        int klen = (int)(p - 1 - k);
        p = skip_ws(p, e);
        if (p >= e || *p != ':') return -1;
        p = skip_ws(p + 1, e);
        if (p >= e) return -1;
        if (klen == 4 && !memcmp(k, "type", 4) && *p == '"') {
            const char *v = p + 1;
            p = skip_string(p, e);
            if (!p) return -1;
            mi->type = v; mi->type_len = (int)(p - 1 - v);
        } else if ((klen == 3 && !memcmp(k, "seq", 3)) || (klen == 2 && !memcmp(k, "ts", 2))) {
            int neg = 0; int64_t v = 0; const char *s;
            if (*p == '-') { neg = 1; p++; }
            s = p;
            while (p < e && *p >= '0' && *p <= '9') { v = v * 10 + (*p - '0'); p++; }
            if (p == s) { p = skip_value(p, e); if (!p) return -1; }
            else if (klen == 3) { mi->seq = neg ? -v : v; mi->has_seq = 1; }
            else { mi->ts = neg ? -v : v; mi->has_ts = 1; }
            while (p < e && (*p == '.' || *p == 'e' || *p == 'E' || *p == '+' || *p == '-' || (*p >= '0' && *p <= '9'))) p++;
        } else {
            p = skip_value(p, e);
            if (!p) return -1;
        }
        p = skip_ws(p, e);
        if (p >= e) return -1;
        if (*p == ',') { p++; continue; }
        if (*p == '}') return 0;
        return -1;
    }
}

static int type_is(const msginfo *mi, const char *t) {
    int l = (int)strlen(t);
    return mi->type && mi->type_len == l && !memcmp(mi->type, t, l);
}

/* ------------------------------------------------------------------------- */
/* client life cycle                                                          */

static void conn_close_fd(conn *c) {
    if (c->fd >= 0) { close(c->fd); c->fd = -1; n_open--; }
    if (c->inf) { inflateEnd(c->inf); free(c->inf); c->inf = NULL; }
    free(c->pend); c->pend = NULL; c->pend_len = c->pend_cap = 0;
    free(c->frag); c->frag = NULL; c->frag_len = c->frag_cap = 0;
    free(c->out); c->out = NULL; c->out_len = c->out_cap = 0;
}

static void conn_fail(conn *c, const char *fmt, ...) {
    char buf[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    int was = c->state;
    if (was >= ST_CONNECTING && was <= ST_WAIT_SUBSCRIBED) n_inflight--;
    if (was == ST_READY) n_ready--;
    if (!closing) {
        add_error("client %d (%s): %s", c->idx, user_of(c), buf);
        n_failed_conn++;
    }
    c->state = closing ? ST_CLOSED : ST_FAILED;
    conn_close_fd(c);
}

/* the r step: this client was let go by the server; connect it again after `delay` us */
static void conn_requeue(conn *c, int64_t delay) {
    int was = c->state;
    int64_t now = now_us();
    if (was >= ST_CONNECTING && was <= ST_WAIT_SUBSCRIBED) n_inflight--;
    if (was == ST_READY) n_ready--;
    if (!c->closed_once) {
        c->closed_once = 1;
        c->t_closed = now;
        if (!cur->t_first_close) cur->t_first_close = now;
    }
    if (delay) cur->retries++;
    conn_close_fd(c);
    c->in_frag = 0; c->pmd = 0; c->srv_no_ctx = 0;
    c->state = ST_NEW;
    c->due = now + delay;
    rq[(rq_head + rq_len++) % n_clients] = c->idx;
}

static void on_event_frame(conn *c, const msginfo *mi, int64_t now) {
    int64_t seq = mi->seq;
    total_deliveries++;
    if (seq < c->first_seq || seq >= next_seq || seq >= opt_max_events) {
        n_unknown_seq++;
        add_error("client %d: event with seq %lld it was not due (due from %lld, published %lld)",
                  c->idx, (long long)seq, (long long)c->first_seq, (long long)next_seq);
        return;
    }
    uint64_t bit = 1ULL << (seq & 63);
    uint64_t *w = &c->seen[seq >> 6];
    if (*w & bit) { c->dups++; return; }
    *w |= bit;
    c->received++;
    if (seq < c->last_seq) n_out_of_order++;
    c->last_seq = seq;
    if (++seq_count[seq] == (uint32_t)subs_due) completed++;
    if (opt_detail) {
        if (!seq_first_rx[seq]) seq_first_rx[seq] = now;
        seq_last_rx[seq] = now;
        seq_ts[seq] = mi->ts;
    }
    if (cur && cur->kind == S_PUBLISH && cur->seq_m0 >= 0 && seq >= cur->seq_m0 &&
        (cur->seq_m1 < 0 || seq < cur->seq_m1) && mi->has_ts)
        hadd(&cur->lat, now - mi->ts);
}

static void on_message(conn *c, const uint8_t *data, size_t len, int64_t now) {
    msginfo mi;
    if (scan_msg((const char *)data, len, &mi) < 0) {
        add_error("client %d: unparsable message: %.80s", c->idx, (const char *)data);
        return;
    }
    if (c->state == ST_READY && mi.has_seq) { on_event_frame(c, &mi, now); return; }
    if (type_is(&mi, "connected")) {
        if (c->state != ST_WAIT_CONNECTED) { add_error("client %d: unexpected connected", c->idx); return; }
        char msg[400];
        if (!strcmp(opt_channel, "post"))
            snprintf(msg, sizeof msg, "{\"type\":\"subscribe\",\"channel\":{\"type\":\"post\",\"postId\":\"%s\"}}", opt_post);
        else
            snprintf(msg, sizeof msg, "{\"type\":\"subscribe\",\"channel\":{\"type\":\"notifications\",\"userId\":\"%s\"}}", user_of(c));
        send_text(c, msg);
        c->state = ST_WAIT_SUBSCRIBED;
        return;
    }
    if (type_is(&mi, "subscribed")) {
        if (c->state != ST_WAIT_SUBSCRIBED) { add_error("client %d: unexpected subscribed", c->idx); return; }
        c->state = ST_READY;
        c->was_ready = 1;
        c->first_seq = next_seq;
        n_inflight--;
        n_ready++;
        if (cur && cur->kind == S_CONNECT) hadd(&cur->lat, now - c->t_start);
        if (reconnect_mode && c->closed_once && !c->reconnected) {
            c->reconnected = 1;
            n_reconnected++;
            hadd(&cur->lat, now - c->t_closed);
            cur->t_last_ready = now;
        }
        return;
    }
    if (type_is(&mi, "error")) {
        conn_fail(c, "error frame: %.200s", (const char *)data);
        return;
    }
    n_other_msgs++; /* pong, unread_notifications, ... */
}

/* inflate one whole compressed message (the payload lacks the 00 00 ff ff tail) */
static int inflate_msg(conn *c, const uint8_t *in, size_t len, size_t *out_len) {
    static const uint8_t tail[4] = { 0, 0, 0xff, 0xff };
    if (!c->inf) {
        c->inf = calloc(1, sizeof(z_stream));
        if (!c->inf || inflateInit2(c->inf, -15) != Z_OK) return -1;
    }
    if (!zout) { zout_cap = 1 << 16; zout = xrealloc(NULL, zout_cap); }
    z_stream *z = c->inf;
    size_t produced = 0;
    for (int part = 0; part < 2; part++) {
        z->next_in = (Bytef *)(part == 0 ? in : tail);
        z->avail_in = (uInt)(part == 0 ? len : 4);
        for (;;) {
            if (zout_cap - produced < 4096) { zout_cap *= 2; zout = xrealloc(zout, zout_cap); }
            z->next_out = zout + produced;
            z->avail_out = (uInt)(zout_cap - produced);
            int r = inflate(z, Z_SYNC_FLUSH);
            produced = zout_cap - z->avail_out;
            if (r != Z_OK && r != Z_BUF_ERROR && r != Z_STREAM_END) return -1;
            if (z->avail_in == 0 && z->avail_out > 0) break;
            if (r == Z_BUF_ERROR && z->avail_out > 0) break;
        }
    }
    if (c->srv_no_ctx) inflateReset(z);
    *out_len = produced;
    return 0;
}

static void deliver(conn *c, const uint8_t *p, size_t len, int rsv1, int64_t now) {
    if (!rsv1) { on_message(c, p, len, now); return; }
    if (!c->pmd) { conn_fail(c, "RSV1 frame without negotiated permessage-deflate"); return; }
    size_t olen;
    n_compressed_frames++;
    if (inflate_msg(c, p, len, &olen) < 0) { conn_fail(c, "inflate failed"); return; }
    on_message(c, zout, olen, now);
}

/* parse whole frames; returns bytes consumed, -1 if the connection was closed */
static ssize_t parse_frames(conn *c, const uint8_t *buf, size_t len, int64_t now) {
    size_t off = 0;
    while (len - off >= 2) {
        const uint8_t *p = buf + off;
        int fin = p[0] & 0x80, rsv1 = p[0] & 0x40, op = p[0] & 0x0f;
        uint64_t plen = p[1] & 0x7f;
        size_t h = 2;
        if (plen == 126) {
            if (len - off < 4) break;
            plen = ((uint64_t)p[2] << 8) | p[3]; h = 4;
        } else if (plen == 127) {
            if (len - off < 10) break;
            plen = 0;
            for (int i = 0; i < 8; i++) plen = (plen << 8) | p[2 + i];
            h = 10;
        }
        if (p[1] & 0x80) { conn_fail(c, "server sent a masked frame"); return -1; }
        if (plen > (1u << 26)) { conn_fail(c, "frame too large"); return -1; }
        if (len - off < h + plen) break;
        const uint8_t *pl = p + h;
        off += h + plen;
        if (op == 0x9) { n_pings++; send_frame(c, 0xA, pl, plen); continue; }
        if (op == 0xA) continue;
        if (op == 0x8) {
            int code = plen >= 2 ? (pl[0] << 8 | pl[1]) : 1005;
            if (reconnect_mode && code == 1001) { conn_requeue(c, 0); return -1; }
            conn_fail(c, "closed by the server: code %d %.*s", code, (int)(plen > 2 ? plen - 2 : 0), (const char *)pl + 2);
            return -1;
        }
        if (op == 0x2) { conn_fail(c, "unexpected binary frame"); return -1; }
        if (op == 0x1) {
            if (c->in_frag) { conn_fail(c, "new message inside a fragmented one"); return -1; }
            if (fin) {
                deliver(c, pl, plen, rsv1, now);
                if (c->fd < 0) return -1;
                continue;
            }
            c->in_frag = 1; c->frag_rsv1 = rsv1 ? 1 : 0; c->frag_len = 0;
        } else if (op != 0x0 || !c->in_frag) {
            conn_fail(c, "bad opcode %d", op);
            return -1;
        }
        if (c->frag_len + plen > c->frag_cap) {
            c->frag_cap = (uint32_t)((c->frag_len + plen) * 2);
            c->frag = xrealloc(c->frag, c->frag_cap);
        }
        memcpy(c->frag + c->frag_len, pl, plen);
        c->frag_len += (uint32_t)plen;
        if (fin) {
            c->in_frag = 0;
            deliver(c, c->frag, c->frag_len, c->frag_rsv1, now);
            if (c->fd < 0) return -1;
        }
    }
    return (ssize_t)off;
}

static const char *find_header(const char *hdrs, const char *end, const char *name, int *vlen) {
    size_t nl = strlen(name);
    const char *p = hdrs;
    while (p < end) {
        const char *eol = memmem(p, end - p, "\r\n", 2);
        if (!eol) eol = end;
        if ((size_t)(eol - p) > nl && !strncasecmp(p, name, nl) && p[nl] == ':') {
            const char *v = p + nl + 1;
            while (v < eol && (*v == ' ' || *v == '\t')) v++;
            *vlen = (int)(eol - v);
            return v;
        }
        p = eol + 2;
    }
    return NULL;
}

/* bytes of the HTTP response head consumed, 0 if incomplete, -1 if failed */
static ssize_t parse_handshake(conn *c, const uint8_t *buf, size_t len) {
    const char *s = (const char *)buf;
    const char *end = memmem(s, len, "\r\n\r\n", 4);
    if (!end) {
        if (len > 16384) { conn_fail(c, "handshake response too long"); return -1; }
        return 0;
    }
    int status = 0;
    if (sscanf(s, "HTTP/1.%*d %d", &status) != 1) { conn_fail(c, "bad HTTP response"); return -1; }
    if (status != 101) {
        const char *body = end + 4;
        if (reconnect_mode && status == 503) { conn_requeue(c, 250000); return -1; }
        int blen = (int)(len - (body - s));
        conn_fail(c, "handshake refused: HTTP %d %.*s", status, blen > 160 ? 160 : blen, body);
        return -1;
    }
    int vlen;
    const char *acc = find_header(s, end + 2, "Sec-WebSocket-Accept", &vlen);
    unsigned char sha[EVP_MAX_MD_SIZE];
    unsigned int shalen = 0;
    char cat[128], expect[64];
    snprintf(cat, sizeof cat, "%s258EAFA5-E914-47DA-95CA-C5AB0DC85B11", c->key);
    EVP_Digest(cat, strlen(cat), sha, &shalen, EVP_sha1(), NULL);
    EVP_EncodeBlock((unsigned char *)expect, sha, (int)shalen);
    if (!acc || vlen != (int)strlen(expect) || memcmp(acc, expect, vlen)) {
        conn_fail(c, "bad Sec-WebSocket-Accept");
        return -1;
    }
    const char *ext = find_header(s, end + 2, "Sec-WebSocket-Extensions", &vlen);
    if (ext) {
        char e[256];
        snprintf(e, sizeof e, "%.*s", vlen, ext);
        if (!strstr(e, "permessage-deflate") || !opt_deflate_offer) {
            conn_fail(c, "server negotiated an extension not offered: %s", e);
            return -1;
        }
        c->pmd = 1;
        n_pmd++;
        if (strstr(e, "server_no_context_takeover")) c->srv_no_ctx = 1;
    }
    c->state = ST_WAIT_CONNECTED;
    return (end + 4) - s;
}

/* one read; returns 1 if it filled the buffer (edge-triggered: read again) */
static int on_client_readable(conn *c) {
    uint8_t *data;
    size_t have, want;
    ssize_t n;
    if (c->pend_len) {
        if (c->pend_cap - c->pend_len < 65536) {
            c->pend_cap = c->pend_len + 65536 * 2;
            c->pend = xrealloc(c->pend, c->pend_cap);
        }
        want = c->pend_cap - c->pend_len;
        n = read(c->fd, c->pend + c->pend_len, want);
        data = c->pend;
        have = c->pend_len + (n > 0 ? n : 0);
    } else {
        want = sizeof gbuf;
        n = read(c->fd, gbuf, want);
        data = gbuf;
        have = n > 0 ? n : 0;
    }
    int64_t now = now_us(); /* latency is taken at the read that returned the frame */
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return 0;
        if (c->state == ST_CLOSING) { c->state = ST_CLOSED; conn_close_fd(c); return 0; }
        if (reconnect_mode) { conn_requeue(c, c->state == ST_READY ? 0 : 250000); return 0; }
        conn_fail(c, "read: %s", strerror(errno));
        return 0;
    }
    if (n == 0) {
        if (c->state == ST_CLOSING) { c->state = ST_CLOSED; conn_close_fd(c); return 0; }
        if (reconnect_mode) { conn_requeue(c, c->state == ST_READY ? 0 : 250000); return 0; }
        conn_fail(c, "connection closed by the server without a close frame (state %d)", c->state);
        return 0;
    }
    if (opt_delack) {
        /* "pingpong" mode: the kernel stops ACKing every small segment on read */
        int zero = 0;
        setsockopt(c->fd, IPPROTO_TCP, TCP_QUICKACK, &zero, sizeof zero);
    }
    size_t off = 0;
    if (c->state == ST_CLOSING) { off = have; goto keep; } /* a close is under way: discard */
    if (c->state == ST_HANDSHAKE) {
        ssize_t h = parse_handshake(c, data, have);
        if (h < 0) return 0;
        if (h == 0) goto keep;
        off = (size_t)h;
    }
    {
        ssize_t used = parse_frames(c, data + off, have - off, now);
        if (used < 0) return 0;
        off += (size_t)used;
    }
keep:
    if (off == have) c->pend_len = 0;
    else if (data == gbuf) {
        size_t rem = have - off;
        if (c->pend_cap < rem + 65536) { c->pend_cap = (uint32_t)(rem + 65536); c->pend = xrealloc(c->pend, c->pend_cap); }
        memcpy(c->pend, gbuf + off, rem);
        c->pend_len = (uint32_t)rem;
    } else {
        memmove(c->pend, c->pend + off, have - off);
        c->pend_len = (uint32_t)(have - off);
    }
    return (size_t)n == want;
}

static void send_handshake(conn *c) {
    uint8_t rk[16];
    for (int i = 0; i < 16; i += 8) { uint64_t r = rnd(); memcpy(rk + i, &r, 8); }
    EVP_EncodeBlock((unsigned char *)c->key, rk, 16);
    char req[4096];
    int n = snprintf(req, sizeof req,
        "GET %s?token=%s HTTP/1.1\r\n"
        "Host: %s:%d\r\n"
        "Connection: Upgrade\r\n"
        "Pragma: no-cache\r\n"
        "Cache-Control: no-cache\r\n"
        "User-Agent: Mozilla/5.0 (X11; Linux x86_64) fonana-bench-loadgen/1\r\n"
        "Upgrade: websocket\r\n"
        "Origin: http://%s:%d\r\n"
        "Sec-WebSocket-Version: 13\r\n"
        "Accept-Encoding: gzip, deflate\r\n"
        "Accept-Language: en-US,en;q=0.9\r\n"
        "Sec-WebSocket-Key: %s\r\n"
        "%s"
        "\r\n",
        opt_path, tok_token[c->idx % n_tokens], opt_host, opt_port, opt_host, opt_port, c->key,
        opt_deflate_offer ? "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n" : "");
    conn_write(c, (uint8_t *)req, (size_t)n);
    c->state = ST_HANDSHAKE;
}

static void start_client(conn *c) {
    c->kind = K_CLIENT;
    c->fd = tcp_socket();
    n_open++;
    c->t_start = now_us();
    c->state = ST_CONNECTING;
    n_inflight++;
    if (connect(c->fd, (struct sockaddr *)&srv_addr, sizeof srv_addr) < 0 && errno != EINPROGRESS) {
        conn_fail(c, "connect: %s", strerror(errno));
        return;
    }
    c->want_out = 1;
    ep_mod(c->fd, c, EPOLLOUT, EPOLL_CTL_ADD);
}

static void on_client_event(conn *c, uint32_t evs) {
    if (c->state == ST_CONNECTING) {
        int err = 0; socklen_t el = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
        if (err && reconnect_mode) { conn_requeue(c, 250000); return; }
        if (err) { conn_fail(c, "connect: %s", strerror(err)); return; }
        c->want_out = 0;
        ep_mod(c->fd, c, CLIENT_EVENTS, EPOLL_CTL_MOD);
        send_handshake(c);
        return;
    }
    if (evs & EPOLLOUT) conn_flush(c);
    if (evs & (EPOLLIN | EPOLLHUP | EPOLLERR | EPOLLRDHUP))
        while (c->fd >= 0 && on_client_readable(c)) {}
}

/* ------------------------------------------------------------------------- */
/* publishers: keep-alive HTTP POST /api/events                              */

static void pub_connect(pubconn *p) {
    p->kind = K_PUB;
    p->fd = tcp_socket();
    p->in_len = 0;
    if (connect(p->fd, (struct sockaddr *)&srv_addr, sizeof srv_addr) < 0 && errno != EINPROGRESS)
        die("publisher connect");
    p->state = 1;
    ep_mod(p->fd, p, EPOLLOUT, EPOLL_CTL_ADD);
}

static void pub_reconnect(pubconn *p) {
    close(p->fd);
    pub_connect(p);
}

static void pub_send(pubconn *p, int64_t ts) {
    char body[512];
    int64_t seq = next_seq++;
    int bl = snprintf(body, sizeof body,
        "{\"event\":{\"type\":\"post_liked\",\"postId\":\"%s\",\"userId\":\"bench-publisher\","
        "\"likesCount\":%lld,\"seq\":%lld,\"ts\":%lld},\"channel\":{\"type\":\"post\",\"postId\":\"%s\"}}",
        opt_post, (long long)seq, (long long)seq, (long long)ts, opt_post);
    p->out_len = (size_t)snprintf(p->out, sizeof p->out,
        "POST /api/events HTTP/1.1\r\nHost: %s:%d\r\nAuthorization: Bearer %s\r\n"
        "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
        opt_host, opt_port, opt_api_secret, bl, body);
    p->out_off = 0;
    p->seq = seq;
    p->state = 3;
    ssize_t w = write(p->fd, p->out, p->out_len);
    if (w > 0) p->out_off = (size_t)w;
    if (p->out_off < p->out_len) ep_mod(p->fd, p, EPOLLIN | EPOLLOUT, EPOLL_CTL_MOD);
}

static void on_pub_event(pubconn *p, uint32_t evs) {
    if (p->state == 1) {
        int err = 0; socklen_t el = sizeof err;
        getsockopt(p->fd, SOL_SOCKET, SO_ERROR, &err, &el);
        if (err) { add_error("publisher connect: %s", strerror(err)); close(p->fd); p->state = 0; return; }
        p->state = 2;
        ep_mod(p->fd, p, EPOLLIN, EPOLL_CTL_MOD);
        return;
    }
    if ((evs & EPOLLOUT) && p->out_off < p->out_len) {
        ssize_t w = write(p->fd, p->out + p->out_off, p->out_len - p->out_off);
        if (w > 0) p->out_off += (size_t)w;
        if (p->out_off == p->out_len) ep_mod(p->fd, p, EPOLLIN, EPOLL_CTL_MOD);
    }
    if (!(evs & (EPOLLIN | EPOLLHUP | EPOLLERR))) return;
    ssize_t n = read(p->fd, p->in + p->in_len, sizeof p->in - 1 - p->in_len);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (n <= 0) { /* the server ended an idle keep-alive connection: fine, unless a reply was due */
        if (p->state == 3) add_error("publisher: connection closed before the reply to seq %lld", (long long)p->seq);
        pub_reconnect(p);
        return;
    }
    p->in_len += (size_t)n;
    p->in[p->in_len] = 0;
    for (;;) {
        char *hend = strstr(p->in, "\r\n\r\n");
        if (!hend) return;
        int status = 0, vlen;
        sscanf(p->in, "HTTP/1.%*d %d", &status);
        const char *cl = find_header(p->in, hend + 2, "Content-Length", &vlen);
        size_t need;
        if (cl) need = (size_t)(hend + 4 - p->in) + strtoul(cl, NULL, 10);
        else {
            const char *te = find_header(p->in, hend + 2, "Transfer-Encoding", &vlen);
            if (te && !strncasecmp(te, "chunked", 7)) {
                char *z = strstr(hend + 4, "0\r\n\r\n");
                if (!z) return;
                need = (size_t)((z + 5) - p->in);
            } else need = (size_t)(hend + 4 - p->in);
        }
        if (p->in_len < need) return;
        const char *ch = find_header(p->in, hend + 2, "Connection", &vlen);
        int must_close = ch && !strncasecmp(ch, "close", 5);
        if (p->state == 3) {
            if (status != 202) add_error("publisher: HTTP %d for seq %lld: %.200s", status, (long long)p->seq, hend + 4);
            else acked++;
            p->state = 2;
        }
        memmove(p->in, p->in + need, p->in_len - need);
        p->in_len -= need;
        p->in[p->in_len] = 0;
        if (must_close) { pub_reconnect(p); return; }
    }
}

/* ------------------------------------------------------------------------- */
/* plan, output                                                               */

static void parse_plan(const char *plan) {
    char *copy = strdup(plan), *save = NULL;
    for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (n_steps == 64) { fprintf(stderr, "loadgen: plan too long\n"); exit(4); }
        step *s = &steps[n_steps++];
        memset(s, 0, sizeof *s);
        s->seq_m0 = s->seq_m1 = -1;
        if (t[0] == 'c') {
            s->kind = S_CONNECT;
            s->target = atoi(t + 1);
            if (s->target > n_clients) n_clients = s->target;
        } else if (!strcmp(t, "w")) {
            s->kind = S_WAIT;
        } else if (!strcmp(t, "r")) {
            s->kind = S_RECONNECT;
        } else if (!strncmp(t, "max:", 4)) {
            s->kind = S_PUBLISH; s->rate = 0; s->dur = atof(t + 4);
        } else if (!strncmp(t, "rate", 4) && strchr(t, ':')) {
            s->kind = S_PUBLISH; s->rate = atof(t + 4); s->dur = atof(strchr(t, ':') + 1);
            if (s->rate <= 0) { fprintf(stderr, "loadgen: bad step %s\n", t); exit(4); }
        } else {
            fprintf(stderr, "loadgen: bad plan step %s\n", t);
            exit(4);
        }
    }
    free(copy);
    if (!n_clients) { fprintf(stderr, "loadgen: the plan connects no clients\n"); exit(4); }
}

static void print_step(int i) {
    step *s = &steps[i];
    double win = (s->p1.t - s->p0.t) / 1e6;
    double gen = s->p1.self - s->p0.self, srv = s->p1.server - s->p0.server;
    double sbusy = frac(s->p1.sbusy, s->p0.sbusy, s->p1.stot, s->p0.stot);
    double gbusy = frac(s->p1.gbusy, s->p0.gbusy, s->p1.gtot, s->p0.gtot);
    printf("{\"event\":\"step\",\"index\":%d,", i);
    if (s->kind == S_CONNECT) {
        int got = s->subs;
        printf("\"kind\":\"connect\",\"target\":%d,\"clients\":%d,\"seconds\":%.4f,\"per_sec\":%.1f,"
               "\"p50_ms\":%.3f,\"p99_ms\":%.3f,\"gen_cpu_s\":%.4f,\"gen_us_per_connect\":%.2f,"
               "\"server_cpu_s\":%.4f,\"server_us_per_connect\":%.2f,\"server_core_busy\":%.3f,\"gen_core_busy\":%.3f}\n",
               s->target, got, win, s->lat.count && win > 0 ? s->lat.count / win : 0.0,
               hpct(&s->lat, 50) / 1000.0, hpct(&s->lat, 99) / 1000.0,
               gen, s->lat.count ? gen * 1e6 / s->lat.count : 0.0,
               srv, (s->lat.count && n_server_pids) ? srv * 1e6 / s->lat.count : 0.0, sbusy, gbusy);
    } else if (s->kind == S_PUBLISH) {
        uint64_t d = s->d1 - s->d0;
        printf("\"kind\":\"publish\",\"rate\":%.2f,\"subscribers\":%d,\"events\":%lld,\"window_seconds\":%.4f,"
               "\"window_events\":%lld,\"window_deliveries\":%llu,\"deliveries_per_sec\":%.1f,"
               "\"lat_p50_ms\":%.3f,\"lat_p99_ms\":%.3f,\"lat_max_ms\":%.3f,\"lat_samples\":%llu,"
               "\"gen_cpu_s\":%.4f,\"gen_us_per_delivery\":%.3f,\"server_cpu_s\":%.4f,\"server_us_per_delivery\":%.3f,"
               "\"server_util\":%.3f,\"server_core_busy\":%.3f,\"gen_core_busy\":%.3f,\"late_sends\":%lld,\"drained\":%s}\n",
               s->rate, s->subs, (long long)(s->seq_last - s->seq_first), win,
               (long long)(s->seq_m1 - s->seq_m0), (unsigned long long)d, win > 0 ? d / win : 0.0,
               hpct(&s->lat, 50) / 1000.0, hpct(&s->lat, 99) / 1000.0, s->lat.max / 1000.0,
               (unsigned long long)s->lat.count,
               gen, d ? gen * 1e6 / d : 0.0, srv, (d && n_server_pids) ? srv * 1e6 / d : 0.0,
               (win > 0 && n_server_pids) ? srv / win : -1.0, sbusy, gbusy, (long long)s->late,
               s->drained ? "true" : "false");
    } else if (s->kind == S_RECONNECT) {
        double took = s->t_last_ready > s->t_first_close ? (s->t_last_ready - s->t_first_close) / 1e6 : 0.0;
        printf("\"kind\":\"reconnect\",\"target\":%d,\"clients\":%d,\"reconnected\":%d,\"seconds\":%.4f,"
               "\"p50_ms\":%.3f,\"p99_ms\":%.3f,\"retries\":%lld,\"gen_cpu_s\":%.4f}\n",
               s->target, s->subs, n_reconnected, took, hpct(&s->lat, 50) / 1000.0, hpct(&s->lat, 99) / 1000.0,
               (long long)s->retries, gen);
    } else {
        printf("\"kind\":\"wait\"}\n");
    }
    if (opt_detail && s->kind == S_PUBLISH) { /* per event: first and last receive after ts, ms */
        printf("{\"event\":\"detail\",\"index\":%d,\"events\":[", i);
        for (int64_t q = s->seq_first; q < s->seq_last; q++)
            printf("%s[%lld,%.2f,%.2f,%u]", q > s->seq_first ? "," : "", (long long)q,
                   (seq_first_rx[q] - seq_ts[q]) / 1000.0, (seq_last_rx[q] - seq_ts[q]) / 1000.0, seq_count[q]);
        printf("]}\n");
    }
    fflush(stdout);
}

static void load_tokens(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) die("open tokens");
    size_t cap = 1024;
    tok_user = malloc(cap * sizeof(char *));
    tok_token = malloc(cap * sizeof(char *));
    char *line = NULL; size_t ll = 0; ssize_t r;
    while ((r = getline(&line, &ll, f)) > 0) {
        while (r > 0 && (line[r - 1] == '\n' || line[r - 1] == '\r')) line[--r] = 0;
        char *sp = strchr(line, ' ');
        if (!sp) continue;
        *sp = 0;
        if ((size_t)n_tokens == cap) {
            cap *= 2;
            tok_user = xrealloc(tok_user, cap * sizeof(char *));
            tok_token = xrealloc(tok_token, cap * sizeof(char *));
        }
        tok_user[n_tokens] = strdup(line);
        tok_token[n_tokens] = strdup(sp + 1);
        n_tokens++;
    }
    free(line);
    fclose(f);
    if (n_tokens == 0) { fprintf(stderr, "loadgen: no tokens in %s\n", path); exit(4); }
}

static void usage(void) {
    fprintf(stderr,
        "usage: loadgen --port P --tokens FILE --plan STEPS [options]\n"
        "  STEPS: comma list of c<N> | w | max:<seconds> | rate<events/s>:<seconds>\n"
        "  --channel notifications|post  --post ID  --api-secret KEY  --inflight K (200)\n"
        "  --window W (8)  --publishers P (2)  --warmup S (1)  --settle S (0.5)  --drain S (15)\n"
        "  --max-events E (20000)  --deadline S (300)  --hold S (120)\n"
        "  --server-pids a,b  --server-cpu N  --gen-cpu N  --path /ws\n"
        "  --no-deflate  --no-delack  --coalesce-us U (100)  --detail (per-event latency line)  -v\n"
        "  tokens file: one \"<userId> <jwt>\" per line; client i uses line i\n");
    exit(4);
}

static volatile sig_atomic_t got_signal = 0;
static void on_signal(int s) { (void)s; got_signal = 1; }

int main(int argc, char **argv) {
    static struct option lo[] = {
        {"host", 1, 0, 'H'}, {"port", 1, 0, 'p'}, {"tokens", 1, 0, 't'}, {"plan", 1, 0, 'L'},
        {"inflight", 1, 0, 'k'}, {"channel", 1, 0, 'c'}, {"post", 1, 0, 'P'}, {"api-secret", 1, 0, 'a'},
        {"window", 1, 0, 'w'}, {"publishers", 1, 0, 'u'}, {"warmup", 1, 0, 'W'}, {"settle", 1, 0, 's'},
        {"drain", 1, 0, 'D'}, {"max-events", 1, 0, 'E'}, {"deadline", 1, 0, 'T'}, {"hold", 1, 0, 'h'},
        {"server-pids", 1, 0, 'S'}, {"server-cpu", 1, 0, 'X'}, {"gen-cpu", 1, 0, 'Y'}, {"path", 1, 0, 'q'},
        {"no-deflate", 0, 0, 'z'}, {"no-delack", 0, 0, 'A'}, {"coalesce-us", 1, 0, 'C'}, {"detail", 0, 0, 'G'},
        {"verbose", 0, 0, 'v'}, {0, 0, 0, 0}};
    int o;
    while ((o = getopt_long(argc, argv, "v", lo, NULL)) != -1) {
        switch (o) {
        case 'H': opt_host = optarg; break;
        case 'p': opt_port = atoi(optarg); break;
        case 't': opt_tokens = optarg; break;
        case 'L': opt_plan = optarg; break;
        case 'k': opt_inflight = atoi(optarg); break;
        case 'c': opt_channel = optarg; break;
        case 'P': opt_post = optarg; break;
        case 'a': opt_api_secret = optarg; break;
        case 'w': opt_window = atoi(optarg); break;
        case 'u': opt_publishers = atoi(optarg); break;
        case 'W': opt_warmup = atof(optarg); break;
        case 's': opt_settle = atof(optarg); break;
        case 'D': opt_drain = atof(optarg); break;
        case 'E': opt_max_events = atoi(optarg); break;
        case 'T': opt_deadline = atof(optarg); break;
        case 'h': opt_hold = atof(optarg); break;
        case 'S': opt_server_pids = optarg; break;
        case 'X': opt_server_cpu = atoi(optarg); break;
        case 'Y': opt_gen_cpu = atoi(optarg); break;
        case 'q': opt_path = optarg; break;
        case 'z': opt_deflate_offer = 0; break;
        case 'A': opt_delack = 0; break;
        case 'C': opt_coalesce_us = atoi(optarg); break;
        case 'G': opt_detail = 1; break;
        case 'v': opt_verbose = 1; break;
        default: usage();
        }
    }
    if (!opt_port || !opt_tokens || !opt_plan) usage();
    if (strcmp(opt_host, "127.0.0.1")) { fprintf(stderr, "loadgen: only 127.0.0.1 is a valid target\n"); exit(4); }
    if (strcmp(opt_channel, "post") && strcmp(opt_channel, "notifications")) usage();
    parse_plan(opt_plan);
    for (char *s = (char *)opt_server_pids; *s && n_server_pids < 64;) {
        server_pids[n_server_pids++] = (int)strtol(s, &s, 10);
        while (*s == ',') s++;
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    rng_state ^= (uint64_t)now_us() * 2654435761ULL ^ (uint64_t)getpid();

    load_tokens(opt_tokens);
    if (n_tokens < n_clients) {
        fprintf(stderr, "loadgen: %d tokens for %d clients (one user per client)\n", n_tokens, n_clients);
        exit(4);
    }
    memset(&srv_addr, 0, sizeof srv_addr);
    srv_addr.sin_family = AF_INET;
    srv_addr.sin_port = htons((uint16_t)opt_port);
    inet_pton(AF_INET, opt_host, &srv_addr.sin_addr);

    ep = epoll_create1(EPOLL_CLOEXEC);
    conns = calloc((size_t)n_clients, sizeof(conn));
    rq = calloc((size_t)n_clients, sizeof(int));
    size_t words = ((size_t)opt_max_events + 63) / 64;
    uint64_t *bitmaps = calloc((size_t)n_clients * words, 8);
    seq_count = calloc((size_t)opt_max_events, sizeof(uint32_t));
    if (opt_detail) {
        seq_ts = calloc((size_t)opt_max_events, sizeof(int64_t));
        seq_first_rx = calloc((size_t)opt_max_events, sizeof(int64_t));
        seq_last_rx = calloc((size_t)opt_max_events, sizeof(int64_t));
    }
    pubs = calloc((size_t)opt_publishers, sizeof(pubconn));
    if (!conns || !bitmaps || !seq_count || !pubs) { fprintf(stderr, "loadgen: allocation failed\n"); exit(4); }
    for (int i = 0; i < n_clients; i++) {
        conns[i].fd = -1;
        conns[i].idx = i;
        conns[i].last_seq = -1;
        conns[i].seen = bitmaps + (size_t)i * words;
    }

    struct { int kind; } stdin_tag = { K_STDIN };
    int stdin_open = 1, stdin_watched = 0, stdin_cmd = 0; /* cmd: 1 NEXT, 2 STOP */
    enum { P_START, P_SETTLE, P_WARMUP, P_MEASURE, P_DRAIN, P_GRACE, P_RUN, P_CLOSE, P_DONE };
    int si = -1, sub = P_START, pubs_started = 0, deadline_hit = 0;
    int64_t t0 = now_us(), deadline = t0 + (int64_t)(opt_deadline * 1e6);
    int64_t sub_end = 0, next_sched = 0, interval = 0, close_end = 0;
    struct epoll_event evs[1024];
    int last_batch = 0;

    for (;;) {
        int64_t now = now_us();
        if (sub != P_CLOSE && sub != P_DONE) {
            if (got_signal) { add_error("interrupted by a signal"); sub = P_CLOSE; close_end = 0; }
            else if (now > deadline) {
                deadline_hit = 1;
                add_error("deadline of %.0f s passed in step %d (ready %d, events completed %lld of %lld)",
                          opt_deadline, si, n_ready, (long long)completed, (long long)next_seq);
                sub = P_CLOSE; close_end = 0;
            } else if (n_failed_conn > 0) {
                sub = P_CLOSE; close_end = 0; /* a refused or dropped client ends the run */
            }
        }
        /* ---- step machine ---- */
        if (sub == P_START) {
            if (si >= 0) print_step(si);
            si++;
            if (si >= n_steps) { sub = P_CLOSE; close_end = 0; }
            else {
                cur = &steps[si];
                sub = P_RUN;
                if (cur->kind == S_CONNECT) take_probe(&cur->p0);
                else if (cur->kind == S_RECONNECT) {
                    take_probe(&cur->p0);
                    cur->target = n_ready;
                    reconnect_mode = 1;
                }
                else if (cur->kind == S_WAIT) {
                    printf("{\"event\":\"wait\",\"index\":%d,\"clients\":%d,\"pmd\":%llu}\n", si, n_ready,
                           (unsigned long long)n_pmd);
                    fflush(stdout);
                    sub_end = now + (int64_t)(opt_hold * 1e6);
                    stdin_cmd = 0;
                    if (!stdin_open) { sub = P_CLOSE; close_end = 0; }
                    else if (!stdin_watched) { ep_mod(0, &stdin_tag, EPOLLIN, EPOLL_CTL_ADD); stdin_watched = 1; }
                } else {
                    if (!pubs_started) { for (int i = 0; i < opt_publishers; i++) pub_connect(&pubs[i]); pubs_started = 1; }
                    sub = P_SETTLE;
                    sub_end = now + (int64_t)(opt_settle * 1e6);
                }
            }
        }
        if (sub == P_RUN && cur->kind == S_CONNECT) {
            while (n_inflight < opt_inflight && next_to_start < cur->target) start_client(&conns[next_to_start++]);
            if (next_to_start >= cur->target && n_inflight == 0) {
                take_probe(&cur->p1);
                cur->subs = n_ready;
                sub = P_START;
            }
        }
        if (sub == P_RUN && cur->kind == S_RECONNECT) {
            while (n_inflight < opt_inflight && rq_len > 0) {
                conn *c = &conns[rq[rq_head]];
                if (c->due > now) break;
                rq_head = (rq_head + 1) % n_clients;
                rq_len--;
                start_client(c);
            }
            if (n_reconnected >= cur->target && rq_len == 0 && n_inflight == 0) {
                take_probe(&cur->p1);
                cur->subs = n_ready;
                reconnect_mode = 0;
                sub = P_START;
            }
        }
        if (sub == P_RUN && cur->kind == S_WAIT) {
            if (stdin_cmd == 1) sub = P_START;
            else if (stdin_cmd == 2 || !stdin_open || now >= sub_end) { print_step(si); sub = P_CLOSE; close_end = 0; }
        }
        if (sub == P_SETTLE && now >= sub_end) {
            int ready_pubs = 0;
            for (int i = 0; i < opt_publishers; i++) ready_pubs += pubs[i].state == 2;
            if (ready_pubs > 0) {
                subs_due = cur->subs = n_ready;
                cur->seq_first = next_seq;
                sub = P_WARMUP;
                sub_end = now + (int64_t)(opt_warmup * 1e6);
                if (cur->rate > 0) { interval = (int64_t)(1e6 / cur->rate); next_sched = now; }
            }
        }
        if (sub == P_WARMUP && now >= sub_end) {
            sub = P_MEASURE;
            sub_end = now + (int64_t)(cur->dur * 1e6);
            take_probe(&cur->p0);
            cur->d0 = total_deliveries;
            cur->seq_m0 = next_seq;
        }
        if (sub == P_MEASURE && (now >= sub_end || next_seq >= opt_max_events)) {
            take_probe(&cur->p1);
            cur->d1 = total_deliveries;
            cur->seq_m1 = next_seq;
            if (next_seq >= opt_max_events) fprintf(stderr, "loadgen: --max-events reached, window shortened\n");
            sub = P_DRAIN;
            sub_end = now + (int64_t)(opt_drain * 1e6);
        }
        if (sub == P_WARMUP || sub == P_MEASURE) {
            for (int i = 0; i < opt_publishers; i++) {
                pubconn *p = &pubs[i];
                if (p->state != 2 || next_seq >= opt_max_events) continue;
                if (cur->rate > 0) {
                    if (now < next_sched) break;
                    if (now - next_sched > 2000) cur->late++;
                    pub_send(p, next_sched);
                    next_sched += interval;
                } else {
                    if (next_seq - completed >= opt_window) break;
                    pub_send(p, now_us());
                }
            }
        }
        if (sub == P_DRAIN) {
            int busy = 0;
            for (int i = 0; i < opt_publishers; i++) busy |= pubs[i].state == 3 || pubs[i].state == 1;
            if (completed == next_seq && !busy) { cur->drained = 1; sub = P_GRACE; sub_end = now + 200000; }
            else if (now >= sub_end) {
                add_error("step %d: %lld of %lld events not received by every subscriber %.0f s after publishing stopped",
                          si, (long long)(next_seq - completed), (long long)(next_seq - cur->seq_first), opt_drain);
                sub = P_GRACE; sub_end = now;
            }
        }
        if (sub == P_GRACE && now >= sub_end) { /* a late duplicate still counts */
            cur->seq_last = next_seq;
            sub = cur->drained ? P_START : P_CLOSE;
            if (!cur->drained) { print_step(si); close_end = 0; }
        }
        if (sub == P_CLOSE) {
            if (close_end == 0) {
                closing = 1;
                for (int i = 0; i < opt_publishers; i++) if (pubs[i].state) { close(pubs[i].fd); pubs[i].state = 0; }
                for (int i = 0; i < n_clients; i++) {
                    conn *c = &conns[i];
                    if (c->fd < 0) continue;
                    if (c->state == ST_READY || c->state == ST_WAIT_SUBSCRIBED || c->state == ST_WAIT_CONNECTED) {
                        uint8_t code[2] = { 0x03, 0xe8 }; /* 1000 */
                        send_frame(c, 0x8, code, 2);
                        c->state = ST_CLOSING;
                    } else {
                        c->state = ST_CLOSED;
                        conn_close_fd(c);
                    }
                }
                close_end = now + 5000000;
            }
            if (n_open == 0 || now >= close_end) {
                for (int i = 0; i < n_clients; i++) if (conns[i].fd >= 0) conn_close_fd(&conns[i]);
                break;
            }
        }

        /* ---- wait for sockets ---- */
        int timeout = 50;
        if ((sub == P_WARMUP || sub == P_MEASURE) && cur->rate > 0) {
            int64_t d = next_sched - now_us();
            timeout = d <= 0 ? 0 : (int)((d + 999) / 1000);
            if (timeout > 50) timeout = 50;
        }
        if (opt_coalesce_us > 0 && last_batch > 0 && last_batch < 256 && timeout > 0) {
            /* let readiness pile up a little: fewer wake-ups, each serving more sockets */
            struct timespec ts = { 0, opt_coalesce_us * 1000L };
            nanosleep(&ts, NULL);
        }
        int n = epoll_wait(ep, evs, 1024, timeout);
        if (n < 0) { if (errno == EINTR) continue; die("epoll_wait"); }
        last_batch = n;
        for (int i = 0; i < n; i++) {
            int kind = *(int *)evs[i].data.ptr;
            if (kind == K_CLIENT) {
                conn *c = evs[i].data.ptr;
                if (c->fd >= 0) on_client_event(c, evs[i].events);
            } else if (kind == K_PUB) {
                pubconn *p = evs[i].data.ptr;
                if (p->state) on_pub_event(p, evs[i].events);
            } else if (kind == K_STDIN) {
                char b[256];
                ssize_t r = read(0, b, sizeof b);
                if (r <= 0) { stdin_open = 0; epoll_ctl(ep, EPOLL_CTL_DEL, 0, NULL); stdin_watched = 0; }
                else if (memmem(b, (size_t)r, "STOP", 4)) stdin_cmd = 2;
                else if (memmem(b, (size_t)r, "NEXT", 4)) stdin_cmd = 1;
            }
        }
    }

    /* ---- verdict: every due event exactly once on every client ---- */
    long missing = 0, dups = 0, short_clients = 0;
    for (int i = 0; i < n_clients; i++) {
        conn *c = &conns[i];
        dups += c->dups;
        if (!c->was_ready || c->state == ST_FAILED) continue; /* a failed client is an error already */
        int64_t due = next_seq - c->first_seq;
        if ((int64_t)c->received < due) { missing += (long)(due - c->received); short_clients++; }
    }
    if (missing) add_error("%ld deliveries missing on %ld clients", missing, short_clients);
    if (dups) add_error("%ld duplicate deliveries", dups);
    if (acked != next_seq) add_error("%lld of %lld publishes answered 202", (long long)acked, (long long)next_seq);
    int ok = n_errors == 0 && !deadline_hit;
    printf("{\"event\":\"result\",\"ok\":%s,\"clients\":%d,\"ready_at_end\":%d,\"failed_clients\":%d,"
           "\"events_published\":%lld,\"events_acked\":%lld,\"events_completed\":%lld,\"deliveries\":%llu,"
           "\"missing\":%ld,\"duplicates\":%ld,\"unknown_seq\":%llu,\"out_of_order\":%llu,"
           "\"pmd_negotiated\":%llu,\"compressed_frames\":%llu,\"server_pings\":%llu,\"other_msgs\":%llu,"
           "\"gen_cpu_total_s\":%.4f,\"seconds\":%.3f,\"errors_total\":%ld,\"errors\":[",
           ok ? "true" : "false", n_clients, n_ready, n_failed_conn,
           (long long)next_seq, (long long)acked, (long long)completed, (unsigned long long)total_deliveries,
           missing, dups, (unsigned long long)n_unknown_seq, (unsigned long long)n_out_of_order,
           (unsigned long long)n_pmd, (unsigned long long)n_compressed_frames,
           (unsigned long long)n_pings, (unsigned long long)n_other_msgs,
           self_cpu_s(), (now_us() - t0) / 1e6, n_errors);
    for (int i = 0; i < n_err_keep; i++) { if (i) putchar(','); json_str(stdout, err_keep[i]); }
    printf("]}\n");
    fflush(stdout);
    if (!ok) fprintf(stderr, "loadgen: FAILED with %ld error(s)\n", n_errors);
    return ok ? 0 : 2;
}

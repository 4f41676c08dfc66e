/*
 * A hostile blkfront of Keel's own, run inside a Linux guest on Keel (tests/tests/guest_hostile.rs).
 *
 * Linux's xen-blkfront is not loaded in this guest, so the guest's first VBD is left to this
 * program. It connects to the backend as a frontend does, with the guest kernel's user
 * interfaces to Xen:
 *   /dev/xen/xenbus (or /proc/xen/xenbus)  xenstore reads and writes (xsd_sockmsg framing)
 *   /dev/xen/gntalloc                      pages granted to the backend's domain
 *   /dev/xen/evtchn                        an unbound port for the backend to bind
 * then sends one bad request at a time and prints the response's status, and finally moves
 * the producer index far ahead of the ring and prints the backend's state and `error` node.
 *
 * Every line it prints starts with "keel-hostile: " so the test finds it in Keel's log of the
 * guest's console. Layouts are Xen's public io/blkif.h and io/ring.h (x86_64 ABI).
 *
 * Built by the test harness with `gcc -static -O2` (tests/src/guest.rs).
 */
#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <linux/types.h>
typedef __u16 domid_t; /* the uapi header uses it without defining it */
#include <xen/evtchn.h>
#include <xen/gntalloc.h>

#define PAGE 4096

/* xenstore wire protocol (io/xs_wire.h) */
struct xsd_sockmsg {
    uint32_t type, req_id, tx_id, len;
};
enum { XS_DIRECTORY = 1, XS_READ = 2, XS_WRITE = 11, XS_ERROR = 16 };

/* blkif (io/blkif.h), x86_64 layout */
enum { OP_READ = 0, OP_WRITE = 1, OP_INDIRECT = 6, OP_UNKNOWN = 0x7f };
#define SRING_HEADER 64   /* req_prod, req_event, rsp_prod, rsp_event, pvt, __pad[44] */
#define SLOT_SIZE 112     /* sizeof(union blkif_sring_entry) */
#define RING_SIZE 32      /* rounddown_pow2((4096 - 64) / 112) */
#define MAX_SEGMENTS 11

struct sring {
    volatile uint32_t req_prod, req_event, rsp_prod, rsp_event;
};

static int xs_fd = -1;
static uint32_t xs_req_id;

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
    va_list ap;
    printf("keel-hostile: ");
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    fflush(stdout);
}

static void die(const char *what)
{
    say("failed %s: %s", what, strerror(errno));
    exit(1);
}

static int read_full(int fd, void *buf, size_t len)
{
    size_t got = 0;
    while (got < len) {
        ssize_t n = read(fd, (char *)buf + got, len - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        got += (size_t)n;
    }
    return 0;
}

/*
 * One xenstore request: `a` then NUL, then `b` (a write's value, no NUL) if given. The reply's
 * payload goes to `out` (NUL-terminated). Returns the payload length, or -1 on XS_ERROR.
 */
static int xs_request(uint32_t type, const char *a, const char *b, char *out, size_t out_len)
{
    char msg[sizeof(struct xsd_sockmsg) + 4096];
    struct xsd_sockmsg h = { type, ++xs_req_id, 0, 0 };
    size_t al = strlen(a) + 1, bl = b ? strlen(b) : 0;
    if (al + bl > 4096) {
        errno = E2BIG;
        return -1;
    }
    h.len = (uint32_t)(al + bl);
    memcpy(msg, &h, sizeof h);
    memcpy(msg + sizeof h, a, al);
    if (b)
        memcpy(msg + sizeof h + al, b, bl);
    if (write(xs_fd, msg, sizeof h + h.len) != (ssize_t)(sizeof h + h.len))
        die("xenstore write");
    for (;;) {
        struct xsd_sockmsg r;
        char body[4096];
        if (read_full(xs_fd, &r, sizeof r) || r.len > sizeof body || read_full(xs_fd, body, r.len))
            die("xenstore read");
        if (r.req_id != h.req_id)
            continue; /* a watch event or a stale reply: not ours */
        if (r.type == XS_ERROR)
            return -1;
        size_t n = r.len < out_len - 1 ? r.len : out_len - 1;
        memcpy(out, body, n);
        out[n] = 0;
        return (int)r.len;
    }
}

static int xs_read(const char *path, char *out, size_t out_len)
{
    return xs_request(XS_READ, path, NULL, out, out_len);
}

static void xs_write(const char *path, const char *value)
{
    char ignored[64];
    if (xs_request(XS_WRITE, path, value, ignored, sizeof ignored) < 0)
        die(path);
}

static long xs_read_long(const char *path, long missing)
{
    char v[64];
    if (xs_read(path, v, sizeof v) < 0)
        return missing;
    return strtol(v, NULL, 10);
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

/* Waits until `path` reads as one of the states in [lo, hi]; returns the state, or -1. */
static long wait_state(const char *path, long lo, long hi, double seconds)
{
    double end = now() + seconds;
    long s = -1;
    while (now() < end) {
        s = xs_read_long(path, -1);
        if (s >= lo && s <= hi)
            return s;
        usleep(100 * 1000);
    }
    return -s - 100; /* never in range: the last state seen, encoded below -1 */
}

static int gnt_fd, evt_fd;
static unsigned int port;

/* Grants one page to `domid`; maps it if `map`; returns the grant reference. */
static uint32_t grant(uint16_t domid, void **map)
{
    struct ioctl_gntalloc_alloc_gref a = { 0 };
    a.domid = domid;
    a.flags = GNTALLOC_FLAG_WRITABLE;
    a.count = 1;
    if (ioctl(gnt_fd, IOCTL_GNTALLOC_ALLOC_GREF, &a))
        die("gntalloc");
    if (map) {
        *map = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, gnt_fd, (off_t)a.index);
        if (*map == MAP_FAILED)
            die("mmap of a granted page");
        memset(*map, 0, PAGE);
    } else {
        /* Unmapped and deallocated at once: the grant is ended, the reference revoked. */
        struct ioctl_gntalloc_dealloc_gref d = { .index = a.index, .count = 1 };
        if (ioctl(gnt_fd, IOCTL_GNTALLOC_DEALLOC_GREF, &d))
            die("gntalloc dealloc");
    }
    return a.gref_ids[0];
}

static void notify(void)
{
    struct ioctl_evtchn_notify n = { .port = port };
    if (ioctl(evt_fd, IOCTL_EVTCHN_NOTIFY, &n))
        die("evtchn notify");
}

static struct sring *ring;
/* The data page every segment names: filled with 0xa5 before each request, so that a
 * response shows whether the backend wrote into it. */
static uint8_t *data_page;

/* "untouched" (still all 0xa5), "zeros" (all zero: a read of unwritten VDI blocks), or
 * "changed". */
static const char *page_state(void)
{
    int untouched = 1, zeros = 1;
    for (int i = 0; i < PAGE; i++) {
        untouched &= data_page[i] == 0xa5;
        zeros &= data_page[i] == 0;
    }
    return untouched ? "untouched" : zeros ? "zeros" : "changed";
}
static uint32_t req_prod, rsp_cons;
static uint64_t next_id = 1;

static uint8_t *slot(uint32_t i)
{
    return (uint8_t *)ring + SRING_HEADER + (i % RING_SIZE) * SLOT_SIZE;
}

struct seg {
    uint32_t gref;
    uint8_t first, last;
};

/* Writes a direct request into the next slot (nr_segments as given, at most 11 laid out). */
static uint64_t put_request(uint8_t op, uint8_t nr_segments, uint64_t sector, const struct seg *segs, int nsegs)
{
    uint8_t b[SLOT_SIZE] = { 0 };
    uint64_t id = next_id++;
    b[0] = op;
    b[1] = nr_segments;
    memcpy(b + 8, &id, 8);
    memcpy(b + 16, &sector, 8);
    for (int i = 0; i < nsegs && i < MAX_SEGMENTS; i++) {
        memcpy(b + 24 + 8 * i, &segs[i].gref, 4);
        b[24 + 8 * i + 4] = segs[i].first;
        b[24 + 8 * i + 5] = segs[i].last;
    }
    memcpy(slot(req_prod), b, SLOT_SIZE);
    return id;
}

/* Whether exchange() prints each case (the first round) or only tallies (the repeats). */
static int verbose = 1;
/* Responses of the repeats that were not what the first round's checks demand: a control
 * read answered 0 with zeros, every other case -1 or -2 with the data page untouched. */
static unsigned long requests, unexpected;

/* Publishes the request, notifies, waits for its response; prints and returns the status
 * (or 1000 when no response came). */
static int exchange(const char *name, uint64_t id)
{
    memset(data_page, 0xa5, PAGE);
    __sync_synchronize();
    req_prod++;
    ring->req_prod = req_prod;
    __sync_synchronize();
    notify();
    double end = now() + 30;
    while (now() < end) {
        __sync_synchronize();
        if (ring->rsp_prod != rsp_cons) {
            uint8_t *r = slot(rsp_cons);
            uint64_t rid;
            int16_t status;
            memcpy(&rid, r, 8);
            memcpy(&status, r + 10, 2);
            uint8_t op = r[8];
            rsp_cons++;
            ring->rsp_event = rsp_cons + 1;
            const char *page = page_state();
            int control = strncmp(name, "control", 7) == 0;
            int expected = control ? status == 0 && strcmp(page, "zeros") == 0
                                   : (status == -1 || status == -2) && strcmp(page, "untouched") == 0;
            requests++;
            unexpected += !expected || rid != id;
            if (verbose || !expected)
                say("case %s id=%llu response id=%llu op=%u status=%d page=%s", name,
                    (unsigned long long)id, (unsigned long long)rid, op, status, page);
            return status;
        }
        usleep(1000);
    }
    say("case %s id=%llu no-response", name, (unsigned long long)id);
    requests++;
    unexpected++;
    return 1000;
}

static uint32_t ring_ref, data_ref, foreign_ref, revoked_ref;
static uint64_t sectors;

/* One round of every case: a good read, each bad request, a good read again. */
static void run_cases(void)
{
    struct seg ok = { data_ref, 0, 7 };
    /* The control: a well-formed read answers 0 (the layouts above are right). */
    exchange("control-read", put_request(OP_READ, 1, 0, &ok, 1));

    struct seg bad;
    bad = (struct seg){ 0x7ff0, 0, 7 };
    exchange("never-granted-ref", put_request(OP_READ, 1, 0, &bad, 1));
    bad = (struct seg){ ring_ref + 300, 0, 7 };
    exchange("unused-ref", put_request(OP_WRITE, 1, 0, &bad, 1));
    bad = (struct seg){ foreign_ref, 0, 7 };
    exchange("ref-granted-to-another-domain", put_request(OP_READ, 1, 0, &bad, 1));
    bad = (struct seg){ revoked_ref, 0, 7 };
    exchange("revoked-ref", put_request(OP_WRITE, 1, 0, &bad, 1));
    bad = (struct seg){ data_ref, 5, 2 };
    exchange("first-sect-after-last", put_request(OP_READ, 1, 0, &bad, 1));
    bad = (struct seg){ data_ref, 0, 8 };
    exchange("last-sect-past-page", put_request(OP_READ, 1, 0, &bad, 1));
    struct seg many[MAX_SEGMENTS];
    for (int i = 0; i < MAX_SEGMENTS; i++)
        many[i] = ok;
    exchange("too-many-segments", put_request(OP_READ, MAX_SEGMENTS + 1, 0, many, MAX_SEGMENTS));
    exchange("no-segments", put_request(OP_WRITE, 0, 0, NULL, 0));
    exchange("sector-at-end", put_request(OP_READ, 1, sectors, &ok, 1));
    exchange("range-across-end", put_request(OP_WRITE, 1, sectors - 4, &ok, 1));
    exchange("sector-overflow", put_request(OP_READ, 1, UINT64_MAX - 3, &ok, 1));
    exchange("unknown-op", put_request(OP_UNKNOWN, 1, 0, &ok, 1));
    /* An indirect read whose indirect page is a reference never granted. */
    {
        uint8_t b[SLOT_SIZE] = { 0 };
        uint64_t id = next_id++;
        uint16_t nseg = 8;
        uint32_t page = 0x7ff0;
        b[0] = OP_INDIRECT;
        b[1] = OP_READ;
        memcpy(b + 2, &nseg, 2);
        memcpy(b + 8, &id, 8);
        memcpy(b + 28, &page, 4);
        memcpy(slot(req_prod), b, SLOT_SIZE);
        exchange("indirect-page-never-granted", id);
    }
    /* The control again: the device is still up after all of that. */
    exchange("control-read-after", put_request(OP_READ, 1, 0, &ok, 1));
}

/* A full ring at once: good reads and never-granted reads alternating, published together
 * with one notification; every answer is checked by id (good 0, bad -1). Returns how many were
 * not. */
static unsigned long flood(void)
{
    struct seg ok = { data_ref, 0, 7 }, bad = { 0x7ff0, 0, 7 };
    uint64_t first = next_id;
    unsigned long wrong = 0, got = 0;
    for (int i = 0; i < RING_SIZE; i++) {
        put_request(OP_READ, 1, (uint64_t)i * 8, i % 2 ? &bad : &ok, 1);
        req_prod++;
    }
    __sync_synchronize();
    ring->req_prod = req_prod;
    __sync_synchronize();
    notify();
    double end = now() + 30;
    while (got < RING_SIZE && now() < end) {
        __sync_synchronize();
        if (ring->rsp_prod == rsp_cons) {
            usleep(1000);
            continue;
        }
        uint8_t *r = slot(rsp_cons);
        uint64_t rid;
        int16_t status;
        memcpy(&rid, r, 8);
        memcpy(&status, r + 10, 2);
        rsp_cons++;
        ring->rsp_event = rsp_cons + 1;
        got++;
        int good = rid >= first && rid < first + RING_SIZE && (rid - first) % 2 == 0;
        int bad_one = rid >= first && rid < first + RING_SIZE && (rid - first) % 2 == 1;
        if (!(good && status == 0) && !(bad_one && status == -1))
            wrong++;
    }
    return wrong + (RING_SIZE - got);
}

/* Whether the test said the repeats may end: it hot-plugs a second disk into this guest once
 * the other guest's disk work is done, so `dir` (this guest's device/vbd) lists two entries. */
static int told_to_stop(const char *dir)
{
    char v[256];
    int n = xs_request(XS_DIRECTORY, dir, NULL, v, sizeof v);
    int entries = 0;
    for (int i = 0; i < n && i < (int)sizeof v - 1; i++)
        if (v[i] == 0)
            entries++;
    return entries > 1;
}

/* `keel_hostile_seconds=N` on the kernel command line: the longest time to keep repeating the
 * cases (while another guest works beside this one) before the runaway index, unless the test
 * says stop earlier (told_to_stop); 0 if absent. */
static long repeat_seconds(void)
{
    char line[1024] = "";
    FILE *f = fopen("/proc/cmdline", "r");
    if (f) {
        if (!fgets(line, sizeof line, f))
            line[0] = 0;
        fclose(f);
    }
    char *w = strstr(line, "keel_hostile_seconds=");
    return w ? strtol(w + strlen("keel_hostile_seconds="), NULL, 10) : 0;
}

int main(void)
{
    char v[256], fe[320], be[256], path[512], vbd_dir[128];

    xs_fd = open("/dev/xen/xenbus", O_RDWR);
    if (xs_fd < 0)
        xs_fd = open("/proc/xen/xenbus", O_RDWR);
    if (xs_fd < 0)
        die("opening xenbus");
    long domid = xs_read_long("domid", -1);
    if (domid < 0)
        die("reading domid");
    snprintf(vbd_dir, sizeof vbd_dir, "/local/domain/%ld/device/vbd", domid);
    int n = xs_request(XS_DIRECTORY, vbd_dir, NULL, v, sizeof v);
    if (n <= 0) {
        say("no vbd in device/vbd");
        return 1;
    }
    snprintf(fe, sizeof fe, "/local/domain/%ld/device/vbd/%s", domid, v);
    snprintf(path, sizeof path, "%s/backend", fe);
    if (xs_read(path, be, sizeof be) < 0)
        die("reading the backend path");
    snprintf(path, sizeof path, "%s/backend-id", fe);
    long beid = xs_read_long(path, -1);
    say("domain %ld frontend %s backend %s (domain %ld)", domid, fe, be, beid);

    char be_state[320], fe_state[340];
    snprintf(be_state, sizeof be_state, "%s/state", be);
    snprintf(fe_state, sizeof fe_state, "%s/state", fe);
    long s = wait_state(be_state, 2, 2, 60);
    if (s != 2) {
        say("backend never reached InitWait (state %ld)", -s - 100);
        return 1;
    }
    snprintf(path, sizeof path, "%s/sectors", be);
    if (xs_read(path, v, sizeof v) < 0)
        die("reading sectors");
    sectors = strtoull(v, NULL, 10);

    gnt_fd = open("/dev/xen/gntalloc", O_RDWR);
    if (gnt_fd < 0)
        die("opening /dev/xen/gntalloc");
    evt_fd = open("/dev/xen/evtchn", O_RDWR);
    if (evt_fd < 0)
        die("opening /dev/xen/evtchn");

    void *ring_page, *data;
    ring_ref = grant((uint16_t)beid, &ring_page);
    data_ref = grant((uint16_t)beid, &data);
    /* A page this guest grants to a domain other than the backend's. */
    uint16_t other = (uint16_t)(domid > 1 ? domid - 1 : domid + 1);
    if (other == beid)
        other = (uint16_t)(domid + 1);
    void *other_page;
    foreign_ref = grant(other, &other_page);
    revoked_ref = grant((uint16_t)beid, NULL);

    struct ioctl_evtchn_bind_unbound_port bind = { .remote_domain = (unsigned int)beid };
    int p = ioctl(evt_fd, IOCTL_EVTCHN_BIND_UNBOUND_PORT, &bind);
    if (p < 0)
        die("binding an unbound port");
    port = (unsigned int)p;

    ring = ring_page;
    data_page = data;
    ring->req_event = 1;
    ring->rsp_event = 1;

    snprintf(path, sizeof path, "%s/ring-ref", fe);
    snprintf(v, sizeof v, "%u", ring_ref);
    xs_write(path, v);
    snprintf(path, sizeof path, "%s/event-channel", fe);
    snprintf(v, sizeof v, "%u", port);
    xs_write(path, v);
    snprintf(path, sizeof path, "%s/protocol", fe);
    xs_write(path, "x86_64-abi");
    xs_write(fe_state, "3");
    s = wait_state(be_state, 4, 6, 60);
    if (s != 4) {
        say("backend did not connect (state %ld)", s < -1 ? -s - 100 : s);
        return 1;
    }
    say("connected ring-ref=%u event-channel=%u sectors=%llu data-ref=%u foreign-ref=%u (to domain %u) revoked-ref=%u",
        ring_ref, port, (unsigned long long)sectors, data_ref, foreign_ref, other, revoked_ref);
    xs_write(fe_state, "4");

    run_cases();
    long seconds = repeat_seconds();
    if (seconds > 0) {
        /* A steady trickle of the same bad requests while another guest works. */
        verbose = 0;
        unsigned long rounds = 0, first = requests, was = unexpected, flood_wrong = 0;
        double end = now() + (double)seconds;
        int stopped = 0;
        say("repeating the cases for at most %ld s", seconds);
        while (now() < end && !(stopped = told_to_stop(vbd_dir))) {
            run_cases();
            flood_wrong += flood();
            rounds++;
            usleep(200 * 1000);
        }
        say("case repeats rounds=%lu requests=%lu unexpected=%lu ended-by=%s", rounds,
            requests - first, unexpected - was, stopped ? "hot-plug" : "time");
        say("case floods rounds=%lu requests=%lu unexpected=%lu", rounds,
            rounds * RING_SIZE, flood_wrong);
    }
    struct seg ok = { data_ref, 0, 7 };

    /* The runaway producer index: far more than a ring ahead of the responses. */
    __sync_synchronize();
    ring->req_prod = req_prod + 1000;
    __sync_synchronize();
    notify();
    s = wait_state(be_state, 5, 6, 30);
    char error[256] = "";
    snprintf(path, sizeof path, "%s/error", be);
    if (xs_read(path, error, sizeof error) < 0)
        strcpy(error, "(none)");
    for (char *c = error; *c; c++)
        if (*c == '\n')
            *c = ' ';
    say("case runaway-producer state=%ld error=%s", s < -1 ? -s - 100 : s, error);

    /* Requests after the disconnect are never read: no response comes. */
    uint32_t before = ring->rsp_prod;
    ring->req_prod = req_prod; /* back to a sane index, then one more request */
    put_request(OP_READ, 1, 0, &ok, 1);
    __sync_synchronize();
    ring->req_prod = req_prod + 1;
    __sync_synchronize();
    notify();
    sleep(2); /* a connected backend answers within milliseconds */
    say("case after-disconnect responses=%u", ring->rsp_prod - before);
    xs_write(fe_state, "6");
    say("done");
    return 0;
}

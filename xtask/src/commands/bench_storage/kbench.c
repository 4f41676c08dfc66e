/*
 * The Linux side of `cargo xtask bench storage`: the same workloads as Keel's
 * `keel_repositories::bench` (same order, block sizes, queue depths, op counts and offsets
 * from the same xorshift64 generator), with O_DIRECT and Linux AIO on a block device.
 *
 * usage: kbench DEVICE NAME [SEQ_BLOCK]
 * prints: bench-storage: NAME PATTERN bs=B qd=Q ops=N ns=T   (one line per workload)
 *
 * SEQ_BLOCK (bytes, a multiple of 4096 dividing the table's sequential bytes) makes the
 * sequential workloads use requests of that size, moving the same bytes in fewer requests
 * (`cargo xtask bench guest-disk` asks for 1 MiB; `bench storage` gives none).
 *
 * The environment variable KBENCH_OPS_DIVISOR=N (N dividing every workload's op count after
 * resizing) runs each workload for 1/N of its ops, the same offsets' first 1/N: a shorter
 * run where time is scarce (`cargo xtask bench guests` runs it on two stacks).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/aio_abi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define REGION (64ull << 20)
#define SEED 0x9e3779b97f4a7c15ull

struct workload {
    const char *name;
    int write;
    int random;
    unsigned block;
    unsigned depth;
    unsigned ops;
};

/* Keep in step with keel_repositories::bench::standard_workloads. */
static const struct workload WORKLOADS[] = {
    {"seq-write", 1, 0, 512 << 10, 1, 512},
    {"seq-write", 1, 0, 512 << 10, 32, 1024},
    {"seq-read", 0, 0, 512 << 10, 1, 512},
    {"seq-read", 0, 0, 512 << 10, 32, 1024},
    {"rand-write", 1, 1, 4096, 1, 8000},
    {"rand-write", 1, 1, 4096, 32, 32000},
    {"rand-read", 0, 1, 4096, 1, 8000},
    {"rand-read", 0, 1, 4096, 32, 32000},
};

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

struct offsets {
    uint64_t state;
    uint64_t next_seq;
};

static uint64_t next_offset(struct offsets *o, const struct workload *w) {
    uint64_t blocks = REGION / w->block;
    if (!w->random) {
        uint64_t at = o->next_seq % blocks;
        o->next_seq++;
        return at * w->block;
    }
    o->state ^= o->state << 13;
    o->state ^= o->state >> 7;
    o->state ^= o->state << 17;
    return (o->state % blocks) * w->block;
}

static int run(int fd, const char *name, const struct workload *w) {
    aio_context_t ctx = 0;
    if (syscall(SYS_io_setup, w->depth, &ctx) < 0) {
        perror("io_setup");
        return 1;
    }
    struct iocb *cbs = calloc(w->depth, sizeof(struct iocb));
    struct iocb **free_cbs = calloc(w->depth, sizeof(struct iocb *));
    struct io_event *events = calloc(w->depth, sizeof(struct io_event));
    unsigned nfree = 0;
    for (unsigned i = 0; i < w->depth; i++) {
        void *buf;
        if (posix_memalign(&buf, 4096, w->block)) {
            return 1;
        }
        memset(buf, (int)(i ^ 0x5a), w->block);
        cbs[i].aio_fildes = (uint32_t)fd;
        cbs[i].aio_lio_opcode = w->write ? IOCB_CMD_PWRITE : IOCB_CMD_PREAD;
        cbs[i].aio_buf = (uint64_t)(uintptr_t)buf;
        cbs[i].aio_nbytes = w->block;
        free_cbs[nfree++] = &cbs[i];
    }
    struct offsets o = {SEED, 0};
    unsigned issued = 0, done = 0;
    uint64_t start = now_ns();
    while (done < w->ops) {
        unsigned batch = 0;
        struct iocb *submit[64];
        while (issued + batch < w->ops && nfree > 0 && batch < 64) {
            struct iocb *cb = free_cbs[--nfree];
            cb->aio_offset = (int64_t)next_offset(&o, w);
            submit[batch++] = cb;
        }
        if (batch > 0) {
            long n = syscall(SYS_io_submit, ctx, (long)batch, submit);
            if (n != (long)batch) {
                perror("io_submit");
                return 1;
            }
            issued += batch;
        }
        long got = syscall(SYS_io_getevents, ctx, 1L, (long)w->depth, events, NULL);
        if (got < 0) {
            perror("io_getevents");
            return 1;
        }
        for (long i = 0; i < got; i++) {
            if (events[i].res != (int64_t)w->block) {
                fprintf(stderr, "short or failed I/O: %lld\n", (long long)events[i].res);
                return 1;
            }
            free_cbs[nfree++] = (struct iocb *)(uintptr_t)events[i].obj;
            done++;
        }
    }
    uint64_t ns = now_ns() - start;
    printf("bench-storage: %s %s bs=%u qd=%u ops=%u ns=%llu\n", name, w->name, w->block,
           w->depth, done, (unsigned long long)ns);
    fflush(stdout);
    syscall(SYS_io_destroy, ctx);
    /* Freed before the next workload: a guest of 128 MiB holds one QD32 set of 1 MiB
     * buffers, not two. */
    for (unsigned i = 0; i < w->depth; i++) {
        free((void *)(uintptr_t)cbs[i].aio_buf);
    }
    free(cbs);
    free(free_cbs);
    free(events);
    return 0;
}

/* The workload with its sequential requests resized to seq_block bytes (0: as listed),
 * the same bytes moved; 0 if seq_block cannot carry them. */
static int resized(const struct workload *w, unsigned long seq_block, struct workload *out) {
    *out = *w;
    if (w->random || seq_block == 0) {
        return 1;
    }
    unsigned long long bytes = (unsigned long long)w->block * w->ops;
    if (seq_block % 4096 != 0 || seq_block > REGION || bytes % seq_block != 0) {
        return 0;
    }
    out->block = (unsigned)seq_block;
    out->ops = (unsigned)(bytes / seq_block);
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 3 && argc != 4) {
        fprintf(stderr, "usage: kbench DEVICE NAME [SEQ_BLOCK]\n");
        return 2;
    }
    unsigned long seq_block = 0;
    if (argc == 4) {
        char *end;
        seq_block = strtoul(argv[3], &end, 10);
        if (*end != '\0' || seq_block == 0) {
            fprintf(stderr, "kbench: SEQ_BLOCK must be a byte count: %s\n", argv[3]);
            return 2;
        }
    }
    unsigned long divisor = 1;
    const char *divisor_text = getenv("KBENCH_OPS_DIVISOR");
    if (divisor_text != NULL) {
        char *end;
        divisor = strtoul(divisor_text, &end, 10);
        if (*end != '\0' || divisor == 0) {
            fprintf(stderr, "kbench: KBENCH_OPS_DIVISOR must be a count: %s\n", divisor_text);
            return 2;
        }
    }
    int fd = open(argv[1], O_RDWR | O_DIRECT);
    if (fd < 0) {
        perror(argv[1]);
        return 1;
    }
    for (size_t i = 0; i < sizeof(WORKLOADS) / sizeof(WORKLOADS[0]); i++) {
        struct workload w;
        if (!resized(&WORKLOADS[i], seq_block, &w)) {
            fprintf(stderr, "kbench: %lu-byte requests cannot move %s's bytes\n", seq_block,
                    WORKLOADS[i].name);
            return 2;
        }
        if (w.ops % divisor != 0) {
            fprintf(stderr, "kbench: %u ops of %s do not divide by %lu\n", w.ops, w.name,
                    divisor);
            return 2;
        }
        w.ops /= (unsigned)divisor;
        if (run(fd, argv[2], &w)) {
            return 1;
        }
    }
    return 0;
}

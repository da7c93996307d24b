/* fuse-probe: the fastest a FUSE file under a loop device can be on this
   kernel, measured apart from the store (make bench: bench-fuse-ceiling.sh).

   A FUSE file system with one file, "vol", whose reads and writes go to a
   regular file (page-cached, like the store's block objects) with pread/pwrite:
   no store, no Swift, no libfuse, nothing but the round trip. The same request
   handling runs over one of two transports:
     classic  N threads read(2) requests from /dev/fuse and writev(2) replies
              (what libfuse does, minus splice);
     uring    one io_uring per CPU, entries registered with
              FUSE_IO_URING_CMD_REGISTER and answered with
              FUSE_IO_URING_CMD_COMMIT_AND_FETCH (needs
              /sys/module/fuse/parameters/enable_uring = Y).
   scripts/bench-fuse-ceiling.sh builds it, puts a loop device on the file
   (direct I/O, as archip does) and runs fio on both. PROBE_CACHED=1 opens the
   file with the kernel's page cache instead (FOPEN_KEEP_CACHE; for a loop
   device without direct I/O): what a cached design would reach.

   usage: fuse-probe MOUNTPOINT BACKING_FILE classic|uring [THREADS]
   Runs until the mount point is unmounted. Root only. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/fuse.h>
#include <liburing.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysinfo.h>
#include <sys/uio.h>
#include <unistd.h>

/* FUSE 7.42's io_uring ABI (not in Debian 12's <linux/fuse.h>). */
#define PROBE_FUSE_OVER_IO_URING (1ULL << 41)
#define PROBE_URING_HDR_SZ 128
#define PROBE_URING_OP_SZ 128
struct probe_uring_ent_in_out {
    uint64_t flags;
    uint64_t commit_id;
    uint32_t payload_sz;
    uint32_t padding;
    uint64_t reserved;
};
struct probe_uring_req_header {
    char in_out[PROBE_URING_HDR_SZ];
    char op_in[PROBE_URING_OP_SZ];
    struct probe_uring_ent_in_out ent;
};
enum { PROBE_CMD_REGISTER = 1, PROBE_CMD_COMMIT_AND_FETCH = 2 };
struct probe_uring_cmd_req {
    uint64_t flags;
    uint64_t commit_id;
    uint16_t qid;
    uint8_t padding[6];
};

#define MAX_PAYLOAD (1024 * 1024)
#define VOL_INO 2

static int devfd = -1;
static int backing = -1;
static uint64_t vol_size;
static int use_uring;

static void fill_attr(uint64_t ino, struct fuse_attr *a) {
    memset(a, 0, sizeof *a);
    a->ino = ino;
    if (ino == FUSE_ROOT_ID) {
        a->mode = S_IFDIR | 0700;
        a->nlink = 2;
    } else {
        a->mode = S_IFREG | 0600;
        a->nlink = 1;
        a->size = vol_size;
        a->blocks = vol_size / 512;
        a->blksize = 4096;
    }
}

/* Handles one request. `op` is the opcode's fixed-size argument, `rest` what
   follows it (a name, write data). The reply's arguments go to `out`
   (capacity MAX_PAYLOAD); returns their length, or -errno; -ENOSYS... as
   errors; 1 << 30 means "no reply" (FORGET). */
#define NO_REPLY (1 << 30)
static int handle(const struct fuse_in_header *in, const void *op, const void *rest, size_t restlen, char *out) {
    switch (in->opcode) {
    case FUSE_LOOKUP: {
        if (in->nodeid != FUSE_ROOT_ID || restlen < 4 || strcmp((const char *)rest, "vol") != 0) return -ENOENT;
        struct fuse_entry_out *e = (void *)out;
        memset(e, 0, sizeof *e);
        e->nodeid = VOL_INO;
        e->entry_valid = 3600;
        fill_attr(VOL_INO, &e->attr);
        return sizeof *e;
    }
    case FUSE_FORGET: case FUSE_BATCH_FORGET: return NO_REPLY;
    case FUSE_GETATTR: {
        struct fuse_attr_out *a = (void *)out;
        memset(a, 0, sizeof *a);
        fill_attr(in->nodeid, &a->attr);
        return sizeof *a;
    }
    case FUSE_OPEN: case FUSE_OPENDIR: {
        struct fuse_open_out *o = (void *)out;
        memset(o, 0, sizeof *o);
        /* PROBE_CACHED=1: the kernel's page cache over the file (loop without direct I/O reads it). */
        if (in->opcode == FUSE_OPEN) o->open_flags = getenv("PROBE_CACHED") ? FOPEN_KEEP_CACHE : FOPEN_DIRECT_IO;
        return sizeof *o;
    }
    case FUSE_READ: {
        const struct fuse_read_in *r = op;
        uint64_t off = r->offset;
        size_t len = r->size > MAX_PAYLOAD ? MAX_PAYLOAD : r->size;
        if (off >= vol_size) return 0;
        if (off + len > vol_size) len = vol_size - off;
        ssize_t n = pread(backing, out, len, (off_t)off);
        return n < 0 ? -errno : (int)n;
    }
    case FUSE_WRITE: {
        const struct fuse_write_in *w = op;
        if (restlen < w->size) return -EINVAL;
        ssize_t n = pwrite(backing, rest, w->size, (off_t)w->offset);
        if (n < 0) return -errno;
        struct fuse_write_out *o = (void *)out;
        memset(o, 0, sizeof *o);
        o->size = (uint32_t)n;
        return sizeof *o;
    }
    case FUSE_FSYNC: return fdatasync(backing) == 0 ? 0 : -errno;
    case FUSE_FLUSH: case FUSE_RELEASE: case FUSE_RELEASEDIR: case FUSE_ACCESS: return 0;
    case FUSE_STATFS: {
        struct fuse_statfs_out *s = (void *)out;
        memset(s, 0, sizeof *s);
        s->st.bsize = 4096;
        s->st.namelen = 255;
        return sizeof *s;
    }
    case FUSE_INTERRUPT: return NO_REPLY;
    case FUSE_DESTROY: return 0;
    default: return -ENOSYS;
    }
}

/* The fixed argument size of the opcodes handle() reads one for. */
static size_t op_size(uint32_t opcode) {
    switch (opcode) {
    case FUSE_READ: return sizeof(struct fuse_read_in);
    case FUSE_WRITE: return sizeof(struct fuse_write_in);
    default: return 0; /* handled without looking (or a name in `rest`) */
    }
}

/* ---- classic transport ---- */

static void *classic_thread(void *arg) {
    (void)arg;
    size_t cap = MAX_PAYLOAD + 4096;
    char *buf = malloc(cap), *out = malloc(MAX_PAYLOAD);
    for (;;) {
        ssize_t n = read(devfd, buf, cap);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN || errno == ENOENT) continue;
            break; /* ENODEV: unmounted */
        }
        const struct fuse_in_header *in = (void *)buf;
        size_t osz = op_size(in->opcode);
        const char *op = buf + sizeof *in;
        /* LOOKUP and friends: in the classic transport too, the name follows the header. */
        int r = handle(in, op, op + osz, (size_t)n - sizeof *in - osz, out);
        if (r == NO_REPLY) continue;
        struct fuse_out_header oh = {.unique = in->unique};
        struct iovec iov[2] = {{&oh, sizeof oh}, {out, r > 0 ? (size_t)r : 0}};
        oh.error = r < 0 ? r : 0;
        oh.len = (uint32_t)(sizeof oh + iov[1].iov_len);
        if (writev(devfd, iov, 2) < 0 && errno == ENODEV) break;
    }
    return NULL;
}

/* ---- io_uring transport ---- */

struct ent {
    struct probe_uring_req_header *hdr;
    char *payload;
    struct iovec iov[2];
};

struct queue {
    int qid, depth;
    struct io_uring ring;
    struct ent *ents;
};

static void prep_cmd(struct queue *q, struct ent *e, uint32_t cmd, uint64_t commit_id) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(&q->ring);
    if (!sqe) { fprintf(stderr, "probe: no free SQE\n"); abort(); }
    memset(sqe, 0, 128);
    sqe->opcode = IORING_OP_URING_CMD;
    sqe->flags = IOSQE_FIXED_FILE;
    sqe->fd = 0;
    sqe->cmd_op = cmd;
    io_uring_sqe_set_data(sqe, e);
    if (cmd == PROBE_CMD_REGISTER) {
        sqe->addr = (uint64_t)(uintptr_t)e->iov;
        sqe->len = 2;
    }
    struct probe_uring_cmd_req *req = (void *)sqe->cmd;
    req->qid = (uint16_t)q->qid;
    req->commit_id = commit_id;
}

static void *uring_thread(void *arg) {
    struct queue *q = arg;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(q->qid, &set);
    sched_setaffinity(0, sizeof set, &set);
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    p.flags = IORING_SETUP_SQE128 | IORING_SETUP_CQSIZE;
    p.cq_entries = (unsigned)q->depth * 2;
    int r = io_uring_queue_init_params((unsigned)q->depth, &q->ring, &p);
    if (r < 0) { fprintf(stderr, "probe: io_uring_queue_init: %s\n", strerror(-r)); exit(1); }
    r = io_uring_register_files(&q->ring, &devfd, 1);
    if (r < 0) { fprintf(stderr, "probe: register_files: %s\n", strerror(-r)); exit(1); }
    q->ents = calloc((size_t)q->depth, sizeof *q->ents);
    for (int i = 0; i < q->depth; i++) {
        struct ent *e = &q->ents[i];
        e->hdr = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        e->payload = mmap(NULL, MAX_PAYLOAD, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        e->iov[0] = (struct iovec){e->hdr, sizeof *e->hdr};
        e->iov[1] = (struct iovec){e->payload, MAX_PAYLOAD};
        prep_cmd(q, e, PROBE_CMD_REGISTER, 0);
    }
    io_uring_submit(&q->ring);
    char *out = malloc(MAX_PAYLOAD);
    for (;;) {
        struct io_uring_cqe *cqe;
        r = io_uring_submit_and_wait(&q->ring, 1);
        if (r < 0 && r != -EINTR) { fprintf(stderr, "probe: q%d wait: %s\n", q->qid, strerror(-r)); break; }
        unsigned head, seen = 0;
        int stop = 0;
        io_uring_for_each_cqe(&q->ring, head, cqe) {
            seen++;
            struct ent *e = io_uring_cqe_get_data(cqe);
            if (cqe->res < 0) {
                if (cqe->res != -ENOTCONN) fprintf(stderr, "probe: q%d cqe: %s\n", q->qid, strerror(-cqe->res));
                stop = 1;
                continue;
            }
            const struct fuse_in_header *in = (void *)e->hdr->in_out;
            uint64_t commit = e->hdr->ent.commit_id;
            /* READ replies straight into the payload buffer; others via out. */
            int res;
            if (in->opcode == FUSE_READ) res = handle(in, e->hdr->op_in, e->payload, e->hdr->ent.payload_sz, e->payload);
            else {
                res = handle(in, e->hdr->op_in, e->payload, e->hdr->ent.payload_sz, out);
                if (res > 0) memcpy(e->payload, out, (size_t)res);
            }
            struct fuse_out_header *oh = (void *)e->hdr->in_out;
            uint64_t unique = in->unique;
            memset(oh, 0, sizeof *oh);
            oh->unique = unique;
            oh->error = res < 0 ? res : 0;
            e->hdr->ent.payload_sz = res > 0 ? (uint32_t)res : 0;
            prep_cmd(q, e, PROBE_CMD_COMMIT_AND_FETCH, commit);
        }
        io_uring_cq_advance(&q->ring, seen);
        if (stop) break;
    }
    return NULL;
}

static int init_handshake(void) {
    char buf[8192];
    ssize_t n = read(devfd, buf, sizeof buf);
    if (n < 0) { perror("probe: read INIT"); return -1; }
    struct fuse_in_header *in = (void *)buf;
    struct fuse_init_in *ii = (void *)(buf + sizeof *in);
    if (in->opcode != FUSE_INIT) { fprintf(stderr, "probe: first request %u is not INIT\n", in->opcode); return -1; }
    uint64_t kflags = ii->flags | ((uint64_t)ii->flags2 << 32);
    struct {
        struct fuse_out_header h;
        struct fuse_init_out o;
    } rep;
    memset(&rep, 0, sizeof rep);
    rep.h.unique = in->unique;
    rep.h.len = sizeof rep;
    rep.o.major = FUSE_KERNEL_VERSION;
    rep.o.minor = 42;
    rep.o.max_readahead = ii->max_readahead;
    uint64_t want = FUSE_ASYNC_READ | FUSE_BIG_WRITES | FUSE_ASYNC_DIO | FUSE_MAX_PAGES | FUSE_INIT_EXT |
                    FUSE_PARALLEL_DIROPS;
    if (use_uring) {
        if (!(kflags & PROBE_FUSE_OVER_IO_URING)) {
            fprintf(stderr, "probe: the kernel does not offer FUSE over io_uring (enable_uring?)\n");
            return -1;
        }
        want |= PROBE_FUSE_OVER_IO_URING;
    }
    want &= kflags;
    rep.o.flags = (uint32_t)want;
    rep.o.flags2 = (uint32_t)(want >> 32);
    rep.o.max_background = 64;
    rep.o.congestion_threshold = 48;
    rep.o.max_write = MAX_PAYLOAD;
    rep.o.max_pages = MAX_PAYLOAD / 4096;
    rep.o.time_gran = 1;
    if (write(devfd, &rep, sizeof rep) < 0) { perror("probe: INIT reply"); return -1; }
    fprintf(stderr, "probe: kernel FUSE %u.%u, transport %s\n", ii->major, ii->minor, use_uring ? "uring" : "classic");
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: %s MOUNTPOINT BACKING_FILE classic|uring [THREADS]\n", argv[0]); return 2; }
    use_uring = strcmp(argv[3], "uring") == 0;
    int threads = argc > 4 ? atoi(argv[4]) : 8;
    backing = open(argv[2], O_RDWR | O_CLOEXEC);
    if (backing < 0) { perror(argv[2]); return 1; }
    struct stat st;
    fstat(backing, &st);
    vol_size = (uint64_t)st.st_size;
    devfd = open("/dev/fuse", O_RDWR | O_CLOEXEC);
    if (devfd < 0) { perror("/dev/fuse"); return 1; }
    char opts[256];
    snprintf(opts, sizeof opts, "fd=%d,rootmode=40000,user_id=0,group_id=0,allow_other", devfd);
    if (mount("probe", argv[1], "fuse.probe", MS_NOSUID | MS_NODEV, opts) != 0) { perror("mount"); return 1; }
    if (init_handshake() != 0) { umount2(argv[1], MNT_DETACH); return 1; }
    pthread_t t[64];
    int nclassic = use_uring ? 1 : threads;
    for (int i = 0; i < nclassic; i++) pthread_create(&t[i], NULL, classic_thread, NULL);
    if (use_uring) {
        int nq = get_nprocs_conf();
        for (int i = 0; i < nq; i++) {
            struct queue *q = calloc(1, sizeof *q);
            q->qid = i;
            q->depth = threads;
            pthread_t u;
            pthread_create(&u, NULL, uring_thread, q);
        }
    }
    printf("ready\n");
    fflush(stdout);
    pthread_join(t[0], NULL);
    return 0;
}

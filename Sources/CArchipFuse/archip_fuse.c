#define _GNU_SOURCE
#define FUSE_USE_VERSION 314
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/sendfile.h>
#include <sys/uio.h>
#include <sys/socket.h>
#include <time.h>
#include <fuse.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <linux/loop.h>
#include <linux/nbd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/mount.h>
#include <sched.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "archip_fuse.h"

struct archip_fuse {
    struct fuse *fuse;
    struct archip_fuse_callbacks cb;
    char path[256]; /* "/<filename>" */
    int mounted;
};

static struct archip_fuse *self(void) { return (struct archip_fuse *)fuse_get_context()->private_data; }

/* A spliced reply is sent by libfuse after read_buf returns, so the pieces'
   descriptors must stay open past it: each serving thread keeps the last
   reply's `keep` and releases it at its next read (by then that reply has
   gone out: the thread sends it before taking another request) or when the
   thread ends. */
struct pending_release {
    struct archip_fuse *f;
    void *keep;
};
static pthread_key_t pending_key;
static pthread_once_t pending_once = PTHREAD_ONCE_INIT;

static void release_pending(void *p) {
    struct pending_release *r = p;
    if (r && r->keep) {
        r->f->cb.release(r->f->cb.ctx, r->keep);
        r->keep = NULL;
    }
}

static void thread_ended(void *p) {
    release_pending(p);
    free(p);
}

static void make_pending_key(void) { (void)pthread_key_create(&pending_key, thread_ended); }

static struct pending_release *pending(void) {
    pthread_once(&pending_once, make_pending_key);
    struct pending_release *r = pthread_getspecific(pending_key);
    if (!r) {
        r = calloc(1, sizeof *r);
        if (r) pthread_setspecific(pending_key, r);
    }
    return r;
}

static void *af_init(struct fuse_conn_info *conn, struct fuse_config *cfg) {
    /* read/write/fsync come with the open file: no path lookup per request. */
    cfg->nullpath_ok = 1;
    /* Read replies spliced from the block objects' page cache (read_buf). */
    if (conn->capable & FUSE_CAP_SPLICE_WRITE) conn->want |= FUSE_CAP_SPLICE_WRITE;
    if (conn->capable & FUSE_CAP_SPLICE_MOVE) conn->want |= FUSE_CAP_SPLICE_MOVE;
    /* The loop device keeps its queue's requests in flight as asynchronous
       direct I/O; the kernel's default (12 background requests, congested at
       9) holds them back at fio's queue depth of 16. */
    conn->max_background = 64;
    conn->congestion_threshold = 48;
    return fuse_get_context()->private_data;
}

/* Every callback takes whatever libfuse passes: with nullpath_ok a path may be
   NULL (libfuse 3 passes NULL to readdir of an opened directory; a NULL path
   once killed the daemon and every volume it served), and any path the kernel
   resolves under the mount may arrive. The file system holds "/" and one file;
   everything else is ENOENT, and nothing the caller sends can crash the daemon. */
static int is_root(const char *path) { return path == NULL || strcmp(path, "/") == 0; }
static int is_file(const char *path) { return path != NULL && strcmp(path, self()->path) == 0; }

static int af_getattr(const char *path, struct stat *st, struct fuse_file_info *fi) {
    struct archip_fuse *f = self();
    memset(st, 0, sizeof *st);
    if (path == NULL && fi == NULL) return -ENOENT;
    if (path != NULL && is_root(path)) {
        st->st_mode = S_IFDIR | 0700;
        st->st_nlink = 2;
        return 0;
    }
    if (path != NULL && !is_file(path)) return -ENOENT;
    st->st_mode = S_IFREG | (f->cb.readonly ? 0400 : 0600);
    st->st_nlink = 1;
    st->st_size = (off_t)f->cb.size(f->cb.ctx);
    st->st_blksize = 4096;
    st->st_blocks = st->st_size / 512;
    return 0;
}

static int af_readdir(const char *path, void *buf, fuse_fill_dir_t fill, off_t off, struct fuse_file_info *fi,
                      enum fuse_readdir_flags flags) {
    (void)off; (void)fi; (void)flags;
    /* The only directory is the root: an opened directory (NULL path) is it. */
    if (!is_root(path)) return -ENOTDIR;
    if (fill == NULL || buf == NULL) return -EINVAL;
    fill(buf, ".", NULL, 0, 0);
    fill(buf, "..", NULL, 0, 0);
    fill(buf, self()->path + 1, NULL, 0, 0);
    return 0;
}

static int af_opendir(const char *path, struct fuse_file_info *fi) {
    (void)fi;
    return is_root(path) ? 0 : -ENOTDIR;
}

static int af_statfs(const char *path, struct statvfs *st) {
    (void)path;
    if (st == NULL) return -EINVAL;
    struct archip_fuse *f = self();
    memset(st, 0, sizeof *st);
    st->f_bsize = 4096;
    st->f_frsize = 4096;
    st->f_blocks = f->cb.size(f->cb.ctx) / 4096;
    st->f_files = 2;
    st->f_namemax = 255;
    return 0;
}

static int af_open(const char *path, struct fuse_file_info *fi) {
    struct archip_fuse *f = self();
    if (is_root(path) && path != NULL) return -EISDIR;
    if (!is_file(path)) return -ENOENT;
    if (fi == NULL) return -EINVAL;
    if (f->cb.readonly && (fi->flags & O_ACCMODE) != O_RDONLY) return -EROFS;
    /* The store has its own cache; the page cache on top would hold every block twice. */
    fi->direct_io = 1;
    fi->keep_cache = 0;
    return 0;
}

static int af_read(const char *path, char *buf, size_t len, off_t off, struct fuse_file_info *fi) {
    (void)path; (void)fi;
    struct archip_fuse *f = self();
    uint64_t size = f->cb.size(f->cb.ctx);
    if ((uint64_t)off >= size) return 0;
    if ((uint64_t)off + len > size) len = size - (uint64_t)off;
    int r = f->cb.read(f->cb.ctx, buf, len, (uint64_t)off);
    return r < 0 ? r : (int)len;
}

static int af_read_buf(const char *path, struct fuse_bufvec **bufp, size_t len, off_t off, struct fuse_file_info *fi) {
    (void)path; (void)fi;
    struct archip_fuse *f = self();
    struct pending_release *pr = pending();
    if (pr) release_pending(pr);
    uint64_t size = f->cb.size(f->cb.ctx);
    if ((uint64_t)off >= size) len = 0;
    else if ((uint64_t)off + len > size) len = size - (uint64_t)off;

    /* libfuse copies replies under two pages instead of splicing them; so do we. */
    enum { MAX_PIECES = 16 };
    if (len >= 8192 && f->cb.read_pieces && pr) {
        struct archip_piece pieces[MAX_PIECES];
        void *keep = NULL;
        int n = f->cb.read_pieces(f->cb.ctx, len, (uint64_t)off, pieces, MAX_PIECES, &keep);
        if (n < 0) return n;
        if (n > 0) {
            struct fuse_bufvec *bv = calloc(1, sizeof *bv + (size_t)(n - 1) * sizeof(struct fuse_buf));
            if (!bv) { f->cb.release(f->cb.ctx, keep); return -ENOMEM; }
            bv->count = (size_t)n;
            for (int i = 0; i < n; i++) {
                struct fuse_buf *b = &bv->buf[i];
                b->size = pieces[i].len;
                if (pieces[i].fd >= 0) {
                    b->flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
                    b->fd = pieces[i].fd;
                    b->pos = (off_t)pieces[i].off;
                } else {
                    /* A hole: zeros, nothing read (calloc of large sizes maps zero pages). */
                    b->mem = calloc(1, pieces[i].len);
                    if (!b->mem) {
                        for (int j = 0; j < i; j++) if (!(bv->buf[j].flags & FUSE_BUF_IS_FD)) free(bv->buf[j].mem);
                        free(bv);
                        f->cb.release(f->cb.ctx, keep);
                        return -ENOMEM;
                    }
                }
            }
            pr->f = f;
            pr->keep = keep;
            *bufp = bv;
            return 0;
        }
    }
    struct fuse_bufvec *bv = calloc(1, sizeof *bv);
    if (!bv) return -ENOMEM;
    bv->count = 1;
    bv->buf[0].size = len;
    if (len > 0) {
        bv->buf[0].mem = malloc(len);
        if (!bv->buf[0].mem) { free(bv); return -ENOMEM; }
        int r = f->cb.read(f->cb.ctx, bv->buf[0].mem, len, (uint64_t)off);
        if (r < 0) { free(bv->buf[0].mem); free(bv); return r; }
    }
    *bufp = bv;
    return 0;
}

static int af_write(const char *path, const char *buf, size_t len, off_t off, struct fuse_file_info *fi) {
    (void)path; (void)fi;
    struct archip_fuse *f = self();
    if (f->cb.readonly) return -EROFS;
    uint64_t size = f->cb.size(f->cb.ctx);
    if ((uint64_t)off >= size) return -ENOSPC;
    if ((uint64_t)off + len > size) len = size - (uint64_t)off;
    int r = f->cb.write(f->cb.ctx, buf, len, (uint64_t)off);
    return r < 0 ? r : (int)len;
}

static int af_fsync(const char *path, int datasync, struct fuse_file_info *fi) {
    (void)path; (void)datasync; (void)fi;
    struct archip_fuse *f = self();
    return f->cb.readonly ? 0 : f->cb.flush(f->cb.ctx);
}

static int af_flush(const char *path, struct fuse_file_info *fi) {
    /* close(): nothing to do; durability is fsync's job. */
    (void)path; (void)fi;
    return 0;
}

static int af_fallocate(const char *path, int mode, off_t off, off_t len, struct fuse_file_info *fi) {
    (void)path; (void)fi;
    struct archip_fuse *f = self();
    if (f->cb.readonly) return -EROFS;
    uint64_t size = f->cb.size(f->cb.ctx);
    if ((uint64_t)off >= size) return 0;
    if ((uint64_t)(off + len) > size) len = (off_t)(size - (uint64_t)off);
    if (mode & FALLOC_FL_PUNCH_HOLE) return f->cb.trim(f->cb.ctx, (uint64_t)off, (uint64_t)len);
    if (mode & FALLOC_FL_ZERO_RANGE) return f->cb.trim(f->cb.ctx, (uint64_t)off, (uint64_t)len);
    if (mode == 0) return 0; /* thin: space is allocated on write */
    return -EOPNOTSUPP;
}

static int af_truncate(const char *path, off_t size, struct fuse_file_info *fi) {
    if (fi == NULL && !is_file(path)) return is_root(path) ? -EISDIR : -ENOENT;
    /* The size is the volume's; resize the volume instead. Opening with O_TRUNC
       at the same size is harmless. */
    return (uint64_t)size == self()->cb.size(self()->cb.ctx) ? 0 : -EPERM;
}

static const struct fuse_operations ops = {
    .init = af_init,
    .getattr = af_getattr,
    .readdir = af_readdir,
    .opendir = af_opendir,
    .statfs = af_statfs,
    .open = af_open,
    .read = af_read,
    .read_buf = af_read_buf,
    .write = af_write,
    .fsync = af_fsync,
    .flush = af_flush,
    .fallocate = af_fallocate,
    .truncate = af_truncate,
};

struct archip_fuse *archip_fuse_mount(const char *mountpoint, const char *filename, const char *fsname,
                                      struct archip_fuse_callbacks cb, char *err, size_t errlen) {
    struct archip_fuse *f = calloc(1, sizeof *f);
    if (!f) { snprintf(err, errlen, "out of memory"); return NULL; }
    f->cb = cb;
    snprintf(f->path, sizeof f->path, "/%s", filename);
    char opt[512];
    /* attr_timeout=0: a grow must reach the kernel's idea of the file's size
       (the loop driver reads it at LOOP_SET_CAPACITY) at the next stat, not a
       second later. Data I/O is direct and does not ask for attributes. */
    snprintf(opt, sizeof opt, "fsname=%s,subtype=archip,default_permissions,attr_timeout=0%s", fsname,
             cb.readonly ? ",ro" : "");
    char *argv[] = {"archip-serve", "-o", opt, NULL};
    struct fuse_args args = FUSE_ARGS_INIT(3, argv);
    f->fuse = fuse_new(&args, &ops, sizeof ops, f);
    if (!f->fuse) {
        snprintf(err, errlen, "fuse_new failed (is /dev/fuse there?)");
        free(f);
        return NULL;
    }
    if (fuse_mount(f->fuse, mountpoint) != 0) {
        snprintf(err, errlen, "cannot mount FUSE at %s", mountpoint);
        fuse_destroy(f->fuse);
        free(f);
        return NULL;
    }
    f->mounted = 1;
    return f;
}

int archip_fuse_run(struct archip_fuse *f, int threads) {
    struct fuse_loop_config *cfg = fuse_loop_cfg_create();
    if (!cfg) return -ENOMEM;
    fuse_loop_cfg_set_max_threads(cfg, (unsigned)threads);
    /* Keep every worker: with fewer idle threads allowed than the loop device
       keeps requests in flight, libfuse ends and starts a thread per burst
       (measured: ~1 400 threads created a second under 4 KiB random reads). */
    fuse_loop_cfg_set_idle_threads(cfg, (unsigned)threads);
    /* A /dev/fuse descriptor per worker: requests are not all queued on one. */
    fuse_loop_cfg_set_clone_fd(cfg, 1);
    int r = fuse_loop_mt(f->fuse, cfg);
    fuse_loop_cfg_destroy(cfg);
    return r < 0 ? r : 0;
}

void archip_fuse_unmount(struct archip_fuse *f) {
    if (f->mounted) {
        fuse_exit(f->fuse);
        fuse_unmount(f->fuse);
        f->mounted = 0;
    }
}

static int open_loop(int minor, int flags);

int archip_fuse_device(const char *mountpoint, uint64_t *dev_out) {
    struct stat st;
    if (stat(mountpoint, &st) != 0) return -errno;
    *dev_out = (uint64_t)st.st_dev;
    return 0;
}

int archip_fuse_abort(uint64_t dev) {
    /* fusectl names a connection by its device number as the kernel encodes
       it (major << 20 | minor; FUSE's anonymous devices have major 0). */
    unsigned kdev = (major((dev_t)dev) << 20) | minor((dev_t)dev);
    char path[96];
    snprintf(path, sizeof path, "/sys/fs/fuse/connections/%u/abort", kdev);
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT) {
        /* fusectl is not mounted in this mount namespace: mount it (once). */
        if (mount("fusectl", "/sys/fs/fuse/connections", "fusectl", 0, NULL) != 0 && errno != EBUSY) return -ENOENT;
        fd = open(path, O_WRONLY | O_CLOEXEC);
    }
    if (fd < 0) return -errno;
    ssize_t n = write(fd, "1", 1);
    int e = errno;
    close(fd);
    return n == 1 ? 0 : -e;
}

int archip_unshare_mounts(int *old_ns) {
    *old_ns = open("/proc/self/ns/mnt", O_RDONLY | O_CLOEXEC);
    if (*old_ns < 0) return -errno;
    if (unshare(CLONE_NEWNS) != 0) { int e = errno; close(*old_ns); *old_ns = -1; return -e; }
    /* Slave: mounts the host makes later (a shared store mounted after boot)
       still reach the daemon; the daemon's own never reach the host. */
    if (mount("none", "/", NULL, MS_REC | MS_SLAVE, NULL) != 0) {
        int e = errno;
        archip_return_to_mount_ns(*old_ns);
        *old_ns = -1;
        return -e;
    }
    return 0;
}

int archip_return_to_mount_ns(int old_ns) {
    int r = setns(old_ns, CLONE_NEWNS);
    int e = errno;
    close(old_ns);
    return r == 0 ? 0 : -e;
}

static int loop_status(int minor, struct loop_info64 *info) {
    int fd = open_loop(minor, O_RDONLY);
    if (fd < 0) return fd;
    int r = ioctl(fd, LOOP_GET_STATUS64, info);
    int e = errno;
    close(fd);
    return r == 0 ? 0 : -e;
}

int archip_loop_backing_device(int minor, uint64_t *dev_out, uint64_t *inode_out) {
    struct loop_info64 info;
    int r = loop_status(minor, &info);
    if (r != 0) return r;
    *dev_out = info.lo_device;
    *inode_out = info.lo_inode;
    return 0;
}

int archip_blk_in_exclusive_use(const char *device) {
    /* An O_EXCL open of a block device fails with EBUSY while a file system
       is mounted on it (in any mount namespace) or another exclusive opener
       holds it: the device cannot be taken away from under it. */
    int fd = open(device, O_RDONLY | O_EXCL | O_CLOEXEC);
    if (fd >= 0) { close(fd); return 0; }
    return errno == EBUSY ? 1 : -errno;
}

void archip_fuse_destroy(struct archip_fuse *f) {
    archip_fuse_unmount(f);
    fuse_destroy(f->fuse);
    free(f);
}

static int open_loop(int minor, int flags) {
    char dev[32];
    snprintf(dev, sizeof dev, "/dev/loop%d", minor);
    int fd = open(dev, flags | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT) {
        /* Containers often lack nodes past the first few loop devices. */
        if (mknod(dev, S_IFBLK | 0660, makedev(7, minor)) != 0 && errno != EEXIST) return -errno;
        fd = open(dev, flags | O_CLOEXEC);
    }
    return fd < 0 ? -errno : fd;
}

int archip_loop_attach(const char *path, int readonly, int direct_io, int *minor_out) {
    int ctl = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
    if (ctl < 0) return -errno;
    int backing = open(path, (readonly ? O_RDONLY : O_RDWR) | O_CLOEXEC | (direct_io ? O_DIRECT : 0));
    if (backing < 0) { int e = errno; close(ctl); return -e; }
    int result = -EBUSY;
    for (int attempt = 0; attempt < 16; attempt++) {
        int minor = ioctl(ctl, LOOP_CTL_GET_FREE);
        if (minor < 0) { result = -errno; break; }
        int lfd = open_loop(minor, readonly ? O_RDONLY : O_RDWR);
        if (lfd < 0) { result = lfd; break; }
        struct loop_config cfg;
        memset(&cfg, 0, sizeof cfg);
        cfg.fd = (unsigned)backing;
        cfg.block_size = direct_io ? 4096 : 512;
        cfg.info.lo_flags = (readonly ? LO_FLAGS_READ_ONLY : 0) | (direct_io ? LO_FLAGS_DIRECT_IO : 0);
        strncpy((char *)cfg.info.lo_file_name, path, LO_NAME_SIZE - 1);
        int r = ioctl(lfd, LOOP_CONFIGURE, &cfg);
        int e = errno;
        close(lfd);
        if (r == 0) { *minor_out = minor; result = 0; break; }
        if (e != EBUSY) { result = -e; break; }  /* another attach won the race: try the next */
    }
    close(backing);
    close(ctl);
    return result;
}

int archip_loop_detach(int minor) {
    int fd = open_loop(minor, O_RDONLY);
    if (fd < 0) return fd;
    int r = ioctl(fd, LOOP_CLR_FD, 0);
    int e = errno;
    close(fd);
    return r == 0 ? 0 : -e;
}

int archip_loop_set_capacity(int minor) {
    /* The loop driver takes the backing file's size from its inode as the
       kernel has it; a stat first makes FUSE ask the daemon for the new one. */
    char sys[64], backing[4096];
    snprintf(sys, sizeof sys, "/sys/block/loop%d/loop/backing_file", minor);
    int sfd = open(sys, O_RDONLY | O_CLOEXEC);
    if (sfd >= 0) {
        ssize_t n = read(sfd, backing, sizeof backing - 1);
        close(sfd);
        if (n > 0) {
            backing[n] = 0;
            if (backing[n - 1] == '\n') backing[n - 1] = 0;
            struct stat st;
            (void)stat(backing, &st);
        }
    }
    int fd = open_loop(minor, O_RDONLY);
    if (fd < 0) return fd;
    int r = ioctl(fd, LOOP_SET_CAPACITY, 0);
    int e = errno;
    close(fd);
    return r == 0 ? 0 : -e;
}

int archip_loop_backing_file(int minor, char *out, size_t outlen) {
    struct loop_info64 info;
    int r = loop_status(minor, &info);
    if (r != 0) return r;
    snprintf(out, outlen, "%s", (const char *)info.lo_file_name);
    return 0;
}

int archip_nbd_set_size(const char *device, uint64_t bytes) {
    int fd = open(device, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -errno;
    int r = ioctl(fd, NBD_SET_SIZE, (unsigned long)bytes);
    int e = errno;
    close(fd);
    return r == 0 ? 0 : -e;
}

int archip_blk_flush_buffers(const char *device) {
    int fd = open(device, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -errno;
    int r = ioctl(fd, BLKFLSBUF, 0);
    int e = errno;
    close(fd);
    return r == 0 ? 0 : -e;
}

static int send_all(int sock, const void *p, size_t len, int more) {
    const char *c = p;
    while (len > 0) {
        ssize_t n = send(sock, c, len, MSG_NOSIGNAL | (more ? MSG_MORE : 0));
        if (n < 0) {
            if (errno == EINTR) continue;
            return -errno;
        }
        c += n;
        len -= (size_t)n;
    }
    return 0;
}

static const char zero_page_buffer[64 << 10];

int archip_send_pieces(int sock, const void *header, size_t header_len, const struct archip_piece *pieces, int count) {
    int r = send_all(sock, header, header_len, count > 0);
    if (r < 0) return r;
    /* sendfile has no MSG_NOSIGNAL: hold SIGPIPE back on this thread while it
       runs, and take away the one a vanished peer raised. */
    sigset_t pipe_set, old;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    int blocked = 0;
    for (int i = 0; i < count && r == 0; i++) {
        int more = i + 1 < count;
        if (pieces[i].fd < 0) {
            size_t left = pieces[i].len;
            while (left > 0 && r == 0) {
                size_t n = left < sizeof zero_page_buffer ? left : sizeof zero_page_buffer;
                r = send_all(sock, zero_page_buffer, n, more || left > n);
                left -= n;
            }
            continue;
        }
        if (!blocked) {
            pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
            blocked = 1;
        }
        off_t off = (off_t)pieces[i].off;
        size_t left = pieces[i].len;
        while (left > 0) {
            ssize_t n = sendfile(sock, pieces[i].fd, &off, left);
            if (n < 0) {
                if (errno == EINTR) continue;
                r = -errno;
                break;
            }
            if (n == 0) { r = -EIO; break; } /* the file is shorter than it was: never send a short reply */
            left -= (size_t)n;
        }
    }
    if (blocked) {
        if (r == -EPIPE && !sigismember(&old, SIGPIPE)) {
            struct timespec now = {0, 0};
            while (sigtimedwait(&pipe_set, NULL, &now) == SIGPIPE) {}
        }
        pthread_sigmask(SIG_SETMASK, &old, NULL);
    }
    return r;
}

long archip_pread_nowait(int fd, void *buf, size_t len, uint64_t off) {
    struct iovec iov = {buf, len};
    ssize_t n;
    do {
        n = preadv2(fd, &iov, 1, (off_t)off, RWF_NOWAIT);
    } while (n < 0 && errno == EINTR);
    return n < 0 ? -errno : (long)n;
}

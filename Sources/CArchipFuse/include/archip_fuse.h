#ifndef ARCHIP_FUSE_H
#define ARCHIP_FUSE_H
#include <stddef.h>
#include <stdint.h>

/* A piece of a read reply: `len` bytes of file `fd` at `off`, or `len` zero
   bytes when fd < 0. */
struct archip_piece {
    int fd;
    uint64_t off;
    size_t len;
};

/* One file (a volume) in a FUSE file system, served through callbacks.
   libfuse's API is macros and variadic calls Swift cannot use, so the file
   system lives here and calls back into Swift for the data. Callbacks return
   0 or a negative errno. */
struct archip_fuse_callbacks {
    void *ctx;
    uint64_t (*size)(void *ctx);
    int (*read)(void *ctx, char *buf, size_t len, uint64_t off);
    int (*write)(void *ctx, const char *buf, size_t len, uint64_t off);
    int (*flush)(void *ctx);
    int (*trim)(void *ctx, uint64_t off, uint64_t len);
    /* Optional (may be NULL): the pieces a read of `len` bytes at `off` is
       made of, so the reply is spliced from the files instead of copied
       through a buffer. Returns how many pieces it wrote (at most `max`), 0
       when it cannot (then `read` is used), or -errno. `*keep` is handed to
       `release` once the reply has been sent: the descriptors stay open until
       then. */
    int (*read_pieces)(void *ctx, size_t len, uint64_t off, struct archip_piece *pieces, int max, void **keep);
    void (*release)(void *ctx, void *keep);
    int readonly;
};

struct archip_fuse;

/* Mounts a file system at `mountpoint` holding one file `filename`.
   On failure returns NULL with a message in err. */
struct archip_fuse *archip_fuse_mount(const char *mountpoint, const char *filename, const char *fsname,
                                      struct archip_fuse_callbacks cb, char *err, size_t errlen);
/* Serves requests on `threads` threads until unmounted; returns 0 or -errno. */
int archip_fuse_run(struct archip_fuse *f, int threads);
/* Unmounts (serving then returns) and frees. */
void archip_fuse_unmount(struct archip_fuse *f);
void archip_fuse_destroy(struct archip_fuse *f);
/* The device number of the file system mounted at `mountpoint` (its FUSE
   connection's id). 0 or -errno. */
int archip_fuse_device(const char *mountpoint, uint64_t *dev_out);
/* Aborts FUSE connection `dev` through fusectl (mounting fusectl at
   /sys/fs/fuse/connections if needed): every request fails with ENOTCONN and
   the serving threads return. 0 or -errno. */
int archip_fuse_abort(uint64_t dev);
/* Moves the calling thread into a new mount namespace whose mounts are
   slaves of the old one; *old_ns gets a descriptor of the old one (close-on-exec)
   for archip_return_to_mount_ns. 0 or -errno (then the thread has not moved). */
int archip_unshare_mounts(int *old_ns);
/* Moves the calling thread back into `old_ns` and closes it. 0 or -errno. */
int archip_return_to_mount_ns(int old_ns);
/* The device and inode of /dev/loopN's backing file. 0 or -errno. */
int archip_loop_backing_device(int minor, uint64_t *dev_out, uint64_t *inode_out);
/* 1 if a block device is mounted or held open exclusively, 0 if not, -errno. */
int archip_blk_in_exclusive_use(const char *device);

/* Loop devices, through ioctl (variadic in C). Return 0 or -errno. */
int archip_loop_attach(const char *path, int readonly, int direct_io, int *minor_out);
int archip_loop_detach(int minor);
int archip_loop_set_capacity(int minor);
/* The backing file of /dev/loopN, or -errno. */
int archip_loop_backing_file(int minor, char *out, size_t outlen);

/* A connected kernel NBD device (nbd-client without netlink): its new size
   after a grow (NBD_SET_SIZE). Returns 0 or -errno. */
int archip_nbd_set_size(const char *device, uint64_t bytes);

/* Sends a header and then the pieces on a stream socket: file pieces with
   sendfile (the socket takes page references, no copy in user space), zero
   pieces from a zero buffer. A peer that went away is -EPIPE, never SIGPIPE.
   Returns 0 or -errno. */
int archip_send_pieces(int sock, const void *header, size_t header_len, const struct archip_piece *pieces, int count);

/* pread that only copies what is in the page cache (RWF_NOWAIT): the number
   of bytes read, or -errno (-EAGAIN when it would have to wait for the disk). */
long archip_pread_nowait(int fd, void *buf, size_t len, uint64_t off);

/* Writes back and drops a block device's page cache (BLKFLSBUF). 0 or -errno. */
int archip_blk_flush_buffers(const char *device);
#endif

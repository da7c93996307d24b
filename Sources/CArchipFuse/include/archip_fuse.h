#ifndef ARCHIP_FUSE_H
#define ARCHIP_FUSE_H
#include <stddef.h>
#include <stdint.h>

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

/* Loop devices, through ioctl (variadic in C). Return 0 or -errno. */
int archip_loop_attach(const char *path, int readonly, int direct_io, int *minor_out);
int archip_loop_detach(int minor);
int archip_loop_set_capacity(int minor);
/* The backing file of /dev/loopN, or -errno. */
int archip_loop_backing_file(int minor, char *out, size_t outlen);

/* A connected kernel NBD device (nbd-client without netlink): its new size
   after a grow (NBD_SET_SIZE). Returns 0 or -errno. */
int archip_nbd_set_size(const char *device, uint64_t bytes);

/* Writes back and drops a block device's page cache (BLKFLSBUF). 0 or -errno. */
int archip_blk_flush_buffers(const char *device);
#endif

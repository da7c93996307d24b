#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <errno.h>
#include <unistd.h>
#include <sys/uio.h>
#include "archip_sys.h"

int archip_syncfs(int fd) { return syncfs(fd); }

int archip_rename_noreplace(const char *from, const char *to) {
    return renameat2(AT_FDCWD, from, AT_FDCWD, to, RENAME_NOREPLACE);
}

int archip_start_writeback(int fd) {
    return sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE);
}

int archip_open_tmpfile(const char *dir, int direct) {
    return open(dir, O_TMPFILE | O_WRONLY | O_CLOEXEC | (direct ? O_DIRECT : 0), 0644);
}

int archip_link_tmpfile(int fd, const char *path) {
    char proc[64];
    snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
    if (linkat(AT_FDCWD, proc, AT_FDCWD, path, AT_SYMLINK_FOLLOW) == 0) return 0;
    if (errno != ENOENT) return -1;
    /* No /proc, or the target folder is missing: AT_EMPTY_PATH tells them apart. */
    int e = errno;
    if (linkat(fd, "", AT_FDCWD, path, AT_EMPTY_PATH) == 0) return 0;
    if (errno == EPERM || errno == EINVAL) errno = e;
    return -1;
}

int archip_clear_direct(int fd) {
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0) return -1;
    return fcntl(fd, F_SETFL, flags & ~O_DIRECT);
}

/* CRC-32C: the reflected polynomial 0x82F63B78, initial and final xor ~0. */
static uint32_t crc32c_table[256];

static void crc32c_init_table(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        crc32c_table[i] = c;
    }
}

static uint32_t crc32c_soft(uint32_t crc, const unsigned char *p, size_t len) {
    while (len--) crc = crc32c_table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return crc;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2")))
static uint32_t crc32c_hw(uint32_t crc, const unsigned char *p, size_t len) {
    uint64_t c = crc;
    while (len >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        c = __builtin_ia32_crc32di(c, w);
        p += 8;
        len -= 8;
    }
    uint32_t c32 = (uint32_t)c;
    while (len--) c32 = __builtin_ia32_crc32qi(c32, *p++);
    return c32;
}
#endif

static int crc32c_mode; /* 0 unknown, 1 software, 2 hardware */

uint32_t archip_crc32c(uint32_t crc, const void *data, size_t len) {
    int mode = __atomic_load_n(&crc32c_mode, __ATOMIC_ACQUIRE);
    if (mode == 0) {
        crc32c_init_table();
        mode = 1;
#if defined(__x86_64__)
        __builtin_cpu_init();
        if (__builtin_cpu_supports("sse4.2")) mode = 2;
#endif
        __atomic_store_n(&crc32c_mode, mode, __ATOMIC_RELEASE);
    }
    crc = ~crc;
#if defined(__x86_64__)
    if (mode == 2) return ~crc32c_hw(crc, data, len);
#endif
    return ~crc32c_soft(crc, data, len);
}

long archip_pread_nowait_sys(int fd, void *buf, size_t len, uint64_t off) {
    struct iovec iov = {buf, len};
    ssize_t n;
    do {
        n = preadv2(fd, &iov, 1, (off_t)off, RWF_NOWAIT);
    } while (n < 0 && errno == EINTR);
    return (long)n;
}

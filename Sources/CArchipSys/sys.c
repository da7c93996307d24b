#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <errno.h>
#include <unistd.h>
#include <sys/uio.h>
#include <sys/syscall.h>
#include <pthread.h>
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

/* CRC-32C: the reflected polynomial 0x82F63B78, initial and final xor ~0.
   With SSE4.2, three streams of the crc32 instruction run interleaved (its
   latency is three times its throughput) and are combined by "shifting" a
   CRC over a run of zero bytes with precomputed tables (the method of Mark
   Adler's crc32c.c, zlib licence). */
#define CRC32C_POLY 0x82F63B78u
#define CRC32C_LONG 8192
#define CRC32C_SHORT 256
static uint32_t crc32c_table[256];
static uint32_t crc32c_long[4][256];
static uint32_t crc32c_short[4][256];

static uint32_t gf2_matrix_times(const uint32_t *mat, uint32_t vec) {
    uint32_t sum = 0;
    while (vec) {
        if (vec & 1) sum ^= *mat;
        vec >>= 1;
        mat++;
    }
    return sum;
}

static void gf2_matrix_square(uint32_t *square, const uint32_t *mat) {
    for (int n = 0; n < 32; n++) square[n] = gf2_matrix_times(mat, mat[n]);
}

/* The operator that appends `len` zero bytes (a power of two) to a CRC register. */
static void crc32c_zeros_op(uint32_t *even, size_t len) {
    uint32_t odd[32];
    odd[0] = CRC32C_POLY;
    uint32_t row = 1;
    for (int n = 1; n < 32; n++) {
        odd[n] = row;
        row <<= 1;
    }
    gf2_matrix_square(even, odd); /* 2 zero bits */
    gf2_matrix_square(odd, even); /* 4 zero bits */
    do {
        gf2_matrix_square(even, odd);
        len >>= 1;
        if (len == 0) return;
        gf2_matrix_square(odd, even);
        len >>= 1;
    } while (len);
    for (int n = 0; n < 32; n++) even[n] = odd[n];
}

static void crc32c_zeros(uint32_t zeros[][256], size_t len) {
    uint32_t op[32];
    crc32c_zeros_op(op, len);
    for (uint32_t n = 0; n < 256; n++) {
        zeros[0][n] = gf2_matrix_times(op, n);
        zeros[1][n] = gf2_matrix_times(op, n << 8);
        zeros[2][n] = gf2_matrix_times(op, n << 16);
        zeros[3][n] = gf2_matrix_times(op, n << 24);
    }
}

static inline uint32_t crc32c_shift(uint32_t zeros[][256], uint32_t crc) {
    return zeros[0][crc & 0xff] ^ zeros[1][(crc >> 8) & 0xff] ^ zeros[2][(crc >> 16) & 0xff] ^ zeros[3][crc >> 24];
}

static void crc32c_init_tables(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = c & 1 ? (c >> 1) ^ CRC32C_POLY : c >> 1;
        crc32c_table[i] = c;
    }
    crc32c_zeros(crc32c_long, CRC32C_LONG);
    crc32c_zeros(crc32c_short, CRC32C_SHORT);
}

static uint32_t crc32c_soft(uint32_t crc, const unsigned char *p, size_t len) {
    while (len--) crc = crc32c_table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return crc;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2")))
static uint64_t crc32c_hw_words(uint64_t c0, uint64_t c1, uint64_t c2, const unsigned char *p, size_t stride,
                                size_t words, uint64_t *out1, uint64_t *out2) {
    for (size_t i = 0; i < words; i++) {
        uint64_t w0, w1, w2;
        memcpy(&w0, p, 8);
        memcpy(&w1, p + stride, 8);
        memcpy(&w2, p + 2 * stride, 8);
        c0 = __builtin_ia32_crc32di(c0, w0);
        c1 = __builtin_ia32_crc32di(c1, w1);
        c2 = __builtin_ia32_crc32di(c2, w2);
        p += 8;
    }
    *out1 = c1;
    *out2 = c2;
    return c0;
}

__attribute__((target("sse4.2")))
static uint32_t crc32c_hw(uint32_t crc, const unsigned char *p, size_t len) {
    uint64_t c0 = crc, c1, c2;
    while (len >= 3 * CRC32C_LONG) {
        c0 = crc32c_hw_words(c0, 0, 0, p, CRC32C_LONG, CRC32C_LONG / 8, &c1, &c2);
        c0 = crc32c_shift(crc32c_long, (uint32_t)c0) ^ (uint32_t)c1;
        c0 = crc32c_shift(crc32c_long, (uint32_t)c0) ^ (uint32_t)c2;
        p += 3 * CRC32C_LONG;
        len -= 3 * CRC32C_LONG;
    }
    while (len >= 3 * CRC32C_SHORT) {
        c0 = crc32c_hw_words(c0, 0, 0, p, CRC32C_SHORT, CRC32C_SHORT / 8, &c1, &c2);
        c0 = crc32c_shift(crc32c_short, (uint32_t)c0) ^ (uint32_t)c1;
        c0 = crc32c_shift(crc32c_short, (uint32_t)c0) ^ (uint32_t)c2;
        p += 3 * CRC32C_SHORT;
        len -= 3 * CRC32C_SHORT;
    }
    while (len >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        c0 = __builtin_ia32_crc32di(c0, w);
        p += 8;
        len -= 8;
    }
    uint32_t c32 = (uint32_t)c0;
    while (len--) c32 = __builtin_ia32_crc32qi(c32, *p++);
    return c32;
}
#endif

static int crc32c_mode; /* 0 unknown, 1 software, 2 hardware */
static pthread_once_t crc32c_once = PTHREAD_ONCE_INIT;

static void crc32c_init(void) {
    crc32c_init_tables();
    int mode = 1;
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("sse4.2")) mode = 2;
#endif
    crc32c_mode = mode;
}

uint32_t archip_crc32c(uint32_t crc, const void *data, size_t len) {
    pthread_once(&crc32c_once, crc32c_init);
    crc = ~crc;
#if defined(__x86_64__)
    if (crc32c_mode == 2) return ~crc32c_hw(crc, data, len);
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

#ifndef __NR_cachestat
#define __NR_cachestat 451
#endif

int archip_range_cached(int fd, uint64_t off, uint64_t len) {
    struct { uint64_t off, len; } range = {off, len};
    struct { uint64_t cache, dirty, writeback, evicted, recently_evicted; } st;
    if (len == 0) return 1;
    if (syscall(__NR_cachestat, fd, &range, &st, 0) != 0) return -1;
    return st.cache >= (off + len + 4095) / 4096 - off / 4096 ? 1 : 0;
}

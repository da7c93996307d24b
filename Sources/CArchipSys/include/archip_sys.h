#ifndef ARCHIP_SYS_H
#define ARCHIP_SYS_H
/* Linux calls that Swift's Glibc module does not expose (they need _GNU_SOURCE). */
int archip_syncfs(int fd);
/* rename(2) that fails with EEXIST instead of replacing the target. */
int archip_rename_noreplace(const char *from, const char *to);
/* Starts writeback of a file's dirty pages without waiting (sync_file_range). */
int archip_start_writeback(int fd);
/* An unnamed file in folder `dir` (O_TMPFILE), opened for writing; with `direct`,
   O_DIRECT as well. -1 with errno where the file system lacks either (EOPNOTSUPP,
   EISDIR, EINVAL). */
int archip_open_tmpfile(const char *dir, int direct);
/* Gives the unnamed file `fd` the name `path` (linkat through /proc/self/fd, or
   AT_EMPTY_PATH); fails with EEXIST when the name is taken. */
int archip_link_tmpfile(int fd, const char *path);
/* Turns O_DIRECT off on `fd` (for an unaligned tail). */
int archip_clear_direct(int fd);
/* CRC-32C (Castagnoli, as iSCSI, ext4 and BlueStore use it) of `len` bytes,
   continuing from `crc` (0 to start). SSE4.2 where the CPU has it. */
#include <stddef.h>
#include <stdint.h>
uint32_t archip_crc32c(uint32_t crc, const void *data, size_t len);
/* pread(2) that fails with EAGAIN instead of waiting for the disk
   (preadv2 with RWF_NOWAIT); the bytes read, or -1 with errno. */
long archip_pread_nowait_sys(int fd, void *buf, size_t len, uint64_t off);
/* Whether every page of `fd`'s bytes [off, off+len) is in the page cache now
   (cachestat(2), Linux 6.5): 1 yes, 0 no, -1 where the call is missing or fails. */
int archip_range_cached(int fd, uint64_t off, uint64_t len);
#endif

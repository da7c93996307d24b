#ifndef ARCHIP_SYS_H
#define ARCHIP_SYS_H
/* Linux calls that Swift's Glibc module does not expose (they need _GNU_SOURCE). */
int archip_syncfs(int fd);
/* rename(2) that fails with EEXIST instead of replacing the target. */
int archip_rename_noreplace(const char *from, const char *to);
/* Starts writeback of a file's dirty pages without waiting (sync_file_range). */
int archip_start_writeback(int fd);
#endif

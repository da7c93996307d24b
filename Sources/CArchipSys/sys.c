#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <errno.h>
#include <unistd.h>
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

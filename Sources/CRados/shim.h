// librados (Debian: librados-dev, which ships no .pc file), loaded when a
// rados:// store is first opened, not when a program starts: its static
// initialisers (libceph-common) cost more than the rest of a provider call,
// and most calls use a folder store. Nothing links librados.
//
// How: librados.h is included with its functions renamed (archip_librados_*:
// declared, never defined, never called); each function this project calls is
// then a static inline of the same name and signature that calls through a
// pointer dlsym'd from librados.so.2 on first use. Swift calls rados_* as
// before. archip_rados_load() says whether the library can be loaded; callers
// check it before the first call (a missing library is then one error line,
// not an abort). A function not listed here fails to link: add it below
// (signature copied from librados.h).
#ifndef ARCHIP_CRADOS_SHIM_H
#define ARCHIP_CRADOS_SHIM_H
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define rados_aio_create_completion2 archip_librados_rados_aio_create_completion2
#define rados_aio_get_return_value archip_librados_rados_aio_get_return_value
#define rados_aio_get_version archip_librados_rados_aio_get_version
#define rados_aio_read_op_operate archip_librados_rados_aio_read_op_operate
#define rados_aio_release archip_librados_rados_aio_release
#define rados_aio_wait_for_complete archip_librados_rados_aio_wait_for_complete
#define rados_aio_write_op_operate archip_librados_rados_aio_write_op_operate
#define rados_blocklist_add archip_librados_rados_blocklist_add
#define rados_break_lock archip_librados_rados_break_lock
#define rados_conf_get archip_librados_rados_conf_get
#define rados_conf_read_file archip_librados_rados_conf_read_file
#define rados_conf_set archip_librados_rados_conf_set
#define rados_connect archip_librados_rados_connect
#define rados_create archip_librados_rados_create
#define rados_create_read_op archip_librados_rados_create_read_op
#define rados_create_write_op archip_librados_rados_create_write_op
#define rados_get_instance_id archip_librados_rados_get_instance_id
#define rados_ioctx_create archip_librados_rados_ioctx_create
#define rados_ioctx_destroy archip_librados_rados_ioctx_destroy
#define rados_ioctx_set_namespace archip_librados_rados_ioctx_set_namespace
#define rados_list_lockers archip_librados_rados_list_lockers
#define rados_lock_exclusive archip_librados_rados_lock_exclusive
#define rados_lock_shared archip_librados_rados_lock_shared
#define rados_nobjects_list_close archip_librados_rados_nobjects_list_close
#define rados_nobjects_list_next archip_librados_rados_nobjects_list_next
#define rados_nobjects_list_open archip_librados_rados_nobjects_list_open
#define rados_read_op_read archip_librados_rados_read_op_read
#define rados_read_op_stat archip_librados_rados_read_op_stat
#define rados_release_read_op archip_librados_rados_release_read_op
#define rados_release_write_op archip_librados_rados_release_write_op
#define rados_shutdown archip_librados_rados_shutdown
#define rados_write_op_assert_exists archip_librados_rados_write_op_assert_exists
#define rados_write_op_assert_version archip_librados_rados_write_op_assert_version
#define rados_write_op_create archip_librados_rados_write_op_create
#define rados_write_op_remove archip_librados_rados_write_op_remove
#define rados_write_op_setxattr archip_librados_rados_write_op_setxattr
#define rados_write_op_truncate archip_librados_rados_write_op_truncate
#define rados_write_op_write archip_librados_rados_write_op_write
#define rados_write_op_write_full archip_librados_rados_write_op_write_full
#include <rados/librados.h>
#undef rados_aio_create_completion2
#undef rados_aio_get_return_value
#undef rados_aio_get_version
#undef rados_aio_read_op_operate
#undef rados_aio_release
#undef rados_aio_wait_for_complete
#undef rados_aio_write_op_operate
#undef rados_blocklist_add
#undef rados_break_lock
#undef rados_conf_get
#undef rados_conf_read_file
#undef rados_conf_set
#undef rados_connect
#undef rados_create
#undef rados_create_read_op
#undef rados_create_write_op
#undef rados_get_instance_id
#undef rados_ioctx_create
#undef rados_ioctx_destroy
#undef rados_ioctx_set_namespace
#undef rados_list_lockers
#undef rados_lock_exclusive
#undef rados_lock_shared
#undef rados_nobjects_list_close
#undef rados_nobjects_list_next
#undef rados_nobjects_list_open
#undef rados_read_op_read
#undef rados_read_op_stat
#undef rados_release_read_op
#undef rados_release_write_op
#undef rados_shutdown
#undef rados_write_op_assert_exists
#undef rados_write_op_assert_version
#undef rados_write_op_create
#undef rados_write_op_remove
#undef rados_write_op_setxattr
#undef rados_write_op_truncate
#undef rados_write_op_write
#undef rados_write_op_write_full

/// NULL when librados is loaded (or now loads), else why it cannot be.
static inline const char *archip_rados_load(void) {
    static void *handle;
    static char why[512];
    if (__atomic_load_n(&handle, __ATOMIC_ACQUIRE)) return NULL;
    void *h = dlopen("librados.so.2", RTLD_NOW | RTLD_GLOBAL);
    if (!h) {
        const char *e = dlerror();
        snprintf(why, sizeof why, "cannot load librados.so.2 (Debian: librados2): %s", e ? e : "unknown error");
        return why;
    }
    __atomic_store_n(&handle, h, __ATOMIC_RELEASE);
    return NULL;
}

static inline void *archip_rados_symbol(const char *name) {
    const char *why = archip_rados_load();
    void *f = why ? NULL : dlsym(RTLD_DEFAULT, name);
    if (!f) {
        fprintf(stderr, "librados: %s: %s\n", name, why ? why : "no such symbol");
        abort();
    }
    return f;
}

/* The function NAME of librados, looked up once. */
#define ARCHIP_RADOS_FN(name) ({ \
    static __typeof__(archip_librados_##name) *archip_fn; \
    __typeof__(archip_librados_##name) *f = __atomic_load_n(&archip_fn, __ATOMIC_ACQUIRE); \
    if (!f) { f = (__typeof__(archip_librados_##name) *)archip_rados_symbol(#name); __atomic_store_n(&archip_fn, f, __ATOMIC_RELEASE); } \
    f; })

static inline int rados_aio_create_completion2(void *cb_arg, rados_callback_t cb_complete, rados_completion_t *pc) { return ARCHIP_RADOS_FN(rados_aio_create_completion2)(cb_arg, cb_complete, pc); }
static inline int rados_aio_get_return_value(rados_completion_t c) { return ARCHIP_RADOS_FN(rados_aio_get_return_value)(c); }
static inline uint64_t rados_aio_get_version(rados_completion_t c) { return ARCHIP_RADOS_FN(rados_aio_get_version)(c); }
static inline int rados_aio_read_op_operate(rados_read_op_t read_op, rados_ioctx_t io, rados_completion_t completion, const char *oid, int flags) { return ARCHIP_RADOS_FN(rados_aio_read_op_operate)(read_op, io, completion, oid, flags); }
static inline void rados_aio_release(rados_completion_t c) { ARCHIP_RADOS_FN(rados_aio_release)(c); }
static inline int rados_aio_wait_for_complete(rados_completion_t c) { return ARCHIP_RADOS_FN(rados_aio_wait_for_complete)(c); }
static inline int rados_aio_write_op_operate(rados_write_op_t write_op, rados_ioctx_t io, rados_completion_t completion, const char *oid, time_t *mtime, int flags) { return ARCHIP_RADOS_FN(rados_aio_write_op_operate)(write_op, io, completion, oid, mtime, flags); }
static inline int rados_blocklist_add(rados_t cluster, char *client_address, uint32_t expire_seconds) { return ARCHIP_RADOS_FN(rados_blocklist_add)(cluster, client_address, expire_seconds); }
static inline int rados_break_lock(rados_ioctx_t io, const char *o, const char *name, const char *client, const char *cookie) { return ARCHIP_RADOS_FN(rados_break_lock)(io, o, name, client, cookie); }
static inline int rados_conf_get(rados_t cluster, const char *option, char *buf, size_t len) { return ARCHIP_RADOS_FN(rados_conf_get)(cluster, option, buf, len); }
static inline int rados_conf_read_file(rados_t cluster, const char *path) { return ARCHIP_RADOS_FN(rados_conf_read_file)(cluster, path); }
static inline int rados_conf_set(rados_t cluster, const char *option, const char *value) { return ARCHIP_RADOS_FN(rados_conf_set)(cluster, option, value); }
static inline int rados_connect(rados_t cluster) { return ARCHIP_RADOS_FN(rados_connect)(cluster); }
static inline int rados_create(rados_t *cluster, const char * const id) { return ARCHIP_RADOS_FN(rados_create)(cluster, id); }
static inline rados_read_op_t rados_create_read_op(void) { return ARCHIP_RADOS_FN(rados_create_read_op)(); }
static inline rados_write_op_t rados_create_write_op(void) { return ARCHIP_RADOS_FN(rados_create_write_op)(); }
static inline uint64_t rados_get_instance_id(rados_t cluster) { return ARCHIP_RADOS_FN(rados_get_instance_id)(cluster); }
static inline int rados_ioctx_create(rados_t cluster, const char *pool_name, rados_ioctx_t *ioctx) { return ARCHIP_RADOS_FN(rados_ioctx_create)(cluster, pool_name, ioctx); }
static inline void rados_ioctx_destroy(rados_ioctx_t io) { ARCHIP_RADOS_FN(rados_ioctx_destroy)(io); }
static inline void rados_ioctx_set_namespace(rados_ioctx_t io, const char *nspace) { ARCHIP_RADOS_FN(rados_ioctx_set_namespace)(io, nspace); }
static inline ssize_t rados_list_lockers(rados_ioctx_t io, const char *o, const char *name, int *exclusive, char *tag, size_t *tag_len, char *clients, size_t *clients_len, char *cookies, size_t *cookies_len, char *addrs, size_t *addrs_len) { return ARCHIP_RADOS_FN(rados_list_lockers)(io, o, name, exclusive, tag, tag_len, clients, clients_len, cookies, cookies_len, addrs, addrs_len); }
static inline int rados_lock_exclusive(rados_ioctx_t io, const char * oid, const char * name, const char * cookie, const char * desc, struct timeval * duration, uint8_t flags) { return ARCHIP_RADOS_FN(rados_lock_exclusive)(io, oid, name, cookie, desc, duration, flags); }
static inline int rados_lock_shared(rados_ioctx_t io, const char * o, const char * name, const char * cookie, const char * tag, const char * desc, struct timeval * duration, uint8_t flags) { return ARCHIP_RADOS_FN(rados_lock_shared)(io, o, name, cookie, tag, desc, duration, flags); }
static inline void rados_nobjects_list_close(rados_list_ctx_t ctx) { ARCHIP_RADOS_FN(rados_nobjects_list_close)(ctx); }
static inline int rados_nobjects_list_next(rados_list_ctx_t ctx, const char **entry, const char **key, const char **nspace) { return ARCHIP_RADOS_FN(rados_nobjects_list_next)(ctx, entry, key, nspace); }
static inline int rados_nobjects_list_open(rados_ioctx_t io, rados_list_ctx_t *ctx) { return ARCHIP_RADOS_FN(rados_nobjects_list_open)(io, ctx); }
static inline void rados_read_op_read(rados_read_op_t read_op, uint64_t offset, size_t len, char *buffer, size_t *bytes_read, int *prval) { ARCHIP_RADOS_FN(rados_read_op_read)(read_op, offset, len, buffer, bytes_read, prval); }
static inline void rados_read_op_stat(rados_read_op_t read_op, uint64_t *psize, time_t *pmtime, int *prval) { ARCHIP_RADOS_FN(rados_read_op_stat)(read_op, psize, pmtime, prval); }
static inline void rados_release_read_op(rados_read_op_t read_op) { ARCHIP_RADOS_FN(rados_release_read_op)(read_op); }
static inline void rados_release_write_op(rados_write_op_t write_op) { ARCHIP_RADOS_FN(rados_release_write_op)(write_op); }
static inline void rados_shutdown(rados_t cluster) { ARCHIP_RADOS_FN(rados_shutdown)(cluster); }
static inline void rados_write_op_assert_exists(rados_write_op_t write_op) { ARCHIP_RADOS_FN(rados_write_op_assert_exists)(write_op); }
static inline void rados_write_op_assert_version(rados_write_op_t write_op, uint64_t ver) { ARCHIP_RADOS_FN(rados_write_op_assert_version)(write_op, ver); }
static inline void rados_write_op_create(rados_write_op_t write_op, int exclusive, const char* category) { ARCHIP_RADOS_FN(rados_write_op_create)(write_op, exclusive, category); }
static inline void rados_write_op_remove(rados_write_op_t write_op) { ARCHIP_RADOS_FN(rados_write_op_remove)(write_op); }
static inline void rados_write_op_setxattr(rados_write_op_t write_op, const char *name, const char *value, size_t value_len) { ARCHIP_RADOS_FN(rados_write_op_setxattr)(write_op, name, value, value_len); }
static inline void rados_write_op_truncate(rados_write_op_t write_op, uint64_t offset) { ARCHIP_RADOS_FN(rados_write_op_truncate)(write_op, offset); }
static inline void rados_write_op_write(rados_write_op_t write_op, const char *buffer, size_t len, uint64_t offset) { ARCHIP_RADOS_FN(rados_write_op_write)(write_op, buffer, len, offset); }
static inline void rados_write_op_write_full(rados_write_op_t write_op, const char *buffer, size_t len) { ARCHIP_RADOS_FN(rados_write_op_write_full)(write_op, buffer, len); }
#endif

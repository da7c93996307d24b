// libcurl, loaded when the first HTTP(S) transfer is set up, not when a
// program starts: most calls of the provider and of archip never fetch a URL,
// and the dynamic linking of libcurl (with its TLS libraries) is part of every
// start otherwise. Nothing links libcurl.
//
// How: curl.h is included with the functions this project calls renamed
// (archip_libcurl_*: declared, never defined, never called); each is then a
// static inline of the same name and signature that calls through a pointer
// dlsym'd from libcurl.so.4 on first use, so Swift calls curl_* as before.
// archip_curl_load() says whether the library can be loaded; callers check it
// before the first call (then a missing library is one error line, not an
// abort). A curl function not listed here fails to link: add it below.
#ifndef ARCHIP_CCURL_SHIM_H
#define ARCHIP_CCURL_SHIM_H
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

// The type-checking macros of typecheck-gcc.h would wrap curl_easy_setopt: the
// typed wrappers below are the checks.
#define CURL_DISABLE_TYPECHECK 1
#define curl_global_init archip_libcurl_curl_global_init
#define curl_easy_init archip_libcurl_curl_easy_init
#define curl_easy_cleanup archip_libcurl_curl_easy_cleanup
#define curl_easy_perform archip_libcurl_curl_easy_perform
#define curl_easy_reset archip_libcurl_curl_easy_reset
#define curl_easy_strerror archip_libcurl_curl_easy_strerror
#define curl_easy_setopt archip_libcurl_curl_easy_setopt
#define curl_easy_getinfo archip_libcurl_curl_easy_getinfo
#define curl_slist_append archip_libcurl_curl_slist_append
#define curl_slist_free_all archip_libcurl_curl_slist_free_all
#include <curl/curl.h>
#undef curl_global_init
#undef curl_easy_init
#undef curl_easy_cleanup
#undef curl_easy_perform
#undef curl_easy_reset
#undef curl_easy_strerror
#undef curl_easy_setopt
#undef curl_easy_getinfo
#undef curl_slist_append
#undef curl_slist_free_all

/// NULL when libcurl is loaded (or now loads), else why it cannot be.
static inline const char *archip_curl_load(void) {
    static void *handle;
    static char why[512];
    if (__atomic_load_n(&handle, __ATOMIC_ACQUIRE)) return NULL;
    void *h = dlopen("libcurl.so.4", RTLD_NOW | RTLD_GLOBAL);
    if (!h) {
        const char *e = dlerror();
        snprintf(why, sizeof why, "cannot load libcurl.so.4 (Debian: libcurl4): %s", e ? e : "unknown error");
        return why;
    }
    __atomic_store_n(&handle, h, __ATOMIC_RELEASE);
    return NULL;
}

static inline void *archip_curl_symbol(const char *name) {
    const char *why = archip_curl_load();
    void *f = why ? NULL : dlsym(RTLD_DEFAULT, name);
    if (!f) {
        fprintf(stderr, "libcurl: %s: %s\n", name, why ? why : "no such symbol");
        abort();
    }
    return f;
}

/* The function NAME of libcurl, looked up once. */
#define ARCHIP_CURL_FN(name) ({ \
    static __typeof__(archip_libcurl_##name) *archip_fn; \
    __typeof__(archip_libcurl_##name) *f = __atomic_load_n(&archip_fn, __ATOMIC_ACQUIRE); \
    if (!f) { f = (__typeof__(archip_libcurl_##name) *)archip_curl_symbol(#name); __atomic_store_n(&archip_fn, f, __ATOMIC_RELEASE); } \
    f; })

static inline CURLcode curl_global_init(long flags) { return ARCHIP_CURL_FN(curl_global_init)(flags); }
static inline CURL *curl_easy_init(void) { return ARCHIP_CURL_FN(curl_easy_init)(); }
static inline void curl_easy_cleanup(CURL *c) { ARCHIP_CURL_FN(curl_easy_cleanup)(c); }
static inline CURLcode curl_easy_perform(CURL *c) { return ARCHIP_CURL_FN(curl_easy_perform)(c); }
static inline void curl_easy_reset(CURL *c) { ARCHIP_CURL_FN(curl_easy_reset)(c); }
static inline const char *curl_easy_strerror(CURLcode code) { return ARCHIP_CURL_FN(curl_easy_strerror)(code); }
static inline struct curl_slist *curl_slist_append(struct curl_slist *list, const char *s) { return ARCHIP_CURL_FN(curl_slist_append)(list, s); }
static inline void curl_slist_free_all(struct curl_slist *list) { ARCHIP_CURL_FN(curl_slist_free_all)(list); }

/* curl_easy_setopt is variadic, which Swift cannot call: one typed wrapper per
   argument kind. */
static inline CURLcode archip_curl_setopt_long(CURL *c, CURLoption o, long v) { return ARCHIP_CURL_FN(curl_easy_setopt)(c, o, v); }
static inline CURLcode archip_curl_setopt_string(CURL *c, CURLoption o, const char *v) { return ARCHIP_CURL_FN(curl_easy_setopt)(c, o, v); }
static inline CURLcode archip_curl_setopt_pointer(CURL *c, CURLoption o, void *v) { return ARCHIP_CURL_FN(curl_easy_setopt)(c, o, v); }
static inline CURLcode archip_curl_setopt_write_function(CURL *c, size_t (*f)(char *, size_t, size_t, void *)) {
    return ARCHIP_CURL_FN(curl_easy_setopt)(c, CURLOPT_WRITEFUNCTION, f);
}
static inline CURLcode archip_curl_setopt_header_function(CURL *c, size_t (*f)(char *, size_t, size_t, void *)) {
    return ARCHIP_CURL_FN(curl_easy_setopt)(c, CURLOPT_HEADERFUNCTION, f);
}
static inline CURLcode archip_curl_getinfo_long(CURL *c, CURLINFO i, long *v) { return ARCHIP_CURL_FN(curl_easy_getinfo)(c, i, v); }
static inline CURLcode archip_curl_getinfo_off_t(CURL *c, CURLINFO i, curl_off_t *v) { return ARCHIP_CURL_FN(curl_easy_getinfo)(c, i, v); }
#endif

// librados (Debian: librados-dev; it ships no .pc file, so the module links "rados").
#include <errno.h>
#include <time.h>
#include <rados/librados.h>

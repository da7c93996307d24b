#ifndef ARCHIP_CFUSE3_SHIM_H
#define ARCHIP_CFUSE3_SHIM_H
#define FUSE_USE_VERSION 314
#include <fuse.h>
#endif

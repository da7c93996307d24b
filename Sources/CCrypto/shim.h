#ifndef ARCHIP_CCRYPTO_SHIM_H
#define ARCHIP_CCRYPTO_SHIM_H
#include <openssl/evp.h>
#include <openssl/sha.h>
#endif

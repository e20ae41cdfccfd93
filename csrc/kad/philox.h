// Philox-4x32-10 uniforms, bit-identical to Triton's tl.rand(seed, offset) and to
// kad_kernels/_random.py (docs/design.md §2.4): key = seed, counter =
// (offset, offset >> 32, 0, 0), first output word folded to [0, 1).  Shared by
// the CPU and CUDA kernels so seed/offset draws agree across every backend.
#pragma once

#include <cstdint>

#include "host_device.h"

namespace kad {

KAD_HOST_DEVICE float philox_uniform(int64_t seed, int64_t counter) {
  constexpr uint32_t kRoundA = 0xD2511F53u, kRoundB = 0xCD9E8D57u;
  constexpr uint32_t kKeyA = 0x9E3779B9u, kKeyB = 0xBB67AE85u;
  const uint64_t s = static_cast<uint64_t>(seed), c = static_cast<uint64_t>(counter);
  uint32_t k0 = static_cast<uint32_t>(s), k1 = static_cast<uint32_t>(s >> 32);
  uint32_t c0 = static_cast<uint32_t>(c), c1 = static_cast<uint32_t>(c >> 32), c2 = 0, c3 = 0;
  for (int round = 0; round < 10; ++round) {
    const uint64_t prod_b = static_cast<uint64_t>(c2) * kRoundB;
    const uint64_t prod_a = static_cast<uint64_t>(c0) * kRoundA;
    const uint32_t next0 = static_cast<uint32_t>(prod_b >> 32) ^ c1 ^ k0;
    const uint32_t next2 = static_cast<uint32_t>(prod_a >> 32) ^ c3 ^ k1;
    c1 = static_cast<uint32_t>(prod_b);
    c3 = static_cast<uint32_t>(prod_a);
    c0 = next0;
    c2 = next2;
    k0 += kKeyA;
    k1 += kKeyB;
  }
  // Triton's uint_to_uniform_float: fold the int32 sign (x < 0 -> -x - 1 = ~x), scale by 2^-31.
  const int32_t x = static_cast<int32_t>(c0);
  return static_cast<float>(x < 0 ? ~x : x) * 4.6566127342e-10f;
}

// Counter `offset + counter` of a call, wrapping modulo 2^64 (Philox reads 64 bits; a
// signed add would overflow for offsets near int64's maximum).
KAD_HOST_DEVICE int64_t philox_counter(int64_t offset, int64_t counter) {
  return static_cast<int64_t>(static_cast<uint64_t>(offset) + static_cast<uint64_t>(counter));
}

}  // namespace kad

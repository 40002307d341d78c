// llmc stand-in: IEEE half <-> float conversion with the template signature TVM's sort.cc calls
// (__extendXfYf2__<SrcT, SrcRepT, SrcSigBits, DstT, DstRepT, DstSigBits>), for binary16 -> binary32.
#ifndef LLMC_BUILTIN_FP16_H_
#define LLMC_BUILTIN_FP16_H_

#include <cstdint>
#include <cstring>

template <typename SRC_T, typename SRC_REP_T, int SRC_SIG_BITS, typename DST_T, typename DST_REP_T,
          int DST_SIG_BITS>
static inline DST_T __extendXfYf2__(SRC_T a) {
  static_assert(SRC_SIG_BITS == 10 && DST_SIG_BITS == 23, "only half -> float is provided");
  uint32_t h = static_cast<uint16_t>(a);
  uint32_t sign = (h & 0x8000u) << 16, exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff;
  uint32_t bits;
  if (exponent == 0x1f) {
    bits = sign | 0x7f800000u | (mantissa << 13);  // inf / nan
  } else if (exponent != 0) {
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {
    bits = sign;  // zero
  } else {  // subnormal half: normalize
    int shift = 0;
    while (!(mantissa & 0x400)) mantissa <<= 1, ++shift;
    bits = sign | ((113 - shift) << 23) | ((mantissa & 0x3ff) << 13);
  }
  DST_T out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
}

#endif  // LLMC_BUILTIN_FP16_H_

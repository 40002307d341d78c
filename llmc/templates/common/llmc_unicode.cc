// llmc_unicode.cc: see llmc_unicode.h.
#include "llmc_unicode.h"

#include <algorithm>
#include <iterator>

#include "llmc_unicode_tables.h"

namespace llmc {

namespace {

template <size_t N>
bool InRanges(const CodeRange (&ranges)[N], uint32_t code) {
  const CodeRange* end = ranges + N;
  const CodeRange* it = std::upper_bound(ranges, end, code, [](uint32_t c, const CodeRange& r) { return c < r.lo; });
  return it != ranges && (it - 1)->hi >= code;
}

// Decodes one well-formed sequence at `i`; returns its length, or 0 when the bytes there are not one.
int DecodeOne(const std::string& text, size_t i, uint32_t* code) {
  auto byte = [&](size_t k) { return static_cast<unsigned char>(text[k]); };
  unsigned char lead = byte(i);
  if (lead < 0x80) {
    *code = lead;
    return 1;
  }
  int length = Utf8SequenceLength(lead);
  if (length == 1 || i + length > text.size()) return 0;
  uint32_t value = lead & (0xFF >> (length + 1));
  for (int k = 1; k < length; ++k) {
    unsigned char next = byte(i + k);
    if ((next & 0xC0) != 0x80) return 0;
    value = (value << 6) | (next & 0x3F);
  }
  static const uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
  if (value < kMin[length] || value > 0x10FFFF || (value >= 0xD800 && value < 0xE000)) return 0;
  *code = value;
  return length;
}

// Bytes of a maximal prefix of an invalid sequence at `i` (Unicode "maximal subpart" rule).
int InvalidSpan(const std::string& text, size_t i) {
  unsigned char lead = static_cast<unsigned char>(text[i]);
  int length = Utf8SequenceLength(lead);
  if (length == 1) return 1;
  int span = 1;
  for (int k = 1; k < length && i + k < text.size(); ++k) {
    unsigned char next = static_cast<unsigned char>(text[i + k]);
    unsigned char lo = 0x80, hi = 0xBF;
    if (k == 1) {
      if (lead == 0xE0) lo = 0xA0;
      if (lead == 0xED) hi = 0x9F;
      if (lead == 0xF0) lo = 0x90;
      if (lead == 0xF4) hi = 0x8F;
    }
    if (next < lo || next > hi) break;
    ++span;
  }
  return span;
}

}  // namespace

int Utf8SequenceLength(unsigned char lead) {
  if (lead < 0x80) return 1;
  if (lead >= 0xC2 && lead <= 0xDF) return 2;
  if (lead >= 0xE0 && lead <= 0xEF) return 3;
  if (lead >= 0xF0 && lead <= 0xF4) return 4;
  return 1;
}

void AppendUtf8(uint32_t code, std::string* out) {
  if (code < 0x80) {
    out->push_back(static_cast<char>(code));
  } else if (code < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (code >> 6)));
    out->push_back(static_cast<char>(0x80 | (code & 0x3F)));
  } else if (code < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (code >> 12)));
    out->push_back(static_cast<char>(0x80 | ((code >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (code & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (code >> 18)));
    out->push_back(static_cast<char>(0x80 | ((code >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((code >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (code & 0x3F)));
  }
}

std::vector<uint32_t> DecodeUtf8(const std::string& text, std::vector<size_t>* offsets) {
  std::vector<uint32_t> codes;
  if (offsets) offsets->clear();
  size_t i = 0;
  while (i < text.size()) {
    uint32_t code = kReplacementChar;
    int length = DecodeOne(text, i, &code);
    if (length == 0) {
      code = kReplacementChar;
      length = 1;
    }
    if (offsets) offsets->push_back(i);
    codes.push_back(code);
    i += static_cast<size_t>(length);
  }
  if (offsets) offsets->push_back(text.size());
  return codes;
}

std::string Utf8Lossy(const std::string& bytes) {
  std::string out;
  size_t i = 0;
  while (i < bytes.size()) {
    uint32_t code;
    int length = DecodeOne(bytes, i, &code);
    if (length > 0) {
      out.append(bytes, i, static_cast<size_t>(length));
      i += static_cast<size_t>(length);
    } else {
      AppendUtf8(kReplacementChar, &out);
      i += static_cast<size_t>(InvalidSpan(bytes, i));
    }
  }
  return out;
}

size_t CompleteUtf8Prefix(const std::string& bytes) {
  // Look back at most 3 bytes for the start of a sequence that is still incomplete.
  size_t n = bytes.size();
  for (size_t back = 1; back <= 3 && back <= n; ++back) {
    size_t start = n - back;
    unsigned char lead = static_cast<unsigned char>(bytes[start]);
    if ((lead & 0xC0) == 0x80) continue;  // a continuation byte: look further back
    int length = Utf8SequenceLength(lead);
    if (length > static_cast<int>(back) && InvalidSpan(bytes, start) == static_cast<int>(back)) return start;
    return n;
  }
  return n;
}

bool IsLetter(uint32_t code) { return InRanges(kLetterRanges, code); }
bool IsNumber(uint32_t code) { return InRanges(kNumberRanges, code); }
bool IsWhiteSpace(uint32_t code) { return InRanges(kWhiteSpaceRanges, code); }

uint32_t SimpleFold(uint32_t code) {
  if ((code >= 'A' && code <= 'Z') || (code >= 0xC0 && code <= 0xDE && code != 0xD7)) return code + 32;
  return code;
}

}  // namespace llmc

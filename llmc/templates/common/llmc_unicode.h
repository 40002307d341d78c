// llmc_unicode.h: UTF-8 encoding/decoding and the Unicode classes the pre-tokenizer regexes use.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace llmc {

constexpr uint32_t kReplacementChar = 0xFFFD;

void AppendUtf8(uint32_t code, std::string* out);
// Code points of `text` and, in `offsets` (size + 1 entries), the byte offset of each. Invalid bytes
// become U+FFFD, one per byte.
std::vector<uint32_t> DecodeUtf8(const std::string& text, std::vector<size_t>* offsets = nullptr);
// Length of the UTF-8 sequence a lead byte starts (1 for invalid lead bytes).
int Utf8SequenceLength(unsigned char lead);
// Valid UTF-8 text for `bytes`: each maximal invalid subsequence becomes U+FFFD (as Rust's
// String::from_utf8_lossy does, which `tokenizers` uses).
std::string Utf8Lossy(const std::string& bytes);
// The length of the longest prefix of `bytes` that does not end inside an incomplete (but so far valid)
// UTF-8 sequence: what can be shown now while streaming.
size_t CompleteUtf8Prefix(const std::string& bytes);

bool IsLetter(uint32_t code);      // \p{L}
bool IsNumber(uint32_t code);      // \p{N}
bool IsWhiteSpace(uint32_t code);  // \s (White_Space)
uint32_t SimpleFold(uint32_t code);  // lower case for (?i:...) matching (ASCII and Latin-1)

}  // namespace llmc

// llmc_tokenizer.h: text <-> token ids with the tokenizer.json an llmc artifact holds (no dependency).
//
// Covers the tokenizers of the models llmc compiles:
//  - byte-level BPE (GPT-2 / SmolLM2 / Qwen2 / Llama-3 style): Split(regex) / Digits / ByteLevel
//    pre-tokenizers, BPE merges (with ignore_merges), ByteLevel decoder;
//  - SentencePiece-style BPE (Gemma, Llama-2 / Mistral): Replace / Prepend normalizers or Metaspace,
//    BPE with byte fallback (<0xXX> tokens), Replace / ByteFallback / Fuse / Strip decoders;
//  - added tokens (special or not), split off first, longest match at the leftmost position.
// Encode() equals `tokenizers`' encode(text, add_special_tokens=False); Decode() equals its
// decode(ids, skip_special_tokens=True). An unsupported component is reported when loading.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace llmc {

class Json;

class Tokenizer {
 public:
  static Tokenizer FromFile(const std::string& path);
  static Tokenizer FromJson(const std::string& text);
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

  std::vector<int32_t> Encode(const std::string& text) const;
  std::string Decode(const std::vector<int32_t>& ids, bool skip_special = true) const;

  int32_t VocabSize() const;
  // The id of a token's text (added tokens included), or -1.
  int32_t TokenId(const std::string& token) const;
  bool IsSpecial(int32_t id) const;

  struct Impl;

 private:
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Turns generated token ids into text as they come: never splits a UTF-8 character, and the pieces
// concatenate to Decode() of all the ids.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tokenizer) : tokenizer_(tokenizer) {}
  // The text this token completes ("" while a character is still incomplete).
  std::string Push(int32_t id);
  // Whatever is still held back (at the end of the generation).
  std::string Finish();
  void Reset();

 private:
  const Tokenizer& tokenizer_;
  std::vector<int32_t> ids_;
  size_t prefix_ = 0;  // ids_[prefix_, read_) were shown; decoding starts at prefix_ for context
  size_t read_ = 0;
};

}  // namespace llmc

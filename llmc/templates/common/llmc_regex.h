// llmc_regex.h: a small backtracking regex engine for the pre-tokenizer patterns of tokenizer.json.
//
// Supports what byte-level BPE split patterns use (GPT-2, Llama-3, Qwen2, SmolLM2 ...): literals,
// `.`, classes `[...]` / `[^...]` with ranges, `\s \S \d \D \w \W \p{L} \p{N} \P{..}`, escapes,
// groups `(...)`, `(?:...)`, `(?i:...)`, look-aheads `(?=...)` `(?!...)`, alternation (leftmost first,
// as Oniguruma), quantifiers `? * + {n} {n,} {n,m}` (greedy, or lazy with a trailing `?`).
// It works on code points. Case-insensitive matching folds ASCII and Latin-1 letters only.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace llmc {

class Regex {
 public:
  explicit Regex(const std::string& pattern);
  ~Regex();
  Regex(Regex&&) noexcept;
  Regex& operator=(Regex&&) noexcept;

  // The leftmost match in `text` starting at or after `from`: (start, end) in code points, or
  // (npos, npos) when there is none.
  std::pair<size_t, size_t> Find(const std::vector<uint32_t>& text, size_t from) const;

  struct Node;

 private:
  std::unique_ptr<Node> root_;
};

}  // namespace llmc

// llmc_tokenizer.cc: see llmc_tokenizer.h. The pipeline follows `tokenizers`: added tokens are split off,
// the rest is normalized, pre-tokenized into words, and each word is encoded by BPE.
#include "llmc_tokenizer.h"

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <functional>
#include <limits>
#include <sstream>
#include <stdexcept>

#include "llmc_json.h"
#include "llmc_regex.h"
#include "llmc_unicode.h"

namespace llmc {

namespace {

constexpr size_t kNpos = std::numeric_limits<size_t>::max();
// tokenizers' ByteLevel regex (GPT-2's, with a final \s+)
constexpr const char* kByteLevelPattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

[[noreturn]] void Unsupported(const std::string& what) {
  throw std::runtime_error("tokenizer.json: " + what + " is not supported by llmc's C++ tokenizer");
}

std::string ReplaceAll(const std::string& text, const std::string& from, const std::string& to) {
  if (from.empty()) return text;
  std::string out;
  size_t start = 0;
  while (true) {
    size_t hit = text.find(from, start);
    if (hit == std::string::npos) break;
    out.append(text, start, hit - start);
    out += to;
    start = hit + from.size();
  }
  out.append(text, start, std::string::npos);
  return out;
}

std::string EscapeRegex(const std::string& literal) {
  std::string out;
  for (char c : literal) {
    if (std::string("\\^$.|?*+()[]{}").find(c) != std::string::npos) out.push_back('\\');
    out.push_back(c);
  }
  return out;
}

// GPT-2's reversible map of the 256 byte values onto printable code points.
struct ByteMap {
  uint32_t to_char[256];
  std::unordered_map<uint32_t, uint8_t> to_byte;
  ByteMap() {
    uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
      to_char[b] = printable ? static_cast<uint32_t>(b) : next++;
      to_byte[to_char[b]] = static_cast<uint8_t>(b);
    }
  }
};

const ByteMap& Bytes() {
  static const ByteMap map;
  return map;
}

// ---------------------------------------------------------------- splitting with a delimiter behaviour
enum class Behavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

Behavior ParseBehavior(const std::string& name) {
  if (name == "Removed") return Behavior::kRemoved;
  if (name == "Isolated") return Behavior::kIsolated;
  if (name == "MergedWithPrevious") return Behavior::kMergedWithPrevious;
  if (name == "MergedWithNext") return Behavior::kMergedWithNext;
  if (name == "Contiguous") return Behavior::kContiguous;
  Unsupported("split behavior " + name);
}

struct Segment {
  size_t start, end;  // code points
  bool matched;
};

// `match(codes, from)` gives the next (start, end) match or (npos, npos).
using MatchFn = std::function<std::pair<size_t, size_t>(const std::vector<uint32_t>&, size_t)>;

std::vector<std::string> SplitWord(const std::string& word, const MatchFn& match, Behavior behavior, bool invert) {
  std::vector<size_t> offsets;
  std::vector<uint32_t> codes = DecodeUtf8(word, &offsets);
  std::vector<Segment> segments;
  size_t pos = 0;
  while (pos < codes.size()) {
    auto [start, end] = match(codes, pos);
    if (start == kNpos) break;
    if (end == start) {  // an empty match: step over one character
      if (start >= codes.size()) break;
      pos = start + 1;
      continue;
    }
    if (start > pos) segments.push_back({pos, start, false});
    segments.push_back({start, end, true});
    pos = end;
  }
  if (pos < codes.size()) segments.push_back({pos, codes.size(), false});
  if (invert) {
    for (Segment& s : segments) s.matched = !s.matched;
  }
  std::vector<Segment> merged;
  for (const Segment& s : segments) {
    switch (behavior) {
      case Behavior::kRemoved:
        if (!s.matched) merged.push_back(s);
        break;
      case Behavior::kIsolated: merged.push_back(s); break;
      case Behavior::kMergedWithPrevious:
        if (s.matched && !merged.empty() && !merged.back().matched) {
          merged.back().end = s.end;
          merged.back().matched = true;  // closed: the next segment starts a new piece
        } else {
          merged.push_back(s);
        }
        break;
      case Behavior::kMergedWithNext:
        if (!merged.empty() && merged.back().matched && !s.matched) {
          merged.back().end = s.end;
          merged.back().matched = false;
        } else {
          merged.push_back(s);  // a delimiter waits here for the segment after it
        }
        break;
      case Behavior::kContiguous:
        if (!merged.empty() && merged.back().matched && s.matched) {
          merged.back().end = s.end;
        } else {
          merged.push_back(s);
        }
        break;
    }
  }
  std::vector<std::string> out;
  for (const Segment& s : merged) {
    if (s.end > s.start) out.push_back(word.substr(offsets[s.start], offsets[s.end] - offsets[s.start]));
  }
  return out;
}

MatchFn RegexMatcher(std::shared_ptr<Regex> regex) {
  return [regex](const std::vector<uint32_t>& codes, size_t from) { return regex->Find(codes, from); };
}

MatchFn PredicateMatcher(std::function<bool(uint32_t)> accepts, bool runs) {
  return [accepts, runs](const std::vector<uint32_t>& codes, size_t from) -> std::pair<size_t, size_t> {
    for (size_t i = from; i < codes.size(); ++i) {
      if (!accepts(codes[i])) continue;
      size_t end = i + 1;
      while (runs && end < codes.size() && accepts(codes[end])) ++end;
      return {i, end};
    }
    return {kNpos, kNpos};
  };
}

// ---------------------------------------------------------------- components
struct Normalizer {
  enum class Kind { kReplace, kPrepend };
  Kind kind;
  std::string pattern, content;
  std::string Apply(const std::string& text) const {
    if (kind == Kind::kReplace) return ReplaceAll(text, pattern, content);
    return text.empty() ? text : content + text;
  }
};

struct Word {
  std::string text;
  bool first;  // starts at the beginning of the input (Metaspace's prepend_scheme "first")
};

struct PreTokenizer {
  enum class Kind { kSplit, kByteLevel, kDigits, kMetaspace };
  Kind kind;
  MatchFn match;
  Behavior behavior = Behavior::kIsolated;
  bool invert = false;
  bool add_prefix_space = false;
  bool use_regex = true;
  std::string replacement;  // Metaspace
  std::string prepend_scheme = "always";
  bool split = true;

  std::vector<Word> Apply(const std::vector<Word>& words) const {
    std::vector<Word> out;
    for (const Word& word : words) {
      switch (kind) {
        case Kind::kSplit:
        case Kind::kDigits: {
          bool first = word.first;
          for (std::string& piece : SplitWord(word.text, match, behavior, invert)) {
            out.push_back({std::move(piece), first});
            first = false;
          }
          break;
        }
        case Kind::kByteLevel: {
          std::string text = word.text;
          if (add_prefix_space && text.rfind(' ', 0) != 0) text = " " + text;
          std::vector<std::string> pieces{text};
          if (use_regex) pieces = SplitWord(text, match, Behavior::kIsolated, false);
          bool first = word.first;
          for (const std::string& piece : pieces) {
            std::string mapped;
            for (unsigned char b : piece) AppendUtf8(Bytes().to_char[b], &mapped);
            out.push_back({std::move(mapped), first});
            first = false;
          }
          break;
        }
        case Kind::kMetaspace: {
          std::string text = ReplaceAll(word.text, " ", replacement);
          bool prepend = prepend_scheme == "always" || (prepend_scheme == "first" && word.first);
          if (prepend && text.rfind(replacement, 0) != 0) text = replacement + text;
          if (!split) {
            out.push_back({text, word.first});
            break;
          }
          bool first = word.first;
          for (std::string& piece : SplitWord(text, match, Behavior::kMergedWithNext, false)) {
            out.push_back({std::move(piece), first});
            first = false;
          }
          break;
        }
      }
    }
    return out;
  }
};

struct Decoder {
  enum class Kind { kByteLevel, kReplace, kByteFallback, kFuse, kStrip, kMetaspace };
  Kind kind;
  std::string pattern, content;  // Replace; Strip's content; Metaspace's replacement
  int64_t start = 0, stop = 0;   // Strip
  bool prepend = true;           // Metaspace strips the first token's leading space

  std::vector<std::string> Apply(std::vector<std::string> tokens) const {
    switch (kind) {
      case Kind::kByteLevel: {
        std::string bytes;
        for (const std::string& token : tokens) {
          std::string mapped;
          bool all = true;
          for (uint32_t c : DecodeUtf8(token)) {
            auto it = Bytes().to_byte.find(c);
            if (it == Bytes().to_byte.end()) {
              all = false;
              break;
            }
            mapped.push_back(static_cast<char>(it->second));
          }
          bytes += all ? mapped : token;
        }
        return {Utf8Lossy(bytes)};
      }
      case Kind::kReplace:
        for (std::string& token : tokens) token = ReplaceAll(token, pattern, content);
        return tokens;
      case Kind::kByteFallback: {
        std::vector<std::string> out;
        std::string pending;
        size_t pending_count = 0;
        auto flush = [&]() {
          if (pending_count == 0) return;
          if (Utf8Lossy(pending) == pending) {
            out.push_back(pending);
          } else {
            for (size_t i = 0; i < pending_count; ++i) out.push_back("\xEF\xBF\xBD");
          }
          pending.clear();
          pending_count = 0;
        };
        for (std::string& token : tokens) {
          if (token.size() == 6 && token.rfind("<0x", 0) == 0 && token[5] == '>') {
            pending.push_back(static_cast<char>(std::stoi(token.substr(3, 2), nullptr, 16)));
            ++pending_count;
          } else {
            flush();
            out.push_back(std::move(token));
          }
        }
        flush();
        return out;
      }
      case Kind::kFuse: {
        std::string joined;
        for (const std::string& token : tokens) joined += token;
        return {joined};
      }
      case Kind::kStrip:
        for (std::string& token : tokens) {
          std::vector<size_t> offsets;
          std::vector<uint32_t> codes = DecodeUtf8(token, &offsets);
          uint32_t c = DecodeUtf8(content).at(0);
          size_t left = 0, right = codes.size();
          for (int64_t i = 0; i < start && left < right && codes[left] == c; ++i) ++left;
          for (int64_t i = 0; i < stop && right > left && codes[right - 1] == c; ++i) --right;
          token = token.substr(offsets[left], offsets[right] - offsets[left]);
        }
        return tokens;
      case Kind::kMetaspace:
        for (size_t i = 0; i < tokens.size(); ++i) {
          tokens[i] = ReplaceAll(tokens[i], content, " ");
          if (i == 0 && prepend && !tokens[i].empty() && tokens[i][0] == ' ') tokens[i].erase(0, 1);
        }
        return tokens;
    }
    return tokens;
  }
};

struct AddedToken {
  std::string content;
  int32_t id;
  bool special, normalized, lstrip, rstrip;
};

// Sequence members of a component, or the component itself.
std::vector<const Json*> Flatten(const Json& node, const char* list_key) {
  std::vector<const Json*> out;
  if (node.IsNull()) return out;
  if (node.GetString("type") == "Sequence") {
    for (const Json& child : node[list_key].Array()) {
      for (const Json* leaf : Flatten(child, list_key)) out.push_back(leaf);
    }
  } else {
    out.push_back(&node);
  }
  return out;
}

std::string PatternOf(const Json& pattern, bool* is_regex) {
  if (pattern.Has("Regex")) {
    *is_regex = true;
    return pattern["Regex"].String();
  }
  *is_regex = false;
  return pattern["String"].String();
}

}  // namespace

// ---------------------------------------------------------------- the tokenizer
struct Tokenizer::Impl {
  std::vector<Normalizer> normalizers;
  std::vector<PreTokenizer> pre_tokenizers;
  std::vector<Decoder> decoders;
  std::unordered_map<std::string, int32_t> vocab;
  std::vector<std::string> id_to_token;
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges;  // (left, right) -> (rank, merged id)
  bool byte_fallback = false;
  bool ignore_merges = false;
  bool fuse_unk = false;
  int32_t unk_id = -1;
  std::vector<AddedToken> added;
  std::unordered_map<int32_t, size_t> added_by_id;
  std::unordered_map<std::string, int32_t> added_by_content;
  // added tokens by their first byte, longest first: [raw text matches, normalized text matches]
  std::unordered_map<unsigned char, std::vector<size_t>> added_index[2];

  void Load(const Json& root);
  void LoadModel(const Json& model);
  std::vector<std::pair<std::string, int32_t>> SplitAdded(const std::string& text, bool normalized) const;
  void EncodeWord(const std::string& word, std::vector<int32_t>* out) const;
  std::string Normalize(const std::string& text) const {
    std::string out = text;
    for (const Normalizer& n : normalizers) out = n.Apply(out);
    return out;
  }
};

void Tokenizer::Impl::LoadModel(const Json& model) {
  std::string type = model.GetString("type", "BPE");
  if (type != "BPE") Unsupported("model type " + type);
  if (!model.GetString("continuing_subword_prefix").empty() || !model.GetString("end_of_word_suffix").empty()) {
    Unsupported("BPE with continuing_subword_prefix/end_of_word_suffix");
  }
  byte_fallback = model.GetBool("byte_fallback", false);
  ignore_merges = model.GetBool("ignore_merges", false);
  fuse_unk = model.GetBool("fuse_unk", false);
  int32_t size = 0;
  for (const auto& [token, id] : model["vocab"].Object()) {
    int32_t value = static_cast<int32_t>(id.Int());
    vocab.emplace(token, value);
    size = std::max(size, value + 1);
  }
  id_to_token.resize(static_cast<size_t>(size));
  for (const auto& [token, id] : vocab) id_to_token[static_cast<size_t>(id)] = token;
  std::string unk = model.GetString("unk_token");
  if (!unk.empty() && vocab.count(unk)) unk_id = vocab.at(unk);
  int32_t rank = 0;
  for (const Json& merge : model["merges"].Array()) {
    std::string left, right;
    if (merge.IsString()) {
      const std::string& text = merge.String();
      size_t space = text.find(' ', 1);
      if (space == std::string::npos) throw std::runtime_error("tokenizer.json: bad merge '" + text + "'");
      left = text.substr(0, space);
      right = text.substr(space + 1);
    } else {
      left = merge.Array().at(0).String();
      right = merge.Array().at(1).String();
    }
    auto l = vocab.find(left), r = vocab.find(right), m = vocab.find(left + right);
    if (l != vocab.end() && r != vocab.end() && m != vocab.end()) {
      uint64_t key = (static_cast<uint64_t>(static_cast<uint32_t>(l->second)) << 32) | static_cast<uint32_t>(r->second);
      merges.emplace(key, std::make_pair(rank, m->second));
    }
    ++rank;
  }
}

void Tokenizer::Impl::Load(const Json& root) {
  LoadModel(root["model"]);
  for (const Json* node : Flatten(root["normalizer"], "normalizers")) {
    std::string type = node->GetString("type");
    if (type == "Replace") {
      bool is_regex = false;
      std::string pattern = PatternOf((*node)["pattern"], &is_regex);
      if (is_regex) Unsupported("Replace normalizer with a regex");
      normalizers.push_back({Normalizer::Kind::kReplace, pattern, node->GetString("content")});
    } else if (type == "Prepend") {
      normalizers.push_back({Normalizer::Kind::kPrepend, "", node->GetString("prepend")});
    } else {
      Unsupported("normalizer " + type);
    }
  }
  for (const Json* node : Flatten(root["pre_tokenizer"], "pretokenizers")) {
    std::string type = node->GetString("type");
    PreTokenizer p;
    if (type == "Split") {
      p.kind = PreTokenizer::Kind::kSplit;
      bool is_regex = false;
      std::string pattern = PatternOf((*node)["pattern"], &is_regex);
      p.match = RegexMatcher(std::make_shared<Regex>(is_regex ? pattern : EscapeRegex(pattern)));
      p.behavior = ParseBehavior(node->GetString("behavior", "Isolated"));
      p.invert = node->GetBool("invert", false);
    } else if (type == "ByteLevel") {
      p.kind = PreTokenizer::Kind::kByteLevel;
      p.add_prefix_space = node->GetBool("add_prefix_space", true);
      p.use_regex = node->GetBool("use_regex", true);
      p.match = RegexMatcher(std::make_shared<Regex>(kByteLevelPattern));
    } else if (type == "Digits") {
      p.kind = PreTokenizer::Kind::kDigits;
      bool individual = node->GetBool("individual_digits", false);
      p.match = PredicateMatcher(IsNumber, !individual);
      p.behavior = Behavior::kIsolated;
    } else if (type == "Metaspace") {
      p.kind = PreTokenizer::Kind::kMetaspace;
      p.replacement = node->GetString("replacement", "\xE2\x96\x81");
      p.prepend_scheme = node->GetString("prepend_scheme", node->GetBool("add_prefix_space", true) ? "always" : "never");
      p.split = node->GetBool("split", true);
      p.match = RegexMatcher(std::make_shared<Regex>(EscapeRegex(p.replacement)));
    } else {
      Unsupported("pre-tokenizer " + type);
    }
    pre_tokenizers.push_back(std::move(p));
  }
  for (const Json* node : Flatten(root["decoder"], "decoders")) {
    std::string type = node->GetString("type");
    Decoder d;
    if (type == "ByteLevel") {
      d.kind = Decoder::Kind::kByteLevel;
    } else if (type == "Replace") {
      d.kind = Decoder::Kind::kReplace;
      bool is_regex = false;
      d.pattern = PatternOf((*node)["pattern"], &is_regex);
      if (is_regex) Unsupported("Replace decoder with a regex");
      d.content = node->GetString("content");
    } else if (type == "ByteFallback") {
      d.kind = Decoder::Kind::kByteFallback;
    } else if (type == "Fuse") {
      d.kind = Decoder::Kind::kFuse;
    } else if (type == "Strip") {
      d.kind = Decoder::Kind::kStrip;
      d.content = node->GetString("content", " ");
      d.start = node->GetInt("start", 0);
      d.stop = node->GetInt("stop", 0);
    } else if (type == "Metaspace") {
      d.kind = Decoder::Kind::kMetaspace;
      d.content = node->GetString("replacement", "\xE2\x96\x81");
      d.prepend = node->GetString("prepend_scheme", node->GetBool("add_prefix_space", true) ? "always" : "never") !=
                  "never";
    } else {
      Unsupported("decoder " + type);
    }
    decoders.push_back(std::move(d));
  }
  for (const Json& token : root["added_tokens"].IsArray() ? root["added_tokens"].Array() : std::vector<Json>{}) {
    AddedToken a{token.GetString("content"), static_cast<int32_t>(token.GetInt("id", -1)), token.GetBool("special", false),
                 token.GetBool("normalized", false), token.GetBool("lstrip", false), token.GetBool("rstrip", false)};
    if (a.content.empty() || a.id < 0) continue;
    if (token.GetBool("single_word", false)) Unsupported("added token with single_word");
    added_by_id[a.id] = added.size();
    added_by_content[a.content] = a.id;
    added.push_back(a);
    if (static_cast<size_t>(a.id) >= id_to_token.size()) id_to_token.resize(static_cast<size_t>(a.id) + 1);
  }
  for (int normalized = 0; normalized < 2; ++normalized) {
    for (size_t i = 0; i < added.size(); ++i) {
      if (added[i].normalized != (normalized == 1)) continue;
      // a normalized token is matched in normalized text, so index its normalized form
      std::string key = normalized ? Normalize(added[i].content) : added[i].content;
      added_index[normalized][static_cast<unsigned char>(key[0])].push_back(i);
    }
    for (auto& [byte, list] : added_index[normalized]) {
      std::stable_sort(list.begin(), list.end(),
                       [&](size_t a, size_t b) { return added[a].content.size() > added[b].content.size(); });
    }
  }
}

std::vector<std::pair<std::string, int32_t>> Tokenizer::Impl::SplitAdded(const std::string& text,
                                                                         bool normalized) const {
  // pieces of `text`: (plain text, -1) and (token text, added token id), leftmost-longest matches
  std::vector<std::pair<std::string, int32_t>> out;
  const auto& index = added_index[normalized ? 1 : 0];
  size_t plain_start = 0, i = 0;
  auto is_space = [&](size_t k) { return text[k] == ' ' || text[k] == '\t' || text[k] == '\n' || text[k] == '\r'; };
  while (i < text.size()) {
    auto it = index.find(static_cast<unsigned char>(text[i]));
    const AddedToken* hit = nullptr;
    if (it != index.end()) {
      for (size_t k : it->second) {
        const std::string content = normalized ? Normalize(added[k].content) : added[k].content;
        if (text.compare(i, content.size(), content) == 0) {
          hit = &added[k];
          break;
        }
      }
    }
    if (hit == nullptr) {
      ++i;
      continue;
    }
    size_t start = i, end = i + (normalized ? Normalize(hit->content).size() : hit->content.size());
    if (hit->lstrip) {
      while (start > plain_start && is_space(start - 1)) --start;
    }
    if (hit->rstrip) {
      while (end < text.size() && is_space(end)) ++end;
    }
    if (start > plain_start) out.push_back({text.substr(plain_start, start - plain_start), -1});
    out.push_back({text.substr(start, end - start), hit->id});
    plain_start = i = end;
  }
  if (plain_start < text.size()) out.push_back({text.substr(plain_start), -1});
  return out;
}

void Tokenizer::Impl::EncodeWord(const std::string& word, std::vector<int32_t>* out) const {
  if (ignore_merges) {
    auto whole = vocab.find(word);
    if (whole != vocab.end()) {
      out->push_back(whole->second);
      return;
    }
  }
  std::vector<int32_t> symbols;
  std::vector<size_t> offsets;
  std::vector<uint32_t> codes = DecodeUtf8(word, &offsets);
  for (size_t c = 0; c < codes.size(); ++c) {
    std::string ch = word.substr(offsets[c], offsets[c + 1] - offsets[c]);
    auto it = vocab.find(ch);
    if (it != vocab.end()) {
      symbols.push_back(it->second);
      continue;
    }
    if (byte_fallback) {
      std::vector<int32_t> bytes;
      for (unsigned char b : ch) {
        char name[8];
        std::snprintf(name, sizeof(name), "<0x%02X>", b);
        auto byte = vocab.find(name);
        if (byte == vocab.end()) break;
        bytes.push_back(byte->second);
      }
      if (bytes.size() == ch.size()) {
        symbols.insert(symbols.end(), bytes.begin(), bytes.end());
        continue;
      }
    }
    if (unk_id < 0) continue;
    if (fuse_unk && !symbols.empty() && symbols.back() == unk_id) continue;
    symbols.push_back(unk_id);
  }
  // merge the adjacent pair of lowest rank (leftmost on ties) until none can merge
  auto rank_of = [&](size_t i) -> std::pair<int32_t, int32_t> {
    uint64_t key = (static_cast<uint64_t>(static_cast<uint32_t>(symbols[i])) << 32) |
                   static_cast<uint32_t>(symbols[i + 1]);
    auto it = merges.find(key);
    return it == merges.end() ? std::make_pair(std::numeric_limits<int32_t>::max(), -1) : it->second;
  };
  std::vector<std::pair<int32_t, int32_t>> ranks;
  for (size_t i = 0; i + 1 < symbols.size(); ++i) ranks.push_back(rank_of(i));
  while (!ranks.empty()) {
    size_t best = 0;
    for (size_t i = 1; i < ranks.size(); ++i) {
      if (ranks[i].first < ranks[best].first) best = i;
    }
    if (ranks[best].second < 0) break;
    symbols[best] = ranks[best].second;
    symbols.erase(symbols.begin() + static_cast<std::ptrdiff_t>(best) + 1);
    ranks.erase(ranks.begin() + static_cast<std::ptrdiff_t>(best));
    if (best < ranks.size()) ranks[best] = rank_of(best);
    if (best > 0) ranks[best - 1] = rank_of(best - 1);
  }
  out->insert(out->end(), symbols.begin(), symbols.end());
}

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

Tokenizer Tokenizer::FromJson(const std::string& text) {
  auto impl = std::make_unique<Impl>();
  impl->Load(Json::Parse(text));
  return Tokenizer(std::move(impl));
}

Tokenizer Tokenizer::FromFile(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) throw std::runtime_error(path + ": cannot open the tokenizer file");
  std::stringstream buffer;
  buffer << file.rdbuf();
  try {
    return FromJson(buffer.str());
  } catch (const std::exception& err) {
    throw std::runtime_error(path + ": " + err.what());
  }
}

std::vector<int32_t> Tokenizer::Encode(const std::string& text) const {
  std::vector<int32_t> ids;
  bool first = true;
  for (const auto& [raw, raw_id] : impl_->SplitAdded(text, false)) {
    if (raw_id >= 0) {
      ids.push_back(raw_id);
      first = false;
      continue;
    }
    for (const auto& [piece, id] : impl_->SplitAdded(impl_->Normalize(raw), true)) {
      if (id >= 0) {
        ids.push_back(id);
        first = false;
        continue;
      }
      std::vector<Word> words{{piece, first}};
      first = false;
      for (const PreTokenizer& p : impl_->pre_tokenizers) words = p.Apply(words);
      for (const Word& word : words) impl_->EncodeWord(word.text, &ids);
    }
  }
  return ids;
}

std::string Tokenizer::Decode(const std::vector<int32_t>& ids, bool skip_special) const {
  std::vector<std::string> tokens;
  for (int32_t id : ids) {
    auto added = impl_->added_by_id.find(id);
    if (added != impl_->added_by_id.end()) {
      const AddedToken& token = impl_->added[added->second];
      if (!(skip_special && token.special)) tokens.push_back(token.content);
    } else if (id >= 0 && static_cast<size_t>(id) < impl_->id_to_token.size()) {
      tokens.push_back(impl_->id_to_token[static_cast<size_t>(id)]);
    }
  }
  for (const Decoder& d : impl_->decoders) tokens = d.Apply(std::move(tokens));
  std::string text;
  for (const std::string& token : tokens) text += token;
  return text;
}

int32_t Tokenizer::VocabSize() const { return static_cast<int32_t>(impl_->id_to_token.size()); }

int32_t Tokenizer::TokenId(const std::string& token) const {
  auto added = impl_->added_by_content.find(token);
  if (added != impl_->added_by_content.end()) return added->second;
  auto it = impl_->vocab.find(token);
  return it == impl_->vocab.end() ? -1 : it->second;
}

bool Tokenizer::IsSpecial(int32_t id) const {
  auto added = impl_->added_by_id.find(id);
  return added != impl_->added_by_id.end() && impl_->added[added->second].special;
}

// ---------------------------------------------------------------- streaming
std::string StreamDecoder::Push(int32_t id) {
  ids_.push_back(id);
  std::vector<int32_t> shown(ids_.begin() + static_cast<std::ptrdiff_t>(prefix_),
                             ids_.begin() + static_cast<std::ptrdiff_t>(read_));
  std::vector<int32_t> all(ids_.begin() + static_cast<std::ptrdiff_t>(prefix_), ids_.end());
  std::string before = tokenizer_.Decode(shown);
  std::string now = tokenizer_.Decode(all);
  const std::string kReplacement = "\xEF\xBF\xBD";
  bool incomplete = now.size() >= 3 && now.compare(now.size() - 3, 3, kReplacement) == 0;
  if (now.size() <= before.size() || incomplete || now.compare(0, before.size(), before) != 0) return "";
  prefix_ = read_;
  read_ = ids_.size();
  return now.substr(before.size());
}

std::string StreamDecoder::Finish() {
  std::vector<int32_t> shown(ids_.begin() + static_cast<std::ptrdiff_t>(prefix_),
                             ids_.begin() + static_cast<std::ptrdiff_t>(read_));
  std::vector<int32_t> all(ids_.begin() + static_cast<std::ptrdiff_t>(prefix_), ids_.end());
  std::string before = tokenizer_.Decode(shown);
  std::string now = tokenizer_.Decode(all);
  prefix_ = read_ = ids_.size();
  if (now.size() <= before.size() || now.compare(0, before.size(), before) != 0) return "";
  return now.substr(before.size());
}

void StreamDecoder::Reset() {
  ids_.clear();
  prefix_ = read_ = 0;
}

}  // namespace llmc

// llmc_regex.cc: see llmc_regex.h.
#include "llmc_regex.h"

#include <functional>
#include <limits>
#include <stdexcept>

#include "llmc_unicode.h"

namespace llmc {

namespace {

constexpr size_t kNpos = std::numeric_limits<size_t>::max();
constexpr int kUnbounded = -1;

enum class Property { kLetter, kNumber, kSpace, kDigit, kWord };

bool HasProperty(Property p, uint32_t c) {
  switch (p) {
    case Property::kLetter: return IsLetter(c);
    case Property::kNumber: return IsNumber(c);
    case Property::kSpace: return IsWhiteSpace(c);
    case Property::kDigit: return c >= '0' && c <= '9';
    case Property::kWord: return IsLetter(c) || IsNumber(c) || c == '_';
  }
  return false;
}

struct ClassItem {
  bool is_property = false;
  bool negated = false;  // \P{..}, \S, \D, \W
  Property property = Property::kLetter;
  uint32_t lo = 0, hi = 0;
};

}  // namespace

struct Regex::Node {
  enum class Kind { kClass, kAny, kSeq, kAlt, kRepeat, kLookahead };
  Kind kind = Kind::kSeq;
  // kClass: one code point set (a literal is a class of one range)
  std::vector<ClassItem> items;
  bool negated = false;
  bool fold = false;  // case-insensitive
  // kSeq, kAlt: children; kRepeat, kLookahead: children[0]
  std::vector<std::unique_ptr<Node>> children;
  int min = 0, max = 0;
  bool greedy = true;
  bool negative = false;  // (?!...)

  bool Accepts(uint32_t c) const {
    if (kind == Kind::kAny) return c != '\n';
    bool hit = false;
    for (const ClassItem& item : items) {
      bool in = item.is_property ? HasProperty(item.property, c) != item.negated
                                 : (c >= item.lo && c <= item.hi) ||
                                       (fold && SimpleFold(c) >= item.lo && SimpleFold(c) <= item.hi);
      if (in) {
        hit = true;
        break;
      }
    }
    return hit != negated;
  }
  bool SingleChar() const { return kind == Kind::kClass || kind == Kind::kAny; }
};

namespace {

using Node = Regex::Node;
using Kind = Regex::Node::Kind;

class Parser {
 public:
  explicit Parser(const std::string& pattern) : pattern_(pattern), codes_(DecodeUtf8(pattern)) {}

  std::unique_ptr<Node> Parse() {
    std::unique_ptr<Node> node = ParseAlternation(false);
    if (pos_ != codes_.size()) Fail("unbalanced ')'");
    return node;
  }

 private:
  [[noreturn]] void Fail(const std::string& what) const {
    throw std::runtime_error("unsupported regex /" + pattern_ + "/: " + what);
  }
  bool AtEnd() const { return pos_ >= codes_.size(); }
  uint32_t Peek() const { return codes_[pos_]; }

  std::unique_ptr<Node> ParseAlternation(bool fold) {
    auto alt = std::make_unique<Node>();
    alt->kind = Kind::kAlt;
    alt->children.push_back(ParseSequence(fold));
    while (!AtEnd() && Peek() == '|') {
      ++pos_;
      alt->children.push_back(ParseSequence(fold));
    }
    if (alt->children.size() == 1) return std::move(alt->children[0]);
    return alt;
  }

  std::unique_ptr<Node> ParseSequence(bool fold) {
    auto seq = std::make_unique<Node>();
    seq->kind = Kind::kSeq;
    while (!AtEnd() && Peek() != '|' && Peek() != ')') {
      std::unique_ptr<Node> atom = ParseAtom(fold);
      seq->children.push_back(ParseQuantifier(std::move(atom)));
    }
    return seq;
  }

  std::unique_ptr<Node> ParseQuantifier(std::unique_ptr<Node> atom) {
    if (AtEnd()) return atom;
    int min = 0, max = 0;
    uint32_t c = Peek();
    if (c == '?') {
      min = 0, max = 1;
    } else if (c == '*') {
      min = 0, max = kUnbounded;
    } else if (c == '+') {
      min = 1, max = kUnbounded;
    } else if (c == '{') {
      size_t save = pos_;
      ++pos_;
      min = ParseNumber();
      max = min;
      if (!AtEnd() && Peek() == ',') {
        ++pos_;
        max = (!AtEnd() && Peek() == '}') ? kUnbounded : ParseNumber();
      }
      if (AtEnd() || Peek() != '}' || min < 0) {
        pos_ = save;
        Fail("bad {n,m} quantifier");
      }
    } else {
      return atom;
    }
    ++pos_;
    auto repeat = std::make_unique<Node>();
    repeat->kind = Kind::kRepeat;
    repeat->min = min;
    repeat->max = max;
    if (!AtEnd() && Peek() == '?') {
      repeat->greedy = false;
      ++pos_;
    } else if (!AtEnd() && Peek() == '+') {
      Fail("possessive quantifiers");
    }
    repeat->children.push_back(std::move(atom));
    return repeat;
  }

  int ParseNumber() {
    if (AtEnd() || Peek() < '0' || Peek() > '9') return -1;
    int value = 0;
    while (!AtEnd() && Peek() >= '0' && Peek() <= '9') value = value * 10 + static_cast<int>(Peek() - '0'), ++pos_;
    return value;
  }

  std::unique_ptr<Node> ParseAtom(bool fold) {
    uint32_t c = Peek();
    if (c == '(') {
      ++pos_;
      bool lookahead = false, negative = false, inner_fold = fold;
      if (!AtEnd() && Peek() == '?') {
        ++pos_;
        if (AtEnd()) Fail("unterminated group");
        uint32_t kind = Peek();
        ++pos_;
        if (kind == ':') {
        } else if (kind == '=' || kind == '!') {
          lookahead = true;
          negative = kind == '!';
        } else if (kind == 'i' && !AtEnd() && Peek() == ':') {
          ++pos_;
          inner_fold = true;
        } else {
          Fail("group type (?" + std::string(1, static_cast<char>(kind)));
        }
      }
      std::unique_ptr<Node> inner = ParseAlternation(inner_fold);
      if (AtEnd() || Peek() != ')') Fail("missing ')'");
      ++pos_;
      if (!lookahead) return inner;
      auto look = std::make_unique<Node>();
      look->kind = Kind::kLookahead;
      look->negative = negative;
      look->children.push_back(std::move(inner));
      return look;
    }
    auto node = std::make_unique<Node>();
    node->kind = Kind::kClass;
    node->fold = fold;
    if (c == '.') {
      ++pos_;
      node->kind = Kind::kAny;
      return node;
    }
    if (c == '[') {
      ++pos_;
      ParseClass(node.get());
      return node;
    }
    if (c == '^' || c == '$') Fail("anchors");
    if (c == '\\') {
      ++pos_;
      node->items.push_back(ParseEscape());
    } else {
      ++pos_;
      node->items.push_back(Literal(c, fold));
    }
    return node;
  }

  static ClassItem Literal(uint32_t c, bool fold) {
    ClassItem item;
    item.lo = item.hi = fold ? SimpleFold(c) : c;
    return item;
  }

  ClassItem ParseEscape() {
    if (AtEnd()) Fail("trailing backslash");
    uint32_t c = Peek();
    ++pos_;
    ClassItem item;
    auto property = [&](Property p, bool negated) {
      item.is_property = true;
      item.property = p;
      item.negated = negated;
      return item;
    };
    switch (c) {
      case 's': return property(Property::kSpace, false);
      case 'S': return property(Property::kSpace, true);
      case 'd': return property(Property::kDigit, false);
      case 'D': return property(Property::kDigit, true);
      case 'w': return property(Property::kWord, false);
      case 'W': return property(Property::kWord, true);
      case 'p':
      case 'P': {
        std::string name;
        if (!AtEnd() && Peek() == '{') {
          ++pos_;
          while (!AtEnd() && Peek() != '}') name.push_back(static_cast<char>(Peek())), ++pos_;
          if (AtEnd()) Fail("unterminated \\p{");
          ++pos_;
        } else if (!AtEnd()) {
          name.push_back(static_cast<char>(Peek()));
          ++pos_;
        }
        if (name == "L" || name == "Letter") return property(Property::kLetter, c == 'P');
        if (name == "N" || name == "Number") return property(Property::kNumber, c == 'P');
        Fail("unicode property " + name);
      }
      case 'n': c = '\n'; break;
      case 'r': c = '\r'; break;
      case 't': c = '\t'; break;
      case 'f': c = '\f'; break;
      case 'v': c = '\v'; break;
      case '0': c = 0; break;
      default:
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) {
          Fail("escape \\" + std::string(1, static_cast<char>(c)));
        }
    }
    item.lo = item.hi = c;
    return item;
  }

  void ParseClass(Node* node) {
    if (!AtEnd() && Peek() == '^') {
      node->negated = true;
      ++pos_;
    }
    bool first = true;
    while (true) {
      if (AtEnd()) Fail("unterminated [");
      uint32_t c = Peek();
      if (c == ']' && !first) {
        ++pos_;
        return;
      }
      first = false;
      ClassItem item;
      if (c == '\\') {
        ++pos_;
        item = ParseEscape();
      } else if (c == '[') {
        Fail("nested classes");
      } else {
        ++pos_;
        item.lo = item.hi = c;
      }
      if (!item.is_property && pos_ + 1 < codes_.size() && Peek() == '-' && codes_[pos_ + 1] != ']') {
        ++pos_;
        uint32_t hi = Peek();
        ++pos_;
        if (hi == '\\') {
          ClassItem end = ParseEscape();
          if (end.is_property) Fail("class range to a property");
          hi = end.lo;
        }
        item.hi = hi;
      }
      if (node->fold && !item.is_property) {
        // fold ASCII ranges to lower case
        if (item.lo >= 'A' && item.hi <= 'Z') item.lo += 32, item.hi += 32;
      }
      node->items.push_back(item);
    }
  }

  const std::string& pattern_;
  std::vector<uint32_t> codes_;
  size_t pos_ = 0;
};

using Continuation = std::function<bool(size_t)>;

class Matcher {
 public:
  explicit Matcher(const std::vector<uint32_t>& text) : text_(text) {}

  bool Match(const Node& node, size_t pos, const Continuation& next) const {
    switch (node.kind) {
      case Kind::kClass:
      case Kind::kAny:
        return pos < text_.size() && node.Accepts(text_[pos]) && next(pos + 1);
      case Kind::kSeq: return MatchSeq(node, 0, pos, next);
      case Kind::kAlt:
        for (const auto& child : node.children) {
          if (Match(*child, pos, next)) return true;
        }
        return false;
      case Kind::kLookahead: {
        bool found = Match(*node.children[0], pos, [](size_t) { return true; });
        return found != node.negative && next(pos);
      }
      case Kind::kRepeat: return MatchRepeat(node, pos, next);
    }
    return false;
  }

 private:
  bool MatchSeq(const Node& seq, size_t index, size_t pos, const Continuation& next) const {
    if (index == seq.children.size()) return next(pos);
    return Match(*seq.children[index], pos,
                 [&](size_t after) { return MatchSeq(seq, index + 1, after, next); });
  }

  bool MatchRepeat(const Node& repeat, size_t pos, const Continuation& next) const {
    const Node& child = *repeat.children[0];
    size_t max = repeat.max == kUnbounded ? kNpos : static_cast<size_t>(repeat.max);
    size_t min = static_cast<size_t>(repeat.min);
    if (child.SingleChar()) {
      size_t run = 0;
      while (run < max && pos + run < text_.size() && child.Accepts(text_[pos + run])) ++run;
      if (run < min) return false;
      if (repeat.greedy) {
        for (size_t n = run + 1; n-- > min;) {
          if (next(pos + n)) return true;
        }
      } else {
        for (size_t n = min; n <= run; ++n) {
          if (next(pos + n)) return true;
        }
      }
      return false;
    }
    return MatchCount(repeat, child, 0, pos, next);
  }

  bool MatchCount(const Node& repeat, const Node& child, size_t count, size_t pos, const Continuation& next) const {
    size_t max = repeat.max == kUnbounded ? kNpos : static_cast<size_t>(repeat.max);
    bool enough = count >= static_cast<size_t>(repeat.min);
    if (!repeat.greedy && enough && next(pos)) return true;
    if (count < max) {
      bool more = Match(child, pos, [&](size_t after) {
        return after != pos && MatchCount(repeat, child, count + 1, after, next);
      });
      if (more) return true;
    }
    return repeat.greedy && enough && next(pos);
  }

  const std::vector<uint32_t>& text_;
};

}  // namespace

Regex::Regex(const std::string& pattern) : root_(Parser(pattern).Parse()) {}
Regex::~Regex() = default;
Regex::Regex(Regex&&) noexcept = default;
Regex& Regex::operator=(Regex&&) noexcept = default;

std::pair<size_t, size_t> Regex::Find(const std::vector<uint32_t>& text, size_t from) const {
  Matcher matcher(text);
  for (size_t start = from; start <= text.size(); ++start) {
    size_t end = kNpos;
    if (matcher.Match(*root_, start, [&](size_t after) {
          end = after;
          return true;
        })) {
      return {start, end};
    }
  }
  return {kNpos, kNpos};
}

}  // namespace llmc

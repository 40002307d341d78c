// llmc_json.cc: see llmc_json.h.
#include "llmc_json.h"

#include <cstdlib>

#include "llmc_unicode.h"

namespace llmc {

class Json::Parser {
 public:
  explicit Parser(const std::string& text) : text_(text) {}

  Json ParseDocument() {
    Json value = ParseValue();
    SkipSpace();
    if (pos_ != text_.size()) Fail("trailing characters");
    return value;
  }

 private:
  [[noreturn]] void Fail(const std::string& what) const {
    throw std::runtime_error("invalid JSON at byte " + std::to_string(pos_) + ": " + what);
  }

  void SkipSpace() {
    while (pos_ < text_.size() && (text_[pos_] == ' ' || text_[pos_] == '\n' || text_[pos_] == '\r' ||
                                   text_[pos_] == '\t')) {
      ++pos_;
    }
  }

  bool Consume(const char* word) {
    size_t n = std::char_traits<char>::length(word);
    if (text_.compare(pos_, n, word) != 0) return false;
    pos_ += n;
    return true;
  }

  Json ParseValue() {
    SkipSpace();
    if (pos_ >= text_.size()) Fail("unexpected end");
    Json value;
    char c = text_[pos_];
    if (c == '{') {
      value.type_ = Type::kObject;
      ++pos_;
      SkipSpace();
      if (pos_ < text_.size() && text_[pos_] == '}') {
        ++pos_;
        return value;
      }
      while (true) {
        SkipSpace();
        if (pos_ >= text_.size() || text_[pos_] != '"') Fail("expected a key");
        std::string key = ParseString();
        SkipSpace();
        if (pos_ >= text_.size() || text_[pos_] != ':') Fail("expected ':'");
        ++pos_;
        value.object_[key] = ParseValue();
        SkipSpace();
        if (pos_ < text_.size() && text_[pos_] == ',') {
          ++pos_;
        } else if (pos_ < text_.size() && text_[pos_] == '}') {
          ++pos_;
          return value;
        } else {
          Fail("expected ',' or '}'");
        }
      }
    }
    if (c == '[') {
      value.type_ = Type::kArray;
      ++pos_;
      SkipSpace();
      if (pos_ < text_.size() && text_[pos_] == ']') {
        ++pos_;
        return value;
      }
      while (true) {
        value.array_.push_back(ParseValue());
        SkipSpace();
        if (pos_ < text_.size() && text_[pos_] == ',') {
          ++pos_;
        } else if (pos_ < text_.size() && text_[pos_] == ']') {
          ++pos_;
          return value;
        } else {
          Fail("expected ',' or ']'");
        }
      }
    }
    if (c == '"') {
      value.type_ = Type::kString;
      value.string_ = ParseString();
      return value;
    }
    if (Consume("true")) {
      value.type_ = Type::kBool;
      value.bool_ = true;
      return value;
    }
    if (Consume("false")) {
      value.type_ = Type::kBool;
      return value;
    }
    if (Consume("null")) return value;
    const char* start = text_.c_str() + pos_;
    char* end = nullptr;
    value.number_ = std::strtod(start, &end);
    if (end == start) Fail("unexpected character");
    value.type_ = Type::kNumber;
    pos_ += static_cast<size_t>(end - start);
    return value;
  }

  uint32_t ParseHex4() {
    if (pos_ + 4 > text_.size()) Fail("short \\u escape");
    uint32_t code = 0;
    for (int i = 0; i < 4; ++i) {
      char h = text_[pos_++];
      code <<= 4;
      if (h >= '0' && h <= '9') {
        code |= static_cast<uint32_t>(h - '0');
      } else if (h >= 'a' && h <= 'f') {
        code |= static_cast<uint32_t>(h - 'a' + 10);
      } else if (h >= 'A' && h <= 'F') {
        code |= static_cast<uint32_t>(h - 'A' + 10);
      } else {
        Fail("bad \\u escape");
      }
    }
    return code;
  }

  std::string ParseString() {
    ++pos_;  // opening quote
    std::string out;
    while (true) {
      if (pos_ >= text_.size()) Fail("unterminated string");
      char c = text_[pos_++];
      if (c == '"') return out;
      if (c != '\\') {
        out.push_back(c);
        continue;
      }
      if (pos_ >= text_.size()) Fail("unterminated escape");
      char e = text_[pos_++];
      switch (e) {
        case '"': out.push_back('"'); break;
        case '\\': out.push_back('\\'); break;
        case '/': out.push_back('/'); break;
        case 'b': out.push_back('\b'); break;
        case 'f': out.push_back('\f'); break;
        case 'n': out.push_back('\n'); break;
        case 'r': out.push_back('\r'); break;
        case 't': out.push_back('\t'); break;
        case 'u': {
          uint32_t code = ParseHex4();
          if (code >= 0xD800 && code < 0xDC00 && text_.compare(pos_, 2, "\\u") == 0) {
            pos_ += 2;
            uint32_t low = ParseHex4();
            code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
          }
          AppendUtf8(code, &out);
          break;
        }
        default: Fail("bad escape");
      }
    }
  }

  const std::string& text_;
  size_t pos_ = 0;
};

Json Json::Parse(const std::string& text) { return Parser(text).ParseDocument(); }

bool Json::Bool() const {
  if (type_ != Type::kBool) throw std::runtime_error("JSON value is not a boolean");
  return bool_;
}

double Json::Number() const {
  if (type_ != Type::kNumber) throw std::runtime_error("JSON value is not a number");
  return number_;
}

const std::string& Json::String() const {
  if (type_ != Type::kString) throw std::runtime_error("JSON value is not a string");
  return string_;
}

const std::vector<Json>& Json::Array() const {
  if (type_ != Type::kArray) throw std::runtime_error("JSON value is not an array");
  return array_;
}

const std::map<std::string, Json>& Json::Object() const {
  if (type_ != Type::kObject) throw std::runtime_error("JSON value is not an object");
  return object_;
}

bool Json::Has(const std::string& key) const { return type_ == Type::kObject && object_.count(key) > 0; }

const Json& Json::operator[](const std::string& key) const {
  static const Json kNull;
  if (type_ != Type::kObject) return kNull;
  auto it = object_.find(key);
  return it == object_.end() ? kNull : it->second;
}

std::string Json::GetString(const std::string& key, const std::string& fallback) const {
  const Json& v = (*this)[key];
  return v.IsString() ? v.String() : fallback;
}

bool Json::GetBool(const std::string& key, bool fallback) const {
  const Json& v = (*this)[key];
  return v.type_ == Type::kBool ? v.bool_ : fallback;
}

int64_t Json::GetInt(const std::string& key, int64_t fallback) const {
  const Json& v = (*this)[key];
  return v.type_ == Type::kNumber ? static_cast<int64_t>(v.number_) : fallback;
}

double Json::GetNumber(const std::string& key, double fallback) const {
  const Json& v = (*this)[key];
  return v.type_ == Type::kNumber ? v.number_ : fallback;
}

}  // namespace llmc

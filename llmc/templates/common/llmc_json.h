// llmc_json.h: a small JSON reader for tokenizer.json and llmc-app-config.json (no dependency).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace llmc {

// One JSON value. Objects keep their keys sorted (std::map); order is never needed here.
class Json {
 public:
  enum class Type { kNull, kBool, kNumber, kString, kArray, kObject };

  static Json Parse(const std::string& text);

  Type type() const { return type_; }
  bool IsNull() const { return type_ == Type::kNull; }
  bool IsString() const { return type_ == Type::kString; }
  bool IsArray() const { return type_ == Type::kArray; }
  bool IsObject() const { return type_ == Type::kObject; }

  bool Bool() const;
  double Number() const;
  int64_t Int() const { return static_cast<int64_t>(Number()); }
  const std::string& String() const;
  const std::vector<Json>& Array() const;
  const std::map<std::string, Json>& Object() const;

  bool Has(const std::string& key) const;
  // The member `key` of an object; a null value when it is absent.
  const Json& operator[](const std::string& key) const;
  // Convenience accessors with defaults for absent or null members.
  std::string GetString(const std::string& key, const std::string& fallback = "") const;
  bool GetBool(const std::string& key, bool fallback) const;
  int64_t GetInt(const std::string& key, int64_t fallback) const;
  double GetNumber(const std::string& key, double fallback) const;

 private:
  class Parser;
  Type type_ = Type::kNull;
  bool bool_ = false;
  double number_ = 0;
  std::string string_;
  std::vector<Json> array_;
  std::map<std::string, Json> object_;
};

}  // namespace llmc

// A small JSON reader and writer helpers for export.json and safetensors headers.
// Values are null, bool, number (double), string, array or object (insertion order kept).
#pragma once

#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace arvid {

class Json {
 public:
  enum class Type { Null, Bool, Number, String, Array, Object };

  Json() = default;
  static Json parse(const std::string& text);  // throws std::runtime_error("json: ...")

  Type type() const { return type_; }
  bool is_null() const { return type_ == Type::Null; }
  bool is_object() const { return type_ == Type::Object; }
  bool is_array() const { return type_ == Type::Array; }
  bool is_string() const { return type_ == Type::String; }
  bool is_number() const { return type_ == Type::Number; }
  bool is_bool() const { return type_ == Type::Bool; }

  bool as_bool() const;
  double as_number() const;
  long long as_int() const;  // a number that is a whole value
  const std::string& as_string() const;
  const std::vector<Json>& items() const;                          // array
  const std::vector<std::pair<std::string, Json>>& members() const;  // object

  bool contains(const std::string& key) const;
  const Json& at(const std::string& key) const;  // throws naming the missing key
  const Json* find(const std::string& key) const;

 private:
  friend class JsonParser;
  Type type_ = Type::Null;
  bool bool_ = false;
  double number_ = 0.0;
  std::string string_;
  std::vector<Json> items_;
  std::vector<std::pair<std::string, Json>> members_;
};

// A JSON string literal (quotes and escapes) for writing headers.
std::string json_quote(const std::string& s);

}  // namespace arvid

#include "json.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>

namespace arvid {

class JsonParser {
 public:
  explicit JsonParser(const std::string& s) : s_(s) {}

  Json document() {
    Json v = value(0);
    skip_ws();
    if (pos_ != s_.size()) fail("trailing characters after the value");
    return v;
  }

 private:
  const std::string& s_;
  size_t pos_ = 0;

  [[noreturn]] void fail(const std::string& what) const {
    throw std::runtime_error("json: " + what + " at offset " + std::to_string(pos_));
  }
  void skip_ws() {
    while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\n' || s_[pos_] == '\r' || s_[pos_] == '\t')) ++pos_;
  }
  char peek() {
    skip_ws();
    if (pos_ >= s_.size()) fail("unexpected end of input");
    return s_[pos_];
  }
  void expect(const char* word) {
    for (const char* p = word; *p; ++p, ++pos_) {
      if (pos_ >= s_.size() || s_[pos_] != *p) fail(std::string("expected '") + word + "'");
    }
  }

  Json value(int depth) {
    if (depth > 64) fail("nesting too deep");
    Json v;
    char c = peek();
    if (c == '{') {
      v.type_ = Json::Type::Object;
      ++pos_;
      if (peek() == '}') {
        ++pos_;
        return v;
      }
      while (true) {
        if (peek() != '"') fail("expected a string key");
        std::string key = string();
        if (peek() != ':') fail("expected ':'");
        ++pos_;
        v.members_.emplace_back(std::move(key), value(depth + 1));
        c = peek();
        ++pos_;
        if (c == '}') break;
        if (c != ',') fail("expected ',' or '}'");
      }
    } else if (c == '[') {
      v.type_ = Json::Type::Array;
      ++pos_;
      if (peek() == ']') {
        ++pos_;
        return v;
      }
      while (true) {
        v.items_.push_back(value(depth + 1));
        c = peek();
        ++pos_;
        if (c == ']') break;
        if (c != ',') fail("expected ',' or ']'");
      }
    } else if (c == '"') {
      v.type_ = Json::Type::String;
      v.string_ = string();
    } else if (c == 't') {
      expect("true");
      v.type_ = Json::Type::Bool;
      v.bool_ = true;
    } else if (c == 'f') {
      expect("false");
      v.type_ = Json::Type::Bool;
    } else if (c == 'n') {
      expect("null");
    } else if (c == 'N') {  // Python's json writes NaN for float('nan')
      expect("NaN");
      v.type_ = Json::Type::Number;
      v.number_ = std::nan("");
    } else if (c == '-' || (c >= '0' && c <= '9') || c == 'I') {
      v.type_ = Json::Type::Number;
      v.number_ = number();
    } else {
      fail(std::string("unexpected character '") + c + "'");
    }
    return v;
  }

  double number() {
    size_t start = pos_;
    if (s_.compare(pos_, 8, "Infinity") == 0) {
      pos_ += 8;
      return INFINITY;
    }
    if (s_.compare(pos_, 9, "-Infinity") == 0) {
      pos_ += 9;
      return -INFINITY;
    }
    if (s_[pos_] == '-') ++pos_;
    while (pos_ < s_.size() && (isdigit(static_cast<unsigned char>(s_[pos_])) || s_[pos_] == '.' || s_[pos_] == 'e' ||
                                s_[pos_] == 'E' || s_[pos_] == '+' || s_[pos_] == '-'))
      ++pos_;
    std::string tok = s_.substr(start, pos_ - start);
    char* end = nullptr;
    double d = std::strtod(tok.c_str(), &end);
    if (tok.empty() || end != tok.c_str() + tok.size()) fail("bad number '" + tok + "'");
    return d;
  }

  static void put_utf8(std::string& out, unsigned cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }

  unsigned hex4() {
    if (pos_ + 4 > s_.size()) fail("short \\u escape");
    unsigned cp = 0;
    for (int i = 0; i < 4; ++i) {
      char h = s_[pos_++];
      cp <<= 4;
      if (h >= '0' && h <= '9') cp |= h - '0';
      else if (h >= 'a' && h <= 'f') cp |= h - 'a' + 10;
      else if (h >= 'A' && h <= 'F') cp |= h - 'A' + 10;
      else fail("bad \\u escape");
    }
    return cp;
  }

  std::string string() {
    ++pos_;  // opening quote
    std::string out;
    while (true) {
      if (pos_ >= s_.size()) fail("unterminated string");
      char c = s_[pos_++];
      if (c == '"') break;
      if (c != '\\') {
        out += c;
        continue;
      }
      if (pos_ >= s_.size()) fail("unterminated escape");
      char e = s_[pos_++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          unsigned cp = hex4();
          if (cp >= 0xD800 && cp < 0xDC00 && s_.compare(pos_, 2, "\\u") == 0) {
            pos_ += 2;
            unsigned lo = hex4();
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          }
          put_utf8(out, cp);
          break;
        }
        default: fail(std::string("bad escape '\\") + e + "'");
      }
    }
    return out;
  }
};

Json Json::parse(const std::string& text) { return JsonParser(text).document(); }

bool Json::as_bool() const {
  if (type_ != Type::Bool) throw std::runtime_error("json: expected true/false");
  return bool_;
}
double Json::as_number() const {
  if (type_ != Type::Number) throw std::runtime_error("json: expected a number");
  return number_;
}
long long Json::as_int() const {
  double d = as_number();
  if (std::floor(d) != d) throw std::runtime_error("json: expected a whole number");
  return static_cast<long long>(d);
}
const std::string& Json::as_string() const {
  if (type_ != Type::String) throw std::runtime_error("json: expected a string");
  return string_;
}
const std::vector<Json>& Json::items() const {
  if (type_ != Type::Array) throw std::runtime_error("json: expected an array");
  return items_;
}
const std::vector<std::pair<std::string, Json>>& Json::members() const {
  if (type_ != Type::Object) throw std::runtime_error("json: expected an object");
  return members_;
}
const Json* Json::find(const std::string& key) const {
  if (type_ != Type::Object) return nullptr;
  for (const auto& kv : members_)
    if (kv.first == key) return &kv.second;
  return nullptr;
}
bool Json::contains(const std::string& key) const { return find(key) != nullptr; }
const Json& Json::at(const std::string& key) const {
  const Json* v = find(key);
  if (!v) throw std::runtime_error("json: missing key '" + key + "'");
  return *v;
}

std::string json_quote(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    if (c == '"') out += "\\\"";
    else if (c == '\\') out += "\\\\";
    else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else out += static_cast<char>(c);
  }
  return out + "\"";
}

}  // namespace arvid

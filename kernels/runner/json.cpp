#include "json.h"

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "error.h"

namespace fastflow {
namespace {

constexpr size_t kMaxBytes = 1 << 20;
constexpr int kMaxDepth = 64;

struct Parser {
  const std::string& text;
  const std::string& path;
  size_t pos = 0;

  [[noreturn]] void fail(const std::string& what) const {
    throw InputError(path + ": malformed JSON (" + what + " at byte " + std::to_string(pos) + ")");
  }
  void skip() {
    while (pos < text.size() && (text[pos] == ' ' || text[pos] == '\n' || text[pos] == '\r' || text[pos] == '\t'))
      ++pos;
  }
  bool eat(char c) {
    skip();
    if (pos < text.size() && text[pos] == c) {
      ++pos;
      return true;
    }
    return false;
  }
  void expect(const std::string& word) {
    if (text.compare(pos, word.size(), word) != 0) fail("unexpected token");
    pos += word.size();
  }

  static void utf8(std::string& out, unsigned cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }

  std::string str() {
    if (!eat('"')) fail("expected a string");
    std::string out;
    while (true) {
      if (pos >= text.size()) fail("unterminated string");
      const char c = text[pos++];
      if (c == '"') return out;
      if (static_cast<unsigned char>(c) < 0x20) fail("control character in a string");
      if (c != '\\') {
        out += c;
        continue;
      }
      if (pos >= text.size()) fail("unterminated escape");
      const char e = text[pos++];
      switch (e) {
        case '"': case '\\': case '/': out += e; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          if (pos + 4 > text.size()) fail("short \\u escape");
          unsigned cp = 0;
          for (int i = 0; i < 4; ++i) {
            const char h = text[pos++];
            cp = cp * 16 + (h >= '0' && h <= '9' ? h - '0' : h >= 'a' && h <= 'f' ? h - 'a' + 10
                            : h >= 'A' && h <= 'F' ? h - 'A' + 10 : (fail("bad \\u escape"), 0));
          }
          utf8(out, cp);  // a surrogate half stays as its own code unit: names we compare are ASCII
          break;
        }
        default: fail("bad escape");
      }
    }
  }

  Json value(int depth) {
    if (depth > kMaxDepth) fail("nesting deeper than 64");
    skip();
    if (pos >= text.size()) fail("unexpected end");
    Json v;
    const char c = text[pos];
    if (c == '{') {
      ++pos;
      v.type = Json::Type::Object;
      if (eat('}')) return v;
      do {
        skip();
        std::string key = str();
        if (!eat(':')) fail("expected ':'");
        v.object[key] = value(depth + 1);
      } while (eat(','));
      if (!eat('}')) fail("expected '}'");
    } else if (c == '[') {
      ++pos;
      v.type = Json::Type::Array;
      if (eat(']')) return v;
      do v.array.push_back(value(depth + 1));
      while (eat(','));
      if (!eat(']')) fail("expected ']'");
    } else if (c == '"') {
      v.type = Json::Type::String;
      v.string = str();
    } else if (c == 't' || c == 'f') {
      v.type = Json::Type::Bool;
      v.boolean = c == 't';
      expect(c == 't' ? "true" : "false");
    } else if (c == 'n') {
      expect("null");
    } else {
      const char* start = text.c_str() + pos;
      char* end = nullptr;
      v.number = std::strtod(start, &end);
      if (end == start) fail("unexpected character");
      v.type = Json::Type::Number;
      pos += static_cast<size_t>(end - start);
    }
    return v;
  }
};

}  // namespace

const Json* Json::get(const std::string& key) const {
  if (type != Type::Object) return nullptr;
  const auto it = object.find(key);
  return it == object.end() ? nullptr : &it->second;
}

Json read_json(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError(path + ": cannot be read");
  std::ostringstream buf;
  buf << in.rdbuf();
  const std::string text = buf.str();
  if (text.size() > kMaxBytes) throw InputError(path + ": larger than 1 MiB; not a fastflow manifest");
  Parser p{text, path};
  Json v = p.value(0);
  p.skip();
  if (p.pos != text.size()) p.fail("trailing bytes");
  return v;
}

}  // namespace fastflow

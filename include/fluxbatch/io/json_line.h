// One JSON object on one line, built field by field (progress events for wrappers). Keeps nlohmann
// out of the code that emits events; strings with invalid UTF-8 are repaired, never refused.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

namespace fluxbatch::io {

class JsonLine {
 public:
  JsonLine();
  ~JsonLine();
  JsonLine(JsonLine&&) noexcept;
  JsonLine& operator=(JsonLine&&) noexcept;

  JsonLine& add(const std::string& key, const std::string& value);
  JsonLine& add(const std::string& key, const char* value);
  JsonLine& add(const std::string& key, int64_t value);
  JsonLine& add(const std::string& key, int value) { return add(key, static_cast<int64_t>(value)); }
  JsonLine& add(const std::string& key, uint64_t value);
  JsonLine& add(const std::string& key, double value);
  JsonLine& add(const std::string& key, bool value);
  // `json` must be a complete JSON value (an object built by another JsonLine, say).
  JsonLine& add_raw(const std::string& key, const std::string& json);

  std::string str() const;  // fields in the order added, no newline

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace fluxbatch::io

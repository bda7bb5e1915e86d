#include "fluxbatch/io/json_line.h"

#include <nlohmann/json.hpp>

namespace fluxbatch::io {

// ordered_json: fields stay in the order they were added, which makes events easy to read.
struct JsonLine::Impl {
  nlohmann::ordered_json object = nlohmann::ordered_json::object();
};

JsonLine::JsonLine() : impl_(std::make_unique<Impl>()) {}
JsonLine::~JsonLine() = default;
JsonLine::JsonLine(JsonLine&&) noexcept = default;
JsonLine& JsonLine::operator=(JsonLine&&) noexcept = default;

JsonLine& JsonLine::add(const std::string& key, const std::string& value) {
  impl_->object[key] = value;
  return *this;
}
JsonLine& JsonLine::add(const std::string& key, const char* value) { return add(key, std::string(value)); }
JsonLine& JsonLine::add(const std::string& key, int64_t value) {
  impl_->object[key] = value;
  return *this;
}
JsonLine& JsonLine::add(const std::string& key, uint64_t value) {
  impl_->object[key] = value;
  return *this;
}
JsonLine& JsonLine::add(const std::string& key, double value) {
  impl_->object[key] = value;
  return *this;
}
JsonLine& JsonLine::add(const std::string& key, bool value) {
  impl_->object[key] = value;
  return *this;
}
JsonLine& JsonLine::add_raw(const std::string& key, const std::string& json) {
  impl_->object[key] = nlohmann::ordered_json::parse(json);
  return *this;
}

std::string JsonLine::str() const {
  return impl_->object.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
}

}  // namespace fluxbatch::io

#pragma once
#include <stdexcept>
#include <string>

namespace codetr {

// Every error the runtime reports itself (bad model dir, bad model.json, bad input) is a
// codetr::Error whose message names the offending file, key, tensor or image.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

}  // namespace codetr

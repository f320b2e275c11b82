#include <dlfcn.h>
#include <cstdlib>
#include <filesystem>
#include <mutex>

#include <ATen/core/dispatch/Dispatcher.h>

#include "codetr/codetr.h"

namespace codetr {
namespace {

bool op_registered() {
  return c10::Dispatcher::singleton().findSchema(c10::OperatorName("codetr::ms_deform_attn", "")).has_value();
}

std::string dlopen_global(const std::string& path) {
  // RTLD_GLOBAL is not needed for the op registration itself (static initialisers run either
  // way) but keeps the library's symbols available to the package's own dlopen.
  if (dlopen(path.c_str(), RTLD_NOW | RTLD_GLOBAL) == nullptr) {
    const char* err = dlerror();
    throw Error("cannot load the codetr op library " + path + ": " + (err ? err : "unknown dlopen error"));
  }
  return path;
}

// Directory holding libcodetr.so itself (found through one of its own symbols).
std::string own_library_dir() {
  Dl_info info;
  if (dladdr(reinterpret_cast<void*>(&load_ops_library), &info) == 0 || info.dli_fname == nullptr) return "";
  return std::filesystem::path(info.dli_fname).parent_path().string();
}

}  // namespace

std::string find_ops_library() {
  if (const char* env = std::getenv("CODETR_OPS_LIBRARY"); env != nullptr && *env != '\0') return env;
  const std::string own_dir = own_library_dir();
  if (own_dir.empty()) return "";
  const std::string beside = own_dir + "/libcodetr_ops.so";
  return std::filesystem::exists(beside) ? beside : "";
}

std::string load_ops_library(const std::string& path) {
  static std::mutex mutex;
  std::lock_guard<std::mutex> lock(mutex);
  if (!path.empty()) return dlopen_global(path);
  if (op_registered()) return "registered";
  const std::string found = find_ops_library();
  if (found.empty())
    throw Error("libcodetr_ops.so (the codetr torch ops) was not found beside libcodetr.so (" + own_library_dir() +
                ") and CODETR_OPS_LIBRARY is not set");
  return dlopen_global(found);
}

}  // namespace codetr

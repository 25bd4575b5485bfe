// Shared basics of the core: the error type that carries a stable code across to TypeScript.
// native/core is plain C++17 with no Node headers; the binding turns CoreError into a LowbitError.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace lowbit {

// An error with one of the codes listed in src/errors.ts (e.g. "E_SHAPE").
class CoreError : public std::runtime_error {
 public:
  CoreError(const char* code, const std::string& message) : std::runtime_error(message), code_(code) {}
  const char* code() const noexcept { return code_; }

 private:
  const char* code_;
};

[[noreturn]] inline void fail(const char* code, const std::string& message) { throw CoreError(code, message); }

inline void require(bool ok, const char* code, const std::string& message) {
  if (!ok) fail(code, message);
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace lowbit
